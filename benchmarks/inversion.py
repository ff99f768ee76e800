"""Physics-based inversion vs the VAE encoder: time per pixel and parameter recovery.

    python benchmarks/inversion.py [--results results] [--pixels 200] [--iterations 8]

The reference Moseley et al. (2020) compare against: fit the thermal model's
parameters (albedo, H-parameter, east/west and north/south slope) to each
pixel's observed diurnal profile by damped Gauss–Newton (Levenberg–Marquardt,
forward-difference Jacobian), using vaemap's own Hayne-model solver
vectorised over all pixels at once (so this baseline is already far faster
than a per-pixel fit).  Needs a finished demo run (profiles.h5, latents.h5,
model.pt and the simulated truth in ``--results``).

Prints the inversion time per pixel against the encoder's (encode + decode of
every pixel, measured here), and the Spearman correlation of the fitted
parameters and of the best VAE latent with the ground truth on the same pixels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from vaemap import thermal
from vaemap.metrics import spearman_matrix, truth_at
from vaemap.model import latitude_condition, load_checkpoint
from vaemap.thermal import facet_geometry

PARAMS = ("albedo", "h_param", "slope_ew", "slope_ns")
LOWER = np.array([0.02, 0.01, -30.0, -30.0])
UPPER = np.array([0.30, 0.30, 30.0, 30.0])
STEP = np.array([0.005, 0.005, 0.5, 0.5])  # forward-difference steps


def forward(theta: np.ndarray, lat: np.ndarray, local_time: np.ndarray) -> np.ndarray:
    """Model profiles (n, bins), kelvin, for parameters theta (n, 4)."""
    slope, azimuth = facet_geometry(theta[:, 2], theta[:, 3])
    return thermal.surface_temperature(lat, local_time, albedo=theta[:, 0], h_param=theta[:, 1],
                                       slope_deg=slope, azimuth_deg=azimuth, steps_per_day=120)


def invert(obs: np.ndarray, mask: np.ndarray, lat: np.ndarray, local_time: np.ndarray,
           iterations: int) -> np.ndarray:
    """Levenberg–Marquardt fit of PARAMS to every profile at once; returns (n, 4)."""
    n = obs.shape[0]
    theta = np.tile([0.11, 0.06, 0.0, 0.0], (n, 1))
    damping = np.full(n, 1e-2)
    resid = (forward(theta, lat, local_time) - obs) * mask
    cost = (resid**2).sum(1)
    for _ in range(iterations):
        jac = np.empty((n, obs.shape[1], len(PARAMS)))
        for k in range(len(PARAMS)):
            shifted = theta.copy()
            shifted[:, k] += STEP[k]
            jac[:, :, k] = ((forward(shifted, lat, local_time) - obs) * mask - resid) / STEP[k]
        jtj = np.einsum("nbi,nbj->nij", jac, jac)
        jtr = np.einsum("nbi,nb->ni", jac, resid)
        diag = np.einsum("nii->ni", jtj)
        lhs = jtj + damping[:, None, None] * np.eye(len(PARAMS))[None] * diag[:, :, None]
        step = -np.linalg.solve(lhs + 1e-9 * np.eye(len(PARAMS))[None], jtr[:, :, None])[..., 0]
        trial = np.clip(theta + step, LOWER, UPPER)
        trial_resid = (forward(trial, lat, local_time) - obs) * mask
        trial_cost = (trial_resid**2).sum(1)
        better = trial_cost < cost
        theta[better], resid[better], cost[better] = trial[better], trial_resid[better], \
            trial_cost[better]
        damping = np.where(better, damping / 3.0, damping * 4.0)
    return theta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--pixels", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args()
    res = args.results
    with h5py.File(res / "profiles.h5") as h5:
        pix, lat = h5["pix"][...], h5["lat"][...]
        prof = h5["profile"][...]
        nside = int(h5.attrs["nside"])
        edges = h5.attrs["bin_edges_h"]
    with h5py.File(res / "latents.h5") as h5:
        mu = h5["mu"][...]
    truth = truth_at(res / "simulate" / "truth.h5", pix, nside)
    rng = np.random.default_rng(0)
    ok = (np.abs(lat) < 60) & (np.nan_to_num(truth["anomaly_kind"]) == 0)
    sel = np.sort(rng.choice(np.flatnonzero(ok), size=min(args.pixels, ok.sum()), replace=False))
    local_time = 0.5 * (edges[1:] + edges[:-1])
    obs = np.nan_to_num(prof[sel, 0])
    mask = np.isfinite(prof[sel, 0]).astype(float)

    t0 = time.perf_counter()
    theta = invert(obs, mask, lat[sel], local_time, args.iterations)
    t_inv = (time.perf_counter() - t0) / sel.size

    model, norm, ckpt = load_checkpoint(res / "model" / "model.pt")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for a in range(0, pix.size, 1024):
            p = torch.from_numpy(prof[a:a + 1024])
            la = torch.from_numpy(lat[a:a + 1024])
            x, m = norm.to_model(p, la)
            z, _ = model.encode(x, m)
            model.decode(z, latitude_condition(la, ckpt["arch"]["n_cond"]))
    t_enc = (time.perf_counter() - t0) / pix.size

    factors = np.column_stack([truth[k][sel] for k in PARAMS])
    fit_rho = np.diag(spearman_matrix(theta, factors))
    # The VAE is scored on the pole-facing slope (its thermal effect), the fit on slope_ns.
    vae_factors = factors.copy()
    vae_factors[:, 3] = truth["slope_pole"][sel]
    vae_rho = np.abs(spearman_matrix(mu[sel], vae_factors)).max(axis=0)
    print(f"physics inversion vs VAE encoder on {sel.size} pixels (|lat| < 60°, no anomalies)")
    print(f"  inversion ({args.iterations} LM iterations, vectorised): "
          f"{t_inv * 1e3:10.2f} ms/pixel")
    print(f"  VAE encode + decode (all {pix.size} pixels):       {t_enc * 1e3:10.4f} ms/pixel")
    print(f"  ratio: the encoder is {t_inv / t_enc:,.0f}x faster per pixel")
    print("  parameter recovery, Spearman with the ground truth (fit | best VAE latent):")
    for name, a, b in zip(PARAMS, fit_rho, vae_rho, strict=True):
        print(f"    {name:9s} {a:+.3f} | {b:.3f}")


if __name__ == "__main__":
    main()
