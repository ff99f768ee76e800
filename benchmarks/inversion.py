"""Physics-based inversion vs the VAE encoder: time per pixel and parameter recovery.

    python benchmarks/inversion.py [--results results] [--pixels 200] [--iterations 8]
                                   [--rocks]

The reference Moseley et al. (2020) compare against: fit the thermal model's
parameters (albedo, H-parameter, east/west and north/south slope; with
``--rocks`` the rock fraction too, mixed with the regolith by channel-7
radiance as the simulator and the physics decoder mix them) to each pixel's
observed diurnal profile by damped Gauss–Newton (Levenberg–Marquardt,
forward-difference Jacobian), using vaemap's own Hayne-model solver
vectorised over all pixels at once (so this baseline is already far faster
than a per-pixel fit).  Needs a finished run (profiles.h5, latents.h5, model.pt
and the simulated truth in ``--results``).

Prints the inversion time per pixel against the encoder's (measured here), and
the parameters' recovery on the same pixels. For a network decoder: the
Spearman ρ of the fit and of the best latent (encode + decode timed). For a
physics decoder (``config/physics.yaml``): the RMSE in each parameter's unit and
ρ of the fit and of the decoder's physical parameters, and the fraction of
pixels within ±1σ of them (encode alone timed: the parameters are the
encoder's).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from vaemap import instrument, thermal
from vaemap.metrics import parameter_scores, spearman_matrix, truth_at
from vaemap.model import latitude_condition, load_checkpoint, refine_physical
from vaemap.thermal import facet_geometry

PARAMS = ("albedo", "h_param", "slope_ew", "slope_ns", "rock_fraction")
LOWER = np.array([0.02, 0.01, -30.0, -30.0, 0.0])
UPPER = np.array([0.30, 0.30, 30.0, 30.0, 0.5])
STEP = np.array([0.005, 0.005, 0.5, 0.5, 0.002])  # forward-difference steps
START = np.array([0.11, 0.06, 0.0, 0.0, 0.005])


def forward(theta: np.ndarray, lat: np.ndarray, local_time: np.ndarray) -> np.ndarray:
    """Model profiles (n, bins), kelvin, for parameters theta (n, 4 or 5): with a
    rock fraction, rock and regolith mixed by channel-7 band radiance."""
    slope, azimuth = facet_geometry(theta[:, 2], theta[:, 3])
    kwargs = {"albedo": theta[:, 0], "h_param": theta[:, 1], "slope_deg": slope,
              "azimuth_deg": azimuth, "steps_per_day": 120}
    if theta.shape[1] == 4:
        return thermal.surface_temperature(lat, local_time, **kwargs)
    # (every column's rocks solved: a fraction of 0 would leave them unsolved, NaN)
    t_reg, t_rock = thermal.surface_temperature_components(
        lat, local_time, rock_fraction=np.maximum(theta[:, 4], 1e-9), **kwargs)
    f = theta[:, 4:5]
    mixed = (1 - f) * instrument.band_radiance(t_reg, 7) + f * instrument.band_radiance(t_rock, 7)
    return instrument.brightness_temperature(mixed, 7)


def invert(obs: np.ndarray, mask: np.ndarray, lat: np.ndarray, local_time: np.ndarray,
           iterations: int, n_params: int = 4) -> np.ndarray:
    """Levenberg–Marquardt fit of the first ``n_params`` of PARAMS to every profile
    at once; returns (n, n_params)."""
    n = obs.shape[0]
    lower, upper, step_size = LOWER[:n_params], UPPER[:n_params], STEP[:n_params]
    theta = np.tile(START[:n_params], (n, 1))
    damping = np.full(n, 1e-2)
    resid = (forward(theta, lat, local_time) - obs) * mask
    cost = (resid**2).sum(1)
    for _ in range(iterations):
        jac = np.empty((n, obs.shape[1], n_params))
        for k in range(n_params):
            shifted = theta.copy()
            shifted[:, k] += step_size[k]
            jac[:, :, k] = ((forward(shifted, lat, local_time) - obs) * mask - resid) / step_size[k]
        jtj = np.einsum("nbi,nbj->nij", jac, jac)
        jtr = np.einsum("nbi,nb->ni", jac, resid)
        diag = np.einsum("nii->ni", jtj)
        eye = np.eye(n_params)[None]
        lhs = jtj + damping[:, None, None] * eye * diag[:, :, None]
        step = -np.linalg.solve(lhs + 1e-9 * eye, jtr[:, :, None])[..., 0]
        trial = np.clip(theta + step, lower, upper)
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
    parser.add_argument("--rocks", action="store_true",
                        help="fit the rock fraction too (five parameters)")
    args = parser.parse_args()
    res = args.results
    with h5py.File(res / "profiles.h5") as h5:
        pix, lat = h5["pix"][...], h5["lat"][...]
        prof = h5["profile"][...]
        nside = int(h5.attrs["nside"])
        edges = h5.attrs["bin_edges_h"]
    with h5py.File(res / "latents.h5") as h5:
        mu = h5["mu"][...]
        physical = ({k: (h5[k][...], h5[f"{k}_sigma"][...]) for k in PARAMS}
                    if "physics_error" in h5 else None)
        # the per-pixel refinement encode ran, if any: timed with the encoder
        refine = int(json.loads(h5.attrs["config"])["encode"].get("refine_iterations", 0))
    truth = truth_at(res / "simulate" / "truth.h5", pix, nside)
    rng = np.random.default_rng(0)
    ok = (np.abs(lat) < 60) & (np.nan_to_num(truth["anomaly_kind"]) == 0)
    sel = np.sort(rng.choice(np.flatnonzero(ok), size=min(args.pixels, ok.sum()), replace=False))
    local_time = 0.5 * (edges[1:] + edges[:-1])
    obs = np.nan_to_num(prof[sel, 0])
    mask = np.isfinite(prof[sel, 0]).astype(float)
    n_params = 5 if args.rocks else 4

    t0 = time.perf_counter()
    theta = invert(obs, mask, lat[sel], local_time, args.iterations, n_params)
    t_inv = (time.perf_counter() - t0) / sel.size

    model, norm, ckpt = load_checkpoint(res / "model" / "model.pt")
    torch.set_num_threads(2)
    with h5py.File(res / "profiles.h5") as h5:
        count = h5["count"][...].astype(np.float32)
    t0 = time.perf_counter()
    with torch.no_grad():
        for a in range(0, pix.size, 1024):
            p = torch.from_numpy(prof[a:a + 1024])
            la = torch.from_numpy(lat[a:a + 1024])
            x, m = norm.to_model(p, la)
            z, _ = model.encode(x, m)
            if physical is None:
                model.decode(z, latitude_condition(la, ckpt["arch"]["n_cond"]))
            elif refine:
                variance = model.noise.variance(torch.from_numpy(count[a:a + 1024]))
                refine_physical(model, z, x, m, variance, la, refine)
    t_enc = (time.perf_counter() - t0) / pix.size

    what = ("encode + decode" if physical is None
            else f"encode + {refine} refinement iterations" if refine else "encode")
    print(f"physics inversion vs VAE encoder on {sel.size} pixels (|lat| < 60°, no anomalies)")
    print(f"  inversion ({n_params} parameters, {args.iterations} LM iterations, vectorised): "
          f"{t_inv * 1e3:10.2f} ms/pixel")
    print(f"  VAE {what} (all {pix.size} pixels):       {t_enc * 1e3:10.4f} ms/pixel")
    print(f"  ratio: the encoder is {t_inv / t_enc:,.0f}x faster per pixel")
    factors = np.column_stack([truth[k][sel] for k in PARAMS])
    if physical is not None:
        # the inversion without rocks stands for a rock fraction of 0
        fitted = np.column_stack([theta, np.zeros((sel.size, 5 - n_params))])
        fit = parameter_scores(fitted, np.full_like(fitted, np.nan), factors, PARAMS)
        vae = parameter_scores(np.column_stack([physical[k][0][sel] for k in PARAMS]),
                               np.column_stack([physical[k][1][sel] for k in PARAMS]),
                               factors, PARAMS)
        print("  parameter recovery against the ground truth "
              "(fit | physics decoder; RMSE in the parameter's unit, Spearman ρ, ±1σ coverage):")
        for name in PARAMS:
            a, b = fit[name], vae[name]
            print(f"    {name:13s} RMSE {a['rmse']:.4g} | {b['rmse']:.4g}   "
                  f"ρ {a['spearman']:+.3f} | {b['spearman']:+.3f}   "
                  f"coverage {b['coverage_1sigma']:.2f}")
        return
    fit_rho = np.diag(spearman_matrix(theta, factors[:, :n_params]))
    # The VAE is scored on the pole-facing slope (its thermal effect), the fit on slope_ns.
    vae_factors = factors.copy()
    vae_factors[:, 3] = truth["slope_pole"][sel]
    vae_rho = np.abs(spearman_matrix(mu[sel], vae_factors)).max(axis=0)
    print("  parameter recovery, Spearman with the ground truth (fit | best VAE latent):")
    for k, name in enumerate(PARAMS):
        a = f"{fit_rho[k]:+.3f}" if k < n_params else "  —   "
        print(f"    {name:13s} {a} | {vae_rho[k]:.3f}")


if __name__ == "__main__":
    main()
