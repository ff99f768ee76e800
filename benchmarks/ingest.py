"""Ingest throughput and memory against the parsing limit and a naive pandas baseline.

    python benchmarks/ingest.py [--rows 1000000] [--compression gzip] [--workdir DIR]

Writes one plain-text RDR table of ``--rows`` rows (random but valid values,
2 % bad flags), then runs, each in a fresh child process so that peak memory
is its own:

* ``ingest``  — the full `vaemap ingest` (parse, filter, HEALPix index, sort,
  compressed HDF5 write);
* ``parse``   — a bare streaming parse of the same file with the same engine
  and columns (pyarrow), results discarded: the parsing limit;
* ``naive``   — pandas ``read_csv`` of all columns (the baseline).

The phases run ``--repeat`` times, interleaved, so that a slow spell of a
noisy machine hits all of them alike; the ratios use each phase's best time
(the least disturbed run), and the median is printed beside it. It prints
rows/s and peak resident memory of each, and the ratios ingest/parse
(target ≥ 0.7) and ingest/naive (target ≥ 2).
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
import pyarrow as pa
import pyarrow.csv as pacsv

from vaemap.rdr import RDR_COLUMNS

CHILD = r"""
import json, sys, time
phase, path, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
import pandas as pd
from vaemap.config import validate_config
from vaemap.ingest import iter_rdr_batches, run
t0 = time.perf_counter()  # imports excluded: they are the same for every phase
if phase == "ingest":
    rows = run([path], out, validate_config({"ingest": extra}))["rows_read"]
elif phase == "parse":
    rows = sum(b["tb"].size for b in iter_rdr_batches(path))
elif phase == "naive":
    rows = len(pd.read_csv(path, comment="#"))
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0}))
"""


def write_table(path: Path, n: int, seed: int = 0, block: int = 1_000_000) -> None:
    """A valid RDR table of ``n`` rows, written in blocks."""
    rng = np.random.default_rng(seed)
    with pa.OSFile(str(path), "wb") as sink:
        sink.write(b"# synthetic RDR table for benchmarks/ingest.py\n")
        writer = None
        for start in range(0, n, block):
            m = min(block, n - start)
            jd = 2455089.5 + (start + np.arange(m)) * 1e-5
            bad = rng.uniform(size=m) < 0.02
            cols = {name: np.zeros(m) for name in RDR_COLUMNS}
            cols.update({
                "date": np.full(m, "15-Sep-2009"), "utc": np.full(m, "00:00:49.781"),
                "jdate": np.round(jd, 6), "orbit": np.full(m, 1), "af": np.where(bad, 2, 110),
                "c": np.full(m, 7), "det": rng.integers(1, 22, m),
                "tb": np.round(rng.uniform(90, 390, m), 3),
                "radiance": np.round(rng.uniform(0, 1, m), 6),
                "clat": np.round(rng.uniform(-90, 90, m), 5),
                "clon": np.round(rng.uniform(-180, 180, m), 5),
                "cemis": np.round(rng.uniform(0, 5, m), 3),
                "cloctime": np.round(rng.uniform(0, 24, m), 5),
                "qca": np.zeros(m, int), "qge": np.full(m, 12), "qmi": np.zeros(m, int),
            })
            table = pa.table({k: cols[k] for k in RDR_COLUMNS})
            if writer is None:
                writer = pacsv.CSVWriter(sink, table.schema)
            writer.write_table(table)
        writer.close()


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
    parser.add_argument("--phases", default="parse,ingest,naive",
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
    runs: dict[str, list[dict]] = {phase: [] for phase in phases}
    for _ in range(args.repeat):
        for phase in phases:
            runs[phase].append(run_child(phase, table, workdir / "samples.h5", extra))
    results = {phase: min(r, key=lambda x: x["seconds"]) for phase, r in runs.items()}
    print(f"ingest benchmark: {args.rows} rows, compression {args.compression}, "
          f"chunk_rows {args.chunk_rows}, best of {args.repeat}")
    for phase, r in results.items():
        median = float(np.median([x["seconds"] for x in runs[phase]]))
        peak = max(x["peak_mib"] for x in runs[phase])
        print(f"  {phase:7s} {r['rows'] / r['seconds']:12,.0f} rows/s   "
              f"{r['seconds']:7.2f} s (median {median:.2f} s)   cpu {r['cpu_seconds']:5.2f} s"
              f"   peak {peak:7.0f} MiB")
    rate = {p: r["rows"] / r["seconds"] for p, r in results.items()}
    if {"ingest", "parse"} <= set(rate):
        print(f"  ratio ingest / bare parse: {rate['ingest'] / rate['parse']:.2f}  "
              f"(target >= 0.7)")
    if {"ingest", "naive"} <= set(rate):
        print(f"  ratio ingest / naive pandas: {rate['ingest'] / rate['naive']:.2f}  "
              f"(target >= 2)")
    if "ingest" in results:
        peak = max(x["peak_mib"] for x in runs["ingest"])
        print(f"  ingest peak memory: {peak:.0f} MiB  (target < 1024 "
              f"for 10 M rows)")


if __name__ == "__main__":
    main()
