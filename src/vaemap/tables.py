"""The headline tables: runs aggregated over training seeds, and the README's blocks.

:func:`summarize` gathers the per-run ``metrics.json`` of ``evaluate`` into
every method's mean ± sd over its seeds; :func:`metrics_table`,
:func:`channels_table` and :func:`update_readme` turn summaries into the
Markdown the README shows between its markers (``make results-table``), so no
number there is typed by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vaemap.baselines import BASELINE_NAMES, PROBE_NAMES
from vaemap.io import atomic_path
from vaemap.metrics import FACTOR_NAMES
from vaemap.products import ANOMALY_KINDS, TRUTH_FACTORS

__all__ = [
    "TABLE_ROWS",
    "channels_block",
    "channels_table",
    "metrics_caption",
    "metrics_table",
    "readme_block",
    "summarize",
    "update_readme",
]


#: The rows of the headline table: (label, path into a method's metrics).
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    *((f"best \\|ρ\\| {f}", f"best_abs_spearman.{f}") for f in FACTOR_NAMES),
    *((f"matched \\|ρ\\| {f}", f"matched_abs_spearman.{f}") for f in FACTOR_NAMES),
    *((f"linear read-out \\|ρ\\| {f}", f"readout_abs_spearman.{f}") for f in FACTOR_NAMES),
    ("MIG", "mig"),
    ("DCI disentanglement", "dci.disentanglement"),
    ("anomaly ROC-AUC", "anomaly.roc_auc"),
    ("ROC-AUC warm rocky", "anomaly.roc_auc_warm_rocky"),
    ("ROC-AUC cold spot", "anomaly.roc_auc_cold_spot"),
    ("anomaly average precision", "anomaly.average_precision"),
    ("injected regions found", "anomaly.regions_found"),
    # a physics decoder's parameters (signed ρ: a named parameter must not flip)
    *((f"physical ρ {f}", f"physical.background.{f}.spearman") for f in TRUTH_FACTORS),
    *((f"physical RMSE {f}{f' [{u}]' if u else ''}", f"physical.background.{f}.rmse")
      for f, u in TRUTH_FACTORS.items()),
    *((f"physical ±1σ coverage {f}", f"physical.background.{f}.coverage_1sigma")
      for f in TRUTH_FACTORS),
    *((f"physical σ scale for 0.68 {f}", f"physical.background.{f}.sigma_scale_68")
      for f in TRUTH_FACTORS),
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
        parts = [("ICA rotation of the VAE", m.get("ica")),
                 *((name, m.get("baselines", {}).get(key))
                   for key, name in BASELINE_NAMES.items()),
                 *((name, m.get(key)) for key, name in PROBE_NAMES.items())]
        for extra, part in parts:
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


def _number(value: float, path: str) -> str:
    """Three decimals for correlations and rates; three significant digits for an
    error in a parameter's unit (an RMSE of H is about 0.01 m)."""
    return f"{value:.3g}" if path.endswith(".rmse") else f"{value:.3f}"


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
                cells.append(_number(cell["mean"], path))
            else:
                cells.append(f"{_number(cell['mean'], path)} ± {_number(cell['sd'], path)}")
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

# The columns of the channels comparison and their targets: (column, metric
# path, target). A factor's target is a share of the supervised linear probe of
# the same profiles (what the data carry), an anomaly kind's an absolute ROC-AUC.
CHANNEL_TARGETS: tuple[tuple[str, str, str], ...] = (
    ("albedo", "best_abs_spearman.albedo", "≥ 0.9 × probe"),
    ("pole-facing slope", "best_abs_spearman.slope_pole", "≥ 0.9 × probe"),
    ("E/W slope", "best_abs_spearman.slope_ew", "≥ 0.9 × probe"),
    ("H-parameter", "best_abs_spearman.h_param", "≥ 0.9 × probe"),
    ("rock fraction", "best_abs_spearman.rock_fraction", "≥ 0.9 × probe"),
    ("ROC-AUC warm rocky", "anomaly.roc_auc_warm_rocky", "≥ 0.99"),
    ("ROC-AUC cold spot", "anomaly.roc_auc_cold_spot", "≥ 0.95"),
)
PROBE = PROBE_NAMES["linear_probe"]


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
             "| target | " + " | ".join(t for _, _, t in CHANNEL_TARGETS) + " |"]
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
