"""Baselines scored like the VAE: PCA, ICA and the supervised probes.

Every baseline reads the profiles exactly as the model does
(:func:`normalised_profiles`: the model's normaliser, its pixels) and is
scored by the same metrics (:mod:`vaemap.metrics`) and the same anomaly
statistic (:func:`anomaly_score`, through
:func:`vaemap.model.reconstruction_errors`). The unsupervised ones are
competitors: :func:`masked_pca` (principal components of the observed bins
only, EM-PCA) and its ICA rotation, and :func:`pca_zero_filled`. The
supervised probes, :func:`linear_probe` and :func:`boosted_probe`, are
references for how strongly each factor is expressed in the data at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from vaemap.instrument import night_mask
from vaemap.metrics import FACTOR_NAMES
from vaemap.products import PROFILES, open_product
from vaemap.stats import anomaly_z

__all__ = [
    "BASELINE_NAMES",
    "PROBE_NAMES",
    "NormalisedProfiles",
    "Representation",
    "anomaly_score",
    "boosted_probe",
    "fit_noise",
    "linear_probe",
    "masked_pca",
    "normalised_profiles",
    "pca_zero_filled",
]

#: The unsupervised baselines as ``evaluate`` stores them (``metrics.json``,
#: ``baselines.<key>``) and the names the tables give them.
BASELINE_NAMES: dict[str, str] = {
    "pca": "PCA (mask-aware)",
    "ica_pca": "ICA of the mask-aware PCA",
    "pca_zero_filled": "PCA (gaps zero-filled)",
}
#: The supervised references (``metrics.json`` keys) and their names.
PROBE_NAMES: dict[str, str] = {
    "linear_probe": "linear probe (supervised reference)",
    "boosted_probe": "boosted-tree probe (supervised reference)",
}


class NormalisedProfiles(NamedTuple):
    """The profiles as the VAE sees them: ``x`` and ``mask`` (n, channels, bins)
    float64 (masked bins 0), ``std`` (channels, bins) the kelvin per normalised
    unit, ``pix`` and ``lat`` (n,), ``count`` (n, channels, bins) the observations
    in each bin."""

    pix: np.ndarray
    lat: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    std: np.ndarray
    count: np.ndarray


def normalised_profiles(profiles: str | Path, model_path: str | Path,
                        checkpoint: tuple[Any, Any] | None = None) -> NormalisedProfiles:
    """Read ``profiles`` and normalise them with the model's normaliser (checked
    against the model's nside, channels and bins). ``checkpoint`` is the
    ``(normaliser, checkpoint dict)`` of the model when already loaded."""
    import torch

    if checkpoint is None:
        from vaemap.model import load_checkpoint

        checkpoint = load_checkpoint(model_path)[1:]
    norm, ckpt = checkpoint
    with open_product(profiles, PROFILES, nside=int(ckpt["nside"]), channels=ckpt["channels"],
                      bins=int(ckpt["arch"]["bins"]), against=f"the model {model_path}") as h5:
        pix, lat = h5["pix"][...], h5["lat"][...]
        prof = torch.from_numpy(h5["profile"][...])
        count = h5["count"][...].astype(np.float64)
    x, mask = norm.to_model(prof, torch.from_numpy(lat))
    return NormalisedProfiles(pix, lat, x.numpy().astype(np.float64),
                              mask.numpy().astype(np.float64),
                              norm.std.numpy().astype(np.float64), count)


class Representation(NamedTuple):
    """A baseline's code of every pixel, ``code`` (n, components), and its
    reconstruction of the normalised profiles, ``recon`` (n, channels, bins)."""

    code: np.ndarray
    recon: np.ndarray


def pca_zero_filled(data: NormalisedProfiles, n_components: int) -> Representation:
    """PCA of the normalised profiles with every gap set to 0 (the normalisation
    mean): the simplest baseline, and a biased one, since a pixel's pattern of
    gaps (latitude, orbit coverage) then becomes part of its code."""
    n = len(data.pix)
    flat = data.x.reshape(n, -1)
    centre = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - centre, full_matrices=False)
    basis = vt[:n_components]
    scores = (flat - centre) @ basis.T
    return Representation(scores, (scores @ basis + centre).reshape(data.x.shape))


def masked_pca(data: NormalisedProfiles, n_components: int, *, impute_components: int = 32,
               iterations: int = 50, tol: float = 1e-5) -> tuple[Representation, np.ndarray]:
    """PCA that sees only the observed bins (EM-PCA, Roweis 1998).

    Gaps are filled with the reconstruction of the current
    ``impute_components``-component PCA and the PCA refitted, until the filled
    values change by less than ``tol`` (relative) or after ``iterations``; the
    code is then the first ``n_components`` principal components of the filled
    profiles, and its reconstruction uses those components only. Returns the
    :class:`Representation` and the ``impute_components`` scores of every
    pixel (n, k), the compact summary of the data the non-linear probe reads.
    """
    n = len(data.pix)
    obs = data.mask.reshape(n, -1) > 0
    filled = np.where(obs, data.x.reshape(n, -1), 0.0)
    k = min(max(impute_components, n_components), *filled.shape)
    previous = None
    for _ in range(iterations):
        centre = filled.mean(0)
        # the eigenvectors of the bins' covariance: (bins x bins), cheaper than an SVD
        cov = (filled - centre).T @ (filled - centre) / max(n - 1, 1)
        _, vectors = np.linalg.eigh(cov)
        basis = vectors[:, ::-1][:, :k].T
        scores = (filled - centre) @ basis.T
        recon = scores @ basis + centre
        gaps = recon[~obs]
        filled[~obs] = gaps
        if previous is not None and gaps.size and (np.linalg.norm(gaps - previous)
                                                   <= tol * (np.linalg.norm(gaps) + 1e-12)):
            break
        previous = gaps.copy()
    code = scores[:, :n_components]
    recon = (code @ basis[:n_components] + centre).reshape(data.x.shape)
    return Representation(code, recon), scores


def fit_noise(residual: np.ndarray, mask: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The variance a baseline's own residuals show per channel and bin, as the
    VAE's calibrated likelihood models it: ``v_obs/n + v_floor``, fitted by least
    squares of the squared residuals on 1/n (both ≥ 0). ``residual`` (normalised),
    ``mask`` and ``count`` are (n, channels, bins); returns the variance of every
    pixel's bins, (n, channels, bins), so baselines are scored like the model."""
    r2 = np.where(mask > 0, residual**2, 0.0)
    inv = np.where(mask > 0, 1.0 / np.maximum(count, 1.0), 0.0)
    w = mask.sum(0)
    mean_r2 = r2.sum(0) / np.maximum(w, 1.0)
    mean_inv = inv.sum(0) / np.maximum(w, 1.0)
    cov = (r2 * inv).sum(0) / np.maximum(w, 1.0) - mean_r2 * mean_inv
    var_inv = (inv**2).sum(0) / np.maximum(w, 1.0) - mean_inv**2
    slope = np.where(var_inv > 1e-12, cov / np.maximum(var_inv, 1e-12), 0.0)
    v_obs = np.clip(slope, 0.0, None)
    v_floor = np.clip(mean_r2 - v_obs * mean_inv, 0.0, None)
    total = v_obs + v_floor
    # bins whose fit has no spread (or no data) take the plain mean square
    fallback = np.where(total > 0, total, np.maximum(mean_r2, 1e-6))
    v_obs = np.where(total > 0, v_obs, 0.0)
    v_floor = np.where(total > 0, v_floor, fallback)
    return v_obs[None] / np.maximum(count, 1.0) + np.maximum(v_floor, 1e-6 * fallback)[None]


def anomaly_score(data: NormalisedProfiles, recon: np.ndarray, metric: str,
                  channels: Sequence[int], band_deg: float = 0.0) -> np.ndarray:
    """Robust z of a reconstruction's error chosen by ``metric`` (an
    ``encode.anomaly_metric``) over the profiles of ``channels``, within
    |latitude| bands of ``band_deg`` (``encode.score_band_deg``,
    :func:`vaemap.stats.anomaly_z`), computed like the VAE's
    (:func:`vaemap.model.reconstruction_errors`); for the calibrated
    metrics each bin's σ is fitted to the reconstruction's own residuals
    (:func:`fit_noise`), as the VAE learns its own."""
    import torch

    from vaemap.model import ANOMALY_ERRORS, reconstruction_errors

    residual = recon - data.x
    sigma_k = np.sqrt(fit_noise(residual, data.mask, data.count)) * data.std
    errors = reconstruction_errors(torch.from_numpy(residual * data.std),
                                   torch.from_numpy(data.mask), torch.from_numpy(data.std),
                                   torch.from_numpy(sigma_k),
                                   torch.from_numpy(night_mask(channels, data.x.shape[2])))
    return anomaly_z(errors[ANOMALY_ERRORS[metric]].numpy(), data.lat, band_deg)


def _probe_folds(data: NormalisedProfiles, nside: int, folds: int) -> np.ndarray:
    """Fold of every pixel: whole NESTED tiles at nside/8, so neighbours of a
    training pixel are not in its test fold."""
    from vaemap.healpix import parent_pix

    tiles = parent_pix(data.pix, nside, max(nside // 8, 1))
    return np.searchsorted(np.unique(tiles), tiles) % folds


def _probe_scores(factors: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(pred).all(1)
    r2 = 1.0 - ((factors[ok] - pred[ok]) ** 2).mean(0) / factors[ok].var(0)
    rho = [abs(stats.spearmanr(pred[ok, j], factors[ok, j])[0]) for j in range(factors.shape[1])]
    return {"r2": dict(zip(FACTOR_NAMES, np.round(r2, 4).tolist(), strict=True)),
            "best_abs_spearman": dict(zip(FACTOR_NAMES, np.round(rho, 4).tolist(),
                                          strict=True))}


def boosted_probe(data: NormalisedProfiles, nside: int, factors: np.ndarray,
                  summary: np.ndarray, exclude: np.ndarray | None = None, folds: int = 5,
                  seed: int = 0) -> dict[str, Any]:
    """What the data carry, read non-linearly: gradient-boosted trees
    (scikit-learn's histogram boosting) from ``summary`` (n, k), the profiles'
    mask-aware principal components (:func:`masked_pca`), and latitude to each
    factor, cross-validated over whole sky tiles like :func:`linear_probe`
    (same folds, same exclusions, same scores). A supervised reference: an
    unsupervised latent near it carries what the profiles hold."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    feats = np.column_stack([summary, np.sin(np.radians(data.lat)), np.abs(data.lat) / 90.0])
    fold = _probe_folds(data, nside, folds)
    use = np.ones(len(feats), bool) if exclude is None else ~np.asarray(exclude, bool)
    pred = np.full(factors.shape, np.nan)
    for k in range(folds):
        train, test = (fold != k) & use, (fold == k) & use
        if not train.any() or not test.any():
            continue
        for j in range(factors.shape[1]):
            model = HistGradientBoostingRegressor(max_iter=150, learning_rate=0.1,
                                                  max_leaf_nodes=15, l2_regularization=1.0,
                                                  random_state=seed)
            model.fit(feats[train], factors[train, j])
            pred[test, j] = model.predict(feats[test])
    return _probe_scores(factors, pred)


def linear_probe(data: NormalisedProfiles, nside: int, factors: np.ndarray,
                 exclude: np.ndarray | None = None, folds: int = 5, ridge: float = 1e-3
                 ) -> dict[str, Any]:
    """How well each factor can be read linearly from the profiles themselves.

    A ridge regression from the normalised profile, its mask and latitude
    (sin, |lat|) to each factor, scored by ``folds``-fold cross-validation
    over whole NESTED tiles (so neighbours of a training pixel are not in its
    test fold). This is a reference, not a competitor: a factor that even a
    supervised linear read-out of all bins recovers poorly is weakly expressed
    in the data, and no unsupervised latent can be expected to carry it.
    Returns ``{"r2": {factor: R²}, "best_abs_spearman": {factor: |ρ|}}`` of
    the held-out predictions (``factors`` is (n, n_factors), rows matching
    the profiles; ``ridge`` is the penalty per pixel on standardised features).
    Pixels flagged in ``exclude`` (e.g. injected anomalies, whose factor values
    are outliers that would dominate R²) are neither fitted nor scored.
    """
    pix, lat, x, mask = data.pix, data.lat, data.x, data.mask
    n = len(pix)
    feats = np.column_stack([x.reshape(n, -1), mask.reshape(n, -1),
                             np.sin(np.radians(lat)), np.abs(lat) / 90.0])
    scale = feats.std(0)
    feats = (feats - feats.mean(0)) / np.where(scale > 0, scale, 1.0)
    fold = _probe_folds(data, nside, folds)
    pred = np.full(factors.shape, np.nan)
    use = np.ones(n, bool) if exclude is None else ~np.asarray(exclude, bool)
    for k in range(folds):
        train, test = (fold != k) & use, (fold == k) & use
        if not train.any() or not test.any():
            continue
        a, y = feats[train], factors[train]
        centre = y.mean(0)
        weights = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]),
                                  a.T @ (y - centre))
        pred[test] = feats[test] @ weights + centre
    return _probe_scores(factors, pred)
