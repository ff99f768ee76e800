"""The thermal-model emulator against the solver it learned: cost per column and error.

    python benchmarks/emulator.py [--emulator results/emulator/emulator.pt]
                                  [--columns 400] [--bins 120] [--seed 7]

Baseline: ``vaemap.thermal`` itself (``solve_facets``: regolith and rock, the
solver's 120 steps per lunar day, one process), on fresh columns drawn as the
emulator's training columns are but from another seed. The emulator runs on
the same columns on one CPU thread (the network and the exact channel mixing,
``channel_profiles``, for channels 7 and 8 at ``--bins`` local-time bins).
Prints the time per column of each and their ratio, and the emulator's error
on these columns (as ``accuracy.json`` reports it). Needs an ``emulator.pt``
(``snakemake --cores 2 results/emulator/emulator.pt``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vaemap import emulator
from vaemap.forward_model import channel_profiles, load_emulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--emulator", default="results/emulator/emulator.pt")
    ap.add_argument("--columns", type=int, default=400)
    ap.add_argument("--bins", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7, help="columns drawn from this seed "
                                                        "(not the training seed)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, ckpt = load_emulator(args.emulator)

    start = time.perf_counter()
    data = emulator.solve_training_set(args.columns, seasons=4, seed=args.seed, workers=1)
    solver_s = (time.perf_counter() - start) / args.columns

    inputs = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in data.items()}
    with torch.inference_mode():
        model(inputs)  # warm-up
        start = time.perf_counter()
        repeats = 5
        for _ in range(repeats):
            t_reg, t_rock = model(inputs)
            channel_profiles(t_reg, t_rock, inputs["rock_fraction"], [7, 8], args.bins)
        emulator_s = (time.perf_counter() - start) / repeats / args.columns

    acc = emulator.accuracy(model, data, np.arange(args.columns), [7, 8], args.bins)
    print(f"emulator {args.emulator} (trained on {ckpt['config']['columns']} columns, "
          f"{ckpt['config']['epochs']} epochs)")
    print("| | per column | ratio |")
    print("|---|---|---|")
    print(f"| vaemap.thermal.solve_facets (baseline, 1 process) | {solver_s * 1e3:.3f} ms | 1 |")
    print(f"| emulator + channel mixing (1 thread) | {emulator_s * 1e6:.1f} µs | "
          f"{solver_s / emulator_s:.0f}x faster |")
    print(f"error on {acc['columns']} fresh columns, channel 7/8 profiles of {args.bins} bins: "
          f"RMS {acc['rms_k']:.3f} K (below 60° {acc['rms_below_60_k']:.3f} K, above "
          f"{acc['rms_above_60_k']:.3f} K; night {acc['rms_night_k']:.3f} K, day "
          f"{acc['rms_day_k']:.3f} K; 99th percentile {acc['p99_abs_k']:.2f} K)")


if __name__ == "__main__":
    main()
