"""Ingest Diviner RDR tables into a quality-filtered, HEALPix-indexed ``samples.h5``.

Tables are parsed with pyarrow's multi-threaded columnar CSV reader, streaming
block by block and keeping only the columns the pipeline needs (matched by
name).  Every row read is either accepted or counted under exactly one named
rejection reason, so ``accepted + sum(rejected) == rows_read`` always holds;
the counts are stored in the output's attributes and logged.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from vaemap.healpix import lonlat_to_pix, wrap_lon
from vaemap.io import atomic_path, file_checksum, provenance_attrs, write_dataset
from vaemap.rdr import FILL_VALUES, RDR_COLUMNS, REQUIRED_COLUMNS

__all__ = ["REJECTION_REASONS", "RdrFormatError", "find_header", "read_rdr", "run"]

log = logging.getLogger(__name__)

#: Rejection reasons, in the order the checks are applied (a row counts once,
#: under the first check it fails).
REJECTION_REASONS: tuple[str, ...] = (
    "malformed", "fill_value", "channel", "activity_flag", "emission_angle", "qca", "qge",
    "qmi", "latitude_range", "longitude_range", "local_time_range", "tb_range", "duplicate",
)  # fmt: skip

_INT_COLUMNS = ("af", "c", "det", "qca", "qge", "qmi")


class RdrFormatError(ValueError):
    """A table that cannot be read as an RDR table; the message names file and line."""


def _open_text(path: Path):
    return gzip.open(path, "rt", errors="replace") if path.suffix == ".gz" else open(
        path, errors="replace")


def find_header(path: str | Path, max_lines: int = 1000) -> tuple[int, list[str]]:
    """Locate the column-name line of an RDR table.

    Returns ``(lines_before_header, column_names)``.  Leading comment or preamble
    lines are skipped; the header is the first line that names the ``tb`` and
    ``clat`` columns.  Raises :class:`RdrFormatError` when there is none.
    """
    path = Path(path)
    with _open_text(path) as fh:
        for number, line in enumerate(fh):
            if number >= max_lines:
                break
            if line.lstrip().startswith(("#", "/*", ";")):
                continue  # comment or PDS-style preamble
            names = [n.strip().strip('"').strip().lower() for n in line.rstrip("\n").split(",")]
            if "tb" in names and "clat" in names:
                return number, names
    raise RdrFormatError(f"{path}: no RDR header line (a line naming the columns, e.g. "
                         f"{', '.join(RDR_COLUMNS[:4])}, ...) in the first {max_lines} lines")


class _RowCounter:
    """pyarrow invalid-row handler: skip rows with the wrong number of fields,
    counting them and remembering the first one (to report its line)."""

    def __init__(self):
        self.count = 0
        self.first: tuple[int | None, str, int, int] | None = None

    def __call__(self, row) -> str:
        self.count += 1
        if self.first is None:
            self.first = (row.number, row.text, row.expected_columns, row.actual_columns)
        return "skip"

    def raise_first(self, path: Path, header_line: int) -> None:
        """Raise RdrFormatError for the first malformed row, naming its line."""
        number, text, expected, actual = self.first
        if number is not None:
            line = number + header_line + 1
        else:  # multi-threaded parsing does not number rows: find it (failure path only)
            line = "?"
            with _open_text(path) as fh:
                for i, candidate in enumerate(fh, start=1):
                    if candidate.rstrip("\r\n") == text:
                        line = i
                        break
        raise RdrFormatError(f"{path}: line {line}: expected {expected} fields, found "
                             f"{actual}: {text[:80]!r}")


def _coerce_numeric(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Parse a string column to float64; returns (values, ok) where ``ok`` is False
    for values that are not numbers (the slow path, used only for broken files)."""
    text = column.to_pylist()
    values = np.empty(len(text))
    ok = np.ones(len(text), dtype=bool)
    for i, item in enumerate(text):
        try:
            values[i] = float(item) if item not in (None, "") else np.nan
        except ValueError:
            values[i], ok[i] = np.nan, False
    return values, ok


def read_rdr(
    path: str | Path,
    *,
    on_malformed: str = "error",
    block_size: int = 1 << 24,
) -> tuple[dict[str, np.ndarray], int]:
    """Read the columns ingest needs from one RDR table.

    Returns ``(columns, malformed)``: float64/int arrays keyed by column name
    (one element per well-formed row, malformed values as NaN in skip mode) and
    the number of malformed rows that were skipped.  ``malformed_mask`` in the
    returned dict marks rows whose numbers could not be parsed (skip mode).

    Raises
    ------
    RdrFormatError
        A required column is missing, or (``on_malformed="error"``) a row has
        the wrong number of fields or a non-numeric value; the message names the
        file, the line and what was expected.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        log.warning("%s: empty file, no rows", path)
        return {name: np.empty(0) for name in REQUIRED_COLUMNS} | {
            "malformed_mask": np.zeros(0, bool)}, 0
    header_line, names = find_header(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise RdrFormatError(f"{path}: line {header_line + 1}: missing required column(s) "
                             f"{', '.join(missing)}; found {', '.join(names)}")
    counter = _RowCounter()
    read_opts = pacsv.ReadOptions(skip_rows=header_line + 1, column_names=names,
                                  block_size=block_size)
    parse_opts = pacsv.ParseOptions(invalid_row_handler=counter)
    typed = pacsv.ConvertOptions(include_columns=list(REQUIRED_COLUMNS),
                                 column_types={c: pa.float64() for c in REQUIRED_COLUMNS})
    try:
        table = pacsv.read_csv(path, read_options=read_opts, parse_options=parse_opts,
                               convert_options=typed)
        if counter.count and on_malformed == "error":
            counter.raise_first(path, header_line)
        cols = {c: table[c].to_numpy() for c in REQUIRED_COLUMNS}
        cols["malformed_mask"] = np.zeros(table.num_rows, dtype=bool)
        return cols, counter.count
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc).lower():
            raise RdrFormatError(f"{path}: {exc}") from None
    # A value that is not a number: re-read as text to find it (slow path).
    if counter.count and on_malformed == "error":
        counter.raise_first(path, header_line)
    counter = _RowCounter()
    as_text = pacsv.ConvertOptions(include_columns=list(REQUIRED_COLUMNS),
                                   column_types={c: pa.string() for c in REQUIRED_COLUMNS})
    table = pacsv.read_csv(path, read_options=read_opts, parse_options=parse_opts,
                           convert_options=as_text)
    if counter.count and on_malformed == "error":
        counter.raise_first(path, header_line)
    cols, bad = {}, np.zeros(table.num_rows, dtype=bool)
    for name in REQUIRED_COLUMNS:
        values, ok = _coerce_numeric(table[name])
        if on_malformed == "error" and not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            # Line numbers are exact when no row before it was skipped.
            raise RdrFormatError(
                f"{path}: line {header_line + 2 + row}: column {name}: expected a number, "
                f"found {table[name][row].as_py()!r}")
        cols[name] = values
        bad |= ~ok
    cols["malformed_mask"] = bad
    return cols, counter.count


def quality_filter(cols: Mapping[str, np.ndarray], params: Mapping[str, Any]
                   ) -> tuple[np.ndarray, dict[str, int]]:
    """Apply the quality filters; returns (accepted mask, per-reason rejection counts).

    Each rejected row is counted under the first reason it fails, in the order
    of :data:`REJECTION_REASONS`.
    """
    n = cols["tb"].size
    values = {c: cols[c] for c in REQUIRED_COLUMNS}
    fill = np.zeros(n, dtype=bool)
    for name in ("jdate", "tb", "clat", "clon", "cemis", "cloctime", "af", "c", "qca", "qge",
                 "qmi"):
        v = values[name]
        fill |= ~np.isfinite(v) | np.isin(v, FILL_VALUES)
    with np.errstate(invalid="ignore"):
        checks = [
            ("malformed", cols["malformed_mask"]),
            ("fill_value", fill),
            ("channel", ~np.isin(values["c"], params["channels"])),
            ("activity_flag", values["af"] != params["activity_flag"]),
            ("emission_angle", ~(values["cemis"] < params["max_emission_deg"])),
            ("qca", values["qca"] != params["qca"]),
            ("qge", values["qge"] != params["qge"]),
            ("qmi", values["qmi"] != params["qmi"]),
            ("latitude_range", ~((values["clat"] >= -90) & (values["clat"] <= 90))),
            ("longitude_range", ~((values["clon"] >= -180) & (values["clon"] < 360))),
            ("local_time_range", ~((values["cloctime"] >= 0) & (values["cloctime"] < 24))),
            ("tb_range", ~((values["tb"] >= params["tb_min"])
                           & (values["tb"] <= params["tb_max"]))),
        ]
    rejected = np.zeros(n, dtype=bool)
    counts: dict[str, int] = {}
    for reason, failed in checks:
        new = failed & ~rejected
        counts[reason] = int(new.sum())
        rejected |= new
    return ~rejected, counts


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
    nside = params["nside"]
    totals = dict.fromkeys(REJECTION_REASONS, 0)
    rows_read = 0
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("pix", "lat", "lon", "local_time", "tb", "emission",
                                           "channel", "jdate", "det")}
    input_info = []
    for path in map(Path, inputs):
        if not path.exists():
            raise FileNotFoundError(f"{path}: input RDR table not found")
        cols, malformed = read_rdr(path, on_malformed=params["on_malformed"])
        keep, counts = quality_filter(cols, params)
        counts["malformed"] += malformed
        n_file = cols["tb"].size + malformed
        rows_read += n_file
        for reason, n in counts.items():
            totals[reason] += n
        lat = cols["clat"][keep]
        lon = wrap_lon(cols["clon"][keep])
        parts["pix"].append(lonlat_to_pix(nside, lon, lat).astype(np.int64))
        parts["lat"].append(lat.astype(np.float32))
        parts["lon"].append(lon.astype(np.float32))
        parts["local_time"].append(cols["cloctime"][keep].astype(np.float32))
        parts["tb"].append(cols["tb"][keep].astype(np.float32))
        parts["emission"].append(cols["cemis"][keep].astype(np.float32))
        parts["channel"].append(cols["c"][keep].astype(np.uint8))
        parts["jdate"].append(cols["jdate"][keep])
        parts["det"].append(cols["det"][keep].astype(np.uint8))
        input_info.append({"path": str(path), "size": path.stat().st_size,
                           "checksum": file_checksum(path), "rows_read": n_file,
                           "accepted": int(keep.sum())})
        log.info("%s: %d rows read, %d accepted", path, n_file, int(keep.sum()))

    data = {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}
    # Sort by pixel, then time, channel and detector: a total order, so the
    # output is byte-identical for the same inputs, and duplicates are adjacent.
    order = np.lexsort((data["det"], data["channel"], data["jdate"], data["pix"]))
    data = {k: v[order] for k, v in data.items()}
    if data["pix"].size:
        same = np.ones(data["pix"].size, dtype=bool)
        for key in ("pix", "jdate", "channel", "det", "lat", "lon"):
            v = data[key]
            same[1:] &= v[1:] == v[:-1]
        same[0] = False
        totals["duplicate"] = int(same.sum())
        data = {k: v[~same] for k, v in data.items()}
    accepted = int(data["pix"].size)
    assert accepted + sum(totals.values()) == rows_read, "row accounting is broken"

    attrs = provenance_attrs(
        config, nside=nside, ordering="NESTED", body="MOON", inputs=input_info,
        filters=dict(params), rejected=totals, rows_read=rows_read, accepted=accepted,
    )
    dtypes = {"pix": np.int64, "lat": np.float32, "lon": np.float32, "local_time": np.float32,
              "tb": np.float32, "emission": np.float32, "channel": np.uint8,
              "jdate": np.float64}
    units = {"lat": "deg", "lon": "deg", "local_time": "h", "tb": "K", "emission": "deg",
             "jdate": "d"}
    with atomic_path(output) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        h5.attrs.update(attrs)
        for key, dtype in dtypes.items():
            write_dataset(h5, key, data[key].astype(dtype), compression=params["compression"],
                          chunk_rows=min(params["chunk_rows"], 1 << 18),
                          attrs={"unit": units.get(key, "")})
    summary = {"rows_read": rows_read, "accepted": accepted,
               "rejected": {k: v for k, v in totals.items() if v}, "output": str(output)}
    log.info("ingest: %d rows read, %d accepted, rejected %s", rows_read, accepted,
             summary["rejected"] or "none")
    return summary
