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
a few kelvin) counts more than at noon (where they differ by tens), which lifts
the cold spots' detection most. With several channels it averages every
observed bin of every channel, each in units of its own spread, so channels in
kelvin and in reflectance (1-2) combine on one scale; ``recon_error_channel``
keeps each channel's RMS in its own unit.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from vaemap.healpix import pix_to_lonlat, sorted_row_range, tile_pixel_range
from vaemap.instrument import night_mask
from vaemap.io import (
    RowWriter,
    atomic_hdf5,
    open_tile_parts,
    provenance_attrs,
    write_dataset,
)
from vaemap.model import (
    ANOMALY_ERRORS,
    channel_weights,
    latitude_condition,
    load_checkpoint,
    reconstruction_errors,
    refine_physical,
    resolve_device,
)
from vaemap.products import LATENTS, PROFILES, TRUTH_FACTORS, open_product
from vaemap.stats import BandScales, anomaly_z, streamed_median

__all__ = ["merge", "run"]

log = logging.getLogger(__name__)


class _EncodeDecode(torch.nn.Module):
    """Encoder and decoder of the latent mean in one module, for tracing."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor):
        """``(mu, logvar, recon, physics)``: a physics decoder's physics term alone
        as ``physics``; the whole reconstruction again for the network decoder."""
        mu, logvar = self.model.encode(x, mask)
        physics, network = self.model.decode_parts(mu, cond if cond.shape[1] else None)
        if physics is None:
            return mu, logvar, network, network
        return mu, logvar, physics + network, physics


def _inference_module(model: torch.nn.Module, example: tuple[torch.Tensor, ...]):
    """The model traced and frozen for inference (conv/activation fusion, constant
    weights: about 1.7x faster on CPU), or the eager module if tracing fails."""
    wrapper = _EncodeDecode(model).eval()
    if getattr(model, "physics", None) is not None:
        # the emulator's band tables are made on first use, which a trace would
        # bake in as constants; its MLP gains little from fusion anyway
        return wrapper
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.freeze(torch.jit.trace(wrapper, example))
    except (RuntimeError, torch.jit.Error) as exc:  # pragma: no cover - depends on torch build
        log.debug("tracing failed (%s); encoding with the eager model", exc)
        return wrapper


#: Per-pixel datasets of latents.h5 that tile parts carry too (all but ``recon``
#: and the anomaly score, which needs every pixel).
_PIXEL_DATASETS = tuple(LATENTS.layout(part=True, latent=0, channels=0))
#: Those a physics decoder adds: its physical parameters, their σ and the error
#: of its physics term alone.
_PHYSICS_DATASETS = (*TRUTH_FACTORS, *(f"{name}_sigma" for name in TRUTH_FACTORS),
                     "physics_error")


def run(profiles: str | Path, model_path: str | Path, output: str | Path,
        config: Mapping[str, Any], *, tile: str | None = None) -> dict[str, Any]:
    """Write ``latents.h5`` for every pixel of ``profiles`` (or one tile's part of it).

    Datasets: ``pix`` (n,), ``mu`` and ``logvar`` (n, latent), ``recon_error``
    (n, RMS over observed bins, K), ``recon_l1`` (n, mean |error|, K),
    ``recon_norm_l1`` (n, mean |error| / bin spread), ``recon_z`` (n, mean |error|
    / the bin's calibrated σ, the model's likelihood), ``recon_z_night`` (n, the
    same over the thermal channels' night bins), ``anomaly_score`` (n,
    robust z of the error chosen by ``encode.anomaly_metric``), ``anomaly`` (n, 0/1 above
    ``encode.anomaly_threshold``), ``n_obs`` (n,) and, with
    ``encode.store_recon``, ``recon`` (n, channels, bins) kelvin. A physics
    decoder's model (``model.decoder: physics``) adds its physical parameters
    of the latent mean, named as the truth factors (``h_param`` m, ``albedo``,
    ``slope_ew`` and ``slope_ns`` deg, ``rock_fraction``), each with its
    posterior σ (``h_param_sigma`` ...), and ``physics_error``, the anomaly
    metric's error of the physics term alone at the encoder's latents; with
    ``encode.score_residual: physics`` (the default) the anomaly score is that
    error's robust z: what the thermal model cannot explain. With
    ``encode.refine_iterations`` the physical latents (in ``mu`` and ``logvar``
    too) are fitted to each pixel from the encoder's
    (:func:`vaemap.model.refine_physical`), their σ the Laplace approximation's;
    ``physics_error`` stays the encoder's: a per-pixel fit explains much of an
    anomaly away as unusual ground, where the encoder, trained on the whole
    Moon, leaves it in the residual (cold spots' ROC-AUC on the validation
    Moon: 0.981 of the encoder's physics residual, 0.920 of the fitted one).

    With ``tile="NSIDE/INDEX"`` only the pixels inside that NESTED tile are
    encoded and the file is a *part* without the anomaly score (a robust z
    needs the median and MAD over every pixel): :func:`merge` combines the
    parts into ``latents.h5``. This is how encoding scales out over many jobs.
    """
    params = config["encode"]
    device = resolve_device(config["device"])
    model, norm, ckpt = load_checkpoint(model_path, device)
    arch = ckpt["arch"]
    batch = params["batch_size"]
    # The profiles must be what the model was trained on: same pixels grid,
    # channels and bins (a model of another nside would label pixels wrongly).
    with open_product(profiles, PROFILES, nside=int(ckpt["nside"]), channels=ckpt["channels"],
                      bins=arch["bins"], verify=tile is None,
                      against=f"the model {model_path}") as src:
        lo, hi = 0, src["pix"].shape[0]
        if tile is not None:
            lo, hi = sorted_row_range(src["pix"],
                                      *tile_pixel_range(tile, int(src.attrs["nside"])))
        pix = src["pix"][lo:hi]
        n = pix.size
        shape = src["profile"].shape
        arrays = {"pix": pix, "mu": np.empty((n, arch["latent_dim"]), np.float32),
                  "logvar": np.empty((n, arch["latent_dim"]), np.float32),
                  "recon_error": np.empty(n, np.float32), "recon_l1": np.empty(n, np.float32),
                  "recon_norm_l1": np.empty(n, np.float32), "recon_z": np.empty(n, np.float32),
                  "recon_z_night": np.empty(n, np.float32),
                  "recon_error_channel": np.empty((n, shape[1]), np.float32),
                  "n_obs": src["n_obs"][lo:hi]}
        physical = arch.get("decoder", "network") == "physics"
        if physical:
            _check_priors(ckpt, model_path)
        refine = int(params["refine_iterations"]) if physical else 0
        if refine:  # the refinement counts the bins as training did
            weight = channel_weights(ckpt["channels"], ckpt["config"]["model"].get(
                "channel_weighting", "sqrt_kind")).to(device)
        if physical:
            arrays.update({k: np.empty(n, np.float32) for k in _PHYSICS_DATASETS})
        error_key = ANOMALY_ERRORS[params["anomaly_metric"]]
        night = torch.from_numpy(night_mask(ckpt["channels"], arch["bins"])).to(device)
        with atomic_hdf5(output) as out:
            recon_ds = _recon_dataset(out, (n, *shape[1:])) if params["store_recon"] else None
            net = None
            with torch.inference_mode():
                for a in range(0, n, batch):
                    b = min(a + batch, n)
                    prof = torch.from_numpy(src["profile"][lo + a:lo + b]).to(device)
                    count = torch.from_numpy(src["count"][lo + a:lo + b].astype(np.float32)
                                             ).to(device)
                    lat = torch.from_numpy(src["lat"][lo + a:lo + b]).to(device)
                    mean = norm.mean_at(lat)
                    x, mask = norm.to_model(prof, mean=mean)
                    cond = latitude_condition(lat, arch["n_cond"])
                    if net is None:
                        net = _inference_module(model, (x, mask, cond))
                    m, lv, recon, physics = net(x, mask, cond)
                    # each bin's calibrated σ (the model's own likelihood), kelvin
                    variance = model.noise.variance(count)
                    sigma_k = torch.sqrt(variance) * norm.std
                    if physical:
                        # the anomaly residual is the encoder's physics: a per-pixel
                        # fit explains an anomaly away (a cold spot as fluffier ground)
                        residual = norm.to_kelvin(physics, mean=mean) - prof
                        arrays["physics_error"][a:b] = reconstruction_errors(
                            residual, mask, norm.std, sigma_k, night)[error_key].cpu().numpy()
                    if refine:
                        # the physical latents fitted per pixel, from the encoder's
                        zp, lvp = refine_physical(model, m, x, mask * weight, variance, lat,
                                                  refine)
                        m, lv = torch.cat([zp, m[:, zp.shape[1]:]], 1), \
                            torch.cat([lvp, lv[:, zp.shape[1]:]], 1)
                        recon = model.decode(m, cond)
                    recon_k = norm.to_kelvin(recon, mean=mean)
                    for key, err in reconstruction_errors(recon_k - prof, mask, norm.std,
                                                          sigma_k, night).items():
                        arrays[key][a:b] = err.cpu().numpy()
                    if physical:
                        _physical_parameters(arrays, a, b, m, lv, params["sigma_scale"])
                    arrays["mu"][a:b] = m.cpu().numpy()
                    arrays["logvar"][a:b] = lv.cpu().numpy()
                    if recon_ds is not None:
                        recon_ds[a:b] = recon_k.cpu().numpy()
            attrs = {**LATENTS.identity(), "nside": int(ckpt["nside"]), "ordering": "NESTED",
                     "body": "MOON", "model": str(model_path), "latent_dim": arch["latent_dim"],
                     "channels": list(ckpt["channels"]),
                     "model_weights": ckpt["weights_checksum"],
                     "profiles_checksum": str(src.attrs["content_checksum"])}
            broken = ~(np.isfinite(arrays["mu"]).all(1) & np.isfinite(arrays["logvar"]).all(1))
            if broken.any():  # raised inside the atomic write: no latents.h5 appears
                raise ValueError(f"{model_path}: the model gives NaN or infinite latents for "
                                 f"{int(broken.sum())} of {n} pixels of {profiles}; retrain "
                                 f"it (vaemap train)")
            _write_pixel_datasets(out, arrays)
            if tile is None:
                _, anomaly = _write_score(out, arrays, params, int(ckpt["nside"]))
                out.attrs.update(provenance_attrs(config, **attrs,
                                                  **_score_attrs(params, _scored(arrays, params))))
            else:
                out.attrs.update(provenance_attrs(config, **attrs, part_of_tile=tile))
    if tile is not None:
        log.info("encoded tile %s: %d pixels (a part: run `vaemap merge-latents`)", tile, n)
        return {"pixels": int(n), "tile": tile, "output": str(output)}
    rms = arrays["recon_error"]
    return _summary(rms.size, int(anomaly.sum()),
                    float(np.median(rms)) if rms.size else float("nan"), output)


def _check_priors(ckpt: Mapping[str, Any], model_path: str | Path) -> None:
    """Refuse a physics model trained with other priors than this vaemap's: its
    latents would be read as other parameter values."""
    from vaemap.forward_model import priors_record

    trained = ckpt.get("emulator", {}).get("priors")
    current = priors_record()
    if trained != current:
        raise ValueError(f"{model_path}: trained with the physical priors {trained}, this "
                         f"vaemap's are {current}; retrain it (vaemap train)")


def _physical_parameters(arrays: Mapping[str, np.ndarray], a: int, b: int, mu: torch.Tensor,
                         logvar: torch.Tensor, sigma_scale: Mapping[str, float]) -> None:
    """Rows ``a:b`` of the physical parameters and their σ from the latents, each
    σ multiplied by its ``encode.sigma_scale`` factor (the calibration)."""
    from vaemap.forward_model import PHYSICAL_LATENTS, parameters_from_latents

    n_phys = len(PHYSICAL_LATENTS)
    values, sigmas = parameters_from_latents(mu[:, :n_phys].float(), logvar[:, :n_phys].float())
    for name in PHYSICAL_LATENTS:
        arrays[name][a:b] = values[name].cpu().numpy()
        arrays[f"{name}_sigma"][a:b] = sigmas[name].cpu().numpy() * sigma_scale.get(name, 1.0)


def _write_pixel_datasets(out: h5py.File, arrays: Mapping[str, np.ndarray]) -> None:
    units = LATENTS.units()
    for key in (*_PIXEL_DATASETS, *(k for k in _PHYSICS_DATASETS if k in arrays)):
        values = arrays[key].astype(LATENTS.fields[key].dtype, copy=False)
        write_dataset(out, key, values, attrs={"unit": units[key]} if key in units else None)


def _recon_dataset(out: h5py.File, shape: tuple[int, ...]) -> h5py.Dataset:
    ds = out.create_dataset("recon", shape=shape, dtype=np.float32,
                            chunks=(min(max(shape[0], 1), 4096), *shape[1:]),
                            compression="gzip", shuffle=True)
    ds.attrs["unit"] = "K"
    return ds


def _scored(arrays: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> str:
    """The dataset the anomaly score is the robust z of: the physics term's error
    where a physics decoder wrote one and ``encode.score_residual`` is physics."""
    if "physics_error" in arrays and params["score_residual"] == "physics":
        return "physics_error"
    return ANOMALY_ERRORS[params["anomaly_metric"]]


def _score_attrs(params: Mapping[str, Any], scored: str) -> dict[str, Any]:
    band = params["score_band_deg"]
    among = (f"the pixels within the same {band:g} deg band of |latitude|" if band > 0
             else "all pixels")
    of = "of the physics term alone " if scored == "physics_error" else ""
    return {"anomaly_threshold": params["anomaly_threshold"],
            "anomaly_metric": params["anomaly_metric"],
            "score_band_deg": band, "anomaly_scored": scored,
            "anomaly_score": f"0.6745 (x - median) / MAD of the anomaly_metric error {of}"
                             f"among {among}"}


def _write_score(out: h5py.File, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any],
                 nside: int) -> tuple[np.ndarray, np.ndarray]:
    """Robust z of the chosen error (over the pixels of each latitude band,
    ``encode.score_band_deg``), and the 0/1 anomaly flag."""
    error = arrays[_scored(arrays, params)]
    _, lat = pix_to_lonlat(nside, arrays["pix"])
    score = anomaly_z(error, lat, params["score_band_deg"]).astype(np.float32)
    anomaly = (score > params["anomaly_threshold"]).astype(np.uint8)
    write_dataset(out, "anomaly_score", score)
    write_dataset(out, "anomaly", anomaly)
    return score, anomaly


def _summary(pixels: int, anomalous: int, median_rms: float, output) -> dict[str, Any]:
    summary = {"pixels": int(pixels), "anomalous": int(anomalous),
               "median_recon_error_k": median_rms, "output": str(output)}
    log.info("encoded %d pixels: median RMS %.2f K, %d above the anomaly threshold",
             summary["pixels"], summary["median_recon_error_k"], summary["anomalous"])
    return summary


def merge(parts: Sequence[str | Path], output: str | Path, config: Mapping[str, Any]
          ) -> dict[str, Any]:
    """Combine tile parts written by ``run(..., tile=...)`` into one ``latents.h5``.

    Parts are ordered by their first pixel (tiles are NESTED ranges, so the
    result is pixel-sorted) and must not overlap. Everything streams: the
    datasets are copied part by part, a block of rows at a time, and the
    anomaly score's median and MAD per latitude band are computed exactly from
    the parts read one at a time (:class:`vaemap.stats.BandScales`), so the
    merge holds one part's small arrays, never the map's, and the result
    equals a single job's.
    """
    params = config["encode"]
    with open_tile_parts(parts, LATENTS, same=("nside", "latent_dim", "channels", "model",
                                               "model_weights", "profiles_checksum")) as opened:
        handles = [h for _, h in opened]
        ref = handles[0]
        nside = int(ref.attrs["nside"])
        # a physics decoder's datasets: in every part or in none (one model made them)
        physics = [k for k in _PHYSICS_DATASETS if any(k in h for h in handles)]
        lacking = [str(path) for path, h in opened if any(k not in h for k in physics)]
        if lacking:
            raise ValueError(f"tile parts {', '.join(lacking)} lack the physical parameters "
                             f"the other parts hold ({', '.join(physics)}); re-encode them")
        for path, h in opened:  # (open_tile_parts checked the order between parts)
            if np.any(np.diff(h["pix"][...]) <= 0):
                raise ValueError(f"{path}: its pixels are not sorted and unique")
        keys = (*_PIXEL_DATASETS, *physics)
        scored = _scored(dict.fromkeys(keys), params)
        units = LATENTS.units()
        block = 65536
        with atomic_hdf5(output) as out:
            writer = RowWriter(out, {k: (LATENTS.fields[k].dtype, ref[k].shape[1:])
                                     for k in keys}, units=units)
            for h in handles:
                for a in range(0, h["pix"].shape[0], block):
                    writer.append({k: h[k][a:a + block] for k in keys})
            if all("recon" in h for h in handles):
                recon = _recon_dataset(out, (writer.rows, *ref["recon"].shape[1:]))
                start = 0
                for h in handles:
                    for a in range(0, h["recon"].shape[0], block):
                        rows = h["recon"][a:a + block]
                        recon[start:start + len(rows)] = rows
                        start += len(rows)

            def errors(key):  # each part's (error, latitude), one part at a time
                return lambda: ((h[key][...], pix_to_lonlat(nside, h["pix"][...])[1])
                                for h in handles)

            scales = BandScales.of(errors(scored), params["score_band_deg"])
            marks = RowWriter(out, {"anomaly_score": (np.float32, ()),
                                    "anomaly": (np.uint8, ())})
            anomalous = 0
            for error, lat in errors(scored)():
                score = scales.score(error, lat).astype(np.float32)
                anomaly = (score > params["anomaly_threshold"]).astype(np.uint8)
                marks.append({"anomaly_score": score, "anomaly": anomaly})
                anomalous += int(anomaly.sum())
            attrs = {**LATENTS.identity(), "nside": nside,
                     "latent_dim": int(ref.attrs["latent_dim"]),
                     "channels": json.loads(ref.attrs["channels"]),
                     **{k: str(ref.attrs[k]) for k in ("ordering", "body", "model",
                                                       "model_weights", "profiles_checksum")
                        if k in ref.attrs}}
            out.attrs.update(provenance_attrs(
                config, **attrs, **_score_attrs(params, scored),
                merged_from=[str(path) for path, _ in opened]))
            rms = streamed_median(lambda: (h["recon_error"][...] for h in handles))
    return _summary(writer.rows, anomalous, rms, output)
