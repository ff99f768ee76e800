"""The pipeline at survey scale beside the demo: wall time, throughput and peak memory per step.

    python benchmarks/scale.py [--workdir DIR] [--cores 2] [--scale config/scale.yaml]
                               [--baseline config/config.yaml] [--skip-run] [--json FILE]
                               [--slurm]

Runs simulate → ingest → merge_samples → profiles → train → encode → maps with
Snakemake's local executor, or with ``--slurm`` through the SLURM profile
(``sacct``'s figures per rule are printed too), (target ``maps``) twice, one
after the other: the
named baseline (the demo, ``config/config.yaml``: 0.6 M rows, nside 32) and
the scale configuration layered over it (``config/scale.yaml``: about 107 M
rows, nside 256). Both run in ``--workdir`` (default ``scale-run/``, about 12
GB). ``--skip-run`` only reads the results of earlier runs; ``--forcerun
ingest`` measures again from ingest on (Snakemake's ``--forcerun``).

A step split into jobs (ingest's days; with ``profiles.tile_nside``,
``encode.tile_nside`` and ``maps.per_product`` the tiles and products) counts
all of them. Per step it reads Snakemake's benchmark files (``<results>/benchmarks/*.tsv``:
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
                 forcerun: list[str], slurm: bool = False) -> float:
    """Snakemake up to the maps (local executor, or with ``slurm`` the SLURM
    profile: every job through the scheduler); returns its wall seconds."""
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--directory", str(workdir), "--configfile", *map(str, configfiles),
           "--cores", str(cores), "maps"]
    if slurm:
        cmd += ["--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm")]
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


def _seconds(elapsed: str) -> float:
    """sacct's ``[D-]HH:MM:SS[.fff]`` (or ``MM:SS.fff``) in seconds."""
    days, _, clock = elapsed.rpartition("-")
    parts = [float(x) for x in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (int(days or 0) * 24 + parts[0]) * 3600 + parts[1] * 60 + parts[2]


def _mib(rss: str) -> float:
    """sacct's MaxRSS (``123456K``, ``1.5G``, bytes without a unit) in MiB."""
    if not rss:
        return 0.0
    unit = rss[-1].upper()
    scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}
    return float(rss[:-1]) * scale[unit] if unit in scale else float(rss) / 2**20


def sacct_per_rule(since: str) -> str:
    """SLURM's accounting of the jobs since ``since`` (``YYYY-MM-DDTHH:MM:SS``),
    per rule (the job comment the executor sets, ``rule_<name>_wildcards_...``):
    jobs, elapsed and CPU time summed, the largest MaxRSS of any step."""
    out = subprocess.run(["sacct", "-n", "-P", "-S", since, "-o",
                          "JobID,Comment,Elapsed,TotalCPU,MaxRSS,State"],
                         check=True, capture_output=True, text=True).stdout
    jobs: dict[str, dict] = {}
    for line in out.splitlines():
        job, comment, elapsed, cpu, rss, state = line.split("|")
        main = job.split(".")[0]
        entry = jobs.setdefault(main, {"rule": "", "elapsed": 0.0, "cpu": 0.0, "rss": 0.0,
                                       "state": ""})
        if "." not in job:
            entry.update(rule=comment.split("_wildcards")[0].removeprefix("rule_"),
                         elapsed=_seconds(elapsed), cpu=_seconds(cpu), state=state)
        entry["rss"] = max(entry["rss"], _mib(rss))
    rules: dict[str, dict] = {}
    for entry in jobs.values():
        row = rules.setdefault(entry["rule"] or "(no comment)",
                               {"jobs": 0, "elapsed": 0.0, "cpu": 0.0, "rss": 0.0,
                                "states": set()})
        row["jobs"] += 1
        row["elapsed"] += entry["elapsed"]
        row["cpu"] += entry["cpu"]
        row["rss"] = max(row["rss"], entry["rss"])
        row["states"].add(entry["state"])
    lines = ["| rule (sacct) | jobs | elapsed, summed | CPU, summed | largest MaxRSS MiB | "
             "states |", "|---|---|---|---|---|---|"]
    for rule, row in sorted(rules.items()):
        lines.append(f"| {rule} | {row['jobs']} | {row['elapsed'] / 60:.1f} min | "
                     f"{row['cpu'] / 60:.1f} min | {row['rss']:.0f} | "
                     f"{', '.join(sorted(row['states']))} |")
    return "\n".join(lines)


def _bench(path: Path) -> dict:
    with open(path) as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return {"s": float(row["s"]), "max_rss": float(row["max_rss"]),
            "cpu_s": float(row["cpu_time"])}


def read_steps(results: Path, cores: int) -> dict[str, dict]:
    """Per step: jobs, wall s, work done and its unit, throughput, peak memory (MiB)."""
    bench, logs = results / "benchmarks", results / "logs"
    # Every job of a step: its single job, the merge of its tile parts or the
    # maps' catalogue job first (benchmarks/<step>.tsv), then the jobs it was
    # split into (benchmarks/<step>/*.tsv: ingest's days, merge_samples',
    # profiles' and encode's tiles, the maps' products with maps.per_product).
    jobs = {step: [(tsv, logs / tsv.relative_to(bench).with_suffix(".log"))
                   for tsv in ([bench / f"{step}.tsv"] if (bench / f"{step}.tsv").exists()
                               else []) + sorted((bench / step).glob("*.tsv"))]
            for step in STEPS}
    missing = [step for step, pairs in jobs.items() if not pairs]
    if missing:
        raise SystemExit(f"{bench}: no benchmark of {', '.join(missing)}")
    read = {step: [_read_log(log) for _, log in pairs] for step, pairs in jobs.items()}
    summaries = {step: [summary for summary, _ in entries] for step, entries in read.items()}
    enc, train = summaries["encode"][0], summaries["train"][0]
    # the merged samples: the one merge's, or the sum of its tiles'
    merged = (summaries["merge_samples"][0]["accepted"]
              if "tile" not in summaries["merge_samples"][0]
              else sum(s["accepted"] for s in summaries["merge_samples"]))
    work = {
        "simulate": (sum(sum(s["rows"].values()) for s in summaries["simulate"]), "rows"),
        "ingest": (sum(s["rows_read"] for s in summaries["ingest"]), "rows"),
        "merge_samples": (merged, "rows"),
        "profiles": (merged, "samples"),
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
#: How a step is split when the scale run split it; a split step's jobs spread
#: over the cores (maps: at most one per job of the scale run, a job per product).
PARALLEL = {"ingest": "a job per day", "merge_samples": "a job per tile, profiles.tile_nside",
            "profiles": "a job per tile, profiles.tile_nside",
            "encode": "a job per tile, encode.tile_nside",
            "maps": "a job per product, maps.per_product"}


def archive_costs(scale: dict, years: float, nside: int, nodes: list[int],
                  cores_per_node: int) -> tuple[str, dict]:
    """The full archive's cost per step, extrapolated linearly from the scale run's
    CPU seconds per unit of work (ingest: rows of every channel; merge and
    profiles: the accepted channel-7 rows; encode and maps: pixels at ``nside``;
    train: the scale run's budget). The steps the scale run split into several
    jobs (:data:`PARALLEL`: ingest always) spread over every core of ``nodes``
    nodes, the maps over at most as many 2-core jobs as it had; the others are
    one job, as long as in the scale run per unit of work."""
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
        split = step in PARALLEL and row["jobs"] > 1
        width = [n * cores_per_node if step != "maps" else min(n * cores_per_node,
                                                                2 * row["jobs"])
                 for n in nodes]
        walls = [core_h / w if split else serial_h for w in width]
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
    ap.add_argument("--slurm", action="store_true",
                    help="run through the SLURM profile (a cluster, or scripts/local-slurm.sh) "
                         "and print sacct's figures per rule")
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
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    if not args.skip_run:
        for name, files in runs.items():
            walls[name] = run_pipeline(workdir, files, args.cores, args.forcerun, args.slurm)
            print(f"{name}: the pipeline to the maps in {walls[name] / 60:.1f} min", flush=True)
    accounting = sacct_per_rule(since) if args.slurm and not args.skip_run else ""
    if accounting:
        print(f"\nSLURM accounting of both runs (sacct, since {since}):\n{accounting}")
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
        f"{', '.join(f'{k} ({v})' for k, v in PARALLEL.items() if tables['scale'][k]['jobs'] > 1)}"
        f"; the other steps are one job each")
    print(f"\nThe archive, extrapolated: {assumptions}")
    print(archive)
    if args.docs:
        sacct_block = (f"\n\nThrough SLURM, as `sacct` accounted the jobs of both runs:\n\n"
                       f"{accounting}" if accounting else "")
        write_docs(args.docs, f"{text}{sacct_block}\n\n**The archive, extrapolated** "
                              f"({assumptions}):\n\n{archive}")
    if args.json:
        args.json.write_text(json.dumps({"cores": args.cores, "pipeline_wall_s": walls,
                                         **tables, "archive": costs}, indent=1))


if __name__ == "__main__":
    main()
