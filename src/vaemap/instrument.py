"""The Diviner radiometer as a measuring instrument: passbands, band radiance, noise.

Diviner's thermal channels 3-9 each integrate the radiance over a passband
(Paige et al. 2010, Space Sci. Rev. 150:125); the archive's ``radiance``
column is that band-integrated radiance (W m⁻² sr⁻¹, no per-µm term) and
``tb`` the temperature of the black body that gives it. A centre-wavelength
Planck function does not reproduce the archive's ``tb`` (the Diviner team
says so), so everything here works with the band integral, with a flat
response inside each band.

Channels 1 and 2 see reflected sunlight (0.3-3 µm); the archive stores their
``tb`` as a reflectance relative to a normally lit Lambertian surface (not
kelvin) and ``radiance`` as the in-band radiance. A Lambertian surface of
normal albedo A under the Sun at incidence i has reflectance A·cos i there.

The noise of an uncooled thermopile radiometer is set by a noise-equivalent
radiance (NER) per channel, the same at any scene temperature, so in kelvin it
grows steeply as the scene cools: channels 3-5 (8 µm) lose a night-time
surface entirely, channel 9 is noisy everywhere but sees the coldest traps.
The NER values below are representative, not the instrument's calibration:
they put each channel's detection floor (signal-to-noise 1) at 145-155 K
(channels 3-5), 73 K (6), 49 K (7), 32 K (8) and 22 K (9), which reproduces
which channels see the lunar night.

Functions take kelvin and return W m⁻² sr⁻¹ (or the reverse) and broadcast
over any array shape; they are numpy-only and fast (a lookup table per
channel, built once).
"""

from __future__ import annotations

from functools import cache

import numpy as np

__all__ = [
    "NER",
    "NIGHT_HOURS",
    "PASSBANDS_UM",
    "REFLECTANCE_NOISE",
    "SOLAR_CHANNELS",
    "THERMAL_CHANNELS",
    "band_radiance",
    "brightness_temperature",
    "channel_unit",
    "is_solar",
    "log_radiance_table",
    "mix_footprint",
    "night_bins",
    "night_mask",
    "noise_equivalent_delta_t",
    "observe",
    "observe_reflectance",
]

#: Thermal passbands, µm (Paige et al. 2010).
PASSBANDS_UM: dict[int, tuple[float, float]] = {
    3: (7.55, 8.05), 4: (8.10, 8.40), 5: (8.38, 8.68), 6: (13.0, 23.0),
    7: (25.0, 41.0), 8: (50.0, 100.0), 9: (100.0, 400.0),
}

#: Representative noise-equivalent radiance per channel, W m⁻² sr⁻¹ (see above).
NER: dict[int, float] = {3: 0.014, 4: 0.0084, 5: 0.0070, 6: 0.0120, 7: 0.0060, 8: 0.0048,
                         9: 0.0033}

_C1 = 1.191042972e8  # 2hc², W µm⁴ m⁻² sr⁻¹
_C2 = 1.4387769e4  # hc/k, µm K
_T_GRID = np.arange(2.0, 800.0, 0.125)  # K; log-radiance is smooth, linear interpolation suffices


def _check_channel(channel: int) -> tuple[float, float]:
    if channel not in PASSBANDS_UM:
        raise ValueError(f"channel {channel}: not a Diviner thermal channel "
                         f"(expected one of {sorted(PASSBANDS_UM)})")
    return PASSBANDS_UM[channel]


@cache
def _log_radiance_table(channel: int) -> np.ndarray:
    """ln of the band radiance at every temperature of _T_GRID (24-point Gauss-Legendre)."""
    lo, hi = _check_channel(channel)
    nodes, weights = np.polynomial.legendre.leggauss(24)
    lam = 0.5 * (lo + hi) + 0.5 * (hi - lo) * nodes
    with np.errstate(over="ignore"):
        spectral = _C1 / lam**5 / np.expm1(_C2 / (lam * _T_GRID[:, None]))
    # floor: at a few kelvin the 8 µm radiance underflows (no measurement reaches it)
    return np.log(np.maximum((0.5 * (hi - lo) * weights * spectral).sum(axis=1), 1e-300))


def log_radiance_table(channel: int) -> tuple[np.ndarray, np.ndarray]:
    """The lookup table behind :func:`band_radiance`: temperatures (K, a uniform
    grid of 2-800 K) and the natural log of the band radiance at each, for
    other implementations of the same function (the emulator's, in torch)."""
    return _T_GRID, _log_radiance_table(channel)


def band_radiance(temp_k: np.ndarray | float, channel: int) -> np.ndarray:
    """Radiance of a black body at ``temp_k`` (K) integrated over ``channel``'s band,
    W m⁻² sr⁻¹; temperatures are clipped to the table's 2-800 K."""
    t = np.clip(np.asarray(temp_k, dtype=float), _T_GRID[0], _T_GRID[-1])
    return np.exp(np.interp(t, _T_GRID, _log_radiance_table(channel)))


def brightness_temperature(radiance: np.ndarray | float, channel: int) -> np.ndarray:
    """Inverse of :func:`band_radiance`: kelvin from W m⁻² sr⁻¹; NaN where the
    radiance is not positive (a noisy measurement of a scene below detection)."""
    r = np.asarray(radiance, dtype=float)
    table = _log_radiance_table(channel)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.interp(np.log(np.where(r > 0, r, np.nan)), table, _T_GRID)
    return np.where(r > 0, t, np.nan)


def noise_equivalent_delta_t(temp_k: np.ndarray | float, channel: int) -> np.ndarray:
    """Noise in kelvin of one measurement of a scene at ``temp_k``: NER / (dL/dT)."""
    t = np.asarray(temp_k, dtype=float)
    slope = (band_radiance(t + 0.05, channel) - band_radiance(t - 0.05, channel)) / 0.1
    return NER[channel] / slope


def mix_footprint(temps_k: tuple[np.ndarray, ...], fractions: tuple[np.ndarray, ...],
                  channel: int) -> np.ndarray:
    """Band radiance (W m⁻² sr⁻¹) of a footprint holding surfaces at ``temps_k`` with
    areal ``fractions`` (summing to 1): radiances, not temperatures, add, so a
    short-wavelength channel weights the warmer part more (anisothermality,
    Bandfield et al. 2011). NaN temperatures count only where their fraction is 0."""
    total = np.zeros(np.broadcast_shapes(*(np.shape(t) for t in temps_k)))
    for t, f in zip(temps_k, fractions, strict=True):
        f = np.asarray(f, dtype=float)
        total = total + np.where(f > 0, f * band_radiance(np.nan_to_num(t, nan=2.0), channel),
                                 0.0)
    return total


def observe(radiance: np.ndarray, channel: int, rng: np.random.Generator,
            noise_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One noisy measurement of each band radiance: ``(radiance, tb)`` with Gaussian
    noise of ``noise_scale`` × NER added to the radiance, and ``tb`` (K) its
    brightness temperature, NaN where the noisy radiance is not positive."""
    noisy = radiance + rng.normal(0.0, NER[channel] * noise_scale, np.shape(radiance))
    return noisy, brightness_temperature(noisy, channel)


#: The solar channels (reflected sunlight, archived as relative reflectance).
SOLAR_CHANNELS = (1, 2)
#: The thermal channels (emitted radiance, archived as brightness temperature, K).
THERMAL_CHANNELS = tuple(PASSBANDS_UM)
#: Local solar times of the lunar night, hours [start, end), wrapping midnight:
#: the Sun is down (the solar channels see nothing) and the surface cools at a
#: rate set by its thermal inertia (H-parameter, rocks), not by albedo or slope.
NIGHT_HOURS = (18.0, 6.0)
#: Representative noise of one solar-channel measurement, in reflectance units.
REFLECTANCE_NOISE: dict[int, float] = {1: 0.002, 2: 0.004}
#: In-band (0.3-3 µm) radiance of a white Lambertian surface under the overhead
#: Sun at 1 AU, W m⁻² sr⁻¹ (about 1200 W m⁻² of the solar constant, over π).
SOLAR_BAND_RADIANCE = 382.0


def observe_reflectance(albedo: np.ndarray, cos_incidence: np.ndarray, channel: int,
                        rng: np.random.Generator, noise_scale: float = 1.0,
                        sundist_au: np.ndarray | float = 1.0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One noisy solar-channel measurement of Lambertian surfaces: ``(radiance,
    reflectance)``, the reflectance ``albedo`` × ``cos_incidence`` (0 at night)
    plus Gaussian noise of ``noise_scale`` × :data:`REFLECTANCE_NOISE`, and the
    in-band radiance (W m⁻² sr⁻¹) at the Sun distance ``sundist_au``."""
    if channel not in SOLAR_CHANNELS:
        raise ValueError(f"channel {channel}: not a solar channel (expected 1 or 2)")
    reflectance = np.asarray(albedo, float) * np.clip(cos_incidence, 0.0, 1.0)
    reflectance = reflectance + rng.normal(0.0, REFLECTANCE_NOISE[channel] * noise_scale,
                                           reflectance.shape)
    return reflectance * SOLAR_BAND_RADIANCE / np.asarray(sundist_au) ** 2, reflectance


def is_solar(channels) -> np.ndarray:
    """Boolean array, True for the solar channels 1-2 among ``channels``."""
    return np.isin(np.asarray(channels), SOLAR_CHANNELS)


def night_bins(bins: int) -> np.ndarray:
    """Boolean (bins,): the local-time bins of ``bins`` equal bins over 24 h whose
    centre lies in the night (:data:`NIGHT_HOURS`)."""
    centre = (np.arange(bins) + 0.5) * 24.0 / bins
    start, end = NIGHT_HOURS
    return (centre >= start) | (centre < end)


def night_mask(channels, bins: int) -> np.ndarray:
    """Boolean (channels, bins): the night bins of the thermal channels among
    ``channels`` (a solar channel sees nothing at night)."""
    return night_bins(bins)[None, :] & ~is_solar(channels)[:, None]


def channel_unit(channel: int) -> str:
    """The unit of a channel's archived ``tb``: kelvin for the thermal channels 3-9,
    ``reflectance`` (relative to a normally lit Lambertian surface) for 1-2."""
    if not 1 <= channel <= 9:
        raise ValueError(f"channel {channel}: Diviner has channels 1-9")
    return "reflectance" if channel in SOLAR_CHANNELS else "K"
