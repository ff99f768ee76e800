"""Train the convolutional β-VAE on ``profiles.h5``.

The whole profile set is moved to the device once (no per-item DataLoader);
minibatches are index slices.  Validation pixels are whole NESTED parent
tiles, so neighbours of a training pixel do not leak into validation.  On CPU
the run is seeded and deterministic; on CUDA it uses bf16 autocast.  After
every epoch the training state is written, so ``--resume`` continues an
interrupted run with the same step count and optimiser state.

:class:`Trainer` has the usual shape: prepare (constructor), :meth:`~Trainer.resume`,
:meth:`~Trainer.train_epoch`, :meth:`~Trainer.validate`,
:meth:`~Trainer.save_state`, :meth:`~Trainer.fit` (the loop with early
stopping) and :meth:`~Trainer.finish` (best weights, final metrics, the
checkpoint).  The model, its normaliser, its loss and the checkpoint format
belong to :mod:`vaemap.model`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vaemap.figures import pyplot, save_figure
from vaemap.healpix import parent_pix
from vaemap.instrument import channel_unit, night_bins
from vaemap.io import atomic_path
from vaemap.model import (
    PRESETS,
    CheckpointError,
    Normaliser,
    ProfileVAE,
    VAEConfig,
    channel_weights,
    fixed_noise_logvar,
    initial_noise_logvar,
    latitude_condition,
    physics_regularisers,
    resolve_device,
    sample_latent,
    save_checkpoint,
    torch_load,
    torch_save,
    total_correlation,
    vae_loss,
)
from vaemap.products import PROFILES, open_product

__all__ = ["Trainer", "load_profiles", "run", "spatial_split"]

log = logging.getLogger(__name__)

#: Profiles per batch when validating (memory only; the result does not depend on it).
VALIDATION_BATCH = 4096


#: Profiles read at a time when drawing a sample (bounds memory, not the result).
SAMPLE_READ_ROWS = 65_536
_PROFILE_KEYS = ("pix", "lat", "lon", "profile", "count")


def load_profiles(path: str | Path, max_pixels: int = 0, seed: int = 0) -> dict[str, Any]:
    """Read ``profiles.h5`` into memory: pix, lat, lon, profile (n, C, B) kelvin,
    count, the file's nside and channels, and ``total`` (profiles in the file).

    With ``max_pixels`` > 0 and more profiles than that, a random sample of
    ``max_pixels`` of them (drawn with ``seed``, kept in pixel order) is read a
    block at a time, so memory follows the sample, not the file.

    Raises ProductError/ValueError naming the file for a file that is not a
    whole profiles product, an empty or all-masked set, or NaN in observed bins.
    """
    with open_product(path, PROFILES) as h5:
        total = h5["pix"].shape[0]
        if 0 < max_pixels < total:
            rows = np.sort(np.random.default_rng(seed).choice(total, max_pixels, replace=False))
            parts: dict[str, list[np.ndarray]] = {k: [] for k in _PROFILE_KEYS}
            for a in range(0, total, SAMPLE_READ_ROWS):
                lo, hi = np.searchsorted(rows, [a, a + SAMPLE_READ_ROWS])
                if hi > lo:
                    for k in _PROFILE_KEYS:
                        parts[k].append(h5[k][a:a + SAMPLE_READ_ROWS][rows[lo:hi] - a])
            data = {k: np.concatenate(v) for k, v in parts.items()}
        else:
            data = {k: h5[k][...] for k in _PROFILE_KEYS}
        data["nside"] = int(h5.attrs["nside"])
        data["channels"] = [int(c) for c in json.loads(h5.attrs["channels"])]
        data["total"] = int(total)
    n = data["pix"].size
    if n == 0:
        raise ValueError(f"{path}: no profiles (every pixel was rejected by the coverage "
                         f"rule, or the input had no accepted samples)")
    observed = np.isfinite(data["profile"])
    if not observed.any():
        raise ValueError(f"{path}: all {n} profiles are fully masked (no observed bin)")
    if np.any(observed != (data["count"] > 0)):
        raise ValueError(f"{path}: profile has NaN in bins with observations (count > 0); "
                         f"the file is corrupt")
    return data


def spatial_split(pix: np.ndarray, nside: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean validation mask choosing whole NESTED parent tiles.

    Tiles are the parents at nside/8 (at least nside 1, i.e. 12 base tiles when
    the map is coarse), so a validation pixel's neighbours are mostly validation
    pixels too.
    """
    if val_fraction <= 0:
        return np.zeros(pix.size, dtype=bool)
    parent_nside = max(1, nside // 8)
    tiles = parent_pix(pix, nside, parent_nside)
    unique = np.unique(tiles)
    rng = np.random.default_rng(seed)
    n_val = max(1, round(val_fraction * unique.size))
    val_tiles = rng.choice(unique, size=min(n_val, unique.size - 1) or 1, replace=False)
    return np.isin(tiles, val_tiles)


def _fingerprint(path: str | Path) -> str:
    """Size and modification time of a file: enough to tell a changed input."""
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _arch(config: Mapping[str, Any], channels: list[int], bins: int,
          physics: Mapping[str, Any] | None = None) -> VAEConfig:
    """The model's architecture; ``physics`` holds the physics decoder's extra
    fields (the emulator's width and layers, the normaliser's bands)."""
    m = config["model"]
    arch = {"width": m["width"], "depth": m["depth"], "latent_dim": m["latent_dim"],
            "n_cond": 2 if m["condition_on_latitude"] else 0, "layout": m["layout"],
            "activation": m["activation"], "likelihood": m["likelihood"],
            "decoder": m["decoder"], "channel_ids": tuple(int(c) for c in channels)}
    arch.update(PRESETS[m["preset"]])
    arch.update(physics or {})
    return VAEConfig(channels=len(channels), bins=bins, **arch)


class _Split:
    """Model inputs of one set of pixels, on the device: normalised profiles,
    masks, observation counts per bin (the likelihood's variance follows them),
    decoder conditions."""

    def __init__(self, x, mask, count, cond, index):
        self.x, self.mask, self.count, self.cond = x[index], mask[index], count[index], \
            cond[index]
        self.size = int(index.numel())


class Trainer:
    """Trains one β-VAE on a profiles file and writes its checkpoint.

    The constructor prepares everything (data on the device, split,
    normaliser, model, optimiser); :meth:`run` is resume + fit + finish.
    """

    def __init__(self, profiles: str | Path, output: str | Path, config: Mapping[str, Any],
                 *, emulator: str | Path | None = None, progress: bool = True):
        self.profiles, self.output = Path(profiles), Path(output)
        self.state_path = self.output.with_name(self.output.name + ".ckpt")
        self.tcfg, self.mcfg = config["train"], config["model"]
        self.seed = int(config["seed"])
        self.progress = progress
        self.device = device = resolve_device(config["device"])
        torch.manual_seed(self.seed)
        if device.type == "cpu":
            torch.set_num_threads(self.tcfg["threads"])
            torch.use_deterministic_algorithms(True)

        data = load_profiles(self.profiles, self.tcfg["max_pixels"], self.seed)
        self.profiles_total = data["total"]
        self.nside, self.channels = data["nside"], data["channels"]
        bins = data["profile"].shape[2]
        val = spatial_split(data["pix"], self.nside, self.tcfg["val_fraction"], self.seed)
        train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
        if train_idx.size == 0:
            raise ValueError(f"{profiles}: no training pixels left after the validation split")
        if val_idx.size == 0:
            val_idx = train_idx  # val_fraction 0: report on the training set
        self.normaliser = Normaliser.fit(data["profile"][train_idx], data["lat"][train_idx],
                                         self.mcfg["normalisation"])
        physics, self.emulator = None, None
        if self.mcfg["decoder"] == "physics":
            if emulator is None:
                raise ValueError("model.decoder: physics needs the thermal model's emulator "
                                 "(vaemap train --emulator emulator.pt; vaemap emulator "
                                 "writes it)")
            from vaemap.forward_model import load_emulator, priors_record

            emu, emu_ckpt = load_emulator(emulator, device)
            # the priors are part of what the physical latents mean: recorded, so
            # a vaemap with other priors refuses the model instead of misreading it
            self.emulator = {"path": str(emulator),
                             "weights_checksum": emu_ckpt["weights_checksum"],
                             "priors": priors_record()}
            physics = {"emulator_width": emu_ckpt["arch"]["width"],
                       "emulator_layers": emu_ckpt["arch"]["layers"],
                       "norm_bands": int(self.normaliser.norm_lat.numel()),
                       "solar_physics": True,
                       "physics_noise": float(config["model"]["physics_noise"])}
        self.arch = _arch(config, list(self.channels), bins, physics)
        self.model = ProfileVAE(self.arch).to(device)
        if self.model.physics is not None:
            self.model.physics.emulator.load_state_dict(emu.state_dict())
            self.model.physics.set_normaliser(self.normaliser.to(device))
        log.info("training on %s: %d train / %d validation pixels (of %d profiles), %d "
                 "parameters", device, train_idx.size, val_idx.size, self.profiles_total,
                 sum(p.numel() for p in self.model.parameters()))

        norm = self.normaliser.to(device)
        lat = torch.from_numpy(data["lat"]).to(device)
        x, mask = norm.to_model(torch.from_numpy(data["profile"]).to(device), lat)
        count = torch.from_numpy(data["count"].astype(np.float32)).to(device)
        cond = latitude_condition(lat, self.arch.n_cond)
        self.std = norm.std
        self.train_set = _Split(x, mask, count, cond, torch.from_numpy(train_idx).to(device))
        self.val_set = _Split(x, mask, count, cond, torch.from_numpy(val_idx).to(device))
        # The learned likelihood starts from the training profiles' own bin-to-bin
        # scatter (an Adam step moves a log-variance by ~lr, so a start two orders
        # of magnitude off would cost most of the epochs); the fixed one is set.
        tr = self.train_set
        self.channel_weight = channel_weights(self.channels,
                                              self.mcfg["channel_weighting"]).to(device)
        self.model.noise.initialise(
            initial_noise_logvar(tr.x, tr.mask, tr.count) if self.model.noise.learned else
            fixed_noise_logvar(norm.std, self.mcfg["noise_k"], self.mcfg["floor_k"]))

        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.tcfg["lr"])
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt,
                                                            gamma=self.tcfg["lr_decay"])
        self.gen = torch.Generator().manual_seed(self.seed)
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.step, self.stale = 0, 0, 0
        self.best, self.best_state = math.inf, None
        self.seconds = 0.0
        # The training state is resumed only by the same run; train.epochs may
        # grow, so that a finished run can also be continued for more epochs.
        resumable = {k: v for k, v in self.tcfg.items() if k != "epochs"}
        self.run_key = json.dumps({"arch": self.arch.to_dict(), "model": self.mcfg,
                                   "train": resumable, "seed": self.seed,
                                   "profiles": _fingerprint(profiles),
                                   "emulator": self.emulator},
                                  sort_keys=True, default=str)

    # -- resume and save ---------------------------------------------------------------

    def resume(self) -> bool:
        """Continue from the state file of an interrupted run of the same configuration.

        A state file of another run is ignored with a warning; one that cannot
        be read is set aside (renamed ``*.corrupt``) with a warning, so it never
        blocks a rerun. Returns whether the run was resumed.
        """
        if not self.state_path.exists():
            log.info("no training state at %s: starting afresh", self.state_path)
            return False
        try:
            state = torch_load(self.state_path, self.device)
        except CheckpointError as exc:
            aside = self.state_path.with_name(self.state_path.name + ".corrupt")
            self.state_path.replace(aside)
            log.warning("%s; moved it to %s and starting afresh", exc, aside)
            return False
        if state.get("run_key") != self.run_key:
            log.warning("%s was written for another configuration or input; starting afresh",
                        self.state_path)
            return False
        self.model.load_state_dict(state["state_dict"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generator"])
        # The reparameterisation noise comes from the global generators.
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history, self.step = state["history"], state["step"]
        self.start_epoch, self.best, self.stale = state["epoch"] + 1, state["best"], \
            state["stale"]
        self.best_state = state["best_state"]
        self.seconds = float(state.get("seconds", 0.0))
        log.info("resumed from %s at epoch %d (step %d)", self.state_path, self.start_epoch,
                 self.step)
        return True

    def save_state(self, epoch: int) -> None:
        """Write the full training state after ``epoch`` (atomically)."""
        cuda = self.device.type == "cuda"
        torch_save({"arch": self.arch.to_dict(), "state_dict": self.model.state_dict(),
                    "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if cuda else [],
                    "history": self.history, "step": self.step, "epoch": epoch,
                    "best": self.best, "stale": self.stale, "best_state": self.best_state,
                    "seconds": self.seconds, "run_key": self.run_key}, self.state_path)

    # -- one epoch -----------------------------------------------------------------------

    def beta_at(self, epoch: int) -> float:
        """β of ``epoch``: ramped up linearly over ``train.kl_warmup_epochs``."""
        beta, warm = float(self.mcfg["beta"]), self.tcfg["kl_warmup_epochs"]
        return beta * min(1.0, (epoch + 1) / warm) if warm else beta

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training pixels in random order; returns the mean loss."""
        model, tr, batch = self.model, self.train_set, self.tcfg["batch_size"]
        model.train()
        beta = self.beta_at(epoch)
        tc_weight = float(self.mcfg["tc_weight"])
        use_amp = self.device.type == "cuda"
        perm = torch.randperm(tr.size, generator=self.gen).to(self.device)
        total, count = 0.0, 0
        for a in range(0, perm.numel(), batch):
            idx = perm[a:a + batch]
            x, mask, cond = tr.x[idx], tr.mask[idx], tr.cond[idx]
            weight, variance = mask * self.channel_weight, model.noise.variance(tr.count[idx])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                mu, logvar = model.encode(x, mask)
                physics, network = model.decode_parts(sample_latent(mu, logvar), cond)
                recon = network if physics is None else physics + network
            loss, _ = vae_loss(recon, mu, logvar, x, weight, variance, beta=beta,
                               tc_weight=tc_weight)
            if physics is not None:
                terms = physics_regularisers(model, physics, network, x, weight, cond,
                                             variance)
                for name, value in terms.items():
                    loss = loss + float(self.mcfg["physics_regularisers"][name]) * value
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if physics is not None:
                # one NaN gradient would poison the weights and only surface later,
                # inside the emulator: stop here, at the step, with the epoch
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
                if not torch.isfinite(norm):
                    raise FloatingPointError(f"the gradient became {float(norm)} at epoch "
                                             f"{epoch}, step {self.step}; lower train.lr")
            self.opt.step()
            self.step += 1
            total += loss.item() * idx.numel()
            count += idx.numel()
        self.sched.step()
        return total / max(count, 1)

    def validate(self) -> dict[str, Any]:
        """Validation terms: loss (the training objective NLL + β·KL + γ·TC, nats per
        profile), recon (NLL), KL per latent, TC, RMS in kelvin over observed bins,
        active units.

        TC is the minibatch estimate averaged over batches of ``train.batch_size``
        (the estimator depends on the batch size, so the training one), drawn
        from a generator reseeded on every call: successive epochs are compared
        on the same draw, and validating consumes no training randomness.
        """
        model, va = self.model, self.val_set
        beta, tc_weight = float(self.mcfg["beta"]), float(self.mcfg["tc_weight"])
        model.eval()
        nll_sum, kl_sum, sq_k, n_obs, mus, logvars = 0.0, None, 0.0, 0.0, [], []
        with torch.no_grad():
            for a in range(0, va.size, VALIDATION_BATCH):
                sl = slice(a, a + VALIDATION_BATCH)
                recon, mu, logvar = model(va.x[sl], va.mask[sl], va.cond[sl], sample=False)
                recon = recon.float()
                _, terms = vae_loss(recon, mu, logvar, va.x[sl],
                                    va.mask[sl] * self.channel_weight,
                                    model.noise.variance(va.count[sl]), beta=beta,
                                    tc_weight=0.0)
                nll_sum += terms["nll"].sum().item()
                kl = terms["kl"].sum(dim=0)
                kl_sum = kl if kl_sum is None else kl_sum + kl
                sq_k += (((recon - va.x[sl]) * self.std) ** 2 * va.mask[sl]).sum().item()
                n_obs += va.mask[sl].sum().item()
                mus.append(mu.float())
                logvars.append(logvar.float())
            tc = self._validation_tc(torch.cat(mus), torch.cat(logvars)) if tc_weight else 0.0
        n = max(va.size, 1)
        kl_latent = (kl_sum / n).cpu().numpy()
        mu_all = torch.cat(mus)
        variance = (mu_all.var(dim=0).cpu().numpy() if mu_all.shape[0] > 1
                    else np.zeros(mu_all.shape[1]))
        recon_term = nll_sum / n
        return {"loss": recon_term + beta * float(kl_latent.sum()) + tc_weight * tc,
                "recon": recon_term, "kl": kl_latent, "tc": tc,
                "rms_k": math.sqrt(sq_k / max(n_obs, 1.0)),
                "active_units": int((variance > 0.01).sum())}

    def _validation_tc(self, mu: torch.Tensor, logvar: torch.Tensor) -> float:
        """Mean minibatch TC estimate over the validation posteriors, nats."""
        gen = torch.Generator(device=mu.device).manual_seed(self.seed)
        batch, values = self.tcfg["batch_size"], []
        for a in range(0, mu.shape[0], batch):
            if mu.shape[0] - a < 2 and values:
                break  # a lone profile has no batch to estimate q(z) from
            values.append(total_correlation(mu[a:a + batch], logvar[a:a + batch], gen).item())
        return float(np.mean(values))

    def sigma_summary(self) -> dict[str, float]:
        """The likelihood's σ of one observation per channel, median over the
        local-time bins and its night (18-6 h) and day medians, kelvin (channels
        1-2: reflectance): ``sigma_ch7``, ``sigma_night_ch7``, ``sigma_day_ch7``."""
        sigma = self.model.noise.sigma_k(self.std).cpu().numpy()
        night = night_bins(sigma.shape[1])
        out = {}
        for c, s in zip(self.channels, sigma, strict=True):
            out[f"sigma_ch{c}"] = float(np.median(s))
            out[f"sigma_night_ch{c}"] = float(np.median(s[night]))
            out[f"sigma_day_ch{c}"] = float(np.median(s[~night]))
        return out

    # -- the loop ------------------------------------------------------------------------

    def fit(self) -> None:
        """Train from the current epoch to ``train.epochs``, stopping early after
        ``train.patience`` epochs without a better validation loss."""
        epochs = self.tcfg["epochs"]
        bar = tqdm(range(self.start_epoch, epochs), desc="train", unit="epoch",
                   disable=not self.progress, initial=self.start_epoch, total=epochs)
        for epoch in bar:
            t0 = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            ev = self.validate()
            self.seconds += time.perf_counter() - t0
            if not math.isfinite(ev["loss"]):
                raise FloatingPointError(f"validation loss became {ev['loss']} at epoch "
                                         f"{epoch}; lower train.lr")
            row = {"epoch": epoch, "step": self.step, "lr": self.sched.get_last_lr()[0],
                   "beta": self.beta_at(epoch), "train_loss": train_loss,
                   "val_loss": ev["loss"], "val_recon": ev["recon"], "val_tc": ev["tc"],
                   "val_rms_k": ev["rms_k"],
                   "active_units": ev["active_units"]}
            row.update({f"kl_{i}": float(k) for i, k in enumerate(ev["kl"])})
            row.update(self.sigma_summary())
            self.history.append(row)
            bar.set_postfix(val_rms_k=f"{ev['rms_k']:.2f}", active=ev["active_units"])
            if ev["loss"] < self.best - 1e-6:
                self.best, self.stale = ev["loss"], 0
                self.best_state = {k: v.detach().clone()
                                   for k, v in self.model.state_dict().items()}
            else:
                self.stale += 1
            self.save_state(epoch)
            if self.stale >= self.tcfg["patience"]:
                log.info("early stop at epoch %d: no improvement for %d epochs", epoch,
                         self.stale)
                break

    def finish(self, metrics_csv: str | Path | None = None,
               curve_png: str | Path | None = None,
               sigma_png: str | Path | None = None) -> dict[str, Any]:
        """Keep the best epoch's weights, write ``model.pt`` (and the per-epoch CSV,
        the loss curve and the likelihood's σ per bin when asked); returns the
        final validation metrics."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        final = self.validate()
        batch = self.tcfg["batch_size"]
        # Steps taken in this process's epochs only, so a resumed run is not inflated.
        metrics = {"val_loss": final["loss"], "val_recon": final["recon"], "val_tc": final["tc"],
                   "val_rms_k": final["rms_k"], "active_units": final["active_units"],
                   "kl_per_latent": [float(k) for k in final["kl"]],
                   "epochs": len(self.history), "steps": self.step,
                   "train_pixels": self.train_set.size, "val_pixels": self.val_set.size,
                   "profiles_total": self.profiles_total,
                   "seconds": self.seconds,
                   "profiles_per_s": self.step * batch / max(self.seconds, 1e-9),
                   "device": str(self.device),
                   "likelihood": self.arch.likelihood, **self.sigma_summary()}
        save_checkpoint(self.output, self.model, self.normaliser, nside=self.nside,
                        channels=self.channels,
                        config={"model": dict(self.mcfg), "train": dict(self.tcfg),
                                "seed": self.seed},
                        **({"emulator": self.emulator} if self.emulator else {}),
                        metrics=metrics, history=self.history)
        if metrics_csv:
            _write_metrics(self.history, Path(metrics_csv))
        if curve_png:
            _plot_curve(self.history, Path(curve_png))
        if sigma_png:
            _plot_sigma(self.model.noise, self.std, self.channels, Path(sigma_png))
        log.info("trained %d epochs in %.1f s: validation RMS %.2f K, %d active latents",
                 len(self.history), self.seconds, final["rms_k"], final["active_units"])
        return metrics


def _plot_curve(history: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss per profile (NLL + β·KL + γ·TC, nats)")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(epochs, [h["val_rms_k"] for h in history], color="C2")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation RMS on observed bins (K)")
    fig.suptitle("β-VAE training")
    save_figure(fig, path, dpi=110)


def _plot_sigma(noise, std: torch.Tensor, channels: list[int], path: Path) -> None:
    """The learned likelihood's σ per local-time bin, one panel per channel: one
    observation, four, and the floor (what averaging cannot remove)."""
    plt = pyplot()
    one = noise.sigma_k(std, 1.0).cpu().numpy()
    four = noise.sigma_k(std, 4.0).cpu().numpy()
    floor = noise.sigma_k(std, math.inf).cpu().numpy()
    bins = one.shape[1]
    hours = (np.arange(bins) + 0.5) * 24.0 / bins
    cols = min(len(channels), 3)
    rows = math.ceil(len(channels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False,
                             constrained_layout=True)
    for ax, c, a, b, f in zip(axes.flat, channels, one, four, floor, strict=False):
        ax.plot(hours, a, label="one observation")
        ax.plot(hours, b, label="mean of four")
        ax.plot(hours, f, ls="--", color="0.4", label="floor")
        ax.set_xlim(0, 24)
        ax.set_xticks(range(0, 25, 6))
        ax.set_yscale("log")
        ax.set_title(f"channel {c}")
        ax.set_xlabel("local time (h)")
        ax.set_ylabel(f"σ ({channel_unit(c)})")
    for ax in list(axes.flat)[len(channels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    kind = "learned" if noise.learned else "fixed"
    fig.suptitle(f"likelihood: σ of a profile bin ({kind})")
    save_figure(fig, path, dpi=110)


def _write_metrics(history: list[dict[str, Any]], path: Path) -> None:
    fields = list(history[0].keys()) if history else []
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})


def run(
    profiles: str | Path,
    output: str | Path,
    config: Mapping[str, Any],
    *,
    metrics_csv: str | Path | None = None,
    curve_png: str | Path | None = None,
    sigma_png: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    emulator: str | Path | None = None,
) -> dict[str, Any]:
    """Train a β-VAE on ``profiles`` and write the checkpoint ``output`` (model.pt).

    ``model.pt`` is written by :func:`vaemap.model.save_checkpoint` (see there
    for its keys) and read back with :func:`vaemap.model.load_checkpoint`.
    The full training state (optimiser, scheduler, random generators) is kept
    in ``<output>.ckpt`` after every epoch; with ``resume`` a run interrupted
    at any epoch continues exactly where it stopped, and a finished run can be
    continued to a larger ``train.epochs``. ``emulator`` is the thermal model's
    emulator (``emulator.pt``) a physics decoder renders with (``model.decoder:
    physics``). Returns the final validation metrics.
    """
    trainer = Trainer(profiles, output, config, emulator=emulator, progress=progress)
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer.finish(metrics_csv, curve_png, sigma_png)
