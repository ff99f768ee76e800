"""Emulator of the thermal model: a column's diurnal profile per channel in microseconds.

``vaemap.thermal`` solves heat conduction in a regolith column in milliseconds
per column; far too slow to sit inside a decoder that is back-propagated
through millions of times. This step learns it. A small network maps a
column's physical parameters and its season to the periodic diurnal surface
temperature of its regolith and of rock at the solver's time steps (its own
clock, every 0.2 h); the sunlight absorbed at each step is computed exactly
(:func:`vaemap.forward_model.equilibrium_t4`) and only what conduction adds
is learned. Everything the radiometer adds on top is exact physics in
:func:`vaemap.forward_model.channel_profiles`, as
the simulator observes a column: temperatures interpolated in local time,
each channel's band radiances of rock and regolith mixed by the rock
fraction (radiances add, not temperatures), the brightness temperature of the
mix, averaged over each of the profiles' local-time bins.

Inputs (:data:`vaemap.forward_model.PARAMETERS` and ``CONDITIONS``, with the ranges the emulator
covers, wider than the simulator's surface): normal albedo, H-parameter (m),
east/west and north/south slope components (deg, positive = facing east /
north), rock fraction; latitude (deg), sub-solar latitude (deg) and Sun
distance (AU). The rock temperature does not depend on H; the regolith's does
not depend on the rock fraction, which enters only through the mixing.

What it does not model, by design: the solar channels 1-2 (their reflectance
is albedo × cos incidence, exact without a network) and anything
:mod:`vaemap.thermal` leaves out (shadowing by terrain, lateral conduction,
the annual wave).

The network and the exact parts live below the steps, in
:mod:`vaemap.forward_model`, for the decoders that use them; this step solves
the columns, trains and measures. ``vaemap emulator`` writes ``emulator.pt``
(weights, normalisation, the ranges, the physics it learned:
:func:`vaemap.thermal.source_fingerprint`) and ``accuracy.json``: RMS error
against the solver on held-out columns, in kelvin, per channel, by day and
night and by latitude, beside the instrument's noise.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaemap import instrument, thermal
from vaemap.forward_model import (
    COLUMN_INPUTS,
    CONDITIONS,
    PARAMETERS,
    SOLVER_STEPS_PER_DAY,
    ThermalEmulator,
    channel_profiles,
    save_emulator,
)
from vaemap.io import atomic_path

__all__ = ["accuracy", "run", "sample_columns", "solve_training_set", "train_emulator"]

log = logging.getLogger(__name__)


def sample_columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` columns drawn over :data:`PARAMETERS` and :data:`CONDITIONS` (without
    the season): albedo and rock fraction uniform, H log-uniform, slopes dense
    near flat (a cubed uniform: half within ±4.4°, the steepest to ±35°) as
    real slopes are, latitude uniform over the sphere's area (as pixels are)."""
    def uniform(name: str) -> np.ndarray:
        lo, hi, _ = PARAMETERS[name]
        return rng.uniform(lo, hi, n)

    h_lo, h_hi, _ = PARAMETERS["h_param"]
    columns = {
        "albedo": uniform("albedo"),
        "h_param": np.exp(rng.uniform(np.log(h_lo), np.log(h_hi), n)),
        "slope_ew": PARAMETERS["slope_ew"][1] * rng.uniform(-1, 1, n) ** 3,
        "slope_ns": PARAMETERS["slope_ns"][1] * rng.uniform(-1, 1, n) ** 3,
        "rock_fraction": uniform("rock_fraction"),
        "lat": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
    }
    return columns


def solve_training_set(n: int, *, seasons: int, seed: int, workers: int = 1
                       ) -> dict[str, np.ndarray]:
    """``n`` columns (:func:`sample_columns`) solved by :mod:`vaemap.thermal`, in
    ``seasons`` groups, each at one season drawn over :data:`CONDITIONS`.
    Returns the inputs (one array (n,) per parameter and condition) and
    ``t_regolith``, ``t_rock`` (n, SOLVER_STEPS_PER_DAY) kelvin at
    :func:`vaemap.forward_model.grid_times`, as the solver gives them."""
    rng = np.random.default_rng(seed)
    columns = sample_columns(n, rng)
    dec_lo, dec_hi, _ = CONDITIONS["declination"]
    d_lo, d_hi, _ = CONDITIONS["sun_distance"]
    group = rng.integers(0, seasons, n)
    season_dec = rng.uniform(dec_lo, dec_hi, seasons)
    season_dist = rng.uniform(d_lo, d_hi, seasons)
    t_reg = np.empty((n, SOLVER_STEPS_PER_DAY), np.float32)
    t_rock = np.empty((n, SOLVER_STEPS_PER_DAY), np.float32)
    for k in range(seasons):
        members = np.flatnonzero(group == k)
        if members.size == 0:
            continue
        cols = {key: columns[key][members] for key in thermal.COLUMN_KEYS}
        cols["rock_fraction"] = np.ones(members.size)  # rock is solved for every column
        t_reg[members], t_rock[members] = thermal.solve_facets(
            cols, float(season_dec[k]), float(season_dist[k]),
            steps_per_day=SOLVER_STEPS_PER_DAY, workers=workers)
    columns["declination"] = season_dec[group]
    columns["sun_distance"] = season_dist[group]
    return {**columns, "t_regolith": t_reg, "t_rock": t_rock}


def _tensors(data: Mapping[str, np.ndarray], idx: np.ndarray, device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v)[idx], dtype=torch.float32, device=device)
            for k, v in data.items()}


def train_emulator(data: Mapping[str, np.ndarray], params: Mapping[str, Any], *,
                   device: str = "cpu") -> tuple[ThermalEmulator, list[float], np.ndarray]:
    """Fit a :class:`vaemap.forward_model.ThermalEmulator` to a
    :func:`solve_training_set` by Adam on the squared error in kelvin of regolith
    and rock (one-cycle learning-rate schedule), holding out ``params["held_out"]``
    of the columns. Returns the network (eval mode), the training loss (K²) per
    epoch and the indices of the held-out columns."""
    torch.manual_seed(params["seed"])
    n = len(data["lat"])
    order = np.random.default_rng(params["seed"]).permutation(n)
    n_test = max(1, round(params["held_out"] * n))
    test, fit = order[:n_test], order[n_test:]
    model = ThermalEmulator(params["width"], params["layers"]).to(device)
    inputs = _tensors({k: data[k] for k in COLUMN_INPUTS}, fit, device)
    solved = _tensors({k: data[k] for k in ("t_regolith", "t_rock")}, fit, device)
    target = model.residual_target(inputs, solved["t_regolith"], solved["t_rock"])
    model.out_mean.copy_(target.mean(0))
    model.out_std.copy_(target.std(0) + 1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=params["learning_rate"])
    epochs, batch = params["epochs"], params["batch_size"]
    steps = epochs * math.ceil(len(fit) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, params["learning_rate"], total_steps=steps,
                                                pct_start=0.05)
    history = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(fit), device=device)
        total = 0.0
        for a in range(0, len(fit), batch):
            idx = perm[a:a + batch]
            t_reg, t_rock = model({k: v[idx] for k, v in inputs.items()})
            # the error in kelvin, what the profiles measure (the standardised T⁴
            # residual would weight a night-time kelvin 50x less than a noon one)
            loss = torch.mean((t_reg - solved["t_regolith"][idx]) ** 2
                              + (t_rock - solved["t_rock"][idx]) ** 2) / 2.0
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(fit))
    return model.eval(), history, test


def accuracy(model: ThermalEmulator, data: Mapping[str, np.ndarray], idx: np.ndarray,
             channels: Sequence[int], bins: int, substeps: int = 2) -> dict[str, Any]:
    """Errors of the emulated channel profiles (``bins`` local-time bins,
    :func:`vaemap.forward_model.channel_profiles`) against the solver's on columns
    ``idx`` (each with its own rock fraction), kelvin: RMS overall, by channel,
    day and night bins (:data:`vaemap.instrument.NIGHT_HOURS`), below and above
    60° latitude, the 99th percentile and the largest; beside them the
    instrument's noise on one measurement at the solver's temperatures (median
    NEΔT per channel), the scale an error must stay under."""
    tensors = _tensors(data, idx, next(model.buffers()).device)
    with torch.no_grad():
        t_reg, t_rock = model(tensors)
        emulated = channel_profiles(t_reg, t_rock, tensors["rock_fraction"], channels, bins,
                                    substeps)
        solved = channel_profiles(tensors["t_regolith"], tensors["t_rock"],
                                  tensors["rock_fraction"], channels, bins, substeps)
    err = (emulated - solved).cpu().numpy().astype(np.float64)
    centre = (np.arange(bins) + 0.5) * 24.0 / bins
    start, end = instrument.NIGHT_HOURS
    night = (centre >= start) | (centre < end)
    polar = np.abs(np.asarray(data["lat"])[idx]) >= 60.0

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(x**2))) if x.size else float("nan")

    solved_k = solved.cpu().numpy()
    return {
        "columns": len(idx),
        "rms_k": rms(err),
        "p99_abs_k": float(np.percentile(np.abs(err), 99)),
        "max_abs_k": float(np.abs(err).max()),
        "rms_day_k": rms(err[:, :, ~night]),
        "rms_night_k": rms(err[:, :, night]),
        "rms_below_60_k": rms(err[~polar]),
        "rms_above_60_k": rms(err[polar]),
        "rms_by_channel_k": {str(c): rms(err[:, j]) for j, c in enumerate(channels)},
        "median_noise_k": {str(c): float(np.nanmedian(
            instrument.noise_equivalent_delta_t(solved_k[:, j], int(c))))
            for j, c in enumerate(channels)},
    }


def run(output: str | Path, config: Mapping[str, Any], accuracy_json: str | Path | None = None,
        threads: int = 1) -> dict[str, Any]:
    """The ``emulator`` step: solve ``emulator.columns`` columns, train the
    emulator on the profiles' bins, measure it on the held-out columns and write
    ``output`` (emulator.pt) and ``accuracy_json``. Returns the accuracy."""
    from vaemap.model import resolve_device

    params = {**config["emulator"], "bins": int(config["profiles"]["bins"])}
    channels = list(instrument.THERMAL_CHANNELS)
    start = time.perf_counter()
    data = solve_training_set(params["columns"], seasons=params["seasons"],
                              seed=params["seed"], workers=threads)
    solve_s = time.perf_counter() - start
    device = str(resolve_device(config.get("device", "auto")))
    torch.set_num_threads(max(1, threads))  # the same cores, now for training
    start = time.perf_counter()
    model, history, test = train_emulator(data, params, device=device)
    train_s = time.perf_counter() - start
    acc = accuracy(model, data, test, channels, params["bins"], params["substeps"])
    acc.update(solver_s_per_column=solve_s / params["columns"], train_s=train_s,
               final_loss=history[-1], device=device)
    model.cpu()
    log.info("emulator: %d columns solved in %.0f s, trained in %.0f s; RMS %.3f K "
             "(channel 7 %.3f K, night %.3f K) on %d held-out columns", params["columns"],
             solve_s, train_s, acc["rms_k"], acc["rms_by_channel_k"]["7"],
             acc["rms_night_k"], acc["columns"])
    save_emulator(output, model, config=dict(config["emulator"]), accuracy=acc,
                  history=history)
    if accuracy_json is not None:
        with atomic_path(accuracy_json) as tmp:
            tmp.write_text(json.dumps(acc, indent=1) + "\n")
    return {"output": str(output), **acc}
