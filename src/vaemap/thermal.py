"""Regolith thermal model (Hayne et al. 2017, JGR Planets 122:2371), vectorised over columns.

One-dimensional heat conduction ρ c_p ∂T/∂t = ∂/∂z (K ∂T/∂z) in a column of
regolith whose density and contact conductivity grow with depth with the
e-folding scale H (the "H-parameter"), with a radiative conductivity term,
temperature-dependent heat capacity, an incidence-dependent albedo and a
geothermal flux at the bottom.  Thousands of columns (pixels, facets, rocks)
are solved together: every array is ``(n_layers, n_columns)`` and each time
step is one batched tridiagonal solve (implicit Euler, radiative surface
boundary linearised by one Newton step), so the cost per column is a few
microseconds per step.

The periodic diurnal state is reached quickly by re-levelling the deep
temperature after each simulated day to the mean temperature found a few
skin depths down, where the diurnal wave has died out (the mean profile below
the thermal skin follows the geothermal gradient). Each column stops as soon
as its diurnal curve changes by less than the tolerance from one day to the
next: sunlit regolith within a few days, rocks (whose diurnal wave reaches a
metre down) within ~0.5 K after 16 days; a column still changing by more than
0.5 K a day after its last allowed day is reported in a warning. Permanently
shadowed columns (≈ 25 K, set by the geothermal flux) would need hundreds of
days and are left a few kelvin from equilibrium.

Limits, by design: implicit (backward Euler) time steps of 1/120 of a lunar
day, so the sharpest sunrise transients are smoothed over about 12 minutes;
each column is a flat or tilted facet that sees the Sun whenever the Sun is
above its own horizon plane, so there is no shadowing by surrounding terrain
and no heat re-radiated or reflected by neighbouring slopes; no lateral
conduction; emissivity is one grey number (the channels' brightness
temperatures differ only through sub-pixel mixing, not spectral emissivity);
seasons enter as a periodic diurnal solution at each season's solar
declination and distance (the annual wave below the diurnal skin is ignored).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "COLUMN_KEYS",
    "LUNAR_DAY_S",
    "RegolithProperties",
    "albedo_at_incidence",
    "cos_incidence",
    "facet_geometry",
    "heat_capacity",
    "solve_columns",
    "solve_facets",
    "source_fingerprint",
    "surface_temperature",
    "surface_temperature_components",
]

SIGMA_SB = 5.670374419e-8  # W m^-2 K^-4
SOLAR_CONSTANT = 1361.0  # W m^-2 at 1 AU
LUNAR_DAY_S = 29.53059 * 86400.0  # synodic day, seconds
REGOLITH_MAX_DAYS = 12  # simulated days before a regolith column is given up on
ROCK_MAX_DAYS = 16  # rocks settle slowly (metre-deep diurnal wave): within ~0.5 K by then
WARN_CHANGE_K = 0.5  # a column still changing by more than this on its last day is reported
CP_COEFFS = (8.9093e-9, -1.234e-5, 2.3616e-3, 2.7431, -3.6125)  # J kg^-1 K^-1, highest power first


@dataclass(frozen=True)
class RegolithProperties:
    """Physical constants of the Hayne et al. (2017) regolith model (SI units)."""

    rho_surface: float = 1100.0  # kg m^-3
    rho_deep: float = 1800.0  # kg m^-3
    k_surface: float = 7.4e-4  # W m^-1 K^-1, contact conductivity at the surface
    k_deep: float = 3.4e-3  # W m^-1 K^-1, at depth
    chi: float = 2.7  # radiative conductivity parameter
    emissivity: float = 0.95
    albedo_a: float = 0.06  # A(i) = A0 + a (i/45°)^3 + b (i/90°)^8
    albedo_b: float = 0.25
    geothermal_flux: float = 0.018  # W m^-2
    # Rocks (Bandfield et al. 2011): dense, conductive, no radiative term.
    rho_rock: float = 2940.0
    k_rock: float = 1.5


def heat_capacity(temperature: np.ndarray) -> np.ndarray:
    """Specific heat capacity of regolith, J kg⁻¹ K⁻¹, for temperature in kelvin."""
    return np.polyval(CP_COEFFS, temperature)


def albedo_at_incidence(a0: np.ndarray, incidence_deg: np.ndarray,
                        props: RegolithProperties = RegolithProperties()) -> np.ndarray:
    """Bond albedo at solar incidence angle ``incidence_deg`` (degrees); ``a0`` at normal."""
    i = np.clip(incidence_deg, 0.0, 90.0)
    return a0 + props.albedo_a * (i / 45.0) ** 3 + props.albedo_b * (i / 90.0) ** 8


def cos_incidence(lat_deg: np.ndarray, hour_angle_deg: np.ndarray, slope_deg: np.ndarray,
                  azimuth_deg: np.ndarray, declination_deg: float = 0.0) -> np.ndarray:
    """Cosine of the solar incidence angle on a tilted facet (0 when the Sun is down).

    Parameters are broadcast together. The hour angle is 15°·(local time − 12 h);
    the facet azimuth is the direction its normal faces, clockwise from north
    (90° = east-facing, which sees the morning Sun first). Horizon shadowing by
    surrounding terrain is ignored; a facet sees no Sun once the Sun sets for
    the horizontal plane.
    """
    lat, h = np.radians(lat_deg), np.radians(hour_angle_deg)
    s, az, dec = np.radians(slope_deg), np.radians(azimuth_deg), np.radians(declination_deg)
    # Sun direction in the local east/north/up frame.
    sun_e = -np.cos(dec) * np.sin(h)
    sun_n = np.cos(lat) * np.sin(dec) - np.sin(lat) * np.cos(dec) * np.cos(h)
    sun_u = np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(h)
    mu = np.sin(s) * np.sin(az) * sun_e + np.sin(s) * np.cos(az) * sun_n + np.cos(s) * sun_u
    return np.where(sun_u > 0.0, np.clip(mu, 0.0, 1.0), 0.0)


def solve_columns(
    absorbed: np.ndarray,
    rho_s: np.ndarray,
    rho_d: np.ndarray,
    k_s: np.ndarray,
    k_d: np.ndarray,
    h_param: np.ndarray,
    chi: np.ndarray,
    props: RegolithProperties,
    *,
    layers_per_skin: int = 8,
    growth: float = 1.22,
    n_layers: int = 26,
    max_days: int = 8,
    tol_k: float = 0.1,
) -> np.ndarray:
    """Periodic diurnal surface temperature for columns driven by ``absorbed`` flux.

    ``absorbed`` is the absorbed solar flux (W m⁻²) at each of the ``n_steps``
    equally spaced times of one diurnal cycle, shape ``(n_steps, n_columns)``.
    Returns the surface temperature at those times, kelvin, same shape.

    Each implicit step eliminates the tridiagonal system from the bottom up, so
    the surface row is left as one scalar equation per column,
    ``εσT⁴ + a·T = b``, solved exactly by Newton's method from an upper bound
    (monotone convergence, even for a slope suddenly lit at sunrise); the
    interior follows by back-substitution.
    """
    n_steps, n_col = absorbed.shape
    dt = LUNAR_DAY_S / n_steps
    eps_sigma = props.emissivity * SIGMA_SB

    # Grid: first layer a fraction of the top diurnal skin depth, growing
    # geometrically; every column has the same layers in skin-depth units.
    kappa_top = k_s / (rho_s * heat_capacity(250.0))
    skin = np.sqrt(kappa_top * LUNAR_DAY_S / np.pi)
    unit = (growth ** np.arange(n_layers - 1))[:, None]
    dz = unit * (skin / layers_per_skin)[None, :]  # (n_layers-1, n_col) node spacing
    z = np.vstack([np.zeros((1, n_col)), np.cumsum(dz, axis=0)])  # (n_layers, n_col)
    safe_h = np.where(h_param > 0, h_param, 1.0)
    decay = np.where(h_param[None, :] > 0, np.exp(-z / safe_h[None, :]), 0.0)
    rho = rho_d - (rho_d - rho_s) * decay
    k_c = k_d - (k_d - k_s) * decay
    g_contact = 0.5 * (k_c[1:] + k_c[:-1]) / dz  # contact conductance of each interface
    cell = np.empty_like(z)  # control-volume thickness of each node
    cell[0] = 0.5 * dz[0]
    cell[1:-1] = 0.5 * (dz[1:] + dz[:-1])
    cell[-1] = 0.5 * dz[-1]
    rho_cell = rho * cell / dt
    deep_index = int(np.searchsorted(np.cumsum(unit[:, 0]) / layers_per_skin, 2.0))

    # Initial guess: near the radiative equilibrium of the mean absorbed flux
    # (converges about a quarter faster than a fraction of the noon value).
    flux_mean = np.maximum(absorbed.mean(axis=0), 0.5)
    temp = np.broadcast_to(0.9 * (flux_mean / eps_sigma) ** 0.25, (n_layers, n_col)).copy()

    result = np.empty((n_steps, n_col))
    active = np.arange(n_col)  # columns still changing from one day to the next
    last = n_layers - 1
    previous = None
    change = np.full(n_col, np.inf)
    for _day in range(max_days):
        surface = np.empty((n_steps, active.size))
        e = np.empty_like(temp)
        f = np.empty_like(temp)
        deep_sum = np.zeros(active.size)
        for step in range(n_steps):
            t_mid = (0.5 / 350.0) * (temp[1:] + temp[:-1])
            g = g_contact * (1.0 + chi * (t_mid * t_mid * t_mid))  # W m^-2 K^-1
            cap = rho_cell * _heat_capacity_fast(temp)
            # Bottom-up elimination: T_i = e_i + f_i T_(i-1).
            den = cap[last] + g[last - 1]
            e[last] = (cap[last] * temp[last] + props.geothermal_flux) / den
            f[last] = g[last - 1] / den
            for i in range(last - 1, 0, -1):
                den = cap[i] + g[i - 1] + g[i] * (1.0 - f[i + 1])
                e[i] = (cap[i] * temp[i] + g[i] * e[i + 1]) / den
                f[i] = g[i - 1] / den
            # Surface: εσT⁴ + a T = b, Newton from the smaller of two upper bounds.
            a = cap[0] + g[0] * (1.0 - f[1])
            b = cap[0] * temp[0] + absorbed[step] + g[0] * e[1]
            x = np.minimum(np.sqrt(np.sqrt(b / eps_sigma)), b / a)
            for _newton in range(4):
                x3 = eps_sigma * x * x * x
                x = x - (x3 * x + a * x - b) / (4.0 * x3 + a)
            temp[0] = x
            for i in range(1, n_layers):
                temp[i] = e[i] + f[i] * temp[i - 1]
            surface[step] = x
            deep_sum += temp[deep_index]
        result[:, active] = surface
        if previous is not None:
            change[active] = np.max(np.abs(surface - previous), axis=0)
            # A converged column is final: drop it, so the slow ones (rocks,
            # polar columns) do not make every column run every day.
            keep = change[active] >= tol_k
            if not keep.any():
                break
            if not keep.all():
                active, surface, deep_sum = active[keep], surface[:, keep], deep_sum[keep]
                absorbed, temp, z, k_c = absorbed[:, keep], temp[:, keep], z[:, keep], k_c[:, keep]
                g_contact, rho_cell, chi = g_contact[:, keep], rho_cell[:, keep], chi[keep]
        previous = surface.copy()
        # Re-level everything below the diurnal skin to the mean found there,
        # plus the geothermal gradient: this saves the weeks of simulated time
        # the deep layers would otherwise need to equilibrate.
        deep_mean = deep_sum / n_steps
        k_deep_eff = k_c[deep_index:] * (1.0 + chi * (deep_mean / 350.0) ** 3)
        gradient = props.geothermal_flux / k_deep_eff
        temp[deep_index:] = deep_mean + gradient * (z[deep_index:] - z[deep_index])
    unconverged = change > max(tol_k, WARN_CHANGE_K)
    if unconverged.any():
        log.warning("thermal model: %d of %d columns still changed by up to %.2f K on the "
                    "last of %d simulated days (tolerance %.2f K)", unconverged.sum(), n_col,
                    change[unconverged].max(), max_days, tol_k)
    return result


def _heat_capacity_fast(t: np.ndarray) -> np.ndarray:
    # Horner form of :func:`heat_capacity` without numpy.polyval's overhead.
    c = CP_COEFFS
    return (((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]


def surface_temperature_components(
    lat_deg: np.ndarray | float,
    local_time_h: np.ndarray | float,
    *,
    albedo: np.ndarray | float = 0.12,
    h_param: np.ndarray | float = 0.06,
    slope_deg: np.ndarray | float = 0.0,
    azimuth_deg: np.ndarray | float = 0.0,
    rock_fraction: np.ndarray | float = 0.0,
    solar_distance_au: float = 1.0,
    declination_deg: float = 0.0,
    steps_per_day: int = 192,
    props: RegolithProperties = RegolithProperties(),
) -> tuple[np.ndarray, np.ndarray]:
    """Regolith and rock surface temperatures of each column, kelvin.

    Parameters
    ----------
    lat_deg : array_like, shape (n_columns,) or scalar
        Latitude, degrees north.
    local_time_h : array_like, shape (n_local_times,)
        Local solar times, hours (12 h = noon).
    albedo, h_param, slope_deg, azimuth_deg, rock_fraction : array_like
        Normal bond albedo A0, H-parameter (m), facet slope (degrees), facet
        azimuth (degrees clockwise from north, 90 = east-facing) and areal rock
        fraction in [0, 1]; each broadcastable to ``(n_columns,)``.
    solar_distance_au, declination_deg : float
        Sun distance (AU) and sub-solar latitude (degrees).
    steps_per_day : int
        Implicit time steps per lunar day.

    Returns ``(t_regolith, t_rock)``, each of shape (n_columns, n_local_times);
    the rock temperature is solved only for columns with ``rock_fraction > 0``
    and is NaN elsewhere. Radiometers see the two mixed inside the footprint
    (see :func:`vaemap.instrument.mix_footprint`); :func:`surface_temperature` mixes them
    bolometrically.
    """
    lat, alb, hpar, slope, az, rock = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(v, dtype=float))
          for v in (lat_deg, albedo, h_param, slope_deg, azimuth_deg, rock_fraction))
    )
    if np.any(np.abs(lat) > 90):
        raise ValueError("lat_deg must lie in [-90, 90] degrees")
    if np.any((rock < 0) | (rock > 1)):
        raise ValueError("rock_fraction must lie in [0, 1]")
    if np.any(hpar <= 0):
        raise ValueError("h_param must be positive (metres)")
    local_time = np.atleast_1d(np.asarray(local_time_h, dtype=float))
    n_col = lat.size

    step_lt = np.arange(steps_per_day) * 24.0 / steps_per_day  # local time of each step
    mu = cos_incidence(lat[None, :], (step_lt[:, None] - 12.0) * 15.0, slope[None, :],
                       az[None, :], declination_deg)
    incidence = np.degrees(np.arccos(np.clip(mu, 0.0, 1.0)))
    flux = SOLAR_CONSTANT / solar_distance_au**2 * mu
    absorbed = (1.0 - albedo_at_incidence(alb[None, :], incidence, props)) * flux

    ones = np.ones(n_col)
    t_reg = solve_columns(absorbed, props.rho_surface * ones, props.rho_deep * ones,
                           props.k_surface * ones, props.k_deep * ones, hpar,
                           props.chi * ones, props, max_days=REGOLITH_MAX_DAYS)
    t_rock = np.full_like(t_reg, np.nan)
    idx = np.flatnonzero(rock > 0)
    if idx.size:
        m = idx.size
        # Rocks conduct: their diurnal wave reaches a metre down and takes
        # several times longer to settle than the regolith's.
        t_rock[:, idx] = solve_columns(absorbed[:, idx], props.rho_rock * np.ones(m),
                                        props.rho_rock * np.ones(m), props.k_rock * np.ones(m),
                                        props.k_rock * np.ones(m), np.zeros(m), np.zeros(m),
                                        props, max_days=ROCK_MAX_DAYS)

    # Periodic linear interpolation onto the requested local times.
    pos = np.mod(local_time, 24.0) / 24.0 * steps_per_day
    i0 = np.floor(pos).astype(int) % steps_per_day
    i1 = (i0 + 1) % steps_per_day
    w = (pos - np.floor(pos))[None, :]

    def at_local_time(t: np.ndarray) -> np.ndarray:
        return (1.0 - w) * t[i0].T + w * t[i1].T

    return at_local_time(t_reg), at_local_time(t_rock)


def surface_temperature(lat_deg: np.ndarray | float, local_time_h: np.ndarray | float, *,
                        rock_fraction: np.ndarray | float = 0.0, **kwargs: Any) -> np.ndarray:
    """Periodic diurnal surface temperature of regolith columns, kelvin.

    Takes the arguments of :func:`surface_temperature_components`.

    Returns
    -------
    ndarray, shape (n_columns, n_local_times)
        Surface temperature in kelvin; with ``rock_fraction`` f the bolometric
        footprint temperature ``(f T_rock⁴ + (1 − f) T_regolith⁴)^(1/4)``.
    """
    t_reg, t_rock = surface_temperature_components(lat_deg, local_time_h,
                                                   rock_fraction=rock_fraction, **kwargs)
    f = np.broadcast_to(np.atleast_1d(np.asarray(rock_fraction, float)), (t_reg.shape[0],))
    f = f[:, None]
    mixed4 = np.where(f > 0, f * np.nan_to_num(t_rock) ** 4 + (1 - f) * t_reg**4, t_reg**4)
    return mixed4**0.25


def facet_geometry(slope_ew: np.ndarray, slope_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Facet slope and azimuth (degrees; azimuth clockwise from north) from the
    east/west and north/south tilt components (degrees, positive = facing east/north)."""
    tx, ty = np.tan(np.radians(slope_ew)), np.tan(np.radians(slope_ns))
    slope = np.degrees(np.arctan(np.hypot(tx, ty)))
    azimuth = np.mod(np.degrees(np.arctan2(tx, ty)), 360.0)
    return slope, azimuth


#: The surface factors of one column, as :func:`solve_facets` takes them (arrays (n,)
#: or scalars): latitude (deg), normal albedo, H (m), east/west and north/south
#: slope components (deg, positive = facing east / north) and rock fraction.
COLUMN_KEYS = ("lat", "albedo", "h_param", "slope_ew", "slope_ns", "rock_fraction")
_BLOCK_COLUMNS = 4096  # columns solved together: their arrays stay in cache (2x faster than 16k)


def _solve_block(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    columns, declination, distance, steps_per_day = args
    slope, azimuth = facet_geometry(columns["slope_ew"], columns["slope_ns"])
    t_reg, t_rock = surface_temperature_components(
        columns["lat"], np.arange(steps_per_day) * 24.0 / steps_per_day,
        albedo=columns["albedo"], h_param=columns["h_param"], slope_deg=slope,
        azimuth_deg=azimuth, rock_fraction=columns["rock_fraction"],
        steps_per_day=steps_per_day, declination_deg=declination, solar_distance_au=distance,
    )
    return t_reg.astype(np.float32), t_rock.astype(np.float32)


def solve_facets(columns: Mapping[str, np.ndarray], declination: float, distance: float, *,
                 steps_per_day: int, workers: int = 1, regolith_file: Path | None = None
                 ) -> tuple[np.ndarray | Path, np.ndarray | None]:
    """Periodic diurnal regolith and rock temperature (K, float32, (n,
    steps_per_day), at local times ``k · 24 / steps_per_day`` h) of every column
    of ``columns`` (:data:`COLUMN_KEYS`), at one season (sub-solar latitude
    ``declination``, deg; Sun distance ``distance``, AU), in blocks spread over
    ``workers`` processes. Rock temperatures are NaN where the rock fraction is 0.

    With ``regolith_file`` the regolith table is written block by block to that
    ``.npy`` file (and its path returned in place of the array), and the rock
    table is not kept: memory stays a few blocks whatever the number of columns.
    """
    from vaemap.io import atomic_path

    n = int(np.size(columns["lat"]))
    size = max(1, min(_BLOCK_COLUMNS, -(-n // max(workers, 1))))  # every worker gets some
    blocks = [({k: np.broadcast_to(columns[k], (n,))[a:a + size] for k in COLUMN_KEYS},
               declination, distance, steps_per_day) for a in range(0, n, size)]
    shape = (n, steps_per_day)
    with contextlib.ExitStack() as stack:
        if workers <= 1 or len(blocks) == 1:
            parts = map(_solve_block, blocks)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(min(workers, len(blocks))))
            parts = pool.map(_solve_block, blocks)
        if regolith_file is None:
            done = list(parts)
            return (np.concatenate([p[0] for p in done]),
                    np.concatenate([p[1] for p in done]))
        # Written sequentially (not through a map, whose dirty pages would count
        # against this process until the end).
        with atomic_path(regolith_file) as tmp, open(tmp, "wb") as sink:
            np.lib.format.write_array_header_1_0(
                sink, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                       "fortran_order": False, "shape": shape})
            for regolith, _ in parts:
                sink.write(np.ascontiguousarray(regolith, dtype=np.float32).tobytes())
    return regolith_file, None


def source_fingerprint() -> str:
    """``xxh3_128:<hex>`` of the source of this thermal model and of the instrument
    model (:mod:`vaemap.instrument`): what an emulator learned, so that one
    trained on other physics is never used (and is re-trained when it changes)."""
    import xxhash

    from vaemap import instrument

    digest = xxhash.xxh3_128()
    for module in (__file__, instrument.__file__):
        digest.update(Path(module).read_bytes())
    return f"xxh3_128:{digest.hexdigest()}"
