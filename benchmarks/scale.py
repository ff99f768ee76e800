"""The pipeline at survey scale beside the demo: wall time, throughput and peak memory per step.

    python benchmarks/scale.py [--workdir DIR] [--cores 2] [--scale config/scale.yaml]
                               [--baseline config/config.yaml] [--skip-run] [--json FILE]

Runs simulate → ingest → merge_samples → profiles → train → encode → maps with
Snakemake's local executor (target ``maps``) twice, one after the other: the
named baseline (the demo, ``config/config.yaml``: 0.6 M rows, nside 32) and
the scale configuration layered over it (``config/scale.yaml``: about 107 M
rows, nside 256). Both run in ``--workdir`` (default ``scale-run/``, about 12
GB). ``--skip-run`` only reads the results of earlier runs; ``--forcerun
ingest`` measures again from ingest on (Snakemake's ``--forcerun``).

Per step it reads Snakemake's benchmark files (``<results>/benchmarks/*.tsv``:
wall seconds and ``max_rss``, the resident memory of the job's whole process
tree, sampled every 0.5 s for 15 s and then every 30 s) and the step's log: its
JSON summary (rows and pixels, for the throughput), the kernel's high-water
marks of resident memory, of the main process and of its largest child
process, and the kernel's count of CPU seconds. The *bound* column adds the
main process's peak to ``--cores`` times the largest child's: no sampling can
miss a peak above it. It prints, per step, for the scale run: wall time,
throughput (rows/s for simulate, ingest and the merge; samples/s for profiles;
profiles/s for train; pixels/s for encode and maps) and peak memory, and the
ratios scale / baseline of the data size, of the throughput and of the peak
memory: memory that stays bounded has a peak ratio far below the size ratio.
Then it extrapolates the whole Diviner archive's cost from the CPU seconds per
unit of work (see :func:`archive_costs`; the assumptions are printed with it).
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
PEAK_LINE = re.compile(r"peak memory (\d+) MiB in the main process, (\d+) MiB in the largest "
                       r"child process(?:; ([\d.]+) CPU s)?")
GIB = 1024.0


def run_pipeline(workdir: Path, configfiles: list[Path], cores: int,
                 forcerun: list[str]) -> float:
    """Snakemake (local executor) up to the maps; returns its wall seconds."""
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--directory", str(workdir), "--configfile", *map(str, configfiles),
           "--cores", str(cores), "maps"]
    if forcerun:
        cmd += ["--forcerun", *forcerun]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def _read_log(log: Path) -> tuple[dict, tuple[float, float, float | None]]:
    """From a step's log: its JSON summary (the last line), and the peak MiB of
    the main process and of its largest child and the CPU seconds (None in logs
    of versions that did not count them)."""
    text = log.read_text()
    lines = text.strip().splitlines()
    if not lines:
        raise SystemExit(f"{log}: empty log; did the step run?")
    match = PEAK_LINE.search(text)
    if match is None:
        raise SystemExit(f"{log}: no 'peak memory' line (written by vaemap's command line)")
    cpu = match.group(3)
    return json.loads(lines[-1]), (float(match.group(1)), float(match.group(2)),
                                   None if cpu is None else float(cpu))


def _bench(path: Path) -> dict:
    with open(path) as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return {"s": float(row["s"]), "max_rss": float(row["max_rss"]),
            "cpu_s": float(row["cpu_time"])}


def read_steps(results: Path, cores: int) -> dict[str, dict]:
    """Per step: jobs, wall s, work done and its unit, throughput, peak memory (MiB)."""
    bench, logs = results / "benchmarks", results / "logs"
    jobs = {step: [(bench / f"{step}.tsv", logs / f"{step}.log")] for step in STEPS}
    jobs["ingest"] = [(tsv, logs / "ingest" / f"{tsv.stem}.log")
                      for tsv in sorted((bench / "ingest").glob("*.tsv"))]
    missing = [step for step, pairs in jobs.items() if not pairs]
    if missing:
        raise SystemExit(f"{bench}: no benchmark of {', '.join(missing)}")
    read = {step: [_read_log(log) for _, log in pairs] for step, pairs in jobs.items()}
    summaries = {step: [summary for summary, _ in entries] for step, entries in read.items()}
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
        rows = [_bench(tsv) for tsv, _ in pairs]
        peaks = [use for _, use in read[step]]
        wall = sum(r["s"] for r in rows)
        amount, unit = work[step]
        table[step] = {
            "jobs": len(rows), "wall_s": wall, "work": amount, "unit": unit,
            "per_s": amount / wall if wall else float("nan"),
            # the kernel's count; Snakemake's (sampled, short of a job's last
            # seconds) only where an older log lacks it
            "cpu_s": sum(r["cpu_s"] if p[2] is None else p[2]
                         for r, p in zip(rows, peaks, strict=True)),
            "snakemake_max_rss_mib": max(r["max_rss"] for r in rows),
            "kernel_main_mib": max(p[0] for p in peaks),
            "kernel_child_mib": max(p[1] for p in peaks),
            "bound_mib": max(p[0] + cores * p[1] for p in peaks),
        }
    table["profiles"]["pixels"] = summaries["profiles"][0]["pixels"]
    table["train"]["train_pixels"] = train["train_pixels"]
    table["train"]["profiles_total"] = train.get("profiles_total")
    return table


def _amount(x: float) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.{1 if x < 100 * scale else 0}f} {prefix}"
    return f"{x:.0f}"


def markdown(scale: dict, base: dict) -> str:
    """The per-step table: the scale run, then the ratios against the baseline."""
    out = ["| step | jobs | work | wall | throughput /s | peak MiB (Snakemake) | "
           "peak MiB (kernel bound) | size × | throughput × | peak × |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for step in STEPS:
        s, b = scale[step], base[step]
        wall = f"{s['wall_s'] / 60:.1f} min" if s["wall_s"] >= 120 else f"{s['wall_s']:.0f} s"
        out.append(
            f"| {step} | {s['jobs']} | {_amount(s['work'])} {s['unit']} | {wall} | "
            f"{_amount(s['per_s'])} {s['unit']} | {s['snakemake_max_rss_mib']:.0f} | "
            f"{s['bound_mib']:.0f} | {s['work'] / b['work']:.0f} | "
            f"{s['per_s'] / b['per_s']:.2f} | "
            f"{s['bound_mib'] / b['bound_mib']:.2f} |")
    total = sum(scale[s]["wall_s"] for s in STEPS)
    out.append(f"\nSteps' wall time in all: {total / 60:.1f} min; largest peak "
               f"{max(scale[s]['bound_mib'] for s in STEPS) / GIB:.2f} GiB (kernel bound), "
               f"{max(scale[s]['snakemake_max_rss_mib'] for s in STEPS) / GIB:.2f} GiB "
               f"(Snakemake).")
    return "\n".join(out)


# The archive: Diviner integrates for 0.128 s in 9 channels x 21 detectors, one
# RDR row each (an upper bound: the archive has gaps).
ARCHIVE_ROWS_PER_S = 9 * 21 / 0.128
PARALLEL = {"ingest": "a job per day", "profiles": "a job per tile, profiles.tile_nside",
            "encode": "a job per tile, encode.tile_nside"}


def archive_costs(scale: dict, years: float, nside: int, nodes: list[int],
                  cores_per_node: int) -> tuple[str, dict]:
    """The full archive's cost per step, extrapolated linearly from the scale run's
    CPU seconds per unit of work (ingest: rows of every channel; merge and
    profiles: the accepted channel-7 rows; encode and maps: pixels at ``nside``;
    train: the scale run's budget). Steps in PARALLEL spread over every core of
    ``nodes`` nodes; the others are one job, as long as in the scale run per
    unit of work."""
    rows = ARCHIVE_ROWS_PER_S * 86400 * 365.25 * years
    accepted = rows / 9 * scale["merge_samples"]["work"] / scale["ingest"]["work"]
    units = {"ingest": rows, "merge_samples": accepted, "profiles": accepted,
             "train": scale["train"]["work"], "encode": 12 * nside**2, "maps": 12 * nside**2}
    header = ("| step | work | CPU core-hours | "
              + " | ".join(f"wall, {n} node{'s' if n > 1 else ''}" for n in nodes) + " |")
    out = [header, "|" + "---|" * (3 + len(nodes))]
    numbers = {}
    for step, amount in units.items():
        row = scale[step]
        core_h = row["cpu_s"] / row["work"] * amount / 3600
        serial_h = row["wall_s"] / row["work"] * amount / 3600
        walls = [core_h / (n * cores_per_node) if step in PARALLEL else serial_h for n in nodes]
        numbers[step] = {"work": amount, "core_hours": core_h, "wall_hours": walls}
        digits = 0 if core_h >= 10 else 1
        out.append(f"| {step} | {_amount(amount)} {row['unit']} | {core_h:,.{digits}f} | "
                   + " | ".join(_hours(w) for w in walls) + " |")
    totals = [sum(numbers[s]["wall_hours"][i] for s in units) for i in range(len(nodes))]
    out.append(f"| **all** | | {sum(v['core_hours'] for v in numbers.values()):,.0f} | "
               + " | ".join(f"**{_hours(t)}**" for t in totals) + " |")
    return "\n".join(out), numbers


def _hours(h: float) -> str:
    if h < 1 / 60:
        return "< 1 min"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} d"


MARKERS = ("<!-- benchmarks/scale.py:start -->", "<!-- benchmarks/scale.py:end -->")


def write_docs(path: Path, block: str) -> None:
    """Replace the text between MARKERS in ``path`` with ``block``."""
    text = path.read_text()
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {MARKERS[0]} ... {MARKERS[1]} block to fill")
    path.write_text(f"{text[:start + len(MARKERS[0])]}\n{block}\n{text[end:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "scale-run")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--baseline", type=Path, default=REPO / "config" / "config.yaml")
    ap.add_argument("--scale", type=Path, default=REPO / "config" / "scale.yaml")
    ap.add_argument("--skip-run", action="store_true", help="only read earlier results")
    ap.add_argument("--forcerun", nargs="+", default=[], metavar="RULE",
                    help="run these rules again, and all after them, in both runs (e.g. "
                         "ingest: measure again without simulating again)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--archive-years", type=float, default=15.0,
                    help="years of Diviner data to extrapolate to (default 15: 2009-2024)")
    ap.add_argument("--archive-nside", type=int, default=4096,
                    help="profiles nside of the archive's maps (default 4096: 0.43 km)")
    ap.add_argument("--docs", type=Path,
                    help="also write the tables between the scale markers of this file "
                         "(docs/hpc.md)")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--cores-per-node", type=int, default=32)
    args = ap.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    runs = {"baseline": [args.baseline.resolve()],
            "scale": [args.baseline.resolve(), args.scale.resolve()]}
    walls = {}
    if not args.skip_run:
        for name, files in runs.items():
            walls[name] = run_pipeline(workdir, files, args.cores, args.forcerun)
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
    archive, costs = archive_costs(tables["scale"], args.archive_years, args.archive_nside,
                                   args.nodes, args.cores_per_node)
    assumptions = (
        f"{args.archive_years:g} years at {ARCHIVE_ROWS_PER_S:,.0f} rows/s, 9 channels × 21 "
        f"detectors every 0.128 s; channel 7 mapped at nside {args.archive_nside}, nodes of "
        f"{args.cores_per_node} cores; parallel: "
        f"{', '.join(f'{k} ({v})' for k, v in PARALLEL.items())}; the other steps are one "
        f"job each")
    print(f"\nThe archive, extrapolated: {assumptions}")
    print(archive)
    if args.docs:
        write_docs(args.docs, f"{text}\n\n**The archive, extrapolated** ({assumptions}):"
                              f"\n\n{archive}")
    if args.json:
        args.json.write_text(json.dumps({"cores": args.cores, "pipeline_wall_s": walls,
                                         **tables, "archive": costs}, indent=1))


if __name__ == "__main__":
    main()
