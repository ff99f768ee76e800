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
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vaemap.healpix import parent_pix, pix_to_lonlat, sorted_row_range, tile_pixel_range
from vaemap.instrument import channel_unit
from vaemap.io import (
    RowWriter,
    atomic_hdf5,
    open_tile_parts,
    provenance_attrs,
    read_json_attr,
)
from vaemap.products import PROFILES, SAMPLES, check_pixels, open_product

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


def _iter_pixel_chunks(h5: h5py.File, nside_in: int, nside_out: int, rows: int,
                       start: int = 0, total: int | None = None
                       ) -> Iterator[dict[str, np.ndarray]]:
    """Yield row chunks of samples.h5 rows ``[start, total)`` that never split a map pixel."""
    total = h5["pix"].shape[0] if total is None else total
    carry: dict[str, np.ndarray] | None = None
    while start < total:
        stop = min(start + rows, total)
        chunk = {k: h5[k][start:stop] for k in ("pix", "local_time", "tb", "channel")}
        # a pixel beyond the sphere would be binned into a wrong or no map pixel
        check_pixels(chunk["pix"], nside_in, h5.filename, increasing=False)
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


def _profile_writer(out: h5py.File, n_ch: int, bins: int) -> RowWriter:
    return RowWriter(out, PROFILES.layout(channels=n_ch, bins=bins), chunk_rows=4096,
                     units=PROFILES.units())


def _finish(out: h5py.File, config: Mapping[str, Any], nside: int, channels: list[int],
            observed_bins: int, rejected: Mapping[str, int], **attrs: Any) -> float:
    """Write the root attributes; returns the fraction of bins observed."""
    n, bins = out["pix"].shape[0], config["profiles"]["bins"]
    out.attrs.update(provenance_attrs(
        config, **PROFILES.identity(), nside=nside, ordering="NESTED", body="MOON",
        channels=channels, channel_units=[channel_unit(c) for c in channels],
        bin_edges_h=bin_edges(bins), rejected_pixels=dict(rejected),
        observed_bins=int(observed_bins), **attrs))
    return float(observed_bins / (n * len(channels) * bins)) if n else 0.0


def _summary(n: int, rejected: Mapping[str, int], output, fraction: float,
             seconds: float | None = None, rows: int | None = None) -> dict[str, Any]:
    summary = {"pixels": int(n), "rejected": dict(rejected), "output": str(output),
               "observed_bin_fraction": fraction}
    if seconds:  # throughput of the binning, for comparing channel sets
        summary.update(seconds=seconds, pixels_per_s=n / seconds, samples_per_s=rows / seconds)
    log.info("profiles: %d pixels kept, rejected %s, %.0f%% of bins observed%s", n,
             dict(rejected), 100 * fraction,
             f"; {summary['pixels_per_s']:,.0f} pixels/s, {summary['samples_per_s']:,.0f} "
             f"samples/s" if seconds else "")
    return summary


def run(samples: str | Path, output: str | Path, config: Mapping[str, Any], *,
        tile: str | None = None) -> dict[str, Any]:
    """Build ``profiles.h5`` from ``samples.h5`` (or one NESTED tile's part of it).

    The layout is :data:`vaemap.products.PROFILES`: ``pix`` (n,) int64 NESTED at
    ``profiles.nside``; ``lat``, ``lon`` (n,) degrees; ``profile`` (n, channels,
    bins) float32 kelvin, NaN in empty bins; ``count`` (n, channels, bins)
    uint16; ``n_obs`` (n,) int32. Attributes: nside, bin edges (hours), the
    channels (those the samples were selected for), rejected pixel counts,
    observed bins.

    Profiles are written as they are built, so memory is bounded by the read
    chunk, not by the map size.
    With ``tile="NSIDE/INDEX"`` only that tile's samples are read (a binary
    search in the pixel-sorted samples) and the file is a part for :func:`merge`.
    """
    params = config["profiles"]
    nside, bins = params["nside"], params["bins"]
    rejected = {"too_few_observations": 0, "gap_too_large": 0}
    observed_bins = 0
    start = time.perf_counter()
    # A tile job reads its rows only; the whole file's checksum is checked by
    # the untiled run and by the merge of the parts.
    # A tile job may read a samples tile part (that tile's rows from every day's
    # file, `vaemap merge --tile`) or slice the whole samples file.
    with open_product(samples, SAMPLES, verify=tile is None,
                      part=None if tile is not None else False) as h5, \
            atomic_hdf5(output) as out:
        if "part_of_tile" in h5.attrs and str(h5.attrs["part_of_tile"]) != tile:
            raise ValueError(f"{samples}: is the samples of tile "
                             f"{h5.attrs['part_of_tile']}, not of tile {tile}")
        nside_in = int(h5.attrs["nside"])
        if nside_in < nside:
            raise ValueError(f"{samples}: samples nside {nside_in} is coarser than "
                             f"profiles.nside {nside}")
        # One profile channel per channel the samples were selected for.
        channels = [int(c) for c in read_json_attr(h5.attrs, "channels")]
        n_ch = len(channels)
        lo, hi = 0, int(h5["pix"].shape[0])
        if tile is not None:
            tile_pixel_range(tile, nside)  # the tile must be no finer than the map
            lo, hi = sorted_row_range(h5["pix"], *tile_pixel_range(tile, nside_in))
        # the samples' identity: that of the inputs of the merge that made them
        # (which every samples tile of one merge shares), else their checksum
        made_from = h5.attrs.get("samples_of", h5.attrs["content_checksum"])
        source = {"path": str(samples), "checksum": str(made_from),
                  "rows": hi - lo, "rejected_rows": read_json_attr(h5.attrs, "rejected", {})}
        writer = _profile_writer(out, n_ch, bins)
        for chunk in _iter_pixel_chunks(h5, nside_in, nside, READ_ROWS, lo, hi):
            pixels, bin_sums, counts = _bin_chunk(chunk, channels, bins)
            n_obs = counts.sum(axis=(1, 2))
            observed_any = counts.sum(axis=1) > 0  # (n, bins): any channel
            few = n_obs < params["min_observations"]
            gap = ~few & (max_cyclic_gap_h(observed_any) > params["max_gap_h"])
            rejected["too_few_observations"] += int(few.sum())
            rejected["gap_too_large"] += int(gap.sum())
            keep = ~(few | gap)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(counts > 0, bin_sums / np.maximum(counts, 1), np.nan)
            profile = mean[keep].astype(np.float32)
            count = np.minimum(counts[keep], np.iinfo(np.uint16).max).astype(np.uint16)
            lon, lat = pix_to_lonlat(nside, pixels[keep])
            writer.append({"pix": pixels[keep].astype(np.int64), "lat": lat, "lon": lon,
                           "profile": profile, "count": count,
                           "n_obs": count.sum(axis=(1, 2)).astype(np.int32)})
            observed_bins += int((count > 0).sum())
        extra = {"input": source} if tile is None else {"input": source, "part_of_tile": tile}
        fraction = _finish(out, config, nside, channels, observed_bins, rejected, **extra)
        n = writer.rows
        if n == 0 and tile is None:  # (a tile over unobserved ground may keep none)
            raise ValueError(f"{samples}: no pixel at profiles.nside {nside} passes the "
                             f"coverage rule ({rejected['too_few_observations']} with fewer "
                             f"than profiles.min_observations = {params['min_observations']}, "
                             f"{rejected['gap_too_large']} with a gap over profiles.max_gap_h "
                             f"= {params['max_gap_h']} h); {output} not written")
    if tile is not None:
        log.info("profiles tile %s: %d pixels (a part: run `vaemap merge-profiles`)", tile, n)
    return _summary(n, rejected, output, fraction, time.perf_counter() - start,
                    source["rows"])


def merge(parts: Sequence[str | Path], output: str | Path, config: Mapping[str, Any]
          ) -> dict[str, Any]:
    """Combine the tile parts of ``run(..., tile=...)`` into one ``profiles.h5``.

    Parts are ordered by their first pixel and must not overlap; profiles are
    copied part by part (bounded memory) and the observed-bin and rejection
    counts added, so the result equals a single job's.
    """
    params = config["profiles"]
    with open_tile_parts(parts, PROFILES, same=("channels",), nside=params["nside"],
                         bins=params["bins"], against="the profiles configuration") as opened:
        channels = read_json_attr(opened[0][1].attrs, "channels")
        made_from = {str(read_json_attr(h.attrs, "input", {}).get("checksum")): path
                     for path, h in opened}
        if len(made_from) > 1:  # every tile must come from the same samples
            raise ValueError(f"tile parts made from different samples: "
                             f"{', '.join(f'{p} ({c})' for c, p in made_from.items())}")
        rejected = {"too_few_observations": 0, "gap_too_large": 0}
        observed_bins = 0
        with atomic_hdf5(output) as out:
            writer = _profile_writer(out, len(channels), params["bins"])
            for _, h in opened:
                for a in range(0, h["pix"].shape[0], 65536):
                    writer.append({k: h[k][a:a + 65536] for k in writer.dsets})
                observed_bins += int(h.attrs["observed_bins"])
                for reason, count in read_json_attr(h.attrs, "rejected_pixels", {}).items():
                    rejected[reason] = rejected.get(reason, 0) + int(count)
            source = read_json_attr(opened[0][1].attrs, "input", {})
            source["rows"] = sum(int(read_json_attr(h.attrs, "input", {}).get("rows", 0))
                                 for _, h in opened)
            fraction = _finish(out, config, params["nside"], channels, observed_bins, rejected,
                               input=source, merged_from=[str(path) for path, _ in opened])
            n = writer.rows
    return _summary(n, rejected, output, fraction)
