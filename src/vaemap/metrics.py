"""The metrics that score a representation against a simulated Moon's ground truth.

One definition each, below the steps, so that ``evaluate``, the benchmarks and
the tests score every method (the VAE, its ICA rotation, the baselines) the
same way: rank correlations of codes with factors, one-to-one matching, MIG,
DCI, the anomaly ROC-AUC and average precision, and the injected regions the
catalogue finds. :func:`truth_at` reads the ground truth at the map's pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from vaemap.products import ANOMALY_KINDS, SCORED_FACTORS, TRUTH, open_product

__all__ = [
    "FACTOR_NAMES",
    "average_precision",
    "dci",
    "linear_readout",
    "matched_assignment",
    "mutual_information_gap",
    "parameter_scores",
    "region_recall",
    "roc_auc",
    "score_code",
    "spearman_matrix",
    "truth_at",
]

#: Factors scored against the latents (see vaemap.products.SCORED_FACTORS).
FACTOR_NAMES = SCORED_FACTORS


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with mid-ranks for ties).

    NaN when ``label`` holds only one class.
    """
    score, label = np.asarray(score, float), np.asarray(label).astype(bool)
    n_pos, n_neg = label.sum(), (~label).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(score: np.ndarray, label: np.ndarray) -> float:
    """Average precision: mean of the precision at the rank of each positive."""
    score, label = np.asarray(score, float), np.asarray(label).astype(bool)
    if label.sum() == 0:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    hits = label[order]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precision[hits].mean())


def spearman_matrix(latents: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Spearman ρ of each latent (columns of ``latents``, (n, L)) with each factor
    (columns of ``factors``, (n, F)); shape (L, F). Constant columns give 0."""
    n_lat, n_fac = latents.shape[1], factors.shape[1]
    rho = np.zeros((n_lat, n_fac))
    ranked_l = np.apply_along_axis(stats.rankdata, 0, latents)
    ranked_f = np.apply_along_axis(stats.rankdata, 0, factors)
    for i in range(n_lat):
        for j in range(n_fac):
            a, b = ranked_l[:, i], ranked_f[:, j]
            if a.std() > 0 and b.std() > 0:
                rho[i, j] = np.corrcoef(a, b)[0, 1]
    return rho


def _discretise(values: np.ndarray, bins: int) -> np.ndarray:
    """Equal-count bins (ranks), robust to skewed and bimodal factors."""
    ranks = stats.rankdata(values, method="average")
    return np.minimum((ranks - 1) * bins // max(values.size, 1), bins - 1).astype(np.int64)


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two discrete integer arrays."""
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def mutual_information_gap(code: np.ndarray, factors: np.ndarray, bins: int = 20
                           ) -> tuple[float, np.ndarray]:
    """Mutual Information Gap (Chen et al. 2018) and the per-factor gaps.

    For each factor, the difference between the largest and second-largest
    mutual information with any single latent, divided by the factor's
    entropy; both latents and factors are discretised into ``bins``
    equal-count bins. 1 = each factor captured by exactly one latent; 0 = no
    latent stands out.
    """
    dz = np.column_stack([_discretise(code[:, j], bins) for j in range(code.shape[1])])
    gaps = np.zeros(factors.shape[1])
    for k in range(factors.shape[1]):
        v = _discretise(factors[:, k], bins)
        entropy = _mutual_information(v, v)
        if entropy <= 0 or code.shape[1] < 2:
            continue
        mi = np.sort([_mutual_information(dz[:, j], v) for j in range(code.shape[1])])[::-1]
        gaps[k] = (mi[0] - mi[1]) / entropy
    return float(gaps.mean()), gaps


def dci(code: np.ndarray, factors: np.ndarray, ridge: float = 1e-3) -> dict[str, Any]:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018).

    The importance of latent j for factor k is |w_jk| of a ridge regression of
    the standardised factor on the standardised latents (the linear variant of
    DCI); informativeness is the mean R² of those regressions. Disentanglement
    is 1 − entropy (base #factors) of each latent's importance distribution,
    weighted by the latent's share of the total importance; completeness is
    1 − entropy (base #latents) of each factor's.
    """
    n_lat, n_fac = code.shape[1], factors.shape[1]
    z = (code - code.mean(0)) / np.where(code.std(0) > 0, code.std(0), 1.0)
    y = (factors - factors.mean(0)) / np.where(factors.std(0) > 0, factors.std(0), 1.0)
    gram = z.T @ z / len(z) + ridge * np.eye(n_lat)
    weights = np.linalg.solve(gram, z.T @ y / len(z))  # (latents, factors)
    r2 = 1.0 - ((y - z @ weights) ** 2).mean(0) / np.maximum((y**2).mean(0), 1e-12)
    importance = np.abs(weights) + 1e-12

    def entropy(p: np.ndarray, base: int) -> np.ndarray:
        p = p / p.sum(axis=-1, keepdims=True)
        return -(p * np.log(p)).sum(axis=-1) / np.log(base)

    d_per = 1.0 - entropy(importance, n_fac) if n_fac > 1 else np.ones(n_lat)
    c_per = 1.0 - entropy(importance.T, n_lat) if n_lat > 1 else np.ones(n_fac)
    rho = importance.sum(1) / importance.sum()
    return {"disentanglement": float((rho * d_per).sum()),
            "completeness": float(c_per.mean()),
            "informativeness_r2": float(np.clip(r2, 0, 1).mean()),
            "importance": importance.round(4).tolist()}


def matched_assignment(rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one latent-factor assignment maximising the total |ρ| (Hungarian
    matching on the (latents, factors) Spearman matrix), so one latent cannot
    count for two factors. Returns per factor its matched |ρ| (0 for a factor
    left without a latent when there are fewer latents than factors) and the
    latent index (-1 for none)."""
    from scipy.optimize import linear_sum_assignment

    latent_of = np.full(rho.shape[1], -1)
    rows, cols = linear_sum_assignment(-np.abs(rho))
    latent_of[cols] = rows
    matched = np.where(latent_of >= 0, np.abs(rho[np.maximum(latent_of, 0),
                                                  np.arange(rho.shape[1])]), 0.0)
    return matched, latent_of


def linear_readout(code: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """|Spearman ρ| of each factor with its least-squares linear prediction from
    the whole code (n, L) → (F,): how much of the factor the code holds, in any
    direction. Beside the best single latent's |ρ| it tells a factor the code
    lacks from one it holds but spreads over several latents (an unrotated
    axis). In-sample: with a few latents on thousands of pixels the optimism is
    negligible."""
    design = np.column_stack([code, np.ones(len(code))])
    weights, *_ = np.linalg.lstsq(design, factors, rcond=None)
    pred = design @ weights
    return np.array([abs(stats.spearmanr(pred[:, j], factors[:, j])[0])
                     if pred[:, j].std() > 0 else 0.0 for j in range(factors.shape[1])])


def score_code(code: np.ndarray, factors: np.ndarray, score: np.ndarray,
               kind: np.ndarray) -> dict[str, Any]:
    """All ground-truth metrics of one representation and one anomaly score.

    Factor metrics (Spearman, Hungarian-matched Spearman, the linear read-out of
    the whole code, MIG, DCI) are computed
    on background pixels only (``kind == 0``): the injected anomalies carry
    most of the variance of rock fraction and much of H's, and would let a
    latent that flags anomalies pass for one that measures those factors.
    Anomaly detection is scored on all pixels.
    """
    background = kind == 0
    rho = spearman_matrix(code[background], factors[background])
    mig, gaps = mutual_information_gap(code[background], factors[background])
    matched, latent_of = matched_assignment(rho)
    label = kind > 0
    out: dict[str, Any] = {
        "factor_pixels": int(background.sum()),
        "spearman": {f: rho[:, j].round(4).tolist() for j, f in enumerate(FACTOR_NAMES)},
        "best_abs_spearman": {f: float(np.abs(rho[:, j]).max())
                              for j, f in enumerate(FACTOR_NAMES)},
        "matched_abs_spearman": dict(zip(FACTOR_NAMES, matched.round(4).tolist(), strict=True)),
        "matched_latent": dict(zip(FACTOR_NAMES, latent_of.tolist(), strict=True)),
        "readout_abs_spearman": dict(zip(
            FACTOR_NAMES, linear_readout(code[background], factors[background]).round(4)
            .tolist(), strict=True)),
        "mig": mig,
        "mig_per_factor": dict(zip(FACTOR_NAMES, gaps.round(4).tolist(), strict=True)),
        "dci": dci(code[background], factors[background]),
        "anomaly": {"n_anomalous_pixels": int(label.sum()), "roc_auc": roc_auc(score, label),
                    "average_precision": average_precision(score, label)},
    }
    for k, name in ANOMALY_KINDS.items():
        sel = (kind == k) | ~label
        out["anomaly"][f"roc_auc_{name}"] = roc_auc(score[sel], label[sel])
    return out


def parameter_scores(values: np.ndarray, sigmas: np.ndarray, truth: np.ndarray,
                     names: tuple[str, ...] | list[str]) -> dict[str, dict[str, float]]:
    """How well estimated physical parameters match the truth, per parameter.

    ``values``, ``sigmas`` and ``truth`` are (n, parameters) in the parameters'
    units, columns named by ``names``. Returns per name: ``rmse`` and ``bias``
    (estimate − truth, the parameter's unit), ``spearman`` (signed ρ; its
    magnitude is what a latent's |ρ| is compared with), and ``coverage_1sigma``,
    the fraction of pixels whose truth lies within ±1σ of the estimate (0.68 for
    a calibrated Gaussian posterior; NaN where no σ is given), and
    ``sigma_scale_68``, the factor on σ that would make that fraction 0.68 (the
    0.68 quantile of |estimate − truth| / σ): measured on the validation Moon,
    it is what ``encode.sigma_scale`` takes.
    """
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        est, true, sig = values[:, j], truth[:, j], sigmas[:, j]
        ok = np.isfinite(est) & np.isfinite(true)
        err = est[ok] - true[ok]
        rho = stats.spearmanr(est[ok], true[ok]).statistic if ok.sum() > 2 else np.nan
        sigma_known = np.isfinite(sig[ok]).all() and ok.any()
        cover = (np.abs(err) <= sig[ok]).mean() if sigma_known else np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.quantile(np.abs(err) / sig[ok], 0.68) if sigma_known else np.nan
        out[name] = {"rmse": float(np.sqrt(np.mean(err**2))) if ok.any() else float("nan"),
                     "bias": float(np.mean(err)) if ok.any() else float("nan"),
                     "spearman": float(rho), "coverage_1sigma": float(cover),
                     "sigma_scale_68": float(scale)}
    return out


def region_recall(pix: np.ndarray, nside: int, kind: np.ndarray, score: np.ndarray,
                  threshold: float) -> dict[str, Any]:
    """Which injected anomalies the catalogue finds.

    Injected anomalies are grouped into connected regions; a region counts as
    found when any of its pixels scores above ``threshold`` (so it appears in
    the anomaly catalogue). Returns the number of regions and of found regions
    per kind.
    """
    from vaemap.healpix import connected_regions

    result: dict[str, Any] = {"threshold": threshold}
    for k, name in ANOMALY_KINDS.items():
        members = np.flatnonzero(kind == k)
        n, label = connected_regions(nside, pix[members])
        found = [bool((score[members[label == r]] > threshold).any()) for r in range(n)]
        result[f"{name}_regions"] = n
        result[f"{name}_found"] = int(sum(found))
    return result


def truth_at(truth_path: str | Path, pix: np.ndarray, nside: int) -> dict[str, Any]:
    """Ground truth of ``truth.h5`` at the map pixels ``pix`` (NESTED at ``nside``):
    each factor of :data:`vaemap.products.TRUTH` (finer truth averaged over the
    children, anomalous if any child is; coarser truth taken from the parent),
    ``slope_pole`` (the N/S slope signed by hemisphere) and the simulated Moon's
    ``seed``."""
    with open_product(truth_path, TRUTH) as h5:
        t_nside = int(h5.attrs["nside"])
        seed = int(h5.attrs["seed"])
        t_pix = h5["pix"][...]
        fields = {k: h5[k][...] for k in TRUTH.fields if k not in ("pix", "lon")}
    full = {}
    for key, val in fields.items():
        arr = np.full(12 * t_nside**2, np.nan)
        arr[t_pix] = val
        full[key] = arr
    if t_nside == nside:
        out = {k: v[pix] for k, v in full.items()}
    elif t_nside < nside:
        shift = 2 * (int(np.log2(nside)) - int(np.log2(t_nside)))
        out = {k: v[pix >> shift] for k, v in full.items()}
    else:  # finer truth: average the children, anomalous if any child is
        shift = 2 * (int(np.log2(t_nside)) - int(np.log2(nside)))
        children = (pix[:, None] << shift) + np.arange(1 << shift)[None, :]
        out = {k: (np.nanmax if k.startswith("anomaly") else np.nanmean)(v[children], axis=1)
               for k, v in full.items()}
    out["slope_pole"] = out["slope_ns"] * np.sign(out["lat"])
    out["seed"] = seed
    return out
