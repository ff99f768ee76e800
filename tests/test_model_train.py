"""The β-VAE and its trainer: circular padding, masking, determinism, resume, bad input."""

import csv
import math

import numpy as np
import pytest
import torch
from conftest import write_product

from vaemap import train
from vaemap.model import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    Normaliser,
    ObservationNoise,
    ProfileVAE,
    VAEConfig,
    channel_weights,
    fixed_noise_logvar,
    gaussian_nll,
    initial_noise_logvar,
    kl_per_latent,
    load_checkpoint,
    resolve_device,
)
from vaemap.products import PROFILES


def test_circular_padding_makes_the_encoder_shift_equivariant():
    torch.manual_seed(0)
    model = ProfileVAE(VAEConfig(bins=48, depth=2, width=8, n_cond=0)).eval()
    conv = model.encoder[0]  # full-resolution circular conv
    x = torch.randn(1, 2, 48)
    shifted = torch.roll(x, 5, dims=2)
    torch.testing.assert_close(conv(shifted), torch.roll(conv(x), 5, dims=2))


@pytest.mark.parametrize("layout", ["conv", "strided"])
def test_masked_bins_do_not_change_the_encoding(layout):
    torch.manual_seed(0)
    model = ProfileVAE(VAEConfig(bins=24, depth=2, width=8, layout=layout)).eval()
    x = torch.randn(3, 1, 24)
    mask = (torch.rand(3, 1, 24) > 0.5).float()
    noisy = x + 100.0 * (1 - mask) * torch.randn_like(x)  # garbage only where unobserved
    mu1, _ = model.encode(x, mask)
    mu2, _ = model.encode(noisy, mask)
    torch.testing.assert_close(mu1, mu2)


def test_pair_layer_is_a_kernel2_stride2_convolution():
    from vaemap.model import _PairDown, _PairUp

    torch.manual_seed(0)
    down, up = _PairDown(3, 5), _PairUp(5, 3)
    conv = torch.nn.Conv1d(3, 5, 2, stride=2)
    tconv = torch.nn.ConvTranspose1d(5, 3, 2, stride=2)
    with torch.no_grad():
        # pair input is [bin 2i channels, bin 2i+1 channels]: weight (out, k*in)
        conv.weight.copy_(down.linear.weight.view(5, 2, 3).permute(0, 2, 1))
        conv.bias.copy_(down.linear.bias)
        # up output is [bin 2i channels, bin 2i+1 channels]: weight (k*out, in)
        tconv.weight.copy_(up.linear.weight.view(2, 3, 5).permute(2, 1, 0))
        # (the pair layer may give the two output bins different biases; the
        # transposed conv cannot, so compare with equal ones)
        up.linear.bias.copy_(tconv.bias.repeat(2))
    x = torch.randn(4, 3, 16)
    h = down(x.transpose(1, 2))
    torch.testing.assert_close(h.transpose(1, 2), conv(x))
    torch.testing.assert_close(up(h).transpose(1, 2), tconv(h.transpose(1, 2)))


def test_strided_layout_shapes_and_unknown_names():
    model = ProfileVAE(VAEConfig(bins=120, depth=3, width=32, n_cond=0, layout="strided",
                                 activation="relu")).eval()
    recon, mu, logvar = model(torch.randn(5, 1, 120), torch.ones(5, 1, 120), sample=False)
    assert recon.shape == (5, 1, 120) and mu.shape == logvar.shape == (5, 4)
    with pytest.raises(ValueError, match="layout 'dense'"):
        ProfileVAE(VAEConfig(layout="dense"))
    with pytest.raises(ValueError, match="activation 'tanh'"):
        ProfileVAE(VAEConfig(activation="tanh"))


def test_loss_terms():
    recon, x = torch.zeros(2, 1, 4), torch.ones(2, 1, 4)
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])
    var = torch.full((2, 1, 4), 0.5)
    # ½ Σ_observed [r²/σ² + log 2πσ²]: 2 bins and 1 bin of r² = 1, σ² = 0.5
    per_bin = 0.5 * (2.0 + math.log(math.pi))
    torch.testing.assert_close(gaussian_nll(recon, x, mask, var),
                               torch.tensor([2 * per_bin, per_bin]))
    kl = kl_per_latent(torch.zeros(1, 3), torch.zeros(1, 3))
    torch.testing.assert_close(kl, torch.zeros(1, 3))


def test_observation_noise_is_count_aware_and_fixed_or_learned():
    std = torch.tensor([[2.0, 4.0]])
    noise = ObservationNoise(1, 2, learned=False)
    noise.initialise(fixed_noise_logvar(std, noise_k=1.0, floor_k=0.0))
    var = noise.variance(torch.tensor([[[1.0, 4.0]]]))
    # 1 K of noise over a 2 K spread is 0.25 normalised units², over 4 K 1/16; /4 for 4 obs
    torch.testing.assert_close(var, torch.tensor([[[0.25, 1 / 64]]]), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(noise.sigma_k(std), torch.tensor([[1.0, 1.0]]), atol=1e-5,
                               rtol=1e-4)
    assert not noise.learned and not list(noise.parameters())
    learned = ObservationNoise(1, 2)
    assert learned.learned and [p.shape for p in learned.parameters()] == [(2, 1, 2)]
    # the maximum-likelihood variance of residuals of variance 3 is learned back
    opt = torch.optim.Adam(learned.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(4096, 1, 2, generator=gen) * math.sqrt(3.0)
    count, mask = torch.ones_like(r), torch.ones_like(r)
    for _ in range(400):
        loss = gaussian_nll(torch.zeros_like(r), r, mask, learned.variance(count)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert learned.variance(torch.ones(1, 1, 2)).detach().numpy() == pytest.approx(3.0, rel=0.1)


def test_channel_weights_count_each_kind_of_channel_by_its_square_root():
    w = channel_weights([1, 2, 3, 4, 5, 6, 7, 8, 9]).flatten()
    torch.testing.assert_close(w[:2], torch.full((2,), 1 / math.sqrt(2)))
    torch.testing.assert_close(w[2:], torch.full((7,), 1 / math.sqrt(7)))
    assert channel_weights([7]).flatten().tolist() == [1.0]
    assert channel_weights([1, 7, 8], "none").flatten().tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="channel_weighting 'equal'"):
        channel_weights([7], "equal")


def test_initial_noise_is_the_bin_to_bin_scatter():
    gen = torch.Generator().manual_seed(0)
    smooth = torch.sin(torch.linspace(0, 2 * math.pi, 121)[:-1]).repeat(5000, 1, 1)
    x = smooth + 0.3 * torch.randn(smooth.shape, generator=gen)
    log_var = initial_noise_logvar(x, torch.ones_like(x), torch.ones_like(x))
    assert log_var.shape == (2, 1, 120)
    assert torch.exp(log_var[0]).median().item() == pytest.approx(0.09, rel=0.1)


def test_bins_must_fit_the_depth():
    with pytest.raises(ValueError, match="divisible"):
        ProfileVAE(VAEConfig(bins=30, depth=3))


def test_training_products_and_checkpoint(trained):
    model, norm, ckpt = load_checkpoint(trained["model"])
    assert isinstance(model, ProfileVAE)
    for key in ("state_dict", "arch", "norm_mean", "norm_std", "config", "metrics", "history",
                "nside", "channels"):
        assert key in ckpt
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["channels"] == [7]
    assert norm.std.shape == (1, 24)
    assert ckpt["arch"]["latent_dim"] == 5
    assert np.isfinite(trained["metrics"]["val_rms_k"])
    rows = list(csv.DictReader(open(trained["root"] / "metrics.csv")))
    assert len(rows) == 3 and {"val_rms_k", "kl_0", "active_units"} <= set(rows[0])
    assert (trained["root"] / "curve.png").stat().st_size > 5000
    # the calibrated likelihood: its σ per bin is part of the weights, reported and plotted
    assert ckpt["arch"]["likelihood"] == "calibrated"
    assert model.noise.learned and ckpt["state_dict"]["noise.log_var"].shape == (2, 1, 24)
    sigma = model.noise.sigma_k(norm.std)
    assert torch.isfinite(sigma).all() and (sigma > 0).all()
    # the checkpoint keeps the best epoch's weights: its σ is the final metrics' one
    assert trained["metrics"]["sigma_ch7"] == pytest.approx(float(np.median(sigma.numpy())),
                                                            rel=1e-4)
    assert all(float(r["sigma_ch7"]) > 0 for r in rows)
    assert trained["metrics"]["sigma_night_ch7"] < trained["metrics"]["sigma_day_ch7"]
    assert (trained["root"] / "sigma.png").stat().st_size > 5000


def test_cpu_training_is_deterministic_and_resume_continues(survey, tiny_config, tmp_path):
    cfg = {**tiny_config, "train": {**tiny_config["train"], "epochs": 4, "patience": 10}}
    full = train.run(survey["profiles_h5"], tmp_path / "full.pt", cfg, progress=False)
    again = train.run(survey["profiles_h5"], tmp_path / "again.pt", cfg, progress=False)
    assert full["val_loss"] == again["val_loss"]

    half = {**cfg, "train": {**cfg["train"], "epochs": 2}}
    first = train.run(survey["profiles_h5"], tmp_path / "resumed.pt", half, progress=False)
    resumed = train.run(survey["profiles_h5"], tmp_path / "resumed.pt", cfg, progress=False,
                        resume=True)
    assert resumed["steps"] == full["steps"]
    # throughput after a resume counts the first half's time too (not inflated)
    assert resumed["seconds"] > first["seconds"]
    assert resumed["profiles_per_s"] == pytest.approx(
        resumed["steps"] * cfg["train"]["batch_size"] / resumed["seconds"])
    assert resumed["epochs"] == 4
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-6)
    a = torch.load(tmp_path / "full.pt", weights_only=True)["history"]
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)["history"]
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b])


def test_resume_ignores_a_checkpoint_of_another_configuration(survey, tiny_config, tmp_path):
    train.run(survey["profiles_h5"], tmp_path / "m.pt", tiny_config, progress=False)
    other = {**tiny_config, "model": {**tiny_config["model"], "beta": 1.0}}
    out = train.run(survey["profiles_h5"], tmp_path / "m.pt", other, progress=False,
                    resume=True)
    assert out["epochs"] == tiny_config["train"]["epochs"]  # started afresh


def test_training_on_a_sample_reads_only_the_sampled_profiles(survey, tiny_config, tmp_path,
                                                              monkeypatch):
    full = train.load_profiles(survey["profiles_h5"])
    n = full["pix"].size
    monkeypatch.setattr(train, "SAMPLE_READ_ROWS", 7)  # many blocks, some without a pick
    sample = train.load_profiles(survey["profiles_h5"], max_pixels=n // 3, seed=5)
    assert sample["pix"].size == n // 3 and sample["total"] == n
    assert np.all(np.diff(sample["pix"]) > 0)  # distinct, in pixel order
    rows = np.searchsorted(full["pix"], sample["pix"])
    for key in ("lat", "lon", "profile", "count"):
        np.testing.assert_array_equal(sample[key], full[key][rows])
    again = train.load_profiles(survey["profiles_h5"], max_pixels=n // 3, seed=5)
    other = train.load_profiles(survey["profiles_h5"], max_pixels=n // 3, seed=6)
    assert np.array_equal(again["pix"], sample["pix"])
    assert not np.array_equal(other["pix"], sample["pix"])
    everything = train.load_profiles(survey["profiles_h5"], max_pixels=n + 1)
    assert np.array_equal(everything["pix"], full["pix"])

    cfg = {**tiny_config, "train": {**tiny_config["train"], "max_pixels": n // 2}}
    out = train.run(survey["profiles_h5"], tmp_path / "m.pt", cfg, progress=False)
    assert out["train_pixels"] + out["val_pixels"] == n // 2
    assert out["profiles_total"] == n


def _write_profiles(path, profile, count):
    write_product(path, PROFILES, {"pix": np.arange(profile.shape[0]), "profile": profile,
                                   "count": count, "n_obs": count.sum(axis=(1, 2))})


def test_bad_profile_sets_are_clear_errors(tmp_path, tiny_config):
    empty = tmp_path / "empty.h5"
    _write_profiles(empty, np.zeros((0, 1, 24), np.float32), np.zeros((0, 1, 24), np.uint16))
    with pytest.raises(ValueError, match="no profiles"):
        train.run(empty, tmp_path / "m.pt", tiny_config, progress=False)
    masked = tmp_path / "masked.h5"
    _write_profiles(masked, np.full((5, 1, 24), np.nan, np.float32),
                    np.zeros((5, 1, 24), np.uint16))
    with pytest.raises(ValueError, match="fully masked"):
        train.run(masked, tmp_path / "m.pt", tiny_config, progress=False)
    nan = tmp_path / "nan.h5"
    prof = np.full((5, 1, 24), 200.0, np.float32)
    prof[2, 0, 3] = np.nan
    _write_profiles(nan, prof, np.ones((5, 1, 24), np.uint16))
    with pytest.raises(ValueError, match="NaN in bins with observations"):
        train.run(nan, tmp_path / "m.pt", tiny_config, progress=False)


def test_incompatible_checkpoint_is_a_clear_error(trained, tmp_path):
    ckpt = torch.load(trained["model"], weights_only=True)
    ckpt["arch"] = {**ckpt["arch"], "width": ckpt["arch"]["width"] * 2}
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not fit the declared architecture"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a vaemap model checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_of_another_format_or_unreadable_is_one_clear_error(trained, tmp_path):
    ckpt = torch.load(trained["model"], weights_only=True)
    torch.save({**ckpt, "format": 1}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old\.pt: checkpoint format 1, this vaemap "
                                              r"reads format 3; retrain"):
        load_checkpoint(tmp_path / "old.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip archive at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable vaemap checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_validation_loss_is_the_training_objective(survey, tiny_config):
    """Early stopping compares the loss that is optimised, TC term included."""
    trainer = train.Trainer(survey["profiles_h5"], "unused.pt", tiny_config, progress=False)
    with_tc = trainer.validate()
    assert with_tc["tc"] > 0 and np.isfinite(with_tc["tc"])
    expected = (with_tc["recon"] + tiny_config["model"]["beta"] * with_tc["kl"].sum()
                + tiny_config["model"]["tc_weight"] * with_tc["tc"])
    assert with_tc["loss"] == pytest.approx(expected)
    assert trainer.validate()["loss"] == with_tc["loss"]  # same draw: comparable epochs


def test_corrupt_training_state_is_set_aside(survey, tiny_config, tmp_path):
    (tmp_path / "m.pt.ckpt").write_bytes(b"\x00" * 100)
    out = train.run(survey["profiles_h5"], tmp_path / "m.pt", tiny_config, progress=False,
                    resume=True)
    assert out["epochs"] == tiny_config["train"]["epochs"]
    assert (tmp_path / "m.pt.ckpt.corrupt").exists()
    load_checkpoint(tmp_path / "m.pt")


def test_device_auto_resolves_everywhere():
    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_mean_profile_interpolates_in_absolute_latitude():
    from vaemap.model import mean_profile

    norm_lat = torch.tensor([10.0, 30.0])
    norm_mean = torch.stack([torch.full((1, 4), 100.0), torch.full((1, 4), 200.0)])
    out = mean_profile(torch.tensor([-20.0, 20.0, 0.0, 80.0]), norm_lat, norm_mean)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([150.0, 150.0, 100.0, 200.0]))
    single = mean_profile(torch.tensor([5.0, 60.0]), torch.zeros(1), norm_mean[:1])
    assert single.shape == (2, 1, 4)


@pytest.mark.parametrize("mode", ["latitude", "per_bin", "global"])
def test_normalisation_modes_centre_the_training_data(survey, mode):
    data = train.load_profiles(survey["profiles_h5"])
    norm = Normaliser.fit(data["profile"], data["lat"], mode)
    assert norm.norm_mean.ndim == 3 and norm.std.shape == data["profile"].shape[1:]
    assert torch.isfinite(norm.norm_mean).all() and (norm.std > 0).all()
    lat = torch.from_numpy(data["lat"])
    fitted = norm.mean_at(lat).numpy()
    # to_model and to_kelvin are inverses on observed bins
    x, mask = norm.to_model(torch.from_numpy(data["profile"]), lat)
    back = norm.to_kelvin(x, lat).numpy()
    observed = mask.numpy() > 0
    np.testing.assert_allclose(back[observed], data["profile"][observed], rtol=1e-5)
    assert (x.numpy()[~observed] == 0).all()
    residual = np.nanmean(data["profile"] - fitted)
    assert abs(residual) < 0.1 * np.nanstd(data["profile"])
    if mode == "latitude":  # removing latitude leaves much less spread than a global mean
        assert np.nanstd(data["profile"] - fitted) < 0.5 * np.nanstd(data["profile"])


def test_total_correlation_known_cases():
    """Independent latents have a total correlation near 0; a latent copied into a
    second one (fully dependent) has a large one."""
    from vaemap.model import total_correlation

    torch.manual_seed(0)
    n = 512
    logvar = torch.full((n, 2), -6.0)  # narrow posteriors: q(z) follows the means
    independent = torch.randn(n, 2)
    copied = torch.randn(n, 1).repeat(1, 2)
    tc_independent = total_correlation(independent, logvar).item()
    tc_copied = total_correlation(copied, logvar).item()
    assert abs(tc_independent) < 1.0
    assert tc_copied > 2.0


def _physics_vae(**overrides):
    cfg = {"channels": 1, "bins": 24, "width": 8, "depth": 2, "latent_dim": 7, "n_cond": 2,
           "decoder": "physics", "channel_ids": (7,), "emulator_width": 16,
           "emulator_layers": 2, **overrides}
    return ProfileVAE(VAEConfig(**cfg))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"latent_dim": 4}, r"latent_dim 4: the physics decoder needs at least 5 \(albedo, h_param"),
    ({"n_cond": 0}, r"needs the latitude: set model.condition_on_latitude true"),
    ({"channel_ids": (1,)}, r"channels \[1\]: the physics decoder needs .* one thermal"),
    ({"decoder": "emulated"}, r"decoder 'emulated': expected one of network, physics"),
])
def test_a_physics_decoder_that_cannot_work_is_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        _physics_vae(**overrides)


def test_the_physics_decoder_keeps_physics_and_network_apart():
    """The network term sees the free latents only (the physical ones cannot
    reach it, or it could do the physics' work); the physics term is the frozen
    emulator's profile of the physical latents, which gradients cross to reach
    them; the regularisers are finite and the emulator is not trained."""
    torch.manual_seed(0)
    model = _physics_vae()
    lat = torch.tensor([-40.0, 0.0, 30.0, 70.0])
    cond = torch.stack([torch.sin(torch.deg2rad(lat)), torch.cos(torch.deg2rad(lat))], 1)
    z = torch.randn(4, 7, requires_grad=True)
    physics, network = model.decode_parts(z, cond)
    moved = z.detach().clone()
    moved[:, :5] += 1.0
    physics2, network2 = model.decode_parts(moved, cond)
    torch.testing.assert_close(network2, network)
    assert not torch.allclose(physics2, physics)
    torch.testing.assert_close(model.decode(z, cond), physics + network)
    torch.testing.assert_close(physics, model.physics(z[:, :5], lat), atol=1e-4, rtol=1e-4)
    physics.sum().backward()
    assert (z.grad[:, :5].abs().sum(0) > 0).all() and (z.grad[:, 5:] == 0).all()
    assert all(not p.requires_grad for p in model.physics.emulator.parameters())

    from vaemap.model import physics_regularisers

    x, mask = torch.randn(4, 1, 24), torch.ones(4, 1, 24)
    physics, network = model.decode_parts(z.detach(), cond)
    terms = physics_regularisers(model, physics, network, x, mask, cond,
                                 torch.ones(4, 1, 24))
    assert set(terms) == {"physics", "least_action", "augmentation"}
    assert all(torch.isfinite(v) and float(v.detach()) >= 0 for v in terms.values())
    torch.testing.assert_close(terms["least_action"], (network**2).mean())


def test_the_physics_renders_the_solar_channels_of_a_model_that_says_so(tmp_path):
    """With solar_physics (every physics model vaemap trains now) a solar
    channel's physics term is the reflectance of the albedo latent; a model
    saved without the key (trained before) keeps a physics term of 0 there, and
    both load from model.pt with the same state keys."""
    from vaemap.model import save_checkpoint

    lat = torch.tensor([-20.0, 10.0, 45.0])
    z = torch.zeros(3, 5)
    brighter = z.clone()
    brighter[:, 0] = 1.0
    torch.manual_seed(2)
    new = _physics_vae(channels=2, channel_ids=(1, 7), solar_physics=True)
    old = _physics_vae(channels=2, channel_ids=(1, 7))
    old.load_state_dict(new.state_dict())  # the same keys: nothing new is persisted
    with torch.no_grad():
        lit, dark = new.physics(brighter, lat)[:, 0], new.physics(z, lat)[:, 0]
        assert (lit >= dark).all() and (lit > dark).any()  # brighter by day
        torch.testing.assert_close(lit[:, :6], dark[:, :6])  # the same at night (0-6 h)
        assert (old.physics(brighter, lat)[:, 0] == 0).all()
        torch.testing.assert_close(old.physics(z, lat)[:, 1], new.physics(z, lat)[:, 1])
    prof = 250 + 50 * torch.rand(8, 2, 24)
    norm = Normaliser.fit(prof.numpy(), torch.linspace(-60, 60, 8).numpy(), "latitude")
    for name, model in (("new", new), ("old", old)):
        save_checkpoint(tmp_path / f"{name}.pt", model, norm, nside=4, channels=[1, 7],
                        config={})
    ckpt = torch.load(tmp_path / "old.pt", weights_only=True)
    ckpt["arch"].pop("solar_physics")  # as a model of the earlier vaemap holds it
    torch.save(ckpt, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "new.pt")[0].physics.rendered == [1, 7]
    assert load_checkpoint(tmp_path / "old.pt")[0].physics.rendered == [7]


def test_the_physics_renders_the_reported_temperature_with_physics_noise(tmp_path):
    """physics_noise > 0 renders what the instrument reports (the forward
    model's reported temperature, tested against the simulator's measurements
    in test_emulator), 0 the scene's temperature; a model saved without the key
    (trained before) loads as noise-free."""
    from vaemap.forward_model import parameters_from_latents, physics_profiles
    from vaemap.model import save_checkpoint

    torch.manual_seed(3)
    noisy = _physics_vae(channels=2, channel_ids=(3, 7), physics_noise=1.0)
    clean = _physics_vae(channels=2, channel_ids=(3, 7))
    clean.load_state_dict(noisy.state_dict())  # nothing new is persisted
    z, lat = torch.randn(4, 5), torch.tensor([-50.0, 0.0, 30.0, 80.0])
    params, _ = parameters_from_latents(z)
    with torch.no_grad():
        for model, noise in ((noisy, 1.0), (clean, 0.0)):
            expected = physics_profiles(model.physics.emulator, params, lat, [3, 7], 24,
                                        noise=noise)
            torch.testing.assert_close(model.physics.kelvin(z, lat), expected)
        assert not torch.equal(noisy.physics.kelvin(z, lat), clean.physics.kelvin(z, lat))
    prof = 250 + 50 * torch.rand(8, 2, 24)
    norm = Normaliser.fit(prof.numpy(), torch.linspace(-60, 60, 8).numpy(), "latitude")
    save_checkpoint(tmp_path / "old.pt", noisy, norm, nside=4, channels=[3, 7], config={})
    ckpt = torch.load(tmp_path / "old.pt", weights_only=True)
    assert ckpt["arch"].pop("physics_noise") == 1.0
    torch.save(ckpt, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[0].physics.noise == 0.0


def test_a_physics_model_round_trips_through_its_checkpoint(tmp_path):
    """model.pt carries the emulator's weights and the normaliser's constants the
    physics decoder renders with: a loaded model decodes exactly as the saved one."""
    from vaemap.model import save_checkpoint

    torch.manual_seed(1)
    prof = 250 + 50 * torch.rand(32, 1, 24)
    lat = torch.linspace(-60, 60, 32)
    norm = Normaliser.fit(prof.numpy(), lat.numpy(), "latitude")
    model = _physics_vae(norm_bands=int(norm.norm_lat.numel())).eval()
    model.physics.set_normaliser(norm)
    save_checkpoint(tmp_path / "model.pt", model, norm, nside=4, channels=[7], config={})
    loaded, _, ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["arch"]["decoder"] == "physics"
    cond = torch.stack([torch.sin(torch.deg2rad(lat)), torch.cos(torch.deg2rad(lat))], 1)
    z = torch.randn(32, 7)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z, cond), model.decode(z, cond))


def test_refinement_fits_the_physical_latents_of_a_rendered_profile():
    """Profiles the physics term renders from known latents: Gauss-Newton from a
    perturbed start lowers every pixel's cost and lands near the known latents
    (the prior pulls a little), and the Laplace σ is finite and below the
    prior's 1 where the data constrain."""
    from vaemap.model import refine_physical

    torch.manual_seed(3)
    model = _physics_vae().eval()
    with torch.no_grad():  # an untrained emulator's conduction scaled to ~10⁸ K⁴, a
        last = model.physics.emulator.net[-1]  # few % of these columns' mean T⁴ (at
        last.weight.mul_(0.01)  # its random scale of one it would swing T⁴ by all of
        last.bias.mul_(0.01)  # it, and the clamp at 15 K would flatten the fit)
    lat = torch.linspace(-50, 50, 16)
    truth = 0.5 * torch.randn(16, 5)
    with torch.no_grad():
        x = model.physics(truth, lat)
    weight = torch.ones_like(x)
    variance = torch.full_like(x, 1e-4)
    start = torch.cat([truth + 0.3 * torch.randn(16, 5), torch.randn(16, 2)], 1)
    with torch.no_grad():
        z, logvar = refine_physical(model, start, x, weight, variance, lat, iterations=10)

    def cost(zv):
        r = model.physics(zv, lat) - x
        return 0.5 * (r**2 / variance).flatten(1).sum(1) + 0.5 * (zv**2).sum(1)

    with torch.no_grad():
        assert (cost(z) <= cost(start[:, :5]) + 1e-6).all()
        # (an untrained emulator is flat in places: judged on the typical pixel)
        assert float((z - truth).abs().median()) < 0.1 * float(
            (start[:, :5] - truth).abs().median())
    assert z.shape == (16, 5) and torch.isfinite(logvar).all() and (logvar < 0).any()


def test_encode_refuses_a_physics_model_trained_with_other_priors():
    """The priors say what a physical latent means: a model trained under others
    is refused with the file and the fix, never read as other parameter values."""
    from vaemap import encode
    from vaemap.forward_model import PRIORS

    current = {k: list(v) for k, v in PRIORS.items()}
    encode._check_priors({"emulator": {"priors": current}}, "model.pt")
    older = {"emulator": {"priors": {**current, "rock_fraction": [0.005, 1.5]}}}
    with pytest.raises(ValueError, match=r"model\.pt: trained with the physical priors .*"
                                         r"retrain it \(vaemap train\)"):
        encode._check_priors(older, "model.pt")
    with pytest.raises(ValueError, match=r"trained with the physical priors None"):
        encode._check_priors({}, "model.pt")
