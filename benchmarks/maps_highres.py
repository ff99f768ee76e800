"""Writing and reading a map at Moseley's 200 m resolution: nside 8192 (805 M
pixels) with 10 M observed pixels.

    python benchmarks/maps_highres.py [--nside 8192] [--pixels 10000000] [--skip-baseline]

Each case runs in a fresh process, so its peak resident memory is its own:

* ``vaemap fits``  — :func:`vaemap.healpix.write_partial_map` from the
  (pixel, value) pairs, then read back as pairs with astropy;
* ``vaemap hsp``   — :func:`vaemap.healpix.write_healsparse_map`, read back with
  ``healsparse.HealSparseMap.read``;
* ``healpy``       — the named baseline: ``healpy.write_map(partial=True)`` of a
  full-sphere float32 array (what vaemap did before), the usual way.

Prints wall time (write + read) and peak RSS per case, and each ratio against
the baseline; the target is < 1 GiB for vaemap's cases. The observed pixels are
a survey-like patch: whole NESTED blocks of 4096 pixels (a 1.5 km square at
nside 8192), spread over the sphere.
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

CASES = ("vaemap fits", "vaemap hsp", "healpy")


def observed(nside: int, n: int, seed: int = 0):
    """``n`` observed NESTED pixels at ``nside`` in blocks of 4096 and their values."""
    import numpy as np

    block = 4096
    rng = np.random.default_rng(seed)
    starts = rng.choice(12 * nside**2 // block, size=-(-n // block), replace=False) * block
    pix = (starts[:, None] + np.arange(block)[None, :]).ravel()[:n]
    return pix.astype(np.int64), rng.normal(250.0, 20.0, pix.size).astype(np.float32)


def run_case(case: str, nside: int, n: int, outdir: Path) -> dict:
    """One case in this process: write and read back; returns the timings."""
    import healpy as hp
    import healsparse
    import numpy as np
    from astropy.io import fits

    from vaemap.healpix import write_healsparse_map, write_partial_map

    pix, values = observed(nside, n)
    start = time.perf_counter()  # after the imports: they are not the writer's cost
    if case == "vaemap fits":
        path = outdir / "map.fits"
        write_partial_map(path, pix, values, nside, column="TB", unit="K")
        written = time.perf_counter()
        with fits.open(path, memmap=True) as hdus:
            got_pix = np.asarray(hdus[1].data["PIXEL"])
            got = np.asarray(hdus[1].data["TB"])
            check = bool(np.array_equal(got_pix, np.sort(pix)))
            check &= bool(got[np.searchsorted(got_pix, pix[0])] == values[0])
    elif case == "vaemap hsp":
        path = outdir / "map.hsp"
        write_healsparse_map(path, pix, values, nside, unit="K")
        written = time.perf_counter()
        sparse = healsparse.HealSparseMap.read(str(path))
        check = bool(sparse.get_values_pix(pix[:1000], nest=True).tolist()
                     == values[:1000].tolist())
        check &= bool(sparse.n_valid == pix.size)
    else:
        path = outdir / "healpy.fits"
        full = np.full(hp.nside2npix(nside), hp.UNSEEN, dtype=np.float32)
        full[pix] = values
        hp.write_map(str(path), full, nest=True, partial=True, dtype=np.float32,
                     overwrite=True)
        del full
        written = time.perf_counter()
        got = hp.read_map(str(path), nest=True, partial=True, dtype=np.float32)
        check = bool(got[pix[0]] == values[0])
    done = time.perf_counter()
    return {"case": case, "write_s": written - start, "read_s": done - written,
            "total_s": done - start, "file_mb": path.stat().st_size / 2**20,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "read_back_ok": check}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nside", type=int, default=8192)
    parser.add_argument("--pixels", type=int, default=10_000_000)
    parser.add_argument("--skip-baseline", action="store_true",
                        help="leave out the healpy baseline (it needs ~7 GB at nside 8192)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one child
    parser.add_argument("--outdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.nside, args.pixels, Path(args.outdir))))
        return

    results = {}
    with tempfile.TemporaryDirectory(prefix="vaemap-maps-bench-") as tmp:
        for case in CASES:
            if case == "healpy" and args.skip_baseline:
                continue
            proc = subprocess.run([sys.executable, __file__, "--case", case, "--nside",
                                   str(args.nside), "--pixels", str(args.pixels),
                                   "--outdir", tmp], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{case} failed:\n{proc.stderr}")
            results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"nside {args.nside} ({12 * args.nside**2 / 1e6:.0f} M pixels), "
          f"{args.pixels / 1e6:g} M observed")
    print(f"{'case':<12} {'write s':>8} {'read s':>7} {'file MB':>8} {'peak MiB':>9}  read back")
    for r in results.values():
        print(f"{r['case']:<12} {r['write_s']:8.2f} {r['read_s']:7.2f} {r['file_mb']:8.1f} "
              f"{r['peak_rss_mib']:9.0f}  {'ok' if r['read_back_ok'] else 'WRONG'}")
    if "healpy" in results:
        base = results["healpy"]
        for case in ("vaemap fits", "vaemap hsp"):
            r = results[case]
            print(f"{case} vs healpy baseline: time ×{r['total_s'] / base['total_s']:.2f}, "
                  f"peak memory ×{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
