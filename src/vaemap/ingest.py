"""Ingest Diviner RDR tables into a quality-filtered, HEALPix-indexed ``samples.h5``.

Tables are parsed with pyarrow's multi-threaded columnar CSV reader, streaming
block by block and converting only the columns the pipeline needs (matched by
name).  Every row read is either accepted or counted under exactly one named
rejection reason, so ``accepted + sum(rejected) == rows_read`` always holds;
the counts are stored in the output's attributes and logged.

Memory is bounded by ``ingest.chunk_rows`` whatever the input size: accepted
rows are collected into sorted runs of at most that many rows (spilled to a
temporary HDF5 file next to the output) and the runs are combined by a
streaming k-way merge on the NESTED pixel index.  The same merge combines
several ``samples.h5`` files (:func:`merge`), which is how the workflow scales
out: one ingest job per RDR table, then one merge.  The output is sorted by
pixel, then time, stably (ties keep the input order), so the
same inputs always give byte-identical datasets; duplicate observations (same
time, channel, detector and position) are counted and dropped.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xxhash

from vaemap.healpix import lonlat_to_pix, sorted_row_range, tile_pixel_range, wrap_lon
from vaemap.instrument import is_solar
from vaemap.io import (
    RowWriter,
    atomic_hdf5,
    file_checksum,
    provenance_attrs,
    read_json_attr,
)
from vaemap.products import SAMPLES, open_product
from vaemap.rdr import FILL_THRESHOLD, FLAG_BITS, REQUIRED_COLUMNS, RdrFormatError, read_table

__all__ = [
    "REJECTION_REASONS",
    "RdrFormatError",
    "merge",
    "quality_filter",
    "run",
]

log = logging.getLogger(__name__)

#: Rejection reasons, in the order the checks are applied (a row counts once,
#: under the first check it fails).
REJECTION_REASONS: tuple[str, ...] = (
    "malformed", "channel", "fill_value", "instrument_moving", "activity_flag",
    "emission_angle", "qca", "qge", "qmi", "latitude_range", "longitude_range",
    "local_time_range", "tb_range", "duplicate",
)  # fmt: skip

#: samples.h5 datasets and their types (the contract is vaemap.products.SAMPLES).
SAMPLE_FIELDS: dict[str, Any] = {k: f.dtype for k, f in SAMPLES.fields.items()}
#: Sort order, most significant first; ties keep the input order (stable), so
#: the same inputs give byte-identical output. Rows equal in DUPLICATE_KEY are
#: duplicates: one detector cannot observe one spot twice at the same instant.
SORT_KEY = ("pix", "jdate")  # see _sort_rows
DUPLICATE_KEY = ("pix", "jdate", "channel", "det", "lat", "lon")
OUTPUT_CHUNK_ROWS = 1 << 16
_CHECKSUMS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaemap-checksum")




def quality_filter(cols: Mapping[str, np.ndarray], params: Mapping[str, Any],
                   flag_bits: dict[str, dict[str, int]] | None = None,
                   per_channel: dict[str, dict[str, int]] | None = None
                   ) -> tuple[np.ndarray, dict[str, int]]:
    """Apply the quality filters; returns (accepted mask, per-reason rejection counts).

    Each rejected row is counted under the first reason it fails, in the order
    of :data:`REJECTION_REASONS`. A value at or below -9998 is a fill. The
    ``tb`` range is ``ingest.tb_min``..``tb_max`` kelvin for the thermal
    channels 3-9 and ``ingest.reflectance_min``..``reflectance_max`` for the
    solar channels 1-2, whose ``tb`` is a reflectance relative to a normally
    lit Lambertian surface. With ``flag_bits``, the rows rejected for a quality
    word are also counted per bit set in it (``flag_bits["qmi"]["eclipse"]``;
    a row with two bits set counts under both), so a user sees *why* the flags
    rejected them; with ``per_channel``, every rejection and acceptance is also
    counted per channel (``per_channel["7"]["tb_range"]``).
    """
    n = cols["tb"].size
    values = {c: cols[c] for c in REQUIRED_COLUMNS}
    fill = np.zeros(n, dtype=bool)
    for name in ("jdate", "tb", "clat", "clon", "cemis", "cloctime", "af", "c", "qca", "qge",
                 "qmi"):
        v = values[name]
        fill |= ~(v > FILL_THRESHOLD)  # NaN too
    with np.errstate(invalid="ignore"):
        checks = [
            ("malformed", cols["malformed_mask"]),
            ("channel", ~np.isin(values["c"], params["channels"])),
            ("fill_value", fill),
            ("instrument_moving", values["af"] < 0),
            ("activity_flag", values["af"] != params["activity_flag"]),
            ("emission_angle", ~(values["cemis"] < params["max_emission_deg"])),
            ("qca", values["qca"] != params["qca"]),
            ("qge", values["qge"] != params["qge"]),
            ("qmi", values["qmi"] != params["qmi"]),
            ("latitude_range", ~((values["clat"] >= -90) & (values["clat"] <= 90))),
            ("longitude_range", ~((values["clon"] >= -180) & (values["clon"] < 360))),
            ("local_time_range", ~((values["cloctime"] >= 0) & (values["cloctime"] < 24))),
            ("tb_range", ~np.where(is_solar(values["c"]),
                                   (values["tb"] >= params["reflectance_min"])
                                   & (values["tb"] <= params["reflectance_max"]),
                                   (values["tb"] >= params["tb_min"])
                                   & (values["tb"] <= params["tb_max"]))),
        ]
    rejected = np.zeros(n, dtype=bool)
    counts: dict[str, int] = {}
    for reason, failed in checks:
        new = failed & ~rejected
        counts[reason] = int(new.sum())
        rejected |= new
        if per_channel is not None and counts[reason]:
            _count_by_channel(per_channel, values["c"][new], reason)
        if flag_bits is not None and reason in FLAG_BITS and counts[reason]:
            word = values[reason][new].astype(np.int64)
            for bit, name in FLAG_BITS[reason].items():
                hit = int(((word & bit) != 0).sum())
                if hit:
                    flag_bits[reason][name] = flag_bits[reason].get(name, 0) + hit
    if per_channel is not None:
        _count_by_channel(per_channel, values["c"][~rejected], "accepted")
    return ~rejected, counts


def _count_by_channel(per_channel: dict[str, dict[str, int]], channel: np.ndarray,
                      key: str) -> None:
    channel = np.asarray(channel, dtype=float)
    readable = np.isfinite(channel)  # a malformed row may have no channel
    found, n = np.unique(channel[readable].astype(np.int64), return_counts=True)
    names = [str(ch) for ch in found.tolist()]
    if not readable.all():
        names, n = [*names, "unreadable"], [*n.tolist(), int((~readable).sum())]
    for name, count in zip(names, list(n), strict=True):
        entry = per_channel.setdefault(name, {})
        entry[key] = entry.get(key, 0) + int(count)


def _to_samples(cols: Mapping[str, np.ndarray], keep: np.ndarray, nside: int
                ) -> dict[str, np.ndarray]:
    """The accepted rows of a parsed batch as samples.h5 columns."""
    lat = cols["clat"][keep]
    lon = wrap_lon(cols["clon"][keep])
    return {
        "pix": lonlat_to_pix(nside, lon, lat).astype(np.int64),
        "lat": lat.astype(np.float32),
        "lon": lon.astype(np.float32),
        "local_time": cols["cloctime"][keep].astype(np.float32),
        "tb": cols["tb"][keep].astype(np.float32),
        "emission": cols["cemis"][keep].astype(np.float32),
        "channel": cols["c"][keep].astype(np.uint8),
        "det": cols["det"][keep].astype(np.uint8),
        "jdate": cols["jdate"][keep],
    }


def _sort_rows(data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows sorted by SORT_KEY (pixel, then time), stably.

    RDR tables are written in time order, so a stable sort on the pixel alone
    almost always leaves each pixel's rows in time order already; that sort is
    3-7x cheaper than the two-key ``lexsort`` (much more on concatenated sorted
    pieces, which timsort merges). The result is checked and the full sort is
    used only when some pixel's rows are out of time order, so the output is
    exactly the two-key stable sort in every case.
    """
    pix, jdate = data["pix"], data["jdate"]
    order = np.argsort(pix, kind="stable")
    p, t = pix[order], jdate[order]
    if np.any((p[1:] == p[:-1]) & (t[1:] < t[:-1])):
        order = np.lexsort((jdate, pix))  # stable
        return {k: v[order] for k, v in data.items()}
    return {k: p if k == "pix" else t if k == "jdate" else v[order] for k, v in data.items()}


def _duplicate_mask(data: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows that repeat an earlier row's DUPLICATE_KEY (the first copy is kept).

    A 64-bit hash of the key finds candidate pairs in one sort; candidates are
    then compared exactly, so a hash collision can never drop a row.
    """
    n = len(data["pix"])
    drop = np.zeros(n, dtype=bool)
    if n < 2:
        return drop
    # Rows sorted by (pixel, time): only runs of equal (pixel, time) can hold
    # duplicates, so hash just those candidates.
    tie = (data["pix"][1:] == data["pix"][:-1]) & (data["jdate"][1:] == data["jdate"][:-1])
    if not tie.any():
        return drop
    cand = np.flatnonzero(np.concatenate([tie, [False]]) | np.concatenate([[False], tie]))
    data = {k: data[k][cand] for k in DUPLICATE_KEY}
    n = cand.size
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, key in enumerate(DUPLICATE_KEY):
            v = np.ascontiguousarray(data[key])
            bits = v.view(np.uint32 if v.itemsize == 4 else np.uint64) if v.dtype.kind == "f" \
                else v
            h = (h ^ bits.astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15 + 2 * i)
            h ^= h >> np.uint64(29)
    order = np.argsort(h, kind="stable")
    same = h[order][1:] == h[order][:-1]
    if not same.any():
        return drop
    first, second = order[:-1][same], order[1:][same]
    exact = np.ones(first.size, dtype=bool)
    for key in DUPLICATE_KEY:
        exact &= data[key][first] == data[key][second]
    drop[cand[second[exact]]] = True  # stable order: `second` comes later in the input
    return drop


def _concat(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]).astype(SAMPLE_FIELDS[k], copy=False)
            for k in SAMPLE_FIELDS}


def _sample_writer(h5: h5py.File, compression: str) -> RowWriter:
    """Appends sorted rows to the samples.h5 datasets, chunked and compressed."""
    return RowWriter(h5, {k: (dtype, ()) for k, dtype in SAMPLE_FIELDS.items()},
                     compression=compression, chunk_rows=OUTPUT_CHUNK_ROWS,
                     units={k: f.unit for k, f in SAMPLES.fields.items()})


class _Run:
    """A sorted run of samples (an HDF5 group, or arrays in memory), read in blocks."""

    def __init__(self, group: h5py.Group | Mapping[str, np.ndarray],
                 rows: tuple[int, int] | None = None):
        self.group = group
        self.pos, self.stop = rows if rows is not None else (0, len(group["pix"]))

    def read(self, n: int) -> dict[str, np.ndarray]:
        end = min(self.pos + n, self.stop)
        out = {k: self.group[k][self.pos:end] for k in SAMPLE_FIELDS}
        self.pos = end
        return out

    @property
    def exhausted(self) -> bool:
        return self.pos >= self.stop


def _merge_runs(runs: Sequence[_Run], writer: RowWriter, block_rows: int) -> int:
    """Streaming k-way merge of sorted runs into ``writer``; returns duplicates dropped.

    Each round emits every buffered row whose pixel is below the smallest
    "last pixel" of the runs that still have unread rows, so all rows of one
    pixel are emitted together and duplicates (which share a pixel) are always
    in the same round. Runs are concatenated in their order before the
    stable sort, so rows of equal (pixel, time) keep the order of the inputs.
    Memory: about ``len(runs) * block_rows`` rows.
    """
    buffers = [run.read(block_rows) for run in runs]
    sizes = [block_rows] * len(runs)
    duplicates = 0
    while any(len(b["pix"]) for b in buffers):
        open_ends = [b["pix"][-1] for b, r in zip(buffers, runs, strict=True)
                     if not r.exhausted and len(b["pix"])]
        bound = min(open_ends) if open_ends else np.iinfo(np.int64).max
        take = [int(np.searchsorted(b["pix"], bound, side="left")) if open_ends
                else len(b["pix"]) for b in buffers]
        if not any(take):
            # One pixel fills a whole buffer: read further in the runs that end on it.
            for i, (b, r) in enumerate(zip(buffers, runs, strict=True)):
                if not r.exhausted and len(b["pix"]) and b["pix"][-1] == bound:
                    sizes[i] *= 2
                    more = r.read(sizes[i])
                    buffers[i] = {k: np.concatenate([b[k], more[k]]) for k in b}
            continue
        pieces = [{k: v[:t] for k, v in b.items()}
                  for b, t in zip(buffers, take, strict=True) if t]
        # A piece from a single run is sorted already.
        out = _concat(pieces) if len(pieces) > 1 else pieces[0]
        if len(pieces) > 1:
            out = _sort_rows(out)
        drop = _duplicate_mask(out)
        if drop.any():
            duplicates += int(drop.sum())
            out = {k: v[~drop] for k, v in out.items()}
        writer.append(out)
        for i, (b, t) in enumerate(zip(buffers, take, strict=True)):
            rest = {k: v[t:] for k, v in b.items()}
            if len(rest["pix"]) < block_rows // 2 and not runs[i].exhausted:
                more = runs[i].read(block_rows)
                rest = {k: np.concatenate([rest[k], more[k]]) for k in rest}
            buffers[i] = rest
    return duplicates


#: A table whose share of rows with a latitude beyond ±90° reaches this is
#: refused, not filtered: no instrument error does that, a header naming the
#: columns wrongly (clat and clon swapped) does, and then the rows that pass
#: (longitudes within ±90°, taken for latitudes) would be mapped wrongly.
OFF_SPHERE_REFUSED = 0.2
#: ... and when at least this many rows are (a few bad rows of a tiny table stay
#: counted rejections).
OFF_SPHERE_MIN_ROWS = 10


def _check_geometry(path: Path, off_sphere: int, rows: int, highest: float) -> None:
    """Refuse a table whose latitudes look like longitudes (see OFF_SPHERE_REFUSED);
    a few rows beyond ±90° are counted rejections, with a warning naming the file."""
    if not off_sphere:
        return
    share = off_sphere / max(rows, 1)
    what = (f"{off_sphere} of its {rows} rows of the selected channels ({100 * share:.1f} %) "
            f"have a latitude (clat) beyond ±90°, up to {highest:.1f}°")
    if share >= OFF_SPHERE_REFUSED and off_sphere >= OFF_SPHERE_MIN_ROWS:
        hint = ("; as longitudes would: are clat and clon swapped in its header or label?"
                if highest <= 360 else "")
        raise RdrFormatError(f"{path}: {what}{hint} (refused: a table with "
                             f"{100 * OFF_SPHERE_REFUSED:.0f} % or more such rows is "
                             f"mis-described, not noisy)")
    log.warning("%s: %s; rejected as latitude_range", path, what)


def _ingest_file(path: Path, params: Mapping[str, Any], spill: h5py.File,
                 totals: dict[str, int], flag_bits: dict[str, dict[str, int]],
                 per_channel: dict[str, dict[str, int]]) -> tuple[list[_Run], dict[str, Any]]:
    """Parse, filter and index one table into sorted runs in ``spill``."""
    nside, chunk_rows = params["nside"], params["chunk_rows"]
    runs: list[_Run] = []
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    stats = {"rows": 0, "malformed": 0, "channel": 0}
    accepted = 0

    def flush(last: bool = False) -> None:
        nonlocal pending, pending_rows
        if not pending_rows:
            return
        data = _sort_rows(_concat(pending))
        if last:  # the file's last run stays in memory: it is there already
            runs.append(_Run(data))
        else:
            group = spill.create_group(f"run{len(spill):06d}")
            for key, values in data.items():
                group.create_dataset(key, data=values)
            runs.append(_Run(group))
        pending, pending_rows = [], 0

    # The checksum is computed in a thread while the table is parsed (the hashes
    # release the GIL), so provenance costs no extra pass over the file.
    checksum = _CHECKSUMS.submit(file_checksum, path, params["checksum"])
    # Rows of other channels are dropped by the parser, before their other
    # columns are read (the archive interleaves all nine channels).
    # Blocks are parsed by read_table's workers while this thread filters,
    # indexes and sorts the previous one.
    batches = read_table(path, REQUIRED_COLUMNS, channels=params["channels"],
                         on_malformed=params["on_malformed"], stats=stats)
    off_sphere, highest = 0, 0.0
    for cols in batches:
        keep, counts = quality_filter(cols, params, flag_bits, per_channel)
        for reason, n in counts.items():
            totals[reason] += n
        if counts["latitude_range"]:
            off_sphere += counts["latitude_range"]
            with np.errstate(invalid="ignore"):
                beyond = np.abs(cols["clat"])[np.abs(cols["clat"]) > 90]
            highest = max(highest, float(np.nanmax(beyond[beyond < -FILL_THRESHOLD],
                                                   initial=0.0)))
        # Sorting each block here overlaps with the parse of the next one and
        # leaves flush() a cheap merge of sorted pieces.
        sample = _sort_rows(_to_samples(cols, keep, nside))
        pending.append(sample)
        pending_rows += len(sample["pix"])
        accepted += len(sample["pix"])
        if pending_rows >= chunk_rows:
            flush()
    flush(last=True)
    totals["malformed"] += stats["malformed"]
    totals["channel"] += stats["channel"]
    rows = stats["rows"]
    _check_geometry(path, off_sphere, rows - stats["channel"], highest)
    info = {"path": str(path), "size": path.stat().st_size, "checksum": checksum.result(),
            "rows_read": rows, "accepted_before_duplicates": accepted}
    log.info("%s: %d rows read, %d pass the filters", path, rows, accepted)
    return runs, info


def _write_output(output: Path, runs: Sequence[_Run], params: Mapping[str, Any],
                  attrs: dict[str, Any]) -> int:
    """Merge ``runs`` into ``output`` (atomically); returns the duplicates dropped."""
    block = max(params["chunk_rows"] // max(len(runs), 1), 4096)
    with atomic_hdf5(output) as h5:
        writer = _sample_writer(h5, params["compression"])
        duplicates = _merge_runs(runs, writer, block)
        attrs["rejected"]["duplicate"] += duplicates
        attrs["accepted"] = writer.rows
        h5.attrs.update(provenance_attrs(attrs.pop("config"), **attrs))
    return duplicates


def _summary(rows_read: int, accepted: int, totals: Mapping[str, int], output) -> dict[str, Any]:
    if accepted + sum(totals.values()) != rows_read:
        raise RuntimeError(f"row accounting is broken: {accepted} accepted + "
                           f"{sum(totals.values())} rejected != {rows_read} read")
    return {"rows_read": rows_read, "accepted": accepted,
            "rejected": {k: v for k, v in totals.items() if v}, "output": str(output)}


def run(inputs: Sequence[str | Path], output: str | Path, config: Mapping[str, Any]
        ) -> dict[str, Any]:
    """Ingest RDR tables into ``samples.h5`` (rows sorted by NESTED pixel, then time).

    Parameters
    ----------
    inputs : sequence of paths
        RDR tables (plain or ``.gz``).
    output : path
        The ``samples.h5`` to write (atomically).
    config : mapping
        Validated configuration; uses the ``ingest`` section.

    Returns
    -------
    dict
        ``{"rows_read", "accepted", "rejected": {reason: n}, "output"}``.
    """
    params = config["ingest"]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    totals = dict.fromkeys(REJECTION_REASONS, 0)
    flag_bits: dict[str, dict[str, int]] = {word: {} for word in FLAG_BITS}
    per_channel: dict[str, dict[str, int]] = {}
    inputs_info = []
    for stale in output.parent.glob(f".{glob.escape(output.name)}.*.spill.h5"):
        stale.unlink(missing_ok=True)  # left by a killed run
    fd, spill_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".spill.h5",
                                      dir=output.parent)
    os.close(fd)
    try:
        with h5py.File(spill_name, "w") as spill:
            runs: list[_Run] = []
            for path in map(Path, inputs):
                if not path.exists():
                    raise FileNotFoundError(f"{path}: input RDR table not found")
                file_runs, info = _ingest_file(path, params, spill, totals, flag_bits,
                                               per_channel)
                runs += file_runs
                inputs_info.append(info)
            rows_read = sum(i["rows_read"] for i in inputs_info)
            attrs = {"config": config, **SAMPLES.identity(), "nside": params["nside"],
                     "channels": list(params["channels"]), "ordering": "NESTED",
                     "body": "MOON", "inputs": inputs_info, "filters": dict(params),
                     "rejected": totals, "rejected_flag_bits": flag_bits,
                     "per_channel": per_channel, "rows_read": rows_read}
            _write_output(output, runs, params, attrs)
            accepted = attrs["accepted"]
    finally:
        os.unlink(spill_name)
    summary = _summary(rows_read, accepted, totals, output)
    summary["rejected_flag_bits"] = {k: v for k, v in flag_bits.items() if v}
    summary["per_channel"] = per_channel
    log.info("ingest: %d rows read, %d accepted, rejected %s; by flag bit %s", rows_read,
             accepted, summary["rejected"] or "none", summary["rejected_flag_bits"] or "none")
    return summary


def merge(parts: Sequence[str | Path], output: str | Path, config: Mapping[str, Any], *,
          tile: str | None = None) -> dict[str, Any]:
    """Merge pixel-sorted ``samples.h5`` files into one (streaming, bounded memory).

    Rejection counts and input provenance are summed over the parts; duplicate
    observations that appear in more than one part are counted and dropped.
    Every part must be a samples file of the configured ``ingest.nside`` and
    ``ingest.channels`` (checked, naming the file).

    With ``tile="NSIDE/INDEX"`` only the rows inside that NESTED tile are read
    from each part (a binary search in each pixel-sorted file) and the output
    is a tile part: the samples of one tile from every day's file, which
    ``vaemap profiles --tile`` reads. This is how the merge scales out: no job
    reads more than its tile's rows. A tile part records the whole merge's
    rejection counts and inputs (its tables were read whole) and, in
    ``samples_of``, the identity of the inputs it was cut from, which every
    tile of one merge shares (and the untiled merge records too).
    """
    params = config["ingest"]
    totals = dict.fromkeys(REJECTION_REASONS, 0)
    flag_bits: dict[str, dict[str, int]] = {word: {} for word in FLAG_BITS}
    per_channel: dict[str, dict[str, int]] = {}
    inputs_info: list[dict[str, Any]] = []
    rows_read = 0
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open_product(p, SAMPLES, nside=params["nside"],
                                                    channels=params["channels"],
                                                    verify=tile is None))
                   for p in parts]
        for h in handles:
            for reason, n in read_json_attr(h.attrs, "rejected", {}).items():
                totals[reason] = totals.get(reason, 0) + int(n)
            for word, bits in read_json_attr(h.attrs, "rejected_flag_bits", {}).items():
                for bit, n in bits.items():
                    flag_bits[word][bit] = flag_bits[word].get(bit, 0) + int(n)
            for ch, counts in read_json_attr(h.attrs, "per_channel", {}).items():
                entry = per_channel.setdefault(ch, {})
                for key, n in counts.items():
                    entry[key] = entry.get(key, 0) + int(n)
            inputs_info += read_json_attr(h.attrs, "inputs", [])
            rows_read += int(h.attrs["rows_read"])
        # what every tile of this merge shares: the inputs' content checksums
        identity = xxhash.xxh3_64_hexdigest("\n".join(
            sorted(str(h.attrs["content_checksum"]) for h in handles)).encode())
        attrs = {"config": config, **SAMPLES.identity(), "nside": params["nside"],
                 "channels": list(params["channels"]), "ordering": "NESTED", "body": "MOON",
                 "inputs": inputs_info, "filters": dict(params), "rejected": totals,
                 "rejected_flag_bits": flag_bits, "per_channel": per_channel,
                 "rows_read": rows_read, "merged_from": [str(p) for p in parts],
                 "samples_of": identity}
        if tile is None:
            runs = [_Run(h) for h in handles]
        else:
            first, stop = tile_pixel_range(tile, params["nside"])
            runs = [_Run(h, sorted_row_range(h["pix"], first, stop)) for h in handles]
            attrs["part_of_tile"] = tile
        _write_output(Path(output), runs, params, attrs)
    if tile is not None:
        summary = {"rows_read": rows_read, "accepted": attrs["accepted"], "tile": tile,
                   "output": str(output)}
        log.info("merge tile %s: %d parts, %d rows in the tile (a part: `vaemap profiles "
                 "--tile`)", tile, len(parts), attrs["accepted"])
        return summary
    summary = _summary(rows_read, attrs["accepted"], totals, output)
    log.info("merge: %d parts, %d rows read, %d accepted", len(parts), rows_read,
             attrs["accepted"])
    return summary
