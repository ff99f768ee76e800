"""Per-pixel diurnal profiles: fold every pixel's observations on local time.

For each map pixel (NESTED, ``profiles.nside``) and selected channel, the
observations are averaged in ``bins`` cyclic local-time bins (default 120 ×
0.2 h, Moseley et al. 2020).  Empty bins stay masked (NaN mean, zero count):
the model's likelihood ignores them, so no gap filling is needed.  A pixel is
kept when it has at least ``min_observations`` and no cyclic gap between
observed bins longer than ``max_gap_h`` hours; rejected pixels are counted by
reason.

``samples.h5`` is sorted by pixel, so it is streamed in row chunks; the
observations of the last pixel in a chunk are carried into the next chunk,
which keeps memory bounded by the chunk size.  Binning is one ``np.bincount``
per chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vaemap.healpix import parent_pix, pix_to_lonlat
from vaemap.io import RowWriter, atomic_path, provenance_attrs, read_json_attr, write_dataset

__all__ = ["bin_edges", "max_cyclic_gap_h", "run"]

log = logging.getLogger(__name__)

READ_ROWS = 1 << 21


def bin_edges(bins: int) -> np.ndarray:
    """Local-time bin edges, hours, shape (bins + 1,), from 0 to 24."""
    return np.linspace(0.0, 24.0, bins + 1)


def max_cyclic_gap_h(observed: np.ndarray) -> np.ndarray:
    """Largest cyclic local-time gap, hours, between observed bins.

    ``observed`` is boolean, shape (n, bins).  The gap is the run of empty bins
    between two observed ones, wrapping through midnight; a pixel with fewer
    than two observed bins has a gap of 24 h.  Vectorised over pixels: each
    observed bin is paired with the next observed bin of its row.
    """
    n, bins = observed.shape
    gaps = np.full(n, 24.0)
    rows, cols = np.nonzero(observed)  # row-major: sorted by row, then bin
    if rows.size == 0:
        return gaps
    counts = np.bincount(rows, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nxt = np.empty_like(cols)
    nxt[:-1] = cols[1:]
    last = starts + counts - 1  # last observed bin of each row wraps to its first + bins
    has = counts > 0
    nxt[last[has]] = cols[starts[has]] + bins
    empty_run = nxt - cols - 1
    longest = np.zeros(n, dtype=np.int64)
    np.maximum.at(longest, rows, empty_run)
    ok = counts >= 2
    gaps[ok] = longest[ok] * (24.0 / bins)
    return gaps


def _iter_pixel_chunks(h5: h5py.File, nside_in: int, nside_out: int, rows: int
                       ) -> Iterator[dict[str, np.ndarray]]:
    """Yield row chunks of samples.h5 that never split a map pixel."""
    total = h5["pix"].shape[0]
    carry: dict[str, np.ndarray] | None = None
    start = 0
    while start < total:
        stop = min(start + rows, total)
        chunk = {k: h5[k][start:stop] for k in ("pix", "local_time", "tb", "channel")}
        chunk["map_pix"] = parent_pix(chunk.pop("pix"), nside_in, nside_out)
        if carry is not None:
            chunk = {k: np.concatenate([carry[k], chunk[k]]) for k in chunk}
        start = stop
        if start < total:
            last = chunk["map_pix"][-1]
            cut = int(np.searchsorted(chunk["map_pix"], last, side="left"))
            carry = {k: v[cut:] for k, v in chunk.items()}
            chunk = {k: v[:cut] for k, v in chunk.items()}
        else:
            carry = None
        if chunk["map_pix"].size:
            yield chunk


def _bin_chunk(chunk: Mapping[str, np.ndarray], channels: list[int], bins: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel, per-channel, per-bin sums and counts of one chunk."""
    pixels, rank = np.unique(chunk["map_pix"], return_inverse=True)
    ch_index = np.full(256, -1, dtype=np.int64)
    ch_index[np.asarray(channels)] = np.arange(len(channels))
    ch = ch_index[chunk["channel"]]
    use = ch >= 0
    b = np.floor(chunk["local_time"] / 24.0 * bins).astype(np.int64) % bins
    n_ch = len(channels)
    key = (rank[use] * n_ch + ch[use]) * bins + b[use]
    size = pixels.size * n_ch * bins
    sums = np.bincount(key, weights=chunk["tb"][use], minlength=size)
    counts = np.bincount(key, minlength=size)
    shape = (pixels.size, n_ch, bins)
    return pixels, sums.reshape(shape), counts.reshape(shape)


def run(samples: str | Path, output: str | Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """Build ``profiles.h5`` from ``samples.h5``.

    Output datasets: ``pix`` (n,) int64 NESTED at ``profiles.nside``; ``lat``,
    ``lon`` (n,) degrees; ``profile`` (n, channels, bins) float32 kelvin, NaN in
    empty bins; ``count`` (n, channels, bins) uint16; ``n_obs`` (n,) int32.
    Attributes: nside, bin edges (hours), channels, normalisation constants of
    the population (per bin and global), rejected pixel counts.

    Profiles are written as they are built and the population statistics are
    running sums, so memory is bounded by the read chunk, not by the map size.
    """
    params = config["profiles"]
    channels = list(config["ingest"]["channels"])
    nside, bins = params["nside"], params["bins"]
    n_ch = len(channels)
    rejected = {"too_few_observations": 0, "gap_too_large": 0}
    # Per (channel, bin): observed profiles, sum and sum of squares of their values (K).
    n_val, s1, s2 = (np.zeros((n_ch, bins)) for _ in range(3))
    with h5py.File(samples, "r") as h5, atomic_path(output) as tmp, \
            h5py.File(tmp, "w") as out:
        nside_in = int(h5.attrs["nside"])
        if nside_in < nside:
            raise ValueError(f"{samples}: samples nside {nside_in} is coarser than "
                             f"profiles.nside {nside}")
        source = {"path": str(samples), "rows": int(h5["pix"].shape[0]),
                  "rejected_rows": read_json_attr(h5.attrs, "rejected", {})}
        writer = RowWriter(out, {"pix": (np.int64, ()), "lat": (np.float32, ()),
                                 "lon": (np.float32, ()),
                                 "profile": (np.float32, (n_ch, bins)),
                                 "count": (np.uint16, (n_ch, bins)), "n_obs": (np.int32, ())},
                           chunk_rows=4096, units={"lat": "deg", "lon": "deg", "profile": "K"})
        for chunk in _iter_pixel_chunks(h5, nside_in, nside, READ_ROWS):
            pixels, sums, counts = _bin_chunk(chunk, channels, bins)
            n_obs = counts.sum(axis=(1, 2))
            observed_any = counts.sum(axis=1) > 0  # (n, bins): any channel
            few = n_obs < params["min_observations"]
            gap = ~few & (max_cyclic_gap_h(observed_any) > params["max_gap_h"])
            rejected["too_few_observations"] += int(few.sum())
            rejected["gap_too_large"] += int(gap.sum())
            keep = ~(few | gap)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            profile = mean[keep].astype(np.float32)
            count = np.minimum(counts[keep], np.iinfo(np.uint16).max).astype(np.uint16)
            lon, lat = pix_to_lonlat(nside, pixels[keep])
            writer.append({"pix": pixels[keep].astype(np.int64), "lat": lat, "lon": lon,
                           "profile": profile, "count": count,
                           "n_obs": count.sum(axis=(1, 2)).astype(np.int32)})
            observed = np.isfinite(profile)
            values = np.where(observed, profile, 0.0).astype(np.float64)
            n_val += observed.sum(axis=0)
            s1 += values.sum(axis=0)
            s2 += (values**2).sum(axis=0)
        n = writer.rows
        with np.errstate(invalid="ignore", divide="ignore"):
            bin_mean = s1 / n_val
            bin_std = np.sqrt(np.maximum(s2 / n_val - bin_mean**2, 0.0))
        total = n_val.sum()
        global_mean = float(s1.sum() / total) if total else 0.0
        global_std = (float(np.sqrt(max(s2.sum() / total - global_mean**2, 0.0))) if total
                      else 1.0)
        out.attrs.update(provenance_attrs(
            config, nside=nside, ordering="NESTED", body="MOON", channels=channels,
            bin_edges_h=bin_edges(bins), rejected_pixels=rejected, input=source,
            norm_global_mean=global_mean, norm_global_std=global_std,
        ))
        write_dataset(out, "norm_bin_mean", np.nan_to_num(bin_mean).astype(np.float32))
        write_dataset(out, "norm_bin_std", np.nan_to_num(bin_std, nan=1.0).astype(np.float32))
    observed_fraction = float(n_val.sum() / (n * n_ch * bins)) if n else 0.0
    summary = {"pixels": int(n), "rejected": rejected, "output": str(output),
               "observed_bin_fraction": observed_fraction}
    log.info("profiles: %d pixels kept, rejected %s, %.0f%% of bins observed", n,
             rejected, 100 * observed_fraction)
    return summary
