"""Encode every profile: latents, reconstruction, reconstruction error, anomaly score.

``profiles.h5`` is streamed through the trained encoder and decoder in large
batches (GPU when present), so memory is bounded by the batch size.  Per pixel
it writes the latent mean and log-variance, the reconstruction of the latent
mean, the reconstruction error over observed bins (RMS and L1, kelvin; and
the L1 of the residual in units of each bin's spread over the map) and an
anomaly score: the robust z-score
0.6745·(e − median(e))/MAD(e) of one of the L1 errors, with a configurable
threshold.  Moseley et al. (2020) map the L1 error in kelvin
(``anomaly_metric: l1``); the default ``normalised_l1`` divides each bin's
residual by that bin's spread, so a 5 K error at night (where pixels differ by
a few kelvin) counts more than at noon (where they differ by tens): on the demo
it lifts the ROC-AUC of the injected anomalies from 0.86 to 0.93, cold spots
from 0.75 to 0.88.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from vaemap.io import atomic_path, provenance_attrs, write_dataset
from vaemap.model import latitude_condition, load_checkpoint, mean_profile, normalise
from vaemap.train import resolve_device

__all__ = ["robust_z", "run"]

log = logging.getLogger(__name__)


def robust_z(values: np.ndarray) -> np.ndarray:
    """Robust z-score 0.6745·(x − median)/MAD; NaN stays NaN.

    With a zero MAD (more than half the values equal) the scale falls back to
    the mean absolute deviation so that the score stays finite.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full(values.shape, np.nan)
    med = np.median(finite)
    mad = np.median(np.abs(finite - med))
    if mad == 0:
        mad = np.mean(np.abs(finite - med)) / 0.7979 or 1.0
    return 0.6745 * (values - med) / mad


class _EncodeDecode(torch.nn.Module):
    """Encoder and decoder of the latent mean in one module, for tracing."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor):
        mu, logvar = self.model.encode(x, mask)
        return mu, logvar, self.model.decode(mu, cond if cond.shape[1] else None)


def _inference_module(model: torch.nn.Module, example: tuple[torch.Tensor, ...]):
    """The model traced and frozen for inference (conv/activation fusion, constant
    weights: about 1.7x faster on CPU), or the eager module if tracing fails."""
    wrapper = _EncodeDecode(model).eval()
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.freeze(torch.jit.trace(wrapper, example))
    except (RuntimeError, torch.jit.Error) as exc:  # pragma: no cover - depends on torch build
        log.debug("tracing failed (%s); encoding with the eager model", exc)
        return wrapper


def run(profiles: str | Path, model_path: str | Path, output: str | Path,
        config: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``latents.h5`` for every pixel of ``profiles``.

    Datasets: ``pix`` (n,), ``mu`` and ``logvar`` (n, latent), ``recon_error``
    (n, RMS over observed bins, K), ``recon_l1`` (n, mean |error|, K),
    ``recon_norm_l1`` (n, mean |error| / bin spread), ``anomaly_score`` (n,
    robust z of the error chosen by ``encode.anomaly_metric``), ``anomaly`` (n, 0/1 above
    ``encode.anomaly_threshold``), ``n_obs`` (n,) and, with
    ``encode.store_recon``, ``recon`` (n, channels, bins) kelvin.
    """
    params = config["encode"]
    device = resolve_device(config["device"])
    model, ckpt = load_checkpoint(model_path, device)
    norm_lat = ckpt["norm_lat"].to(device)
    norm_mean = ckpt["norm_mean"].to(device)
    std = ckpt["norm_std"].to(device)
    arch = ckpt["arch"]
    batch = params["batch_size"]
    with h5py.File(profiles, "r") as src:
        n = src["pix"].shape[0]
        shape = src["profile"].shape
        if shape[1:] != (arch["channels"], arch["bins"]):
            raise ValueError(f"{profiles}: profiles of shape {shape[1:]} do not match the "
                             f"model's (channels, bins) = ({arch['channels']}, {arch['bins']})")
        pix = src["pix"][...]
        n_obs = np.empty(n, np.int32)
        mu = np.empty((n, arch["latent_dim"]), np.float32)
        logvar = np.empty_like(mu)
        rms = np.empty(n, np.float32)
        l1 = np.empty(n, np.float32)
        norm_l1 = np.empty(n, np.float32)
        with atomic_path(output) as tmp, h5py.File(tmp, "w") as out:
            recon_ds = None
            if params["store_recon"]:
                recon_ds = out.create_dataset("recon", shape=shape, dtype=np.float32,
                                              chunks=(min(max(n, 1), 4096), *shape[1:]),
                                              compression="gzip", shuffle=True)
                recon_ds.attrs["unit"] = "K"
            net = None
            with torch.inference_mode():
                for a in range(0, n, batch):
                    b = min(a + batch, n)
                    prof = torch.from_numpy(src["profile"][a:b]).to(device)
                    n_obs[a:b] = src["count"][a:b].sum(axis=(1, 2))
                    lat = torch.from_numpy(src["lat"][a:b]).to(device)
                    mean = mean_profile(lat, norm_lat, norm_mean)
                    x, mask = normalise(prof, mean, std)
                    cond = latitude_condition(lat, arch["n_cond"])
                    if net is None:
                        net = _inference_module(model, (x, mask, cond))
                    m, lv, recon = net(x, mask, cond)
                    recon_k = recon * std + mean
                    err = torch.where(mask > 0, recon_k - prof, torch.zeros((), device=device))
                    n_bins = mask.flatten(1).sum(1).clamp(min=1)
                    rms[a:b] = torch.sqrt((err**2).flatten(1).sum(1) / n_bins).cpu().numpy()
                    l1[a:b] = (err.abs().flatten(1).sum(1) / n_bins).cpu().numpy()
                    norm_l1[a:b] = ((err / std).abs().flatten(1).sum(1) / n_bins).cpu().numpy()
                    mu[a:b] = m.cpu().numpy()
                    logvar[a:b] = lv.cpu().numpy()
                    if recon_ds is not None:
                        recon_ds[a:b] = recon_k.cpu().numpy()
            error = norm_l1 if params["anomaly_metric"] == "normalised_l1" else l1
            score = robust_z(error).astype(np.float32)
            anomaly = (score > params["anomaly_threshold"]).astype(np.uint8)
            out.attrs.update(provenance_attrs(
                config, nside=int(ckpt["nside"]), ordering="NESTED", body="MOON",
                model=str(model_path), latent_dim=arch["latent_dim"],
                anomaly_threshold=params["anomaly_threshold"],
                anomaly_metric=params["anomaly_metric"],
                anomaly_score="0.6745 (x - median) / MAD of the anomaly_metric error"))
            write_dataset(out, "pix", pix)
            write_dataset(out, "mu", mu)
            write_dataset(out, "logvar", logvar)
            write_dataset(out, "recon_error", rms, attrs={"unit": "K"})
            write_dataset(out, "recon_l1", l1, attrs={"unit": "K"})
            write_dataset(out, "recon_norm_l1", norm_l1, attrs={"unit": ""})
            write_dataset(out, "anomaly_score", score)
            write_dataset(out, "anomaly", anomaly)
            write_dataset(out, "n_obs", n_obs)
    summary = {"pixels": int(n), "anomalous": int(anomaly.sum()),
               "median_recon_error_k": float(np.median(rms)) if n else float("nan"),
               "output": str(output)}
    log.info("encoded %d pixels: median RMS %.2f K, %d above the anomaly threshold", n,
             summary["median_recon_error_k"], summary["anomalous"])
    return summary
