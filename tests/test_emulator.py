"""The thermal-model emulator: its exact parts against vaemap.thermal and
vaemap.instrument, and a small trained emulator against the solver."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vaemap import emulator, forward_model, instrument, thermal


def _inputs(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = emulator.sample_columns(n, rng)
    cols["declination"] = rng.uniform(-1.5, 1.5, n)
    cols["sun_distance"] = rng.uniform(0.985, 1.015, n)
    return cols


def _torch(cols):
    return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in cols.items()}


def test_equilibrium_matches_the_thermal_models_geometry_and_albedo():
    """The exact part of the emulator is the solver's own illumination: facet
    incidence (thermal.cos_incidence with facet_geometry) and albedo law."""
    cols = _inputs(300)
    times = forward_model.substep_times(24, 2)
    t4 = forward_model.equilibrium_t4(_torch(cols), torch.as_tensor(times, dtype=torch.float64))
    slope, azimuth = thermal.facet_geometry(cols["slope_ew"], cols["slope_ns"])
    props = thermal.RegolithProperties()
    expected = np.empty((300, times.size))
    for j, t in enumerate(times):
        mu = thermal.cos_incidence(cols["lat"], (t - 12.0) * 15.0, slope, azimuth,
                                   cols["declination"])
        inc = np.degrees(np.arccos(np.clip(mu, 0, 1)))
        absorbed = ((1 - thermal.albedo_at_incidence(cols["albedo"], inc, props))
                    * thermal.SOLAR_CONSTANT / cols["sun_distance"] ** 2 * mu)
        expected[:, j] = absorbed / (props.emissivity * thermal.SIGMA_SB)
    np.testing.assert_allclose(t4.numpy(), expected, rtol=1e-9, atol=1e-3)
    assert (expected == 0).any() and (expected > 0).any()  # both night and day


def test_channel_mixing_matches_the_instrument_model():
    """Interpolated in local time, mixed by radiance, turned into brightness
    temperatures and averaged per bin in torch, as instrument.mix_footprint and
    brightness_temperature (numpy) do it, to 0.02 K."""
    rng = np.random.default_rng(0)
    steps, bins, sub = forward_model.SOLVER_STEPS_PER_DAY, 12, 3
    t_reg = rng.uniform(40, 390, (50, steps))
    t_rock = rng.uniform(60, 370, (50, steps))
    f = rng.uniform(0, 0.5, 50)
    got = forward_model.channel_profiles(torch.as_tensor(t_reg, dtype=torch.float32),
                                    torch.as_tensor(t_rock, dtype=torch.float32),
                                    torch.as_tensor(f, dtype=torch.float32), [4, 7, 9], bins,
                                    sub)
    times = forward_model.substep_times(bins, sub)
    grid = np.append(forward_model.grid_times(), 24.0)

    def at(t):  # periodic linear interpolation, as the simulator reads its tables
        return np.stack([np.interp(times, grid, np.append(row, row[0])) for row in t])

    for j, c in enumerate([4, 7, 9]):
        radiance = instrument.mix_footprint((at(t_reg), at(t_rock)),
                                            (1 - f[:, None], f[:, None]), c)
        tb = instrument.brightness_temperature(radiance, c).reshape(50, bins, sub).mean(2)
        np.testing.assert_allclose(got[:, j].numpy(), tb, atol=0.02)
    with pytest.raises(ValueError, match="channel 1: the emulator models the thermal"):
        forward_model.channel_profiles(torch.zeros(1, steps), torch.zeros(1, steps), torch.zeros(1),
                                  [1], 2)


def test_reported_temperature_is_the_instruments_censored_mean():
    """With noise, a bin is the mean brightness temperature of the measurements
    the instrument reports, as the simulator makes them (instrument.observe:
    Gaussian noise of the channel's NER on the radiance, no temperature where
    it is not positive): within 1 K of a Monte Carlo of 400,000 measurements
    from the scene far below detection to far above it; 30 K and more above
    the scene at the floor of channel 3, and equal to the noise-free
    temperature (0.05 K) well above it."""
    rng = np.random.default_rng(0)
    scenes = np.array([20.0, 80.0, 120.0, 150.0, 200.0, 300.0])
    for c in (3, 7):
        table = forward_model._BandTable(c)
        radiance = instrument.band_radiance(scenes, c)
        got = forward_model.reported_temperature(
            table, torch.as_tensor(radiance, dtype=torch.float32)[:, None, None],
            instrument.NER[c]).numpy()[:, 0]
        for k, r in enumerate(radiance):
            _, tb = instrument.observe(np.full(400_000, r), c, rng)
            assert abs(got[k] - np.nanmean(tb)) < 1.0, (c, scenes[k], got[k], np.nanmean(tb))
        assert abs(got[-1] - scenes[-1]) < 0.05
    floor = forward_model.reported_temperature(
        forward_model._BandTable(3), torch.as_tensor(instrument.band_radiance(80.0, 3),
                                                     dtype=torch.float32).view(1, 1, 1),
        instrument.NER[3])
    assert floor.item() > 110.0  # a night scene at 80 K is reported at the floor


def test_noisy_channel_profiles_are_differentiable_and_equal_above_detection():
    """channel_profiles with noise: by day channel 7 equals the noise-free render
    (0.1 K), at night channel 3 lies far above it; the gradient reaches the
    temperatures."""
    hours = forward_model.grid_times()
    day = 380 * np.clip(np.cos(np.radians((hours - 12) * 15)), 0, None) ** 0.25
    t = torch.as_tensor(np.maximum(day, 90.0)[None].repeat(2, 0), dtype=torch.float32)
    t.requires_grad_(True)
    f = torch.tensor([0.0, 0.1])
    clean = forward_model.channel_profiles(t, t + 10, f, [3, 7], 24)
    noisy = forward_model.channel_profiles(t, t + 10, f, [3, 7], 24, noise=1.0)
    noon, night = 12, 0
    assert abs(noisy[0, 1, noon] - clean[0, 1, noon]) < 0.1
    assert noisy[0, 0, night] > clean[0, 0, night] + 20
    noisy.sum().backward()
    assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_a_facet_sees_the_sun_as_its_equivalent_level_surface():
    """facet_equivalent: a tilted facet's incidence equals a level surface's at the
    equivalent latitude and shifted local time, wherever both are lit."""
    cols = _inputs(400, seed=3)
    lat_eq, shift = forward_model.facet_equivalent(_torch(cols))
    slope, azimuth = thermal.facet_geometry(cols["slope_ew"], cols["slope_ns"])
    lit = 0
    for t in np.linspace(0, 24, 49):
        mu = thermal.cos_incidence(cols["lat"], (t - 12) * 15, slope, azimuth,
                                   cols["declination"])
        mu_eq = thermal.cos_incidence(lat_eq.numpy(), (t + shift.numpy() - 12) * 15, 0.0, 0.0,
                                      cols["declination"])
        both = (mu > 0) & (mu_eq > 0)
        np.testing.assert_allclose(mu[both], mu_eq[both], atol=1e-9)
        lit += both.sum()
    assert lit > 5000
    east = cols["slope_ew"] > 5
    assert (shift.numpy()[east] > 0).all()  # facing east: its morning comes early


@pytest.fixture(scope="module")
def small_emulator(tmp_path_factory):
    """An emulator trained on 600 solved columns of 24 bins: small and quick, far
    from the product's accuracy, enough to test that it learned the solver."""
    root = tmp_path_factory.mktemp("emulator")
    config = {"emulator": {"columns": 600, "seasons": 3, "substeps": 2, "width": 128,
                           "layers": 3, "epochs": 100, "batch_size": 64,
                           "learning_rate": 0.003, "held_out": 0.15, "seed": 0},
              "profiles": {"bins": 24}, "device": "cpu"}
    result = emulator.run(root / "emulator.pt", config, accuracy_json=root / "accuracy.json")
    return root, config, result


def test_a_small_emulator_learns_the_solver(small_emulator):
    root, _, result = small_emulator
    acc = json.loads((root / "accuracy.json").read_text())
    assert acc["rms_k"] == result["rms_k"] and acc["columns"] == 90
    # Unseen columns: the emulator must beat predicting each time step's mean
    # temperature (errs by ~40-70 K) by far, for regolith and rock.
    data = emulator.solve_training_set(90, seasons=3, seed=99)
    model, ckpt = forward_model.load_emulator(root / "emulator.pt")
    with torch.no_grad():
        reg, rock = model({k: torch.as_tensor(v, dtype=torch.float32) for k, v in data.items()})
    for emulated, solved in ((reg, data["t_regolith"]), (rock, data["t_rock"])):
        err = emulated.numpy() - solved
        naive = solved - solved.mean(0)
        assert np.sqrt(np.mean(err**2)) < 0.5 * np.sqrt(np.mean(naive**2))
    assert acc["rms_by_channel_k"]["7"] < 15.0
    assert ckpt["physics"] == thermal.source_fingerprint()
    assert set(acc["median_noise_k"]) == {str(c) for c in instrument.THERMAL_CHANNELS}


def test_an_emulator_of_other_physics_or_corrupt_weights_is_refused(small_emulator, tmp_path):
    root, _, _ = small_emulator
    ckpt = torch.load(root / "emulator.pt", weights_only=True)
    other = dict(ckpt, physics="xxh3_128:0")
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(forward_model.EmulatorError, match=r"other\.pt: learned another thermal"):
        forward_model.load_emulator(tmp_path / "other.pt")
    state = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    first = next(iter(state))
    state[first].view(-1)[0] += 1.0
    torch.save(dict(ckpt, state_dict=state), tmp_path / "corrupt.pt")
    with pytest.raises(forward_model.EmulatorError, match=r"corrupt\.pt: the weights do not match"):
        forward_model.load_emulator(tmp_path / "corrupt.pt")
    torch.save({"format": 1}, tmp_path / "model.pt")
    with pytest.raises(forward_model.EmulatorError,
                       match=r"model\.pt: not a vaemap thermal emulator"):
        forward_model.load_emulator(tmp_path / "model.pt")
    # an emulator of an earlier layout (its T⁴ in other units) is refused, not misread
    torch.save(dict(ckpt, format=forward_model.EMULATOR_FORMAT - 1), tmp_path / "old.pt")
    with pytest.raises(forward_model.EmulatorError, match=r"old\.pt: not a vaemap thermal "
                       r"emulator of format \d+ .*run vaemap emulator"):
        forward_model.load_emulator(tmp_path / "old.pt")


def test_physical_latents_stay_inside_the_emulators_ranges():
    """Any latent, however far out, maps inside the parameter's range; the map is
    monotone, the latent 0 is the prior's median, and the delta-method σ matches
    the spread of sampled parameters for a narrow posterior."""
    z = torch.linspace(-30, 30, 601)[:, None].repeat(1, 5)
    values, _ = forward_model.parameters_from_latents(z)
    for name in forward_model.PHYSICAL_LATENTS:
        lo, hi, _ = forward_model.PARAMETERS[name]
        v = values[name]
        assert (v >= lo).all() and (v <= hi).all() and (torch.diff(v) >= 0).all()
    middle, _ = forward_model.parameters_from_latents(torch.zeros(1, 5))
    for name, (median, _) in forward_model.PRIORS.items():
        assert float(middle[name]) == pytest.approx(median, abs=1e-5)
    mu, logvar = torch.full((1, 5), 0.3), torch.full((1, 5), np.log(0.01**2))
    _, sigma = forward_model.parameters_from_latents(mu, logvar)
    draws, _ = forward_model.parameters_from_latents(mu + 0.01 * torch.randn(20000, 5))
    for name in forward_model.PHYSICAL_LATENTS:
        assert float(draws[name].std()) == pytest.approx(float(sigma[name]), rel=0.05)


def test_physics_profiles_are_differentiable_in_the_latents(small_emulator):
    """Latents → parameters → emulator → channel profiles: gradients reach every
    physical latent (what a physics decoder trains through), and a higher H (a
    fluffier top layer, less thermal inertia) cools the night, as the cold spots do."""
    root, _, _ = small_emulator
    model, _ = forward_model.load_emulator(root / "emulator.pt")
    z = torch.zeros(2, 5, requires_grad=True)
    with torch.no_grad():
        z[1, 1] = 2.0  # the second column: larger H
    params, _ = forward_model.parameters_from_latents(z)
    prof = forward_model.physics_profiles(model, params, torch.tensor([10.0, 10.0]), [7], 24)
    assert prof.shape == (2, 1, 24) and torch.isfinite(prof).all()
    prof.sum().backward()
    assert (z.grad.abs() > 0).all()
    night = [0, 1, 2, 3, 21, 22, 23]
    assert (prof[1, 0, night] < prof[0, 0, night]).all()


def test_solar_channels_see_the_simulators_reflectance(small_emulator):
    """A solar channel's physics is the simulator's own observation without noise:
    instrument.observe_reflectance of the normal albedo under thermal.cos_incidence
    on the facet, averaged per bin; physics_profiles puts it among the thermal
    channels in the order asked, gradients reaching albedo and both slopes."""
    cols = _inputs(200, seed=5)
    bins, sub = 24, 3
    got = forward_model.reflectance_profiles(_torch(cols), bins, sub).numpy()
    times = forward_model.substep_times(bins, sub)
    slope, azimuth = thermal.facet_geometry(cols["slope_ew"], cols["slope_ns"])
    mu = np.stack([thermal.cos_incidence(cols["lat"], (t - 12.0) * 15.0, slope, azimuth,
                                         cols["declination"]) for t in times], axis=1)
    _, refl = instrument.observe_reflectance(cols["albedo"][:, None], mu, 1,
                                             np.random.default_rng(0), noise_scale=0.0)
    np.testing.assert_allclose(got, refl.reshape(200, bins, sub).mean(2), atol=1e-9)
    assert (got == 0).any() and (got > 0.05).any()  # night and a bright noon

    root, _, _ = small_emulator
    model, _ = forward_model.load_emulator(root / "emulator.pt")
    z = torch.zeros(2, 5, requires_grad=True)
    with torch.no_grad():
        z[1, 0] = 1.5  # the second column: brighter
        z[:, 2] = 0.4  # both tilted to the east
    params, _ = forward_model.parameters_from_latents(z)
    lat = torch.tensor([20.0, 20.0])
    both = forward_model.physics_profiles(model, params, lat, [7, 1, 8], bins)
    alone = forward_model.physics_profiles(model, params, lat, [7, 8], bins)
    torch.testing.assert_close(both[:, [0, 2]], alone)  # thermal channels unchanged
    day = both[:, 1, 8:16]
    ratio = params["albedo"][1] / params["albedo"][0]
    torch.testing.assert_close(day[1], day[0] * ratio)  # reflectance ∝ albedo
    both[:, 1].sum().backward()
    assert (z.grad[:, [0, 2]].abs() > 0).all()
    with pytest.raises(ValueError, match=r"channels \[10\]: not Diviner channels"):
        forward_model.physics_profiles(model, params, lat, [7, 10], bins)
