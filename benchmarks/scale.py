"""The pipeline at survey scale beside the demo: wall time, throughput and peak memory per step.

    python benchmarks/scale.py [--workdir DIR] [--cores 2] [--scale config/scale.yaml]
                               [--baseline config/config.yaml] [--skip-run] [--json FILE]

Runs simulate → ingest → merge_samples → profiles → train → encode → maps with
Snakemake's local executor (target ``maps``) twice, one after the other: the
named baseline (the demo, ``config/config.yaml``: 0.6 M rows, nside 32) and
the scale configuration layered over it (``config/scale.yaml``: about 107 M
rows, nside 256). Both run in ``--workdir`` (default ``scale-run/``, about 20
GB). ``--skip-run`` only reads the results of earlier runs.

Per step it reads Snakemake's benchmark files (``<results>/benchmarks/*.tsv``:
wall seconds and ``max_rss``, the resident memory of the job's whole process
tree, sampled every 30 s) and the step's log: its JSON summary (rows and
pixels, for the throughput) and the kernel's high-water marks of resident
memory, of the main process and of its largest child process. The *bound*
column adds the main process's peak to ``--cores`` times the largest child's:
no sampling can miss a peak above it. It prints, per step, for the scale run
and the baseline: wall time, throughput (rows/s for simulate, ingest and the
merge; samples/s for profiles; profiles/s for train; pixels/s for encode and
maps) and peak memory, then the ratios scale / baseline of the data size, of
the throughput and of the peak memory: memory that stays bounded has a peak
ratio far below the size ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STEPS = ("simulate", "ingest", "merge_samples", "profiles", "train", "encode", "maps")
PEAK_LINE = re.compile(r"peak memory (\d+) MiB in the main process, (\d+) MiB in the largest")
GIB = 1024.0


def run_pipeline(workdir: Path, configfiles: list[Path], cores: int) -> float:
    """Snakemake (local executor) up to the maps; returns its wall seconds."""
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--directory", str(workdir), "--configfile", *map(str, configfiles),
           "--cores", str(cores), "maps"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def _summary(log: Path) -> dict:
    """The step's JSON summary: the last line of its log."""
    lines = log.read_text().strip().splitlines()
    if not lines:
        raise SystemExit(f"{log}: empty log; did the step run?")
    return json.loads(lines[-1])


def _kernel_peaks(log: Path) -> tuple[float, float]:
    match = PEAK_LINE.search(log.read_text())
    if match is None:
        raise SystemExit(f"{log}: no 'peak memory' line (written by vaemap's command line)")
    return float(match.group(1)), float(match.group(2))


def _bench(path: Path) -> dict:
    with open(path) as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return {"s": float(row["s"]), "max_rss": float(row["max_rss"])}


def read_steps(results: Path, cores: int) -> dict[str, dict]:
    """Per step: jobs, wall s, work done and its unit, throughput, peak memory (MiB)."""
    bench, logs = results / "benchmarks", results / "logs"
    jobs = {step: [(bench / f"{step}.tsv", logs / f"{step}.log")] for step in STEPS}
    jobs["ingest"] = [(tsv, logs / "ingest" / f"{tsv.stem}.log")
                      for tsv in sorted((bench / "ingest").glob("*.tsv"))]
    summaries = {step: [_summary(log) for _, log in pairs] for step, pairs in jobs.items()}
    merge, enc = summaries["merge_samples"][0], summaries["encode"][0]
    train = summaries["train"][0]
    work = {
        "simulate": (sum(sum(s["rows"].values()) for s in summaries["simulate"]), "rows"),
        "ingest": (sum(s["rows_read"] for s in summaries["ingest"]), "rows"),
        "merge_samples": (merge["accepted"], "rows"),
        "profiles": (merge["accepted"], "samples"),
        "train": (train["train_pixels"] * train["epochs"], "profiles"),
        "encode": (enc["pixels"], "pixels"),
        "maps": (enc["pixels"], "pixels"),
    }
    table = {}
    for step, pairs in jobs.items():
        if not pairs:
            raise SystemExit(f"{bench}: no benchmark of {step}")
        rows = [_bench(tsv) for tsv, _ in pairs]
        peaks = [_kernel_peaks(log) for _, log in pairs]
        wall = sum(r["s"] for r in rows)
        amount, unit = work[step]
        table[step] = {
            "jobs": len(rows), "wall_s": wall, "work": amount, "unit": unit,
            "per_s": amount / wall if wall else float("nan"),
            "snakemake_max_rss_mib": max(r["max_rss"] for r in rows),
            "kernel_main_mib": max(p[0] for p in peaks),
            "kernel_child_mib": max(p[1] for p in peaks),
            "bound_mib": max(p[0] + cores * p[1] for p in peaks),
        }
    table["profiles"]["pixels"] = summaries["profiles"][0]["pixels"]
    table["train"]["train_pixels"] = train["train_pixels"]
    table["train"]["profiles_total"] = train.get("profiles_total")
    return table


def _fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k" if x >= 1e3 else f"{x:.0f}"


def markdown(scale: dict, base: dict) -> str:
    """The per-step table: the scale run, then the ratios against the baseline."""
    out = ["| step | jobs | work | wall | throughput /s | peak MiB (Snakemake) | "
           "peak MiB (kernel bound) | size × | throughput × | peak × |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for step in STEPS:
        s, b = scale[step], base[step]
        wall = f"{s['wall_s'] / 60:.1f} min" if s["wall_s"] >= 120 else f"{s['wall_s']:.0f} s"
        out.append(
            f"| {step} | {s['jobs']} | {s['work'] / 1e6:.1f} M {s['unit']} | {wall} | "
            f"{_fmt_rate(s['per_s'])} {s['unit']} | {s['snakemake_max_rss_mib']:.0f} | "
            f"{s['bound_mib']:.0f} | {s['work'] / b['work']:.0f} | "
            f"{s['per_s'] / b['per_s']:.2f} | "
            f"{s['bound_mib'] / b['bound_mib']:.2f} |")
    total = sum(scale[s]["wall_s"] for s in STEPS)
    out.append(f"\nSteps' wall time in all: {total / 60:.1f} min; largest peak "
               f"{max(scale[s]['bound_mib'] for s in STEPS) / GIB:.2f} GiB (kernel bound), "
               f"{max(scale[s]['snakemake_max_rss_mib'] for s in STEPS) / GIB:.2f} GiB "
               f"(Snakemake).")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "scale-run")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--baseline", type=Path, default=REPO / "config" / "config.yaml")
    ap.add_argument("--scale", type=Path, default=REPO / "config" / "scale.yaml")
    ap.add_argument("--skip-run", action="store_true", help="only read earlier results")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    runs = {"baseline": [args.baseline.resolve()],
            "scale": [args.baseline.resolve(), args.scale.resolve()]}
    walls = {}
    if not args.skip_run:
        for name, files in runs.items():
            walls[name] = run_pipeline(workdir, files, args.cores)
            print(f"{name}: the pipeline to the maps in {walls[name] / 60:.1f} min", flush=True)
    tables = {}
    for name, files in runs.items():
        results = "results"
        for f in files:
            results = (yaml.safe_load(f.read_text()) or {}).get("results", results)
        tables[name] = read_steps(workdir / results, args.cores)
    text = markdown(tables["scale"], tables["baseline"])
    print(f"\nscale: {args.scale.name} over baseline {args.baseline.name}, "
          f"{args.cores} cores, {platform.node()}")
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"cores": args.cores, "pipeline_wall_s": walls,
                                         **tables}, indent=1))


if __name__ == "__main__":
    main()
