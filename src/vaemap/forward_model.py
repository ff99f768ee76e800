"""The differentiable forward model of a column: what a decoder runs the physics with.

:class:`ThermalEmulator` gives a column's regolith and rock surface
temperatures at the solver's time steps from its physical parameters and
season (trained by the ``emulator`` step, :mod:`vaemap.emulator`, to
reproduce :mod:`vaemap.thermal`), and :func:`channel_profiles` what each
thermal channel then sees per local-time bin. Everything but the conduction
is exact: the absorbed sunlight (:func:`equilibrium_t4`, the solver's own
incidence and albedo law), the facet's equivalent level surface
(:func:`facet_equivalent`), the interpolation in local time, the mixing of
rock and regolith by radiance and the brightness temperature. Here, below the
steps, so that the step that trains the emulator and the steps that decode
with it share one definition; ``emulator.pt`` is written and read here too.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vaemap import instrument, thermal
from vaemap.products import EMULATOR_FORMAT, TRUTH_FACTORS

__all__ = [
    "COLUMN_INPUTS",
    "CONDITIONS",
    "EMULATOR_FORMAT",
    "NOISE_QUANTILES",
    "PARAMETERS",
    "PHYSICAL_LATENTS",
    "PRIORS",
    "SOLVER_STEPS_PER_DAY",
    "EmulatorError",
    "ThermalEmulator",
    "channel_profiles",
    "cos_incidence",
    "equilibrium_t4",
    "facet_equivalent",
    "grid_times",
    "load_emulator",
    "parameters_from_latents",
    "physics_profiles",
    "priors_record",
    "reflectance_profiles",
    "reported_temperature",
    "save_emulator",
    "substep_times",
]

#: Physical parameters of a column: ``(low, high, unit)`` of the range the
#: emulator is trained on (the simulator's surface lies inside: albedo 0.04-0.2,
#: H 0.03-0.25 m, slopes within ±35°, rock fraction up to 0.45).
PARAMETERS: dict[str, tuple[float, float, str]] = {
    "albedo": (0.03, 0.25, ""),
    "h_param": (0.015, 0.35, "m"),
    "slope_ew": (-35.0, 35.0, "deg"),
    "slope_ns": (-35.0, 35.0, "deg"),
    "rock_fraction": (0.0, 0.5, ""),
}
#: Where and when a column is seen: latitude, sub-solar latitude (the lunar
#: equator's ±1.543° tilt to the ecliptic) and Sun distance (Earth's orbit and
#: the Moon's offset).
CONDITIONS: dict[str, tuple[float, float, str]] = {
    "lat": (-90.0, 90.0, "deg"),
    "declination": (-1.6, 1.6, "deg"),
    "sun_distance": (0.98, 1.02, "AU"),
}
#: Inputs of the network taken as they are (the slopes and latitude enter as the
#: facet's equivalent latitude and time shift, the rock fraction through the mixing).
_INPUTS = ("albedo", "h_param", "declination", "sun_distance")
#: What a column is given by: every parameter and condition.
COLUMN_INPUTS = ("albedo", "h_param", "slope_ew", "slope_ns", "lat", "declination", "sun_distance")
#: Time steps per lunar day of the solver runs the emulator learns (the simulator's).
SOLVER_STEPS_PER_DAY = 120


class EmulatorError(ValueError):
    """An emulator file that cannot be used; the message names the file and why."""

def substep_times(bins: int, substeps: int) -> np.ndarray:
    """Local times (h), (bins · substeps,): ``substeps`` evenly inside each of
    ``bins`` local-time bins of [0, 24) h, bin by bin."""
    width = 24.0 / bins
    return ((np.arange(bins)[:, None] + (np.arange(substeps)[None, :] + 0.5) / substeps)
            * width).ravel()


def grid_times() -> np.ndarray:
    """Local times (h) of the solver's time steps, where the emulator gives its
    temperatures: ``k · 24 / SOLVER_STEPS_PER_DAY``."""
    return np.arange(SOLVER_STEPS_PER_DAY) * 24.0 / SOLVER_STEPS_PER_DAY

#: Floor of an emulated temperature (K): below any lunar surface but the darkest
#: traps (≈ 25 K), where the emulator's T⁴ could go negative.
_MIN_T_K = 15.0
#: Where cosines are clamped short of ±1 (float32): the slope of arccos and
#: arcsin is infinite at ±1, and clamping at 1 itself turns it into NaN gradients
#: (0 · ∞) for a column that faces the Sun or the pole exactly. 1e-6 moves the
#: incidence by at most 0.08°.
_BELOW_ONE = 1.0 - 1e-6


def cos_incidence(inputs: Mapping[str, torch.Tensor], times_h: torch.Tensor) -> torch.Tensor:
    """Cosine of the Sun's incidence on each column's facet, (n, times), 0 when
    the Sun is below the column's horizon or behind the facet: the geometry of
    :func:`vaemap.thermal.cos_incidence` with the facet of
    :func:`vaemap.thermal.facet_geometry`, at local times ``times_h`` (h), for
    the inputs' ``lat``, ``declination`` (deg) and slopes."""
    lat = torch.deg2rad(inputs["lat"])[:, None]
    dec = torch.deg2rad(inputs["declination"])[:, None]
    h = torch.deg2rad((times_h - 12.0) * 15.0)[None, :]
    tx = torch.tan(torch.deg2rad(inputs["slope_ew"]))[:, None]
    ty = torch.tan(torch.deg2rad(inputs["slope_ns"]))[:, None]
    norm = torch.sqrt(1.0 + tx**2 + ty**2)
    sun_e = -torch.cos(dec) * torch.sin(h)
    sun_n = torch.cos(lat) * torch.sin(dec) - torch.sin(lat) * torch.cos(dec) * torch.cos(h)
    sun_u = torch.sin(lat) * torch.sin(dec) + torch.cos(lat) * torch.cos(dec) * torch.cos(h)
    mu = ((tx * sun_e + ty * sun_n + sun_u) / norm).clamp(0.0, 1.0)
    return torch.where(sun_u > 0.0, mu, torch.zeros_like(mu))


def equilibrium_t4(inputs: Mapping[str, torch.Tensor], times_h: torch.Tensor,
                   props: thermal.RegolithProperties | None = None) -> torch.Tensor:
    """T⁴ (K⁴) of instantaneous radiative equilibrium with the absorbed sunlight,
    (n, times): ``(1 − A(i)) S cos i / (d² ε σ)`` on each column's facet, 0 at
    night — the exact part of the answer (the same geometry and albedo law as
    :func:`vaemap.thermal.cos_incidence` and :func:`vaemap.thermal.albedo_at_incidence`),
    so the network learns only what conduction adds: the night, and the lag
    and damping of the day."""
    props = props or thermal.RegolithProperties()
    mu = cos_incidence(inputs, times_h)
    # (short of 1: arccos' is infinite there, and a decoder back-propagates through it)
    incidence = torch.rad2deg(torch.arccos(mu.clamp(0.0, _BELOW_ONE)))
    albedo = (inputs["albedo"][:, None] + props.albedo_a * (incidence / 45.0) ** 3
              + props.albedo_b * (incidence / 90.0) ** 8)
    flux = thermal.SOLAR_CONSTANT / inputs["sun_distance"][:, None] ** 2 * mu
    return (1.0 - albedo) * flux / (props.emissivity * thermal.SIGMA_SB)


def reflectance_profiles(inputs: Mapping[str, torch.Tensor], bins: int,
                         substeps: int = 2) -> torch.Tensor:
    """What a solar channel sees, bin by bin: (n, bins) relative reflectance,
    the normal albedo times the facet's cosine of incidence (a Lambertian
    surface, as :func:`vaemap.instrument.observe_reflectance` observes one; 0
    at night), averaged over ``substeps`` times in each of ``bins`` local-time
    bins (:func:`substep_times`). Exact: no network. The same for channels 1 and
    2 (they differ in noise, not in what they see)."""
    times = torch.as_tensor(substep_times(bins, substeps), dtype=inputs["lat"].dtype,
                            device=inputs["lat"].device)
    refl = inputs["albedo"][:, None] * cos_incidence(inputs, times)
    return refl.view(-1, bins, substeps).mean(dim=2)


def facet_equivalent(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Where on the sphere a level surface sees the Sun as each column's facet does:
    ``(latitude, local-time shift)`` (deg, h), each (n,). The facet's normal,
    carried from its column's east/north/up frame to the sphere, points at that
    place; a facet facing east sees the Sun as a level surface further east, so
    its local time runs ahead by the shift. Exact for the direct sunlight but
    for the horizon: a steep facet's Sun still sets with its column's."""
    lat = torch.deg2rad(inputs["lat"])
    tx = torch.tan(torch.deg2rad(inputs["slope_ew"]))
    ty = torch.tan(torch.deg2rad(inputs["slope_ns"]))
    norm = torch.sqrt(1.0 + tx**2 + ty**2)
    n_e, n_n, n_u = tx / norm, ty / norm, 1.0 / norm
    # the column at longitude 0: up (cos φ, 0, sin φ), east (0, 1, 0), north (-sin φ, 0, cos φ)
    x = n_u * torch.cos(lat) - n_n * torch.sin(lat)
    z = n_u * torch.sin(lat) + n_n * torch.cos(lat)
    lat_eq = torch.rad2deg(torch.asin(z.clamp(-_BELOW_ONE, _BELOW_ONE)))  # (asin' as arccos')
    shift_h = torch.rad2deg(torch.atan2(n_e, x)) / 15.0
    return lat_eq, shift_h


def _periodic_at(values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``values`` (n, c, m), a periodic function of local time sampled at m evenly
    spaced local times from 0 h (:func:`grid_times`), at positions ``pos``
    (n, k) in units of that spacing: linear interpolation, differentiable in both."""
    m = values.shape[-1]
    i0 = torch.floor(pos)
    w = (pos - i0)[:, None, :]
    i0 = torch.remainder(i0.long(), m)[:, None, :].expand(-1, values.shape[1], -1)
    i1 = torch.remainder(i0 + 1, m)
    return (1 - w) * torch.gather(values, 2, i0) + w * torch.gather(values, 2, i1)


def _shifted(values: torch.Tensor, shift_h: torch.Tensor) -> torch.Tensor:
    """``values`` (n, c, m) on the grid of :func:`grid_times`, at those times plus
    ``shift_h`` (n,) hours (:func:`_periodic_at`)."""
    m = values.shape[-1]
    pos = (torch.arange(m, device=values.device, dtype=values.dtype)[None, :]
           + shift_h[:, None] * (m / 24.0))
    return _periodic_at(values, pos)


def _features(inputs: Mapping[str, torch.Tensor], lat_eq: torch.Tensor,
              shift_h: torch.Tensor) -> torch.Tensor:
    """The network's inputs scaled to about [-1, 1] (H by its logarithm): albedo,
    H, sub-solar latitude, Sun distance, the facet's equivalent latitude, its
    time shift and the column's own latitude (the last two say where the
    column's horizon cuts the facet's day short)."""
    scaled = []
    for name in _INPUTS:
        lo, hi, _ = {**PARAMETERS, **CONDITIONS}[name]
        x = inputs[name]
        if name == "h_param":
            x, lo, hi = torch.log(x), math.log(lo), math.log(hi)
        scaled.append(2.0 * (x - lo) / (hi - lo) - 1.0)
    scaled += [lat_eq / 90.0, shift_h / 3.0, inputs["lat"] / 90.0]
    return torch.stack(scaled, dim=-1)


class ThermalEmulator(nn.Module):
    """Regolith and rock surface temperatures (K) at the solver's time steps
    (:func:`grid_times`), from a column's parameters and season.

    The surface energy balance ``εσT⁴ = absorbed + conducted`` splits the answer:
    the absorbed sunlight is exact (:func:`equilibrium_t4`); the conducted heat,
    ``s · r`` in T⁴, is learned, in units of the column's own diurnal-mean T⁴
    ``s`` (:meth:`t4_scale`). It is a function of the level surface the
    facet is equivalent to (:func:`facet_equivalent`), in that surface's local
    time, where every column's sunrise falls at the same hour: an MLP of
    ``layers`` hidden layers of ``width`` (SiLU) maps albedo, H, the equivalent
    latitude and the season to ``r`` of regolith and rock on that clock
    (de-standardised by the buffers ``out_mean``, ``out_std``, (2, steps)), and
    the result is shifted back to the column's local time."""

    def __init__(self, width: int = 256, layers: int = 3):
        super().__init__()
        size = self.steps = SOLVER_STEPS_PER_DAY
        dims = [len(_INPUTS) + 3, *[width] * layers]
        blocks: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        # outputs on two clocks: the facet's (its own sunrise and sunset) and the
        # column's (where its horizon cuts a tilted facet's day short)
        self.net = nn.Sequential(*blocks, nn.Linear(dims[-1], 4 * size))
        self.register_buffer("out_mean", torch.zeros(2, size))
        self.register_buffer("out_std", torch.ones(2, size))
        self.register_buffer("times_h", torch.as_tensor(grid_times(), dtype=torch.float32))

    @staticmethod
    def t4_scale(eq: torch.Tensor) -> torch.Tensor:
        """The unit ``s`` of a column's learned T⁴ (K⁴), (n, 1, 1), from its
        :func:`equilibrium_t4` ``eq`` (n, 1, steps): its diurnal-mean T⁴, which
        the energy balance fixes (what is absorbed over a day, plus the
        geothermal flux, is emitted). In units of its own mean every column's
        residual is of order one; in one unit for all (10⁸ K⁴, format 1) a
        polar column's, 10⁻³ of an equatorial one's, was a sliver of the
        output's spread at each step (set by the warm columns): on held-out
        columns (40,000, 200 epochs) the channel RMS fell from 0.68 to 0.33 K
        below 60° latitude and from 4.0 to 2.5 K above."""
        props = thermal.RegolithProperties()
        floor = props.geothermal_flux / (props.emissivity * thermal.SIGMA_SB)
        return eq.mean(dim=-1, keepdim=True) + floor

    def residual_target(self, inputs: Mapping[str, torch.Tensor], t_regolith: torch.Tensor,
                        t_rock: torch.Tensor) -> torch.Tensor:
        """``r`` of solver temperatures (K, (n, steps) each) on the equivalent
        surfaces' clock: (n, 2, steps)."""
        eq = equilibrium_t4(inputs, self.times_h)[:, None]
        r = (torch.stack([t_regolith, t_rock], dim=1) ** 4 - eq) / self.t4_scale(eq)
        return _shifted(r, -facet_equivalent(inputs)[1])

    def arch(self) -> dict[str, int]:
        """What rebuilds this network (:func:`load_emulator`)."""
        return {"width": self.net[0].out_features, "layers": (len(self.net) - 1) // 2}

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t_regolith, t_rock)``, each (n, steps) kelvin at :func:`grid_times`, for inputs
        given as tensors (n,) named as :data:`PARAMETERS` and :data:`CONDITIONS`."""
        lat_eq, shift_h = facet_equivalent(inputs)
        raw = self.net(_features(inputs, lat_eq, shift_h)).view(-1, 4, self.steps)
        r = _shifted(raw[:, :2] * self.out_std + self.out_mean, shift_h) + raw[:, 2:] * self.out_std
        eq = equilibrium_t4(inputs, self.times_h)[:, None]
        t4 = eq + self.t4_scale(eq) * r
        t = t4.clamp_min(_MIN_T_K**4) ** 0.25
        return t[:, 0], t[:, 1]


class _BandTable:
    """Band radiance of one channel and its inverse as differentiable torch lookups
    (the tables of :func:`vaemap.instrument.band_radiance`)."""

    def __init__(self, channel: int, device: torch.device | str = "cpu"):
        grid, log_l = instrument.log_radiance_table(channel)
        self.t0, self.dt = float(grid[0]), float(grid[1] - grid[0])
        self.grid = torch.as_tensor(grid, dtype=torch.float32, device=device)
        self.log_l = torch.as_tensor(log_l, dtype=torch.float32, device=device)

    def radiance(self, t: torch.Tensor) -> torch.Tensor:
        pos = ((t - self.t0) / self.dt).clamp(0, self.grid.numel() - 1.001)
        i = pos.floor().long()
        w = pos - i
        return torch.exp((1 - w) * self.log_l[i] + w * self.log_l[i + 1])

    def temperature(self, radiance: torch.Tensor) -> torch.Tensor:
        x = torch.log(radiance.clamp_min(1e-30))
        i = torch.searchsorted(self.log_l, x.contiguous()).clamp(1, self.log_l.numel() - 1)
        x0, x1 = self.log_l[i - 1], self.log_l[i]
        w = ((x - x0) / (x1 - x0)).clamp(0, 1)
        return (1 - w) * self.grid[i - 1] + w * self.grid[i]


_TABLES: dict[tuple[int, str], _BandTable] = {}


def channel_profiles(t_regolith: torch.Tensor, t_rock: torch.Tensor,
                     rock_fraction: torch.Tensor, channels: Sequence[int], bins: int,
                     substeps: int = 2, noise: float = 0.0) -> torch.Tensor:
    """What each thermal channel sees, bin by bin: (n, channels, bins) kelvin.

    ``t_regolith``, ``t_rock`` (n, steps) K at :func:`grid_times`;
    ``rock_fraction`` (n,). As the simulator observes a column, both are
    interpolated linearly in local time (to ``substeps`` times in each of
    ``bins`` bins, :func:`substep_times`), their band radiances mixed by area
    per channel, the mix turned into a brightness temperature, and the bin's
    substeps averaged (as a profile averages its observations).

    ``noise`` > 0 renders what the instrument reports instead of the scene's
    temperature: each measurement's radiance carries Gaussian noise of
    ``noise`` × the channel's NER (:data:`vaemap.instrument.NER`), a noisy
    radiance that is not positive has no temperature (a fill, which ingest
    rejects), and the bin is the mean over the measurements that remain
    (:func:`reported_temperature`). Below a channel's detection floor the
    profile is not the scene's temperature but the floor's (channels 3-5 at
    night: some 30-40 K above the scene), which a noise-free render cannot
    match. Differentiable in all three inputs."""
    steps = int(t_regolith.shape[-1])  # (an int also when traced: the solver's grid)
    pos = torch.as_tensor(substep_times(bins, substeps) / 24.0 * steps,
                          dtype=t_regolith.dtype, device=t_regolith.device)
    both = _periodic_at(torch.stack([t_regolith, t_rock], dim=1),
                        pos.expand(t_regolith.shape[0], -1))
    t_reg, t_rk = both[:, 0], both[:, 1]
    f = rock_fraction[:, None]
    out = []
    for c in channels:
        if c not in instrument.THERMAL_CHANNELS:
            raise ValueError(f"channel {c}: the emulator models the thermal channels "
                             f"{list(instrument.THERMAL_CHANNELS)} only")
        key = (int(c), str(t_regolith.device))
        if key not in _TABLES:
            _TABLES[key] = _BandTable(int(c), t_regolith.device)
        table = _TABLES[key]
        mixed = (1 - f) * table.radiance(t_reg) + f * table.radiance(t_rk)
        if noise > 0:
            out.append(reported_temperature(table, mixed.view(-1, bins, substeps),
                                            noise * instrument.NER[int(c)]))
        else:
            out.append(table.temperature(mixed).view(-1, bins, substeps).mean(dim=2))
    return torch.stack(out, dim=1)


#: Points of equal probability of a standard normal (the centres of 16 equal
#: slices of its CDF): the noise of one measurement, over which
#: :func:`reported_temperature` averages. With 16 the mean is within 1 K of a
#: Monte Carlo of the simulator's own measurements at any scene temperature,
#: the detection floor included (tested).
NOISE_QUANTILES: tuple[float, ...] = tuple(
    statistics.NormalDist().inv_cdf((k + 0.5) / 16) for k in range(16))


def reported_temperature(table: _BandTable, radiance: torch.Tensor, ner: float,
                         quantiles: Sequence[float] = NOISE_QUANTILES) -> torch.Tensor:
    """The mean brightness temperature the instrument reports over a bin's
    measurements (n, bins) K, from their noise-free band radiances ``radiance``
    (n, bins, measurements), W m⁻² sr⁻¹: each measurement's radiance plus
    Gaussian noise of standard deviation ``ner`` (integrated over
    ``quantiles``), those whose noisy radiance is not positive dropped (they
    have no temperature; the simulator writes them as fills and ingest rejects
    them, as the archive's are), the rest averaged. Differentiable in
    ``radiance`` (the censoring is a mask)."""
    eps = torch.as_tensor(quantiles, dtype=radiance.dtype, device=radiance.device) * ner
    noisy = radiance[..., None] + eps  # (n, bins, measurements, points)
    seen = (noisy > 0).to(radiance.dtype)
    temps = table.temperature(noisy.clamp_min(1e-30).flatten()).view(noisy.shape)
    # (at least the positive half of the points is seen: radiance >= 0)
    return (seen * temps).sum(dim=(2, 3)) / seen.sum(dim=(2, 3))

def save_emulator(path: str | Path, model: ThermalEmulator, **extra: Any) -> None:
    """Write ``emulator.pt`` atomically: a plain dict ``torch.load(...,
    weights_only=True)`` reads, with the weights' checksum."""
    from vaemap.model import tensors_checksum, torch_save

    ckpt = {"format": EMULATOR_FORMAT, "kind": "thermal_emulator",
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "arch": model.arch(), "physics": thermal.source_fingerprint(),
            "parameters": {k: list(v) for k, v in PARAMETERS.items()},
            "conditions": {k: list(v) for k, v in CONDITIONS.items()}, **extra}
    ckpt["weights_checksum"] = tensors_checksum(ckpt["state_dict"])
    torch_save(ckpt, path)


def load_emulator(path: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[ThermalEmulator, dict[str, Any]]:
    """Load ``emulator.pt``: (network in eval mode on ``device``, the dict).

    Raises :class:`EmulatorError` naming the file when it is not an emulator of
    this format, its weights differ from their checksum, or it learned other
    physics than this vaemap's :mod:`vaemap.thermal` (re-run ``vaemap emulator``).
    """
    from vaemap.model import CheckpointError, tensors_checksum, torch_load

    try:
        ckpt = torch_load(path, device)
    except CheckpointError as exc:
        raise EmulatorError(str(exc)) from None
    if ckpt.get("kind") != "thermal_emulator" or ckpt.get("format") != EMULATOR_FORMAT:
        raise EmulatorError(f"{path}: not a vaemap thermal emulator of format "
                            f"{EMULATOR_FORMAT} (kind {ckpt.get('kind')!r}, format "
                            f"{ckpt.get('format')!r}); run vaemap emulator")
    if ckpt.get("weights_checksum") != tensors_checksum(ckpt["state_dict"]):
        raise EmulatorError(f"{path}: the weights do not match the checksum recorded when "
                            f"it was written: the file is corrupt; run vaemap emulator")
    if ckpt.get("physics") != thermal.source_fingerprint():
        raise EmulatorError(f"{path}: learned another thermal model ({ckpt.get('physics')}) "
                            f"than this vaemap's ({thermal.source_fingerprint()}); run "
                            f"vaemap emulator again")
    model = ThermalEmulator(**ckpt["arch"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


#: The physical latents of a physics decoder, in order: the truth factors, named
#: alike (the map products they make).
PHYSICAL_LATENTS: tuple[str, ...] = tuple(TRUTH_FACTORS)

#: The prior of each physical parameter: ``(median, width)``. A latent z ~ N(0, 1)
#: becomes ``lo + (hi − lo) · sigmoid(logit(s₀) + width · z)`` over the range of
#: :data:`PARAMETERS` (H on a log scale), s₀ placing the median. The medians are
#: the typical lunar surface of the literature, not fitted to any simulated Moon:
#: bolometric albedo 0.12 (between maria and highlands), H 0.06 m (the global
#: typical value of Hayne et al. 2017), level ground, and a rock fraction of 0.002
#: (the regolith's median rock abundance is well under 1 %, Bandfield et al. 2011;
#: 0.002 and 0.005 compared on the validation Moon: the same |ρ| for every
#: parameter, H's RMSE 0.0085 against 0.0111 m, as the larger median let rock and
#: H rise together). The widths give about ±0.035 in albedo, H 0.03-0.13 m, ±8.5°
#: of slope and 0.0005-0.009 of rock at ±1σ. Why the medians matter: at night a little rock
#: (warm) and a higher H (cold) look alike in one channel, and a prior centred
#: on the middle of the range (rock fraction 0.25) pulls every pixel towards
#: more rock and a compensating H, the degenerate fit (measured on the validation
#: Moon: H 0.18 m against a true 0.06 m).
PRIORS: dict[str, tuple[float, float]] = {
    "albedo": (0.12, 0.7),
    "h_param": (0.06, 1.0),
    "slope_ew": (0.0, 0.5),
    "slope_ns": (0.0, 0.5),
    "rock_fraction": (0.002, 1.5),
}


def priors_record() -> dict[str, list[float]]:
    """:data:`PRIORS` as a model records them (JSON-like), and as they are compared."""
    return {name: list(prior) for name, prior in PRIORS.items()}


def _prior_offset(name: str) -> float:
    """logit(s₀): where the latent 0 (the prior's median) lies in [0, 1]."""
    lo, hi, _ = PARAMETERS[name]
    median, _ = PRIORS[name]
    s0 = ((math.log(median) - math.log(lo)) / (math.log(hi) - math.log(lo))
          if name == "h_param" else (median - lo) / (hi - lo))
    return math.log(s0 / (1 - s0))


def parameters_from_latents(mu: torch.Tensor, logvar: torch.Tensor | None = None
                            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Physical parameters from physical latents (n, 5) in :data:`PHYSICAL_LATENTS`
    order: each latent's standard-normal prior becomes a logit-normal prior over
    the parameter's range in :data:`PARAMETERS`, with the median and width of
    :data:`PRIORS` (H on a log scale), so a decoder can never leave the range its
    emulator knows. With ``logvar``, also each parameter's posterior σ by the
    delta method (``|dp/dz| · σ_z``), in the parameter's unit. Returns
    ``(values, sigmas)``, dicts of (n,) tensors (``sigmas`` empty without
    ``logvar``)."""
    values: dict[str, torch.Tensor] = {}
    sigmas: dict[str, torch.Tensor] = {}
    for k, name in enumerate(PHYSICAL_LATENTS):
        lo, hi, _ = PARAMETERS[name]
        width = PRIORS[name][1]
        s = torch.sigmoid(_prior_offset(name) + width * mu[:, k])
        if name == "h_param":
            value = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * s)
            slope = value * (math.log(hi) - math.log(lo)) * s * (1 - s) * width
        else:
            value = lo + (hi - lo) * s
            slope = (hi - lo) * s * (1 - s) * width
        values[name] = value.clamp(lo, hi)  # (float32 rounding at the ends)
        if logvar is not None:
            sigmas[name] = slope * torch.exp(0.5 * logvar[:, k])
    return values, sigmas


def physics_profiles(model: ThermalEmulator, params: Mapping[str, torch.Tensor],
                     lat_deg: torch.Tensor, channels: Sequence[int], bins: int, *,
                     declination_deg: float = 0.0, sun_distance_au: float = 1.0,
                     substeps: int = 2, noise: float = 0.0) -> torch.Tensor:
    """The profiles (n, channels, bins) that the physics gives for parameters
    ``params`` (tensors (n,) named as :data:`PHYSICAL_LATENTS`, e.g. from
    :func:`parameters_from_latents`) at latitudes ``lat_deg`` (n,) and one season
    (by default the mean one: equinox, 1 AU): kelvin in a thermal channel (the
    emulator's temperatures, :func:`channel_profiles`), relative reflectance in
    a solar one (:func:`reflectance_profiles`), in the order of ``channels``;
    ``noise`` > 0: the thermal channels as the instrument reports them (see
    :func:`channel_profiles`). Differentiable in the parameters, for a decoder."""
    n = lat_deg.shape[0]
    inputs = {**params, "lat": lat_deg,
              "declination": torch.full((n,), float(declination_deg), device=lat_deg.device),
              "sun_distance": torch.full((n,), float(sun_distance_au), device=lat_deg.device)}
    unknown = sorted(set(channels) - set(instrument.THERMAL_CHANNELS)
                     - set(instrument.SOLAR_CHANNELS))
    if unknown:
        raise ValueError(f"channels {unknown}: not Diviner channels (1-9)")
    thermal_at = [j for j, c in enumerate(channels) if c in instrument.THERMAL_CHANNELS]
    solar_at = [j for j, c in enumerate(channels) if c in instrument.SOLAR_CHANNELS]
    out = torch.empty((n, len(channels), bins), dtype=lat_deg.dtype, device=lat_deg.device)
    if thermal_at:
        t_reg, t_rock = model(inputs)
        out[:, thermal_at] = channel_profiles(t_reg, t_rock, params["rock_fraction"],
                                              [channels[j] for j in thermal_at], bins,
                                              substeps, noise)
    if solar_at:
        out[:, solar_at] = reflectance_profiles(inputs, bins, substeps)[:, None]
    return out
