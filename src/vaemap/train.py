"""Train the convolutional β-VAE on ``profiles.h5``.

The whole profile set is moved to the device once (no per-item DataLoader);
minibatches are index slices.  Validation pixels are whole NESTED parent
tiles, so neighbours of a training pixel do not leak into validation.  On CPU
the run is seeded and deterministic; on CUDA it uses bf16 autocast.  After
every epoch a checkpoint is written, so ``--resume`` continues an interrupted
run with the same step count and optimiser state.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from vaemap.healpix import parent_pix
from vaemap.io import atomic_path
from vaemap.model import (
    PRESETS,
    ProfileVAE,
    VAEConfig,
    bin_weights,
    kl_per_latent,
    latitude_condition,
    masked_sse,
    mean_profile,
    normalise,
    total_correlation,
)

__all__ = ["load_profiles", "resolve_device", "run", "spatial_split"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device.

    Raises RuntimeError when CUDA is asked for but not present.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {name} requested but CUDA is not available "
                           f"(use device: auto or cpu)")
    return torch.device(name)


def load_profiles(path: str | Path) -> dict[str, Any]:
    """Read ``profiles.h5`` into memory: pix, lat, lon, profile (n, C, B) kelvin, count.

    Raises ValueError for an empty or all-masked set, or NaN-only channels.
    """
    with h5py.File(path, "r") as h5:
        data = {k: h5[k][...] for k in ("pix", "lat", "lon", "profile", "count")}
        data["nside"] = int(h5.attrs["nside"])
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


LATITUDE_BAND_DEG = 5.0


def _normalisation(profile: np.ndarray, lat: np.ndarray, mode: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalisation constants from the training pixels.

    Returns ``(norm_lat (K,), mean (K, channels, bins), std (channels, bins))``,
    kelvin. ``global``: one mean and std; ``per_bin``: each local-time bin
    standardised; ``latitude``: mean profiles in 5° bands of |latitude|
    (interpolated between band centres, see :func:`vaemap.model.mean_profile`)
    and the per-bin spread around them — insolation, which latitude sets, is
    then removed before the model sees the data.
    """
    shape = profile.shape[1:]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins
        g_mean = np.nanmean(profile, axis=(0, 2), keepdims=True)[0]  # (C, 1)
        g_std = np.nanstd(profile, axis=(0, 2), keepdims=True)[0]
        bin_mean = np.nanmean(profile, axis=0)
        # Bins no training pixel observed borrow the channel's global value.
        bin_mean = np.where(np.isfinite(bin_mean), bin_mean, g_mean)
        if mode == "global":
            norm_lat = np.zeros(1)
            mean = np.full((1, *shape), np.nanmean(profile))
            std = np.full(shape, np.nanstd(profile))
        elif mode == "per_bin":
            norm_lat = np.zeros(1)
            mean = bin_mean[None]
            std = np.nanstd(profile, axis=0)
            std = np.where(np.isfinite(std) & (std > 1e-3), std, g_std)
        else:
            edges = np.arange(0.0, 90.0 + LATITUDE_BAND_DEG, LATITUDE_BAND_DEG)
            band = np.clip(np.digitize(np.abs(lat), edges) - 1, 0, edges.size - 2)
            means, centres = [], []
            for k in range(edges.size - 1):
                members = profile[band == k]
                if members.shape[0] == 0:
                    continue
                m = np.nanmean(members, axis=0)
                means.append(m)
                centres.append(float(np.mean(np.abs(lat[band == k]))))
            mean = np.stack(means)
            # Bins a band never observed: interpolate from the other bands.
            for c in range(shape[0]):
                for b in range(shape[1]):
                    col = mean[:, c, b]
                    ok = np.isfinite(col)
                    col[~ok] = (np.interp(np.array(centres)[~ok], np.array(centres)[ok],
                                          col[ok]) if ok.any() else bin_mean[c, b])
            norm_lat = np.array(centres)
            fitted = mean_profile(torch.from_numpy(np.asarray(lat, np.float32)),
                                  torch.from_numpy(norm_lat.astype(np.float32)),
                                  torch.from_numpy(mean.astype(np.float32))).numpy()
            std = np.nanstd(profile - fitted, axis=0)
            std = np.where(np.isfinite(std) & (std > 0.5), std, 0.5)
    return (norm_lat.astype(np.float32), np.asarray(mean, np.float32),
            np.maximum(std, 1e-3).astype(np.float32))


def _arch(config: Mapping[str, Any], channels: int, bins: int) -> VAEConfig:
    m = config["model"]
    arch = {"width": m["width"], "depth": m["depth"], "latent_dim": m["latent_dim"],
            "n_cond": 2 if m["condition_on_latitude"] else 0, "layout": m["layout"],
            "activation": m["activation"]}
    arch.update(PRESETS[m["preset"]])
    return VAEConfig(channels=channels, bins=bins, **arch)


def _evaluate(model: ProfileVAE, x, mask, weight, cond, std, beta: float, batch: int
              ) -> dict[str, Any]:
    """Validation loss terms: recon (weighted SSE / 2), KL per latent, RMS in
    kelvin over observed bins, active units."""
    model.eval()
    sse_sum, kl_sum, sq_k, n_obs, mus = 0.0, None, 0.0, 0.0, []
    with torch.no_grad():
        for a in range(0, x.shape[0], batch):
            sl = slice(a, a + batch)
            recon, mu, logvar = model(x[sl], mask[sl], cond[sl], sample=False)
            recon = recon.float()
            sse_sum += 0.5 * masked_sse(recon, x[sl], weight[sl]).sum().item()
            kl = kl_per_latent(mu.float(), logvar.float()).sum(dim=0)
            kl_sum = kl if kl_sum is None else kl_sum + kl
            sq_k += (((recon - x[sl]) * std) ** 2 * mask[sl]).sum().item()
            n_obs += mask[sl].sum().item()
            mus.append(mu.float())
    n = max(x.shape[0], 1)
    kl_latent = (kl_sum / n).cpu().numpy()
    mu_all = torch.cat(mus)
    variance = mu_all.var(dim=0).cpu().numpy() if mu_all.shape[0] > 1 else np.zeros(
        mu_all.shape[1])
    recon_term = sse_sum / n
    return {
        "loss": recon_term + beta * float(kl_latent.sum()),
        "recon": recon_term,
        "kl": kl_latent,
        "rms_k": math.sqrt(sq_k / max(n_obs, 1.0)),
        "active_units": int((variance > 0.01).sum()),
    }


def _plot_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss per profile (NLL + β·KL, nats)")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(epochs, [h["val_rms_k"] for h in history], color="C2")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation RMS on observed bins (K)")
    fig.suptitle("β-VAE training")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


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
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a β-VAE on ``profiles`` and write the checkpoint ``output`` (model.pt).

    ``model.pt`` is a plain dict loadable with ``torch.load(..., weights_only=True)``:
    ``state_dict``, ``arch`` (:class:`VAEConfig` fields), ``norm_lat`` (K,)
    degrees, ``norm_mean`` (K, channels, bins) and ``norm_std`` (channels, bins)
    kelvin (see :func:`vaemap.model.mean_profile`), ``normalisation``, ``config`` (the
    model and train sections), ``metrics`` (final validation numbers) and
    ``history`` (per epoch).  The full training state (optimiser, scheduler,
    random generator) is kept in ``<output>.ckpt`` after every epoch; with
    ``resume`` a run interrupted at any epoch continues exactly where it stopped,
    and a finished run can be continued to a larger ``train.epochs``.
    """
    output = Path(output)
    tcfg, mcfg = config["train"], config["model"]
    seed = int(config["seed"])
    device = resolve_device(config["device"])
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.set_num_threads(tcfg["threads"])
        torch.use_deterministic_algorithms(True)

    data = load_profiles(profiles)
    _, channels, bins = data["profile"].shape
    val = spatial_split(data["pix"], data["nside"], tcfg["val_fraction"], seed)
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    if train_idx.size == 0:
        raise ValueError(f"{profiles}: no training pixels left after the validation split")
    if val_idx.size == 0:
        val_idx = train_idx  # val_fraction 0: report on the training set
    norm_lat, mean, std = _normalisation(data["profile"][train_idx], data["lat"][train_idx],
                                         config["profiles"]["normalisation"])
    arch = _arch(config, channels, bins)
    model = ProfileVAE(arch).to(device)
    log.info("training on %s: %d train / %d validation pixels, %d parameters", device,
             train_idx.size, val_idx.size, sum(p.numel() for p in model.parameters()))

    prof_t = torch.from_numpy(data["profile"]).to(device)
    lat_t = torch.from_numpy(data["lat"]).to(device)
    std_t = torch.from_numpy(std).to(device)
    mean_t = mean_profile(lat_t, torch.from_numpy(norm_lat).to(device),
                          torch.from_numpy(mean).to(device))
    x, mask = normalise(prof_t, mean_t, std_t)
    weight = bin_weights(torch.from_numpy(data["count"].astype(np.int32)).to(device), std_t,
                         mcfg["noise_k"], mcfg["floor_k"])
    cond = latitude_condition(lat_t, arch.n_cond)
    tr = torch.from_numpy(train_idx).to(device)
    va = torch.from_numpy(val_idx).to(device)
    x_tr, m_tr, w_tr, c_tr = x[tr], mask[tr], weight[tr], cond[tr]
    x_va, m_va, w_va, c_va = x[va], mask[va], weight[va], cond[va]

    opt = torch.optim.Adam(model.parameters(), lr=tcfg["lr"])
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=tcfg["lr_decay"])
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    start_epoch, step, best, best_state, stale = 0, 0, math.inf, None, 0
    ckpt_path = output.with_name(output.name + ".ckpt")
    # A checkpoint is resumed only by the same run; train.epochs may grow, so
    # that a finished run can also be continued for more epochs.
    resumable = {k: v for k, v in tcfg.items() if k != "epochs"}
    run_key = json.dumps({"arch": arch.to_dict(), "model": mcfg, "train": resumable,
                          "seed": seed,
                          "normalisation": config["profiles"]["normalisation"],
                          "profiles": _fingerprint(profiles)}, sort_keys=True, default=str)
    state = None
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if state.get("run_key") != run_key:
            log.warning("%s was written for another configuration or input; starting afresh",
                        ckpt_path)
            state = None
    elif resume:
        log.info("no checkpoint at %s: starting afresh", ckpt_path)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        # The reparameterisation noise comes from the global generators.
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, step = state["history"], state["step"]
        start_epoch, best, stale = state["epoch"] + 1, state["best"], state["stale"]
        best_state = state["best_state"]
        log.info("resumed from %s at epoch %d (step %d)", ckpt_path, start_epoch, step)

    use_amp = device.type == "cuda"
    batch = tcfg["batch_size"]
    beta = float(mcfg["beta"])
    tc_weight = float(mcfg["tc_weight"])
    warm = tcfg["kl_warmup_epochs"]
    bar = tqdm(range(start_epoch, tcfg["epochs"]), desc="train", unit="epoch",
               disable=not progress, initial=start_epoch, total=tcfg["epochs"])
    t0 = time.perf_counter()
    for epoch in bar:
        model.train()
        beta_eff = beta * min(1.0, (epoch + 1) / warm) if warm else beta
        perm = torch.randperm(train_idx.size, generator=gen).to(device)
        total, count = 0.0, 0
        for a in range(0, perm.numel(), batch):
            idx = perm[a:a + batch]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                recon, mu, logvar = model(x_tr[idx], m_tr[idx], c_tr[idx])
            nll = 0.5 * masked_sse(recon.float(), x_tr[idx], w_tr[idx])
            kl = kl_per_latent(mu.float(), logvar.float()).sum(dim=1)
            loss = (nll + beta_eff * kl).mean()
            if tc_weight:
                loss = loss + tc_weight * total_correlation(mu.float(), logvar.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += loss.item() * idx.numel()
            count += idx.numel()
        sched.step()
        ev = _evaluate(model, x_va, m_va, w_va, c_va, std_t, beta, 4096)
        if not math.isfinite(ev["loss"]):
            raise FloatingPointError(f"validation loss became {ev['loss']} at epoch {epoch}; "
                                     f"lower train.lr")
        row = {"epoch": epoch, "step": step, "lr": sched.get_last_lr()[0], "beta": beta_eff,
               "train_loss": total / max(count, 1), "val_loss": ev["loss"],
               "val_recon": ev["recon"], "val_rms_k": ev["rms_k"],
               "active_units": ev["active_units"]}
        row.update({f"kl_{i}": float(k) for i, k in enumerate(ev["kl"])})
        history.append(row)
        bar.set_postfix(val_rms_k=f"{ev['rms_k']:.2f}", active=ev["active_units"])
        if ev["loss"] < best - 1e-6:
            best, stale = ev["loss"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        with atomic_path(ckpt_path) as tmp:
            torch.save({"arch": arch.to_dict(), "state_dict": model.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                        "cuda_rng": (torch.cuda.get_rng_state_all()
                                     if device.type == "cuda" else []),
                        "history": history, "step": step,
                        "epoch": epoch, "best": best, "stale": stale,
                        "best_state": best_state, "run_key": run_key}, tmp)
        if stale >= tcfg["patience"]:
            log.info("early stop at epoch %d: no improvement for %d epochs", epoch, stale)
            break
    elapsed = time.perf_counter() - t0

    if best_state is not None:
        model.load_state_dict(best_state)
    final = _evaluate(model, x_va, m_va, w_va, c_va, std_t, beta, 4096)
    metrics = {"val_loss": final["loss"], "val_recon": final["recon"],
               "val_rms_k": final["rms_k"], "active_units": final["active_units"],
               "kl_per_latent": [float(k) for k in final["kl"]], "epochs": len(history),
               "steps": step, "train_pixels": int(train_idx.size),
               "val_pixels": int(val_idx.size), "seconds": elapsed,
               "profiles_per_s": step * batch / max(elapsed, 1e-9), "device": str(device)}
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": arch.to_dict(),
        "norm_lat": torch.from_numpy(norm_lat),
        "norm_mean": torch.from_numpy(mean),
        "norm_std": torch.from_numpy(std),
        "normalisation": config["profiles"]["normalisation"],
        "nside": data["nside"],
        "config": {"model": dict(mcfg), "train": dict(tcfg), "seed": seed},
        "metrics": metrics,
        "history": history,
    }
    with atomic_path(output) as tmp:
        torch.save(ckpt, tmp)
    if metrics_csv:
        _write_metrics(history, Path(metrics_csv))
    if curve_png:
        _plot_curve(history, Path(curve_png))
    log.info("trained %d epochs in %.1f s: validation RMS %.2f K, %d active latents",
             len(history), elapsed, final["rms_k"], final["active_units"])
    return metrics
