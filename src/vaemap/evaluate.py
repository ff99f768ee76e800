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

import numpy as np
from threadpoolctl import threadpool_limits

from vaemap import baselines
from vaemap.figures import pyplot, save_figure
from vaemap.io import atomic_path
from vaemap.metrics import (
    FACTOR_NAMES,
    parameter_scores,
    region_recall,
    score_code,
    truth_at,
)
from vaemap.products import (
    LATENTS,
    PROFILES,
    TRUTH_FACTORS,
    ProductError,
    check_pixels,
    open_product,
    read_finite,
    recorded_checksum,
)
from vaemap.stats import ica_components

__all__ = ["run"]

log = logging.getLogger(__name__)


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
        model: str | Path | None = None, probes: bool = True) -> dict[str, Any]:
    """Score the latents and write ``metrics.json``, ``metrics.md`` and ``kl.png``.

    With ground truth (``truth``): Spearman matrix, MIG and DCI of the latents
    against the generating factors, anomaly ROC-AUC and average precision
    (overall and per kind), and ``correlation.png``; with ``profiles`` and
    ``model`` too, the same metrics for the unsupervised baselines with as many
    components as latents (mask-aware PCA, its ICA rotation, zero-filled PCA)
    and, unless ``probes`` is false, the supervised linear and boosted-tree
    probes of the profiles. Without ground truth: KL per latent, active units
    and reconstruction statistics, and a note saying so.
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
        expect.update(profiles_checksum=recorded_checksum(profiles, PROFILES),
                      against=f"{expect.get('against', 'the inputs')} and the profiles "
                              f"{profiles}")
    with open_product(latents, LATENTS, **expect) as h5:
        nside = int(h5.attrs["nside"])
        pix = h5["pix"][...]
        if pix.size == 0:
            raise ProductError(f"{latents}: holds no pixels; nothing to evaluate")
        check_pixels(pix, nside, latents)
        fix = "re-encode with a working model (vaemap encode)"
        mu = read_finite(h5, latents, "mu", fix).astype(np.float64)
        logvar = read_finite(h5, latents, "logvar", fix).astype(np.float64)
        score = read_finite(h5, latents, "anomaly_score", fix).astype(np.float64)
        rms = h5["recon_error"][...]
        threshold = float(h5.attrs.get("anomaly_threshold", config["encode"]["anomaly_threshold"]))
        metric = str(h5.attrs.get("anomaly_metric", config["encode"]["anomaly_metric"]))
        # the baselines are scored as the latents were, band for band
        band_deg = float(h5.attrs.get("score_band_deg", 0.0))
        physical = None
        if "physics_error" in h5:  # a physics decoder's parameters and their σ
            names = list(TRUTH_FACTORS)
            physical = (np.column_stack([read_finite(h5, latents, k, fix) for k in names]),
                        np.column_stack([read_finite(h5, latents, f"{k}_sigma", fix)
                                         for k in names]))
            metrics_scored = str(h5.attrs.get("anomaly_scored", ""))
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
        t = truth_at(truth, pix, nside)
        metrics["moon_seed"] = t["seed"]
        factors = np.column_stack([t[k] for k in FACTOR_NAMES])
        kind = np.nan_to_num(t["anomaly_kind"]).astype(int)
        metrics.update(score_code(mu, factors, score, kind))
        metrics["anomaly"]["catalogue"] = region_recall(pix, nside, kind, score, threshold)
        metrics["ica"] = score_code(ica_components(mu), factors, score, kind)
        metrics["ica"]["anomaly"]["catalogue"] = metrics["anomaly"]["catalogue"]
        if physical is not None:
            metrics["physical"] = _physical_scores(physical, t, kind)
            metrics["anomaly"]["scored"] = metrics_scored
        if profiles is not None and model is not None:
            data = baselines.normalised_profiles(profiles, model, (norm, ckpt))
            if not np.array_equal(data.pix, pix):
                raise ValueError(f"{profiles} and {latents} hold different pixels")
            metrics["baselines"], summary = _baselines(data, mu.shape[1], metric, factors,
                                                       kind, nside, threshold,
                                                       ckpt["channels"], band_deg)
            if probes:  # properties of the data: a sweep computes them once, not per run
                exclude = kind > 0
                metrics["linear_probe"] = baselines.linear_probe(data, nside, factors,
                                                                 exclude=exclude)
                metrics["boosted_probe"] = baselines.boosted_probe(data, nside, factors,
                                                                   summary, exclude=exclude)
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


#: |latitude| below which the physical parameters are scored apart too (deg): where
#: the per-pixel inversion benchmark scores its fits, away from the polar extremes.
_LOW_LATITUDE_DEG = 60.0


def _physical_scores(physical: tuple[np.ndarray, np.ndarray], truth: Mapping[str, Any],
                     kind: np.ndarray) -> dict[str, Any]:
    """A physics decoder's parameters against the truth, on the background pixels
    and on those of them below :data:`_LOW_LATITUDE_DEG`."""
    names = list(TRUTH_FACTORS)
    values, sigmas = physical
    true = np.column_stack([truth[k] for k in names])
    background = kind == 0
    low = background & (np.abs(truth["lat"]) < _LOW_LATITUDE_DEG)
    return {"background": parameter_scores(values[background], sigmas[background],
                                           true[background], names),
            "background_pixels": int(background.sum()),
            f"below_{_LOW_LATITUDE_DEG:g}_deg": parameter_scores(values[low], sigmas[low],
                                                                  true[low], names),
            f"below_{_LOW_LATITUDE_DEG:g}_deg_pixels": int(low.sum())}


def _baselines(data: baselines.NormalisedProfiles, n_components: int, metric: str,
               factors: np.ndarray, kind: np.ndarray, nside: int, threshold: float,
               channels: list[int], band_deg: float = 0.0
               ) -> tuple[dict[str, Any], np.ndarray]:
    """The unsupervised baselines with as many components as latents, each scored
    like the VAE (its own reconstruction's anomaly score, the same catalogue
    threshold): mask-aware PCA, its ICA rotation and the zero-filled PCA.
    Returns their metrics and the mask-aware PCA's summary scores (for the
    boosted probe)."""
    # One BLAS thread: the EM-PCA's code differs in its last bits with the thread
    # count, and the ICA rotation of it amplifies that into another result (|ρ|
    # albedo 0.245 or 0.262): the numbers must not depend on the machine.
    with threadpool_limits(limits=1):
        masked, summary = baselines.masked_pca(data, n_components)
        zero = baselines.pca_zero_filled(data, n_components)
    # the ICA rotation changes the code, not the reconstruction: one score for both
    masked_score = baselines.anomaly_score(data, masked.recon, metric, channels, band_deg)
    zero_score = baselines.anomaly_score(data, zero.recon, metric, channels, band_deg)
    out = {}
    for name, code, score in (("pca", masked.code, masked_score),
                              ("ica_pca", ica_components(masked.code), masked_score),
                              ("pca_zero_filled", zero.code, zero_score)):
        out[name] = score_code(code, factors, score, kind)
        out[name]["anomaly"]["catalogue"] = region_recall(data.pix, nside, kind, score,
                                                          threshold)
    return out, summary


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
               **{baselines.BASELINE_NAMES.get(k, k): v
                  for k, v in m.get("baselines", {}).items()}}
    probes = {name: m[key] for key, name in baselines.PROBE_NAMES.items() if key in m}
    names = list(methods) + [f"{name} ¹" for name in probes]
    dash = " | —" * len(probes)
    lines += ["## Against the ground truth", "",
              f"Simulated Moon seed {m['moon_seed']}, training seed {m['training_seed']}. "
              f"Factor metrics on the {m['factor_pixels']} background pixels (injected "
              "anomalies left out); matched: one latent per factor (Hungarian). Anomaly "
              f"scores on all pixels, each method's {m['anomaly_metric']} error.", "",
              "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for f in FACTOR_NAMES:
        cells = [f"{v['best_abs_spearman'][f]:.3f}" for v in methods.values()]
        cells += [f"{p['best_abs_spearman'][f]:.3f} (R² {p['r2'][f]:.2f})"
                  for p in probes.values()]
        lines.append(f"| best abs Spearman, {f} | " + " | ".join(cells) + " |")
    for f in FACTOR_NAMES:
        cells = [f"{v['matched_abs_spearman'][f]:.3f}" for v in methods.values()]
        lines.append(f"| matched abs Spearman, {f} | " + " | ".join(cells) + dash + " |")
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
                     + dash + " |")
    if probes:
        lines += ["", "¹ Supervised references, not competitors: a ridge regression from every "
                  "bin of the normalised profile (and latitude), and gradient-boosted trees "
                  "from the profiles' 32 mask-aware principal components (and latitude), to "
                  "each factor, 5-fold cross-validated over whole sky tiles, injected "
                  "anomalies left out. A factor they recover poorly is weakly expressed in "
                  "the data themselves."]
    if "ica" in m:
        lines += ["", "² The same latents rotated to independent components (FastICA, no "
                  "ground truth used): the VAE's likelihood and prior do not fix the basis "
                  "of its latent space."]
    lines += ["", "Spearman ρ per latent (VAE):", "",
              "| factor | " + " | ".join(f"latent {i}" for i in range(len(m['kl_per_latent'])))
              + " |", "|---" * (len(m["kl_per_latent"]) + 1) + "|"]
    for f in FACTOR_NAMES:
        lines.append(f"| {f} | " + " | ".join(f"{v:+.2f}" for v in m["spearman"][f]) + " |")
    if "physical" in m:
        lines += _physical_markdown(m["physical"])
    cat = m["anomaly"]["catalogue"]
    lines += ["", f"Anomalous pixels in the truth: {m['anomaly']['n_anomalous_pixels']}. "
              f"Injected regions found in the catalogue (score > {cat['threshold']:g}): "
              f"warm rocky {cat['warm_rocky_found']}/{cat['warm_rocky_regions']}, "
              f"cold spots {cat['cold_spot_found']}/{cat['cold_spot_regions']}."]
    return "\n".join(lines) + "\n"


def _physical_markdown(p: Mapping[str, Any]) -> list[str]:
    low = f"below_{_LOW_LATITUDE_DEG:g}_deg"
    lines = ["", "Physical parameters of the physics decoder (posterior median against the "
             f"truth; background pixels, {p['background_pixels']} in all and "
             f"{p[low + '_pixels']} below {_LOW_LATITUDE_DEG:g}° latitude; coverage: the "
             "fraction whose truth lies within ±1σ, 0.68 when σ is calibrated; σ scale: "
             "the factor on σ that would make it 0.68, for encode.sigma_scale when measured "
             "on the validation Moon):", "",
             "| parameter | unit | RMSE | bias | Spearman ρ | ±1σ coverage | σ scale "
             "| RMSE < 60° | ρ < 60° |", "|---" * 9 + "|"]
    for name, unit in TRUTH_FACTORS.items():
        a, b = p["background"][name], p[low][name]
        lines.append(f"| {name} | {unit or '—'} | {a['rmse']:.4g} | {a['bias']:+.3g} | "
                     f"{a['spearman']:+.3f} | {a['coverage_1sigma']:.3f} | "
                     f"{a['sigma_scale_68']:.3g} | {b['rmse']:.4g} | {b['spearman']:+.3f} |")
    return lines
