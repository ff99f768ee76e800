"""Throughput of the vectorised thermal solver against the same solver run one column at a time.

    python benchmarks/thermal.py [--columns 2000] [--days 3]

Prints column-days per second for both (same process, same physics, same
number of simulated days) and their ratio. Baseline: `solve_columns` called
once per column, which is what a per-pixel loop over a scalar 1-D model does.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vaemap import thermal
from vaemap.thermal import RegolithProperties, albedo_at_incidence, cos_incidence


def absorbed_flux(n: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    lat = rng.uniform(-70, 70, n)
    hour = (np.arange(steps) * 24.0 / steps - 12.0) * 15.0
    mu = cos_incidence(lat[None, :], hour[:, None], 0.0, 0.0)
    inc = np.degrees(np.arccos(np.clip(mu, 0, 1)))
    return (1 - albedo_at_incidence(0.12, inc)) * thermal.SOLAR_CONSTANT * mu


def solve(flux: np.ndarray, days: int) -> np.ndarray:
    p = RegolithProperties()
    n = flux.shape[1]
    ones = np.ones(n)
    # tol_k < 0: never stop early, so both runs simulate exactly `days` days.
    return thermal.solve_columns(flux, p.rho_surface * ones, p.rho_deep * ones,
                                 p.k_surface * ones, p.k_deep * ones, 0.06 * ones,
                                 p.chi * ones, p, max_days=days, tol_k=-1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, default=2000)
    parser.add_argument("--baseline-columns", type=int, default=20)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--steps", type=int, default=192)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    flux = absorbed_flux(args.columns, args.steps, rng)

    t0 = time.perf_counter()
    vec = solve(flux, args.days)
    t_vec = time.perf_counter() - t0

    m = args.baseline_columns
    t0 = time.perf_counter()
    single = np.column_stack([solve(flux[:, i:i + 1], args.days)[:, 0] for i in range(m)])
    t_one = time.perf_counter() - t0
    assert np.allclose(single, vec[:, :m], atol=1e-6), "vectorised and single results differ"

    rate_vec = args.columns * args.days / t_vec
    rate_one = m * args.days / t_one
    print(f"thermal solver, {args.steps} steps per lunar day, {args.days} simulated days")
    print(f"  vectorised  ({args.columns:6d} columns): {rate_vec:12.1f} column-days/s")
    print(f"  one-by-one  ({m:6d} columns): {rate_one:12.1f} column-days/s  (baseline)")
    print(f"  ratio vectorised / one-by-one: {rate_vec / rate_one:.1f}x")


if __name__ == "__main__":
    main()
