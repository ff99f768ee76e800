"""Ingest throughput and memory against the parsing engines and a naive pandas baseline.

    python benchmarks/ingest.py [--rows 1000000] [--compression blosc-lz4] [--workdir DIR]

Writes one RDR table of ``--rows`` rows in the archive's published layout
(``#`` preamble and padded header, fixed-format CRLF rows, 337-342 bytes a row,
the nine channels and 21 detectors interleaved as in the archive, 2 % bad
flags, a few over-wide fills), then runs, each in a fresh child process so
that peak memory is its own:

* ``ingest``  — the full `vaemap ingest` of channel 7 (parse, filter, HEALPix
  index, sort, checksum, compressed HDF5 write);
* ``vaemap``  — vaemap's bare parse of the 12 needed columns with channel 7
  selected (rdr.read_table: by column position, other channels dropped after
  their channel column): the parsing limit of the ingest;
* ``pyarrow`` — pyarrow.csv of the 12 needed columns (all channels: it cannot
  drop rows while parsing);
* ``polars``  — polars of the 12 needed columns, read as text and converted
  (its number parser rejects the layout's blank padding), if polars is installed;
* ``naive``   — pandas ``read_csv`` of all columns (the baseline).

Put ``--workdir`` on a RAM disk (``/dev/shm/...``) where the machine reclaims
its page cache eagerly: otherwise some runs read the table from disk and the
phases are not compared alike. The phases run ``--repeat`` times,
interleaved, so that a slow spell of a noisy machine hits all of them alike;
the ratios use each phase's best time
(the least disturbed run), and the median is printed beside it. It prints
rows/s and peak resident memory of each, and the ratios ingest / fastest bare
parse (target ≥ 0.7) and ingest / naive (target ≥ 2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vaemap.rdr import RDR_COLUMNS, format_rows, header_line

CHILD = r"""
import json, sys, time
phase, path, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
import numpy as np
from vaemap.config import validate_config
from vaemap.ingest import run
from vaemap.rdr import REQUIRED_COLUMNS, RDR_COLUMNS, read_table
if phase == "naive":
    import pandas as pd
elif phase == "pyarrow":
    import pyarrow as pa, pyarrow.csv as pacsv
elif phase == "polars":
    import polars as pl
t0 = time.perf_counter()  # imports excluded: they are the same for every run of a phase
if phase == "ingest":
    rows = run([path], out, validate_config({"ingest": extra}))["rows_read"]
elif phase == "vaemap":
    stats = {}
    for block in read_table(path, channels=[7], stats=stats):
        pass
    rows = stats["rows"]
elif phase == "pyarrow":
    rows = 0
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(
        skip_rows=4, column_names=list(RDR_COLUMNS), block_size=1 << 23),
        parse_options=pacsv.ParseOptions(quote_char=False),
        convert_options=pacsv.ConvertOptions(include_columns=list(REQUIRED_COLUMNS),
            column_types=dict.fromkeys(REQUIRED_COLUMNS, pa.float64())))
    for batch in reader:
        rows += batch.num_rows
elif phase == "polars":
    idx = [RDR_COLUMNS.index(c) for c in REQUIRED_COLUMNS]
    df = pl.read_csv(path, skip_rows=4, has_header=False, columns=idx, quote_char=None,
                     infer_schema=False)
    df = df.select(pl.all().str.strip_chars().cast(pl.Float64))
    rows = df.height
elif phase == "naive":
    rows = len(pd.read_csv(path, skiprows=3))
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0}))
"""


def write_table(path: Path, n: int, seed: int = 0, block: int = 100_000) -> None:
    """A table of ``n`` rows in the published layout: footprints of 21 detectors,
    each seen in the nine channels, rows in time order."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as sink:
        sink.write("# Header: dlre_edr.c\r\n# Header: synthetic RDR table for "
                   "benchmarks/ingest.py\r\n# Header: published layout\r\n" + header_line())
        for start in range(0, n, block):
            m = min(block, n - start)
            i = start + np.arange(m)
            bad = rng.uniform(size=m) < 0.02
            c = 1 + i % 9
            tb = np.where(c <= 2, rng.uniform(0, 0.3, m), rng.uniform(90, 390, m))
            tb[rng.uniform(size=m) < 1e-4] = -9999.0  # over-wide fills, as in the archive
            cols = {name: np.zeros(m) for name in RDR_COLUMNS}
            cols.update({
                "date": ["15-Sep-2009"] * m, "utc": ["00:00:49.781"] * m,
                "jdate": 2455089.5 + (i // 189) * 1e-5, "orbit": np.full(m, 1),
                "sundist": np.full(m, 0.99), "sclk": 306244849.0 + i // 189,
                "scrad": np.full(m, 1787.4), "scalt": np.full(m, 50.0),
                "el_cmd": np.full(m, 180.0), "az_cmd": np.full(m, 240.0),
                "af": np.where(bad, 2, 110), "c": c, "det": 1 + (i // 9) % 21,
                "tb": np.round(tb, 3), "radiance": np.round(rng.uniform(0, 1, m), 4),
                "clat": np.round(rng.uniform(-90, 90, m), 5),
                "clon": np.round(rng.uniform(0, 360, m), 5),
                "cemis": np.round(rng.uniform(0, 5, m), 5),
                "cloctime": np.round(rng.uniform(0, 24, m), 5),
                "qca": np.zeros(m, int), "qge": np.full(m, 12), "qmi": np.zeros(m, int),
            })
            sink.write(format_rows(cols))


def run_child(phase: str, path: Path, out: Path, extra: dict) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, phase, str(path), str(out),
                             json.dumps(extra)], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stdout = proc.stdout.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{phase} failed with status {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mib"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # includes imports
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--compression", default="blosc-lz4")
    parser.add_argument("--chunk-rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--phases", default="vaemap,pyarrow,polars,ingest,naive",
                        help="comma-separated subset, e.g. 'ingest' for a 10 M-row memory check")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved rounds of all phases; ratios use the best of each")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vaemap-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    table = workdir / f"bench_{args.rows}.TAB"
    if not table.exists():
        t0 = time.perf_counter()
        write_table(table, args.rows)
        print(f"wrote {table} ({table.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s")
    extra = {"compression": args.compression, "chunk_rows": args.chunk_rows}
    phases = args.phases.split(",")
    try:
        import polars  # noqa: F401
    except ImportError:
        phases = [p for p in phases if p != "polars"]
    runs: dict[str, list[dict]] = {phase: [] for phase in phases}
    for _ in range(args.repeat):
        for phase in phases:
            runs[phase].append(run_child(phase, table, workdir / "samples.h5", extra))
    results = {phase: min(r, key=lambda x: x["seconds"]) for phase, r in runs.items()}
    print(f"ingest benchmark: {args.rows} rows ({table.stat().st_size / args.rows:.0f} bytes a "
          f"row, 9 channels, channel 7 kept), compression {args.compression}, chunk_rows "
          f"{args.chunk_rows}, best of {args.repeat}")
    for phase, r in results.items():
        median = float(np.median([x["seconds"] for x in runs[phase]]))
        peak = max(x["peak_mib"] for x in runs[phase])
        print(f"  {phase:7s} {r['rows'] / r['seconds']:12,.0f} rows/s   "
              f"{r['seconds']:7.2f} s (median {median:.2f} s)   cpu {r['cpu_seconds']:5.2f} s"
              f"   peak {peak:7.0f} MiB")
    rate = {p: r["rows"] / r["seconds"] for p, r in results.items()}
    parsers = [p for p in ("vaemap", "pyarrow", "polars") if p in rate]
    if "ingest" in rate and parsers:
        fastest = max(parsers, key=rate.get)
        print(f"  ratio ingest / fastest bare parse ({fastest}): "
              f"{rate['ingest'] / rate[fastest]:.2f}  (target >= 0.7)")
    if {"ingest", "naive"} <= set(rate):
        print(f"  ratio ingest / naive pandas: {rate['ingest'] / rate['naive']:.2f}  "
              f"(target >= 2)")
    if "ingest" in results:
        peak = max(x["peak_mib"] for x in runs["ingest"])
        print(f"  ingest peak memory: {peak:.0f} MiB  (target < 1024 "
              f"for 10 M rows)")


if __name__ == "__main__":
    main()
