"""Evaluate the latents: disentanglement against ground truth, anomaly detection.

With a simulated Moon the generating factors are known per pixel, so the
Spearman correlation of every latent with every factor, and the anomaly
score's ROC-AUC and average precision against the injected anomalies, are
measured rather than judged by eye.  Without ground truth (real data) the
step reports what it can — KL per latent, active units, reconstruction
statistics — and says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from vaemap.figures import pyplot, save_figure
from vaemap.io import atomic_path, file_checksum
from vaemap.products import (
    ANOMALY_KINDS,
    LATENTS,
    PROFILES,
    SCORED_FACTORS,
    TRUTH,
    open_product,
)
from vaemap.stats import ica_components, robust_z

__all__ = [
    "NormalisedProfiles",
    "average_precision",
    "dci",
    "linear_probe",
    "matched_assignment",
    "metrics_table",
    "mutual_information_gap",
    "normalised_profiles",
    "pca_baseline",
    "roc_auc",
    "run",
    "score_code",
    "spearman_matrix",
    "summarize",
    "update_readme",
]

log = logging.getLogger(__name__)

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


class NormalisedProfiles(NamedTuple):
    """The profiles as the VAE sees them: ``x`` and ``mask`` (n, channels, bins)
    float64 (masked bins 0), ``std`` (channels, bins) the kelvin per normalised
    unit, ``pix`` and ``lat`` (n,)."""

    pix: np.ndarray
    lat: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    std: np.ndarray


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
    x, mask = norm.to_model(prof, torch.from_numpy(lat))
    return NormalisedProfiles(pix, lat, x.numpy().astype(np.float64),
                              mask.numpy().astype(np.float64), norm.std.numpy())


def pca_baseline(data: NormalisedProfiles, n_components: int,
                 metric: str = "normalised_l1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the same normalised profiles the VAE sees (``data``, see
    :func:`normalised_profiles`), scored like the VAE.

    Masked bins are imputed with the normalisation mean (0 in normalised
    units). Returns ``(pix, scores (n, n_components), anomaly score)``: the
    anomaly score is the robust z of the PCA reconstruction's error chosen by
    ``metric`` (an ``encode.anomaly_metric``), computed by the same function
    as the VAE's (:func:`vaemap.model.reconstruction_errors`).
    """
    import torch

    from vaemap.model import ANOMALY_ERRORS, reconstruction_errors

    pix, x, mask, std = data.pix, data.x, data.mask, data.std
    flat = x.reshape(len(pix), -1)
    centre = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - centre, full_matrices=False)
    basis = vt[:n_components]
    scores = (flat - centre) @ basis.T
    recon = (scores @ basis + centre).reshape(x.shape)
    errors = reconstruction_errors(torch.from_numpy((recon - x) * std), torch.from_numpy(mask),
                                   torch.from_numpy(std.astype(np.float64)))
    return pix, scores, robust_z(errors[ANOMALY_ERRORS[metric]].numpy())


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
    from vaemap.healpix import parent_pix

    pix, lat, x, mask = data.pix, data.lat, data.x, data.mask
    n = len(pix)
    feats = np.column_stack([x.reshape(n, -1), mask.reshape(n, -1),
                             np.sin(np.radians(lat)), np.abs(lat) / 90.0])
    scale = feats.std(0)
    feats = (feats - feats.mean(0)) / np.where(scale > 0, scale, 1.0)
    tiles = parent_pix(pix, nside, max(nside // 8, 1))
    fold = np.searchsorted(np.unique(tiles), tiles) % folds
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
    ok = np.isfinite(pred).all(1)
    r2 = 1.0 - ((factors[ok] - pred[ok]) ** 2).mean(0) / factors[ok].var(0)
    rho = [abs(stats.spearmanr(pred[ok, j], factors[ok, j])[0]) for j in range(factors.shape[1])]
    return {"r2": dict(zip(FACTOR_NAMES, np.round(r2, 4).tolist(), strict=True)),
            "best_abs_spearman": dict(zip(FACTOR_NAMES, np.round(rho, 4).tolist(),
                                          strict=True))}


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


def score_code(code: np.ndarray, factors: np.ndarray, score: np.ndarray,
               kind: np.ndarray) -> dict[str, Any]:
    """All ground-truth metrics of one representation and one anomaly score.

    Factor metrics (Spearman, Hungarian-matched Spearman, MIG, DCI) are computed
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


def _truth_at(truth_path: Path, pix: np.ndarray, nside: int) -> dict[str, Any]:
    """Ground truth at the map pixels (averaging finer truth, or taking the parent's),
    and the simulated Moon's ``seed``."""
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


def _heatmap(rho: np.ndarray, path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * rho.shape[1] + 2, 0.6 * rho.shape[0] + 1.8),
                           constrained_layout=True)
    im = ax.imshow(rho, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(rho.shape[1]), FACTOR_NAMES[: rho.shape[1]], rotation=30, ha="right")
    ax.set_yticks(range(rho.shape[0]), [f"latent {i}" for i in range(rho.shape[0])])
    for i in range(rho.shape[0]):
        for j in range(rho.shape[1]):
            ax.text(j, i, f"{rho[i, j]:+.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(rho[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="Spearman ρ")
    ax.set_title(title)
    save_figure(fig, path, dpi=110)


def _kl_bars(kl: list[float], variance: np.ndarray, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4), constrained_layout=True)
    idx = np.arange(len(kl))
    ax.bar(idx, kl, color=["C0" if v > 0.01 else "0.6" for v in variance])
    ax.set_xticks(idx, [f"latent {i}" for i in idx])
    ax.set_ylabel("mean KL to the prior (nats)")
    ax.set_title("information per latent (grey: inactive, Var[μ] ≤ 0.01)")
    save_figure(fig, path, dpi=110)


def run(latents: str | Path, truth: str | Path | None, outdir: str | Path,
        config: Mapping[str, Any], *, profiles: str | Path | None = None,
        model: str | Path | None = None) -> dict[str, Any]:
    """Score the latents and write ``metrics.json``, ``metrics.md`` and ``kl.png``.

    With ground truth (``truth``): Spearman matrix, MIG and DCI of the latents
    against the generating factors, anomaly ROC-AUC and average precision
    (overall and per kind), and ``correlation.png``; with ``profiles`` and
    ``model`` too, the same metrics for a PCA baseline with as many components
    as latents. Without ground truth: KL per latent, active units and
    reconstruction statistics, and a note saying so.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    expect: dict[str, Any] = {}
    training_seed = None
    if model is not None:  # the baselines must use the model that made the latents
        from vaemap.model import load_checkpoint

        _, norm, ckpt = load_checkpoint(model)
        expect = {"model_weights": ckpt["weights_checksum"], "nside": int(ckpt["nside"]),
                  "against": f"the model {model}"}
        training_seed = ckpt.get("config", {}).get("seed")
    if profiles is not None:  # and the profiles that made them
        expect.update(profiles_checksum=file_checksum(profiles),
                      against=f"{expect.get('against', 'the inputs')} and the profiles "
                              f"{profiles}")
    with open_product(latents, LATENTS, **expect) as h5:
        nside = int(h5.attrs["nside"])
        pix = h5["pix"][...]
        mu = h5["mu"][...].astype(np.float64)
        logvar = h5["logvar"][...].astype(np.float64)
        score = h5["anomaly_score"][...].astype(np.float64)
        rms = h5["recon_error"][...]
        threshold = float(h5.attrs.get("anomaly_threshold", config["encode"]["anomaly_threshold"]))
        metric = str(h5.attrs.get("anomaly_metric", config["encode"]["anomaly_metric"]))
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)
    metrics: dict[str, Any] = {
        "pixels": int(pix.size),
        "training_seed": training_seed,
        "anomaly_metric": metric,
        "kl_per_latent": kl.mean(axis=0).round(4).tolist(),
        "active_units": int((mu.var(axis=0) > 0.01).sum()),
        "recon_rms_k": {"median": float(np.median(rms)), "mean": float(np.mean(rms)),
                        "p95": float(np.percentile(rms, 95))} if pix.size else {},
        "ground_truth": truth is not None,
    }
    if metrics["ground_truth"]:
        t = _truth_at(Path(truth), pix, nside)
        metrics["moon_seed"] = t["seed"]
        factors = np.column_stack([t[k] for k in FACTOR_NAMES])
        kind = np.nan_to_num(t["anomaly_kind"]).astype(int)
        metrics.update(score_code(mu, factors, score, kind))
        metrics["anomaly"]["catalogue"] = region_recall(pix, nside, kind, score, threshold)
        metrics["ica"] = score_code(ica_components(mu), factors, score, kind)
        metrics["ica"]["anomaly"]["catalogue"] = metrics["anomaly"]["catalogue"]
        if profiles is not None and model is not None:
            data = normalised_profiles(profiles, model, (norm, ckpt))
            pca_pix, pca_code, pca_score = pca_baseline(data, mu.shape[1], metric)
            if not np.array_equal(pca_pix, pix):
                raise ValueError(f"{profiles} and {latents} hold different pixels")
            pca = score_code(pca_code, factors, pca_score, kind)
            pca["anomaly"]["catalogue"] = region_recall(pix, nside, kind, pca_score, threshold)
            metrics["baselines"] = {"pca": pca}
            metrics["linear_probe"] = linear_probe(data, nside, factors, exclude=kind > 0)
        _heatmap(np.array([metrics["spearman"][f] for f in FACTOR_NAMES]).T,
                 outdir / "correlation.png", "latents × ground-truth factors "
                 "(background pixels)")
    else:
        metrics["note"] = ("no ground truth for these data: disentanglement and anomaly "
                           "detection cannot be scored; KL, active units and reconstruction "
                           "statistics are reported")
    _kl_bars(metrics["kl_per_latent"], mu.var(axis=0), outdir / "kl.png")
    with atomic_path(outdir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, allow_nan=True))
    with atomic_path(outdir / "metrics.md") as tmp:
        tmp.write_text(_markdown(metrics))
    log.info("evaluate: %s", json.dumps({k: metrics[k] for k in metrics
                                         if k in ("active_units", "best_abs_spearman", "mig",
                                                  "anomaly")}))
    return metrics


def _markdown(m: Mapping[str, Any]) -> str:
    lines = ["# vaemap evaluation", "", f"Pixels: {m['pixels']}; active latents: "
             f"{m['active_units']}; KL per latent (nats): {m['kl_per_latent']}", ""]
    if m.get("recon_rms_k"):
        r = m["recon_rms_k"]
        lines += [f"Reconstruction RMS (K): median {r['median']:.2f}, mean {r['mean']:.2f}, "
                  f"95th percentile {r['p95']:.2f}", ""]
    if not m["ground_truth"]:
        return "\n".join([*lines, m["note"]]) + "\n"
    methods = {"VAE": m, **({"VAE + ICA ²": m["ica"]} if "ica" in m else {}),
               **{k.upper(): v for k, v in m.get("baselines", {}).items()}}
    probe = m.get("linear_probe")
    names = list(methods) + (["linear probe of the profiles ¹"] if probe else [])
    lines += ["## Against the ground truth", "",
              f"Simulated Moon seed {m['moon_seed']}, training seed {m['training_seed']}. "
              f"Factor metrics on the {m['factor_pixels']} background pixels (injected "
              "anomalies left out); matched: one latent per factor (Hungarian). Anomaly "
              f"scores on all pixels, each method's {m['anomaly_metric']} error.", "",
              "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for f in FACTOR_NAMES:
        cells = [f"{v['best_abs_spearman'][f]:.3f}" for v in methods.values()]
        if probe:
            cells.append(f"{probe['best_abs_spearman'][f]:.3f} (R² {probe['r2'][f]:.2f})")
        lines.append(f"| best abs Spearman, {f} | " + " | ".join(cells) + " |")
    for f in FACTOR_NAMES:
        cells = [f"{v['matched_abs_spearman'][f]:.3f}" for v in methods.values()]
        lines.append(f"| matched abs Spearman, {f} | " + " | ".join(cells)
                     + (" | —" if probe else "") + " |")
    rows = [("MIG", lambda v: v["mig"]),
            ("DCI disentanglement", lambda v: v["dci"]["disentanglement"]),
            ("DCI completeness", lambda v: v["dci"]["completeness"]),
            ("DCI informativeness (R²)", lambda v: v["dci"]["informativeness_r2"]),
            ("anomaly ROC-AUC", lambda v: v["anomaly"]["roc_auc"]),
            ("anomaly average precision", lambda v: v["anomaly"]["average_precision"]),
            ("ROC-AUC warm rocky", lambda v: v["anomaly"]["roc_auc_warm_rocky"]),
            ("ROC-AUC cold spot", lambda v: v["anomaly"]["roc_auc_cold_spot"])]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(f"{get(v):.3f}" for v in methods.values())
                     + (" | —" if probe else "") + " |")
    if probe:
        lines += ["", "¹ Supervised reference, not a competitor: a ridge regression from every "
                  "bin of the normalised profile (and latitude) to each factor, 5-fold "
                  "cross-validated over whole sky tiles, injected anomalies left out. A factor "
                  "it recovers poorly is weakly expressed in the data themselves."]
    if "ica" in m:
        lines += ["", "² The same latents rotated to independent components (FastICA, no "
                  "ground truth used): the VAE's likelihood and prior do not fix the basis "
                  "of its latent space."]
    lines += ["", "Spearman ρ per latent (VAE):", "",
              "| factor | " + " | ".join(f"latent {i}" for i in range(len(m['kl_per_latent'])))
              + " |", "|---" * (len(m["kl_per_latent"]) + 1) + "|"]
    for f in FACTOR_NAMES:
        lines.append(f"| {f} | " + " | ".join(f"{v:+.2f}" for v in m["spearman"][f]) + " |")
    cat = m["anomaly"]["catalogue"]
    lines += ["", f"Anomalous pixels in the truth: {m['anomaly']['n_anomalous_pixels']}. "
              f"Injected regions found in the catalogue (score > {cat['threshold']:g}): "
              f"warm rocky {cat['warm_rocky_found']}/{cat['warm_rocky_regions']}, "
              f"cold spots {cat['cold_spot_found']}/{cat['cold_spot_regions']}."]
    return "\n".join(lines) + "\n"


#: The rows of the headline table: (label, path into a method's metrics).
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    *((f"best \\|ρ\\| {f}", f"best_abs_spearman.{f}") for f in FACTOR_NAMES),
    *((f"matched \\|ρ\\| {f}", f"matched_abs_spearman.{f}") for f in FACTOR_NAMES),
    ("MIG", "mig"),
    ("DCI disentanglement", "dci.disentanglement"),
    ("anomaly ROC-AUC", "anomaly.roc_auc"),
    ("ROC-AUC warm rocky", "anomaly.roc_auc_warm_rocky"),
    ("ROC-AUC cold spot", "anomaly.roc_auc_cold_spot"),
    ("anomaly average precision", "anomaly.average_precision"),
    ("injected regions found", "anomaly.regions_found"),
)


def _lookup(m: Mapping[str, Any], path: str) -> float | None:
    if path == "anomaly.regions_found":
        cat = m.get("anomaly", {}).get("catalogue")
        if not cat:
            return None
        found = sum(cat[f"{k}_found"] for k in ANOMALY_KINDS.values())
        total = sum(cat[f"{k}_regions"] for k in ANOMALY_KINDS.values())
        return found / total if total else None
    for key in path.split("."):
        if not isinstance(m, Mapping) or key not in m:
            return None
        m = m[key]
    return float(m) if isinstance(m, int | float) else None


def _group(label: str) -> str:
    """The method a run belongs to: its label without the training seed."""
    return ",".join(p for p in label.split(",") if not p.startswith("seed=")) or "main"


def _method_name(group: str, main_label: str) -> str:
    if group == "main":
        return main_label
    return "AE (β = 0)" if group in ("beta=0", "beta=0.0") else f"VAE ({group})"


def summarize(metrics: Sequence[str | Path], labels: Sequence[str], output: str | Path,
              markdown: str | Path | None = None, csv_path: str | Path | None = None,
              main_label: str = "VAE") -> dict[str, Any]:
    """The headline evaluation: every method's metrics as mean ± sd over its training seeds.

    ``metrics`` are per-run ``metrics.json`` files of :func:`run`, ``labels`` their
    names: ``main`` for the main model, ``seed=S`` for it re-trained with seed
    S, ``beta=0`` / ``latent_dim=8`` ... for sweep variants and
    ``beta=0,seed=S`` for those re-seeded. Runs sharing a label without its
    seed are one method; each method's runs (and the main runs' ICA rotation,
    PCA baseline and linear probe) are aggregated. Every run must come from the
    same simulated Moon. Writes ``output`` (JSON), ``markdown`` (the table
    with its caption) and ``csv_path`` (one row per run); returns the JSON.
    """
    if len(metrics) != len(labels):
        raise ValueError(f"{len(metrics)} metrics files but {len(labels)} labels")
    runs = [(label, json.loads(Path(path).read_text()), str(path))
            for path, label in zip(metrics, labels, strict=True)]
    moons = {m.get("moon_seed") for _, m, _ in runs}
    if len(moons) > 1:
        raise ValueError(f"{', '.join(p for *_, p in runs)}: runs of different simulated Moons "
                         f"(seeds {sorted(moons, key=str)}) cannot be aggregated")
    members: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for label, m, _ in runs:
        group = _group(label)
        name = _method_name(group, main_label)
        members.setdefault(name, []).append((m, m.get("training_seed")))
        if group != "main":
            continue
        for extra, part in (("ICA rotation of the VAE", m.get("ica")),
                            ("PCA", m.get("baselines", {}).get("pca")),
                            ("linear probe (supervised reference)", m.get("linear_probe"))):
            if part is not None:
                members.setdefault(extra, []).append((part, m.get("training_seed")))
    methods: dict[str, Any] = {}
    for name, items in members.items():
        table: dict[str, Any] = {}
        for _, path in TABLE_ROWS:
            values = [_lookup(m, path) for m, _ in items]
            values = [v for v in values if v is not None and np.isfinite(v)]
            if values:
                table[path] = {"mean": float(np.mean(values)),
                               "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                               "values": [round(v, 4) for v in values]}
        methods[name] = {"runs": len(items), "training_seeds": [seed for _, seed in items],
                         "metrics": table}
    result = {"moon_seed": moons.pop(), "ground_truth": all(m["ground_truth"] for _, m, _ in runs),
              "factor_pixels": runs[0][1].get("factor_pixels"),
              "anomaly_metric": runs[0][1].get("anomaly_metric"), "methods": methods,
              "runs": [{"label": label, "file": path} for label, _, path in runs]}
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(result, indent=2, allow_nan=True))
    if markdown is not None:
        with atomic_path(markdown) as tmp:
            tmp.write_text(_summary_markdown(result, runs))
    if csv_path is not None:
        columns = ["label", "training_seed", *(path for _, path in TABLE_ROWS)]
        lines = [",".join(columns)]
        for label, m, _ in runs:
            cells = [label, str(m.get("training_seed"))]
            cells += ["" if (v := _lookup(m, path)) is None else f"{v:.4f}"
                      for _, path in TABLE_ROWS]
            lines.append(",".join(cells))
        with atomic_path(csv_path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    return result


def metrics_table(summary: Mapping[str, Any]) -> str:
    """The headline table (Markdown) of a :func:`summarize` result: one column per
    method, cells mean ± sd over its training seeds."""
    names = list(summary["methods"])
    lines = ["| | " + " | ".join(f"{n} ({summary['methods'][n]['runs']})" for n in names)
             + " |", "|---" * (len(names) + 1) + "|"]
    for label, path in TABLE_ROWS:
        cells = []
        for n in names:
            cell = summary["methods"][n]["metrics"].get(path)
            if cell is None:
                cells.append("—")
            elif cell["sd"] is None:
                cells.append(f"{cell['mean']:.3f}")
            else:
                cells.append(f"{cell['mean']:.3f} ± {cell['sd']:.3f}")
        if any(c != "—" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def metrics_caption(summary: Mapping[str, Any]) -> str:
    """What the headline table is: Moon, pixels, seeds, statistic."""
    seeds = sorted({s for m in summary["methods"].values() for s in m["training_seeds"]
                    if s is not None})
    return (f"Simulated Moon seed {summary['moon_seed']}; mean ± sd over training seeds "
            f"{', '.join(map(str, seeds)) or '—'} (runs per method in brackets). Factor "
            f"metrics (|ρ|: Spearman with the ground truth; matched: one latent per factor, "
            f"Hungarian; MIG; DCI) on the {summary['factor_pixels']} background pixels, "
            f"injected anomalies left out; anomaly scores on all pixels, every method with "
            f"the same statistic (robust z of its {summary['anomaly_metric']} reconstruction "
            f"error) and catalogue threshold.")


def _summary_markdown(summary: Mapping[str, Any], runs: Sequence[tuple[str, Any, str]]) -> str:
    lines = ["# vaemap evaluation", "", metrics_caption(summary), "", metrics_table(summary),
             "The linear probe is a supervised ridge regression from every profile bin to "
             "each factor (cross-validated over sky tiles): what the data carry, not a "
             "competitor. The ICA rotation and PCA use the main model's runs.", "",
             "## Runs", "", "| run | training seed | file |", "|---|---|---|"]
    lines += [f"| {label} | {m.get('training_seed')} | {path} |" for label, m, path in runs]
    return "\n".join(lines) + "\n"


README_START = "<!-- vaemap:metrics:start -->"
README_END = "<!-- vaemap:metrics:end -->"
CHANNELS_START = "<!-- vaemap:channels:start -->"
CHANNELS_END = "<!-- vaemap:channels:end -->"

# The targets of the channels comparison: (column, metric path, target). The
# anomaly targets hold for warm rocky regions and cold spots separately.
CHANNEL_TARGETS: tuple[tuple[str, str, float], ...] = (
    ("albedo", "best_abs_spearman.albedo", 0.9),
    ("pole-facing slope", "best_abs_spearman.slope_pole", 0.9),
    ("E/W slope", "best_abs_spearman.slope_ew", 0.95),
    ("H-parameter", "best_abs_spearman.h_param", 0.85),
    ("rock fraction", "best_abs_spearman.rock_fraction", 0.85),
    ("ROC-AUC warm rocky", "anomaly.roc_auc_warm_rocky", 0.98),
    ("ROC-AUC cold spot", "anomaly.roc_auc_cold_spot", 0.98),
)
PROBE = "linear probe (supervised reference)"


def readme_block(summary: Mapping[str, Any]) -> str:
    """The README's results block, generated from a :func:`summarize` JSON."""
    return "\n".join([README_START, "", metrics_table(summary), f"*{metrics_caption(summary)}*",
                      "", README_END])


def channels_table(summaries: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The channel sets side by side (Markdown): one row per :func:`summarize`
    result, its main model's best-latent |ρ| per factor and anomaly ROC-AUC per
    kind as mean ± sd over seeds, with the supervised probe's |ρ| for the same
    channels in brackets (what the data carry), under a row of targets."""
    lines = ["| channels | " + " | ".join(col for col, _, _ in CHANNEL_TARGETS) + " |",
             "|---" * (len(CHANNEL_TARGETS) + 1) + "|",
             "| target | " + " | ".join(f"≥ {t:g}" for _, _, t in CHANNEL_TARGETS) + " |"]
    moons = {summary["moon_seed"] for _, summary in summaries}
    if len(moons) > 1:
        raise ValueError(f"channel sets from different simulated Moons ({sorted(moons)}) "
                         "cannot be compared")
    for label, summary in summaries:
        main, *_ = summary["methods"].values()
        probe = summary["methods"].get(PROBE, {}).get("metrics", {})
        cells = []
        for _, path, _ in CHANNEL_TARGETS:
            cell = main["metrics"].get(path)
            text = "—" if cell is None else f"{cell['mean']:.3f}"
            if cell is not None and cell["sd"] is not None:
                text += f" ± {cell['sd']:.3f}"
            if path in probe:
                text += f" ({probe[path]['mean']:.2f})"
            cells.append(text)
        lines.append(f"| {label} ({main['runs']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def channels_block(summaries: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The README's channels block: :func:`channels_table` and its caption."""
    moon = summaries[0][1]["moon_seed"]
    caption = (f"Simulated Moon seed {moon}, the main model of each channel set, "
               "background pixels; mean ± sd over training seeds (runs in brackets after "
               "the channels); in brackets after a factor, the supervised linear probe of the "
               "same profiles.")
    return "\n".join([CHANNELS_START, "", channels_table(summaries), f"*{caption}*", "",
                      CHANNELS_END])


def _replace_block(text: str, start: str, end: str, block: str, where: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"{where}: no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail


def update_readme(summary_path: str | Path, readme: str | Path, check: bool = False,
                  channels: Sequence[tuple[str, str | Path]] = ()) -> bool:
    """Replace the block between the README's metrics markers with
    :func:`readme_block`, and, given ``channels`` ((label, summary JSON) per
    channel set), the channels block with :func:`channels_block`; with
    ``check``, only say whether they are up to date. Returns True when the
    README already held those blocks."""
    summary = json.loads(Path(summary_path).read_text())
    text = Path(readme).read_text()
    new = _replace_block(text, README_START, README_END, readme_block(summary), str(readme))
    if channels:
        sets = [(label, json.loads(Path(path).read_text())) for label, path in channels]
        new = _replace_block(new, CHANNELS_START, CHANNELS_END, channels_block(sets),
                             str(readme))
    if new == text or check:
        return new == text
    with atomic_path(readme) as tmp:
        tmp.write_text(new)
    return False
