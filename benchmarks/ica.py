"""Memory and time of one ICA map product's values (``ic0``) from a latents file
too large to hold whole: the rotation fitted on a seeded sample and streamed
(what ``vaemap maps`` does beyond ``vaemap.stats.ICA_FIT_ROWS`` pixels) against
the named baseline, FastICA fitted on every pixel (what it did before).

    python benchmarks/ica.py [--nside 1024] [--latents 7]

The latents are synthetic: every pixel of the sphere at ``--nside``, seven
non-Gaussian sources mixed by a random rotation, written to ``mu`` of an HDF5
file as encode writes it (float32, chunked). Each case runs in a fresh process,
so its peak resident memory is its own. Prints wall time and peak RSS per case,
their ratios against the baseline, and how closely the two give the same
component (|correlation|; the sign and order of ICA components are arbitrary).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("sampled", "every pixel")


def write_latents(path: Path, nside: int, dim: int, seed: int = 0) -> int:
    """``mu`` (12·nside², dim) float32 of mixed non-Gaussian sources; returns n."""
    import h5py
    import numpy as np

    n = 12 * nside**2
    rng = np.random.default_rng(seed)
    mixing = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    kinds = (lambda m: rng.uniform(-1, 1, m), lambda m: rng.laplace(size=m),
             lambda m: rng.exponential(size=m), lambda m: rng.uniform(-1, 1, m) ** 3)
    with h5py.File(path, "w") as h5:
        mu = h5.create_dataset("mu", (n, dim), np.float32, chunks=(1 << 16, dim))
        for a in range(0, n, 1 << 20):
            m = min(1 << 20, n - a)
            sources = np.column_stack([kinds[j % len(kinds)](m) for j in range(dim)])
            mu[a:a + m] = sources @ mixing
    return n


def run_case(case: str, path: Path, outdir: Path) -> dict:
    """One case in this process: ic0's values as maps computes them, saved as .npy."""
    import h5py
    import numpy as np

    from vaemap import maps, stats

    if case == "every pixel":
        stats.ICA_FIT_ROWS = 1 << 62  # the fit on every pixel, as before
    start = time.perf_counter()  # after the imports
    with h5py.File(path) as h5:
        values = np.asarray(maps._IcaColumns(h5["mu"])[:, 0], dtype=np.float32)
    elapsed = time.perf_counter() - start
    np.save(outdir / f"{case.replace(' ', '_')}.npy", values)
    return {"case": case, "seconds": elapsed,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nside", type=int, default=1024)
    parser.add_argument("--latents", type=int, default=7)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one child
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        path = Path(args.path)
        print(json.dumps(run_case(args.case, path, path.parent)))
        return

    import numpy as np

    results = {}
    with tempfile.TemporaryDirectory(prefix="vaemap-ica-bench-") as tmp:
        path = Path(tmp) / "latents.h5"
        n = write_latents(path, args.nside, args.latents)
        for case in CASES:
            proc = subprocess.run([sys.executable, __file__, "--case", case, "--path",
                                   str(path)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{case} failed:\n{proc.stderr}")
            results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        sampled = np.load(Path(tmp) / "sampled.npy")
        every = np.load(Path(tmp) / "every_pixel.npy")
        latents = np.asarray(h5_mu(path), dtype=np.float64)
    # the baseline's ic0 may be another of the sampled rotation's components
    from vaemap import stats

    whole = stats.IcaRotation.fit(latents[stats.ica_sample(n)]).transform(latents)
    match = float(np.abs(np.corrcoef(every, whole.T)[0, 1:]).max())
    print(f"nside {args.nside}: {n / 1e6:.1f} M pixels, {args.latents} latents "
          f"({n * args.latents * 4 / 2**20:.0f} MiB of float32 mu)")
    print(f"{'case':<12} {'seconds':>8} {'peak MiB':>9}")
    for r in results.values():
        print(f"{r['case']:<12} {r['seconds']:8.1f} {r['peak_rss_mib']:9.0f}")
    base, new = results["every pixel"], results["sampled"]
    print(f"sampled vs every-pixel baseline: time ×{new['seconds'] / base['seconds']:.2f}, "
          f"peak memory ×{new['peak_rss_mib'] / base['peak_rss_mib']:.2f}; the baseline's ic0 "
          f"matches a sampled component at |r| {match:.5f}; sampled ic0 std "
          f"{float(sampled.std()):.3f}")
    print(json.dumps(results))


def h5_mu(path: Path):
    import h5py

    with h5py.File(path) as h5:
        return h5["mu"][...]


if __name__ == "__main__":
    main()
