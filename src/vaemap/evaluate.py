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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import stats

from vaemap.io import atomic_path

__all__ = ["average_precision", "roc_auc", "run", "spearman_matrix"]

log = logging.getLogger(__name__)

FACTOR_NAMES = ("albedo", "h_param", "slope_ew", "slope_ns", "rock_fraction")


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


def _truth_at(truth_path: Path, pix: np.ndarray, nside: int) -> dict[str, np.ndarray]:
    """Ground truth at the map pixels (averaging finer truth, or taking the parent's)."""
    with h5py.File(truth_path, "r") as h5:
        t_nside = int(h5.attrs["nside"])
        t_pix = h5["pix"][...]
        fields = {k: h5[k][...] for k in (*FACTOR_NAMES, "anomaly_mask", "anomaly_kind")}
    full = {}
    for key, val in fields.items():
        arr = np.full(12 * t_nside**2, np.nan)
        arr[t_pix] = val
        full[key] = arr
    if t_nside == nside:
        return {k: v[pix] for k, v in full.items()}
    if t_nside < nside:
        shift = 2 * (int(np.log2(nside)) - int(np.log2(t_nside)))
        return {k: v[pix >> shift] for k, v in full.items()}
    shift = 2 * (int(np.log2(t_nside)) - int(np.log2(nside)))
    children = (pix[:, None] << shift) + np.arange(1 << shift)[None, :]
    out = {k: np.nanmean(v[children], axis=1) for k, v in full.items() if k in FACTOR_NAMES}
    out["anomaly_mask"] = np.nanmax(full["anomaly_mask"][children], axis=1)
    out["anomaly_kind"] = np.nanmax(full["anomaly_kind"][children], axis=1)
    return out


def _heatmap(rho: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _kl_bars(kl: list[float], variance: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), constrained_layout=True)
    idx = np.arange(len(kl))
    ax.bar(idx, kl, color=["C0" if v > 0.01 else "0.6" for v in variance])
    ax.set_xticks(idx, [f"latent {i}" for i in idx])
    ax.set_ylabel("mean KL to the prior (nats)")
    ax.set_title("information per latent (grey: inactive, Var[μ] ≤ 0.01)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def run(latents: str | Path, truth: str | Path | None, outdir: str | Path,
        config: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``metrics.json``, ``metrics.md``, ``kl.png`` and, with ground truth,
    ``correlation.png`` to ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with h5py.File(latents, "r") as h5:
        nside = int(h5.attrs["nside"])
        pix = h5["pix"][...]
        mu = h5["mu"][...].astype(np.float64)
        logvar = h5["logvar"][...].astype(np.float64)
        score = h5["anomaly_score"][...].astype(np.float64)
        rms = h5["recon_error"][...]
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)
    metrics: dict[str, Any] = {
        "pixels": int(pix.size),
        "kl_per_latent": kl.mean(axis=0).round(4).tolist(),
        "active_units": int((mu.var(axis=0) > 0.01).sum()),
        "recon_rms_k": {"median": float(np.median(rms)), "mean": float(np.mean(rms)),
                        "p95": float(np.percentile(rms, 95))} if pix.size else {},
        "ground_truth": truth is not None and Path(truth).exists(),
    }
    rho = None
    if metrics["ground_truth"]:
        t = _truth_at(Path(truth), pix, nside)
        factors = np.column_stack([t[k] for k in FACTOR_NAMES])
        rho = spearman_matrix(mu, factors)
        metrics["spearman"] = {f: rho[:, j].round(4).tolist() for j, f in enumerate(FACTOR_NAMES)}
        metrics["best_abs_spearman"] = {f: float(np.abs(rho[:, j]).max())
                                        for j, f in enumerate(FACTOR_NAMES)}
        label = t["anomaly_mask"] > 0
        metrics["anomaly"] = {"n_anomalous_pixels": int(label.sum()),
                              "roc_auc": roc_auc(score, label),
                              "average_precision": average_precision(score, label)}
        for kind, name in ((1, "warm_rocky"), (2, "cold_spot")):
            sel = (t["anomaly_kind"] == kind) | ~label
            metrics["anomaly"][f"roc_auc_{name}"] = roc_auc(score[sel], label[sel])
        _heatmap(rho, outdir / "correlation.png", "latents × ground-truth factors")
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
                                         if k in ("active_units", "best_abs_spearman",
                                                  "anomaly")}))
    return metrics


def _markdown(m: Mapping[str, Any]) -> str:
    lines = ["# vaemap evaluation", "", f"Pixels: {m['pixels']}; active latents: "
             f"{m['active_units']}; KL per latent (nats): {m['kl_per_latent']}", ""]
    if m.get("recon_rms_k"):
        r = m["recon_rms_k"]
        lines += [f"Reconstruction RMS (K): median {r['median']:.2f}, mean {r['mean']:.2f}, "
                  f"95th percentile {r['p95']:.2f}", ""]
    if m["ground_truth"]:
        lines += ["| factor | best abs Spearman | Spearman per latent |", "|---|---|---|"]
        for f in FACTOR_NAMES:
            per = ", ".join(f"{v:+.2f}" for v in m["spearman"][f])
            lines.append(f"| {f} | {m['best_abs_spearman'][f]:.3f} | {per} |")
        a = m["anomaly"]
        lines += ["", "| anomaly metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in a.items()]
    else:
        lines.append(m["note"])
    return "\n".join(lines) + "\n"
