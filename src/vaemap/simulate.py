"""A physics-based synthetic Moon written as Diviner RDR tables, with its ground truth.

The surface is a HEALPix map of spatially coherent factors — normal albedo
(maria and highlands), H-parameter, east/west and north/south slope from a
random topography, rock abundance — plus injected anomalies of known place and
kind (1: warm rocky fresh craters; 2: cold spots of fluffy, low-inertia
regolith).  Every pixel's periodic diurnal temperature comes from the Hayne et
al. (2017) thermal model (:mod:`vaemap.thermal`).

Seasons: the sub-solar latitude (±1.54°, the tilt of the lunar equator to
the ecliptic, with the 346.6-day period of the orbit's nodes) and the Sun's
distance (Earth's orbit, ±1.7 %, plus the Moon's ±0.26 % around the Earth)
follow the observation date, and the RDR ``sunlat`` and ``sundist`` columns
carry them. The thermal model is solved at the equinox and 1 AU for every
surface column, and at three seasonal states (±1.54°, 1 AU; 0°, 1.04 × the
flux) on a grid of equivalent latitude (a facet tilted north sees the Sun as
a flat surface further north; an east-facing one sees the morning early);
every observation adds that linear seasonal change to its column's
temperature. Rocks, a sub-footprint component, take their temperature from
the same grids (and albedo). The
diurnal solution at each season is periodic (the weak annual wave below the
diurnal skin is ignored).

The surface is simulated at ``simulate.nside``, finer than the profiles
(twice, by default), so a profile pixel mixes the curves of several surface
columns instead of being one exact model column plus noise.

It is observed the way Diviner observes it: a polar orbit fixed in inertial
space, so that the Moon's sidereal rotation moves the ground track west while
the Sun moves at the synodic rate and the local time of the track drifts once
through 24 h per year; several detectors across track; band radiances of each
channel's passband with rock and regolith mixed inside the footprint, and
Gaussian noise of each channel's noise-equivalent radiance
(:mod:`vaemap.instrument`; a scene below detection gets a fill ``tb``);
emission angles; and a fraction of rows with bad quality or activity flags,
off-nadir pointing or fill values, which ingest must reject.  The rows are
streamed to RDR tables in the archive's published layout and packaging
(zipped, with a PDS3 label beside each; see :mod:`vaemap.rdr`) a batch of at
most ``ROWS_PER_BATCH`` rows at a time, so memory is bounded whatever the
mission length. The per-column diurnal table (120 float32 per column, 375 MB at
nside 256) is solved tile by tile (blocks of 4,096 NESTED columns) into a file
in ``$TMPDIR``, from which each batch reads only the values it needs, so no
process holds it either: what grows with the surface's nside is a few numbers
per column (the factor maps).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np

from vaemap import instrument, rdr, thermal
from vaemap.healpix import MOON_RADIUS_KM, pix_to_lonlat
from vaemap.io import atomic_hdf5, provenance_attrs, scratch_dir, write_dataset
from vaemap.products import (
    SIMULATION_START_JD,
    TRUTH,
    TRUTH_FACTORS,
    TRUTH_MAPS,
    simulated_rdr_names,
    simulated_table_orbits,
)

__all__ = ["ThermalTables", "make_surface", "run", "simulate_observations", "solar_geometry",
           "thermal_tables"]

log = logging.getLogger(__name__)

SIDEREAL_DAY_D = 27.321661  # lunar sidereal rotation, Earth days
SYNODIC_DAY_D = 29.530589  # lunar solar day, Earth days
JDATE_START = SIMULATION_START_JD
LRO_ALTITUDE_KM = 50.0
STEPS_PER_DAY = 120  # local-time resolution (0.2 h) of the per-pixel temperature table
_LOCAL_TIMES = np.arange(STEPS_PER_DAY) * 24.0 / STEPS_PER_DAY
ORBITS_PER_BATCH = 200  # at most, per batch of rows simulated and written together
ROWS_PER_BATCH = 65_536  # at most (one orbit if it has more): bounds a writer's memory

# Seasons (approximate elements; see solar_geometry).
LUNAR_OBLIQUITY_DEG = 1.543  # lunar equator to ecliptic: the largest sub-solar latitude
ECLIPSE_YEAR_D = 346.620  # the Sun's return to the same node of the lunar orbit
EQUINOX_JD = 2455034.5  # 2009-07-22 (total solar eclipse: the Sun at a node, sub-solar latitude 0)
ANOMALISTIC_YEAR_D = 365.2596
PERIHELION_JD = 2455200.5  # 2010-01-03
EARTH_ECCENTRICITY = 0.0167
MOON_ORBIT_AU = 0.00257  # Earth-Moon distance
SEASON_LAT_GRID = np.linspace(-90.0, 90.0, 181)  # equivalent latitudes of the season tables
ROCK_ALBEDO_GRID = np.linspace(0.04, 0.20, 5)  # albedos of the rock tables
SEASON_FLUX_SCALE = 1.04  # flux of the third seasonal state (the Sun's distance ranges ±1.9 %)


def _random_field(nside: int, rng: np.random.Generator, *, power: float, lmax: int | None = None,
                  derivatives: bool = False):
    """Zero-mean, unit-variance Gaussian random field on the sphere (NESTED order).

    The angular power spectrum is C_l ∝ (l + 1)^(-power); larger ``power`` gives
    smoother maps.  With ``derivatives`` also returns the field's gradient
    (north, east components, per radian) from healpy's spherical-harmonic
    derivatives.
    """
    lmax = lmax or 3 * nside - 1
    ell, m = hp.Alm.getlm(lmax)
    cl = (np.arange(lmax + 1) + 1.0) ** (-power)
    cl[0] = 0.0
    scale = np.sqrt(cl[ell] / 2.0)
    alm = scale * (rng.standard_normal(ell.size) + 1j * rng.standard_normal(ell.size))
    alm[m == 0] = np.sqrt(2.0) * alm[m == 0].real  # real for m = 0
    if derivatives:
        field, d_theta, d_phi = hp.alm2map_der1(alm, nside, lmax=lmax)
    else:
        field = hp.alm2map(alm, nside, lmax=lmax)
    std = field.std() or 1.0
    order = hp.nest2ring(nside, np.arange(hp.nside2npix(nside)))  # NESTED <- RING
    if not derivatives:
        return (field / std)[order]
    # θ is colatitude, so d/dθ points south.
    return (field / std)[order], (-d_theta / std)[order], (d_phi / std)[order]


def make_surface(nside: int, params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Factor maps and anomalies of a synthetic Moon, one value per NESTED pixel.

    Returns a dict with ``pix``, ``lon``, ``lat`` and the
    :data:`~vaemap.products.TRUTH_FACTORS`, plus ``anomaly_mask`` (0/1) and
    ``anomaly_kind`` (:data:`~vaemap.products.ANOMALY_KINDS`; 0 none).
    """
    rng = np.random.default_rng(seed)
    npix = hp.nside2npix(nside)
    pix = np.arange(npix)
    lon, lat = pix_to_lonlat(nside, pix)

    # Maria: the low tail of a smooth field covers ~ 17 % of the surface.
    maria_field = _random_field(nside, rng, power=3.0)
    mare = maria_field > np.quantile(maria_field, 0.83)
    albedo = np.where(mare, 0.07, 0.13) + 0.008 * _random_field(nside, rng, power=2.0)
    albedo = np.clip(albedo, 0.04, 0.2)

    h_param = np.clip(0.06 + 0.012 * _random_field(nside, rng, power=2.5), 0.03, 0.10)

    # Topography: the slope components are the (scaled) gradient of one field,
    # so they are spatially coherent and physically consistent.
    # C_l ∝ l^-4 topography has a gradient spectrum ∝ l^-2: coherent slopes.
    _, grad_n, grad_e = _random_field(nside, rng, power=4.0, derivatives=True)
    scale = params["slope_std_deg"] / np.sqrt(0.5 * (grad_n.var() + grad_e.var()))
    # Terrain falling towards the east tilts the facet normal east (positive).
    slope_ew = np.clip(-grad_e * scale, -35.0, 35.0)
    slope_ns = np.clip(-grad_n * scale, -35.0, 35.0)

    # Background rocks are sparse (Bandfield et al. 2011: median ~0.4 %), so most
    # pixels have none and need no rock thermal solution.
    rock = np.clip(0.01 * (_random_field(nside, rng, power=2.5) - 0.5), 0.0, 0.05)

    kind = np.zeros(npix, dtype=np.uint8)
    n_warm, n_cold = params["n_warm_anomalies"], params["n_cold_anomalies"]
    radius = np.radians(params["anomaly_radius_deg"])
    for k, n in ((1, n_warm), (2, n_cold)):
        for _ in range(n):
            # Centres away from the poles, where profiles are well sampled.
            c_lat = np.degrees(np.arcsin(rng.uniform(-np.sin(np.radians(60)),
                                                     np.sin(np.radians(60)))))
            c_lon = rng.uniform(0.0, 360.0)
            vec = hp.ang2vec(c_lon, c_lat, lonlat=True)
            disc = hp.query_disc(nside, vec, radius, inclusive=False, nest=True)
            if disc.size == 0:
                disc = np.array([hp.vec2pix(nside, *vec, nest=True)])
            kind[disc] = k
    warm, cold = kind == 1, kind == 2
    rock = np.where(warm, rng.uniform(0.25, 0.45, npix), rock)
    h_param = np.where(cold, rng.uniform(0.18, 0.25, npix), h_param)

    return {
        "pix": pix,
        "lon": lon,
        "lat": lat,
        "albedo": albedo,
        "h_param": h_param,
        "slope_ew": slope_ew,
        "slope_ns": slope_ns,
        "rock_fraction": rock,
        "anomaly_mask": (kind > 0).astype(np.uint8),
        "anomaly_kind": kind,
    }


def solar_geometry(jdate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-solar latitude (degrees) and Sun distance (AU) seen from the Moon at
    Julian dates ``jdate``.

    The sub-solar latitude swings ±1.543° (the lunar equator's tilt to the
    ecliptic) with the eclipse year, crossing zero when the Sun passes a node
    of the lunar orbit (eclipse seasons); the distance is Earth's (eccentricity
    0.0167, perihelion early January) plus the Moon's offset towards or away
    from the Sun over a lunation (new Moon nearer). Approximate elements, good
    to about 0.1° and 0.001 AU: what matters here is the size and period of
    the seasonal forcing, not the ephemeris.
    """
    jd = np.asarray(jdate, dtype=float)
    sunlat = LUNAR_OBLIQUITY_DEG * np.sin(2 * np.pi * (jd - EQUINOX_JD) / ECLIPSE_YEAR_D)
    earth = 1.0 - EARTH_ECCENTRICITY * np.cos(2 * np.pi * (jd - PERIHELION_JD)
                                              / ANOMALISTIC_YEAR_D)
    phase = 2 * np.pi * (jd - SIMULATION_START_JD) / SYNODIC_DAY_D  # 0 at new Moon
    return sunlat, earth - MOON_ORBIT_AU * np.cos(phase)


@dataclass(frozen=True)
class ThermalTables:
    """Diurnal temperatures of the surface columns, rocks and their seasonal change.

    ``regolith`` is (npix, STEPS_PER_DAY) kelvin at the equinox and 1 AU, one
    row per surface column (NESTED, at ``nside``), solved exactly: an array, or
    the path of a ``.npy`` file that each lookup maps, reads only the values it
    needs from and unmaps again, so that a process's memory does not grow with
    the number of surface columns (375 MB at nside 256, 6 GB at nside 1024). Rocks and
    the seasonal change are smooth functions of the sunlight a facet gets, so
    they are tabulated over a grid of *equivalent latitude* (a facet tilted
    by s towards the north at latitude φ sees the Sun as a flat one at φ + s)
    and, for rocks, of albedo: ``rock`` and its sensitivities ``d_dec_rock``
    (K per degree of sub-solar latitude) and ``d_flux_rock`` (K per unit of
    relative solar flux) are (n_lat, n_albedo, STEPS_PER_DAY); the regolith's
    ``d_dec_regolith`` and ``d_flux_regolith`` are (n_lat, STEPS_PER_DAY), at
    the surface's median albedo and H. ``equivalent_lat`` (deg), ``time_shift_h``
    (an east-facing facet's morning comes early) and ``albedo`` place each
    surface column on those grids.
    """

    regolith: np.ndarray | Path
    rock: np.ndarray
    d_dec_regolith: np.ndarray
    d_flux_regolith: np.ndarray
    d_dec_rock: np.ndarray
    d_flux_rock: np.ndarray
    equivalent_lat: np.ndarray
    time_shift_h: np.ndarray
    albedo: np.ndarray
    nside: int

    def at(self, pix: np.ndarray, local_time_h: np.ndarray, sunlat_deg: np.ndarray,
           sundist_au: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Regolith and rock temperature (K) of columns ``pix`` (NESTED, at ``nside``)
        at local times (h) and seasons (sub-solar latitude, deg; Sun distance, AU),
        interpolated linearly in local time, equivalent latitude and albedo."""
        def weights(x: np.ndarray, grid: np.ndarray, periodic: bool = False):
            step = grid[1] - grid[0]
            pos = (x - grid[0]) / step
            if periodic:
                i0 = np.floor(pos).astype(np.int64) % grid.size
                return i0, (i0 + 1) % grid.size, (pos - np.floor(pos)).astype(np.float32)
            pos = np.clip(pos, 0, grid.size - 1)
            i0 = np.minimum(np.floor(pos).astype(np.int64), grid.size - 2)
            return i0, i0 + 1, (pos - i0).astype(np.float32)

        t0, t1, wt = weights(local_time_h, _LOCAL_TIMES, periodic=True)
        lat_eq = self.equivalent_lat[pix]
        s0, s1, ws = weights(np.mod(local_time_h + self.time_shift_h[pix], 24.0), _LOCAL_TIMES,
                             periodic=True)
        l0, l1, wl = weights(lat_eq, SEASON_LAT_GRID)
        a0, a1, wa = weights(self.albedo[pix], ROCK_ALBEDO_GRID)

        def by_lat(table: np.ndarray, *albedo: np.ndarray) -> np.ndarray:
            # (n_lat, [n_albedo,] steps), at the equivalent latitude and shifted time
            return ((1 - wl) * ((1 - ws) * table[(l0, *albedo, s0)]
                                + ws * table[(l0, *albedo, s1)])
                    + wl * ((1 - ws) * table[(l1, *albedo, s0)]
                            + ws * table[(l1, *albedo, s1)]))

        def by_lat_albedo(table: np.ndarray) -> np.ndarray:  # (n_lat, n_albedo, steps)
            return (1 - wa) * by_lat(table, a0) + wa * by_lat(table, a1)

        dec = sunlat_deg.astype(np.float32)
        flux = (1.0 / sundist_au**2 - 1.0).astype(np.float32)
        before, after = self._regolith_at(pix, t0, t1)
        regolith = ((1 - wt) * before + wt * after
                    + dec * by_lat(self.d_dec_regolith) + flux * by_lat(self.d_flux_regolith))
        rock = (by_lat_albedo(self.rock) + dec * by_lat_albedo(self.d_dec_rock)
                + flux * by_lat_albedo(self.d_flux_rock))
        return regolith, rock

    def _regolith_at(self, pix: np.ndarray, *steps: np.ndarray) -> list[np.ndarray]:
        """Regolith temperature (K) of columns ``pix`` at each array of local-time steps."""
        if isinstance(self.regolith, np.ndarray):
            return [self.regolith[pix, step] for step in steps]
        # Mapped for this lookup only: touched pages leave the process with the
        # map, so a long-running writer does not accumulate the whole table.
        table = np.load(self.regolith, mmap_mode="r")
        values = [table[pix, step] for step in steps]  # copies: nothing keeps the map alive
        del table
        return values

    def cos_incidence(self, pix: np.ndarray, local_time_h: np.ndarray,
                      sunlat_deg: np.ndarray) -> np.ndarray:
        """Cosine of the solar incidence on the facets of columns ``pix`` (0 at night)."""
        shifted = np.mod(local_time_h + self.time_shift_h[pix], 24.0)
        return thermal.cos_incidence(self.equivalent_lat[pix], (shifted - 12.0) * 15.0, 0.0,
                                     0.0, sunlat_deg)


def thermal_tables(surface: Mapping[str, np.ndarray], nside: int, workers: int = 1,
                   scratch: Path | None = None) -> ThermalTables:
    """Solve the thermal model for every surface column of ``surface`` (NESTED, at
    ``nside``; regolith at the equinox and 1 AU) and, on grids of equivalent
    latitude (and albedo, for rocks), at three seasons: the equinox is the mean
    of the two extreme sub-solar latitudes (the change is linear in it), the
    third state has 1.04 × the flux (see :class:`ThermalTables`).

    With ``scratch`` (a directory) the per-column regolith table is a file
    there, ``regolith.npy``, instead of an array in memory; it is the caller's
    to remove."""
    regolith, _ = thermal.solve_facets({**surface, "rock_fraction": 0.0}, 0.0, 1.0,
                                       steps_per_day=STEPS_PER_DAY, workers=workers,
                                       regolith_file=None if scratch is None
                                       else Path(scratch) / "regolith.npy")
    lat, albedo = np.meshgrid(SEASON_LAT_GRID, ROCK_ALBEDO_GRID, indexing="ij")
    flat = {"lat": lat.ravel(), "albedo": albedo.ravel(),
            "h_param": float(np.median(surface["h_param"])), "slope_ew": 0.0, "slope_ns": 0.0,
            "rock_fraction": 1.0}
    states = [thermal.solve_facets(flat, dec, dist, steps_per_day=STEPS_PER_DAY,
                                   workers=workers) for dec, dist in (
        (-LUNAR_OBLIQUITY_DEG, 1.0), (LUNAR_OBLIQUITY_DEG, 1.0), (0.0, SEASON_FLUX_SCALE**-0.5))]
    shape = (*lat.shape, STEPS_PER_DAY)
    (reg_s, rock_s), (reg_n, rock_n), (reg_f, rock_f) = (
        (r.reshape(shape), k.reshape(shape)) for r, k in states)
    # The regolith's seasonal change at the surface's median albedo (nearest grid column).
    a = int(np.argmin(np.abs(ROCK_ALBEDO_GRID - np.median(surface["albedo"]))))
    rock_eq = 0.5 * (rock_n + rock_s)
    return ThermalTables(
        regolith=regolith,
        rock=rock_eq,
        d_dec_regolith=(reg_n - reg_s)[:, a] / (2 * LUNAR_OBLIQUITY_DEG),
        d_flux_regolith=(reg_f - 0.5 * (reg_n + reg_s))[:, a] / (SEASON_FLUX_SCALE - 1.0),
        d_dec_rock=(rock_n - rock_s) / (2 * LUNAR_OBLIQUITY_DEG),
        d_flux_rock=(rock_f - rock_eq) / (SEASON_FLUX_SCALE - 1.0),
        # a facet facing north sees the Sun as a flat surface further north
        equivalent_lat=np.clip(surface["lat"] + surface["slope_ns"], -90.0, 90.0),
        time_shift_h=surface["slope_ew"] / 15.0,
        albedo=surface["albedo"],
        nside=nside,
    )


def _footprints(params: Mapping[str, Any], orbit_range: tuple[int, int],
                rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Where and when the footprints of orbits ``orbit_range`` fall, one per
    detector and sample: ``(orbit, det, t_days, lat, lon, sun_lon, local_time)``,
    each (n,): orbit number, detector 1-21, days since the mission start,
    latitude and longitude (deg, longitude in [-180, 180)), the sub-solar
    longitude (deg) and local solar time (h)."""
    k0, k1 = orbit_range
    per_day = params["orbits_per_day"]
    n_samp, n_det = params["samples_per_orbit"], params["detectors"]
    orbit = np.repeat(np.arange(k0, k1), n_samp * n_det)
    phase = (np.tile(np.repeat(np.arange(n_samp), n_det), k1 - k0)
             + rng.uniform(0, 1, orbit.size)) / n_samp  # fraction of the orbit
    det = np.tile(np.arange(n_det), (k1 - k0) * n_samp) + 1
    t_days = (orbit + phase) / per_day  # days since the start of the mission

    # Polar orbit: latitude follows the phase; the descending half is 180° away.
    angle = 2 * np.pi * phase
    lat = np.degrees(np.arcsin(np.sin(angle)))
    node_lon = 37.0 - 360.0 * t_days / SIDEREAL_DAY_D
    lon = node_lon + np.where(np.cos(angle) >= 0, 0.0, 180.0)
    # Detectors spread across track (east-west), params["swath_km"] wide.
    cross_km = (det - 1 - (n_det - 1) / 2) * params["swath_km"] / max(n_det - 1, 1)
    coslat = np.maximum(np.cos(np.radians(lat)), 1e-3)
    lon = lon + np.degrees(cross_km / (MOON_RADIUS_KM * coslat))
    lat = np.clip(lat + rng.normal(0, 0.01, lat.size), -90, 90)
    lon = np.mod(lon + 180.0, 360.0) - 180.0

    sun_lon = np.mod(180.0 - 360.0 * t_days / SYNODIC_DAY_D, 360.0)
    local_time = np.mod(12.0 + (lon - sun_lon) / 15.0, 24.0)
    return orbit, det, t_days, lat, lon, sun_lon, local_time


def simulate_observations(
    tables: ThermalTables,
    rock_fraction: np.ndarray,
    params: Mapping[str, Any],
    orbit_range: tuple[int, int],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """RDR rows for orbits ``orbit_range[0] <= k < orbit_range[1]`` as column arrays.

    ``tables`` holds the surface columns' diurnal temperatures and their seasonal
    change; ``rock_fraction`` (npix,) mixes rock and regolith inside each
    footprint, per channel, as radiances.
    """
    nside = tables.nside
    channels = np.asarray(params["channels"])
    orbit, det, t_days, lat, lon, sun_lon, local_time = _footprints(params, orbit_range, rng)
    sunlat, sundist = solar_geometry(JDATE_START + t_days)

    pix = hp.ang2pix(nside, lon, lat, nest=True, lonlat=True)
    t_reg, t_rock = tables.at(pix, local_time, sunlat, sundist)
    frac = rock_fraction[pix]

    n = orbit.size
    n_ch = channels.size
    c = np.tile(channels, n)
    # Each footprint is seen in every channel; rows are footprint-major.
    rep = np.repeat(np.arange(n), n_ch)
    radiance = np.empty(rep.size)
    tb = np.empty(rep.size)
    for j, ch in enumerate(channels):
        if ch in instrument.SOLAR_CHANNELS:  # reflected sunlight, as relative reflectance
            radiance[j::n_ch], tb[j::n_ch] = instrument.observe_reflectance(
                tables.albedo[pix], tables.cos_incidence(pix, local_time, sunlat), int(ch), rng,
                params["noise_scale"], sundist)
            continue
        signal = instrument.mix_footprint((t_reg, t_rock), (1 - frac, frac), int(ch))
        radiance[j::n_ch], tb[j::n_ch] = instrument.observe(signal, int(ch), rng,
                                                            params["noise_scale"])
    tb = np.where(np.isfinite(tb), tb, rdr.UNKNOWN)  # below detection: no temperature
    emission = np.abs(rng.normal(0, 2.0, n))[rep]
    af = np.full(rep.size, 110, dtype=np.int16)
    el_cmd = np.full(rep.size, 80.0)
    qca = np.zeros(rep.size, dtype=np.int16)
    qge = np.full(rep.size, 12, dtype=np.int16)
    qmi = np.zeros(rep.size, dtype=np.int16)

    # Corrupt a fraction of rows the ways real data are bad, one way each.
    bad = np.flatnonzero(rng.uniform(size=rep.size) < params["bad_fraction"])
    how = rng.integers(0, 6, bad.size)
    af[bad[how == 0]] = 2  # off-nadir activity (calibration, limb views)
    emission[bad[how == 1]] = rng.uniform(15, 60, (how == 1).sum())
    qca[bad[how == 2]] = 1
    qge[bad[how == 3]] = 2
    qmi[bad[how == 4]] = 10
    tb[bad[how == 5]] = rdr.UNKNOWN
    radiance[bad[how == 5]] = rdr.UNKNOWN

    jdate = JDATE_START + t_days[rep]
    sun_lon_w = np.mod(sun_lon[rep] + 180.0, 360.0) - 180.0
    hour_angle = np.radians((local_time[rep] - 12.0) * 15.0)
    latr = np.radians(lat[rep])
    sunzen = np.degrees(np.arccos(np.clip(np.cos(latr) * np.cos(hour_angle), -1, 1)))
    sunazi = np.mod(np.degrees(np.arctan2(-np.sin(hour_angle), -np.sin(latr) * np.cos(hour_angle))),
                    360.0)
    cols: dict[str, Any] = {
        "jdate": np.round(jdate, 6),
        "orbit": (orbit[rep] + 1).astype(np.int32),
        "sundist": np.round(sundist[rep], 5),
        "sunlat": np.round(sunlat[rep], 4),
        "sunlon": _rounded_angle(sun_lon_w, 360.0, 5),
        "sclk": np.round(_sclk(jdate), 3),
        "sclat": np.round(lat[rep], 4),
        "sclon": _rounded_angle(lon[rep], 360.0, 5),
        "scrad": np.full(rep.size, MOON_RADIUS_KM + LRO_ALTITUDE_KM),
        "scalt": np.full(rep.size, LRO_ALTITUDE_KM),
        "el_cmd": el_cmd,
        "az_cmd": np.full(rep.size, 240.0),
        "af": af,
        "orientlat": np.zeros(rep.size),
        "orientlon": np.zeros(rep.size),
        "c": c.astype(np.int16),
        "det": det[rep].astype(np.int16),
        "vlookx": np.zeros(rep.size),
        "vlooky": np.zeros(rep.size),
        "vlookz": np.full(rep.size, -1.0),
        "radiance": np.round(radiance, 6),
        "tb": np.round(tb, 3),
        "clat": np.round(lat[rep], 5),
        "clon": _rounded_angle(lon[rep], 360.0, 5),  # the RDR's 0-360 E
        "cemis": np.round(emission, 3),
        "csunzen": np.round(sunzen, 3),
        "csunazi": np.round(sunazi, 3),
        "cloctime": _rounded_angle(local_time[rep], 24.0, 5),
        "qca": qca,
        "qge": qge,
        "qmi": qmi,
    }
    cols["date"], cols["utc"] = _date_strings(jdate)
    return cols


def _rounded_angle(x: np.ndarray, period: float, decimals: int) -> np.ndarray:
    """``x`` wrapped into [0, period) *after* rounding to ``decimals``: rounding
    359.999996 gives 360.0, which the archive never writes (and ingest rejects)."""
    return np.mod(np.round(np.mod(x, period), decimals), period)


def _sclk(jdate: np.ndarray) -> np.ndarray:
    """Spacecraft clock (seconds since J2000) of a Julian date."""
    return (jdate - 2451545.0) * 86400.0


def _date_strings(jdate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Diviner-style ``DD-Mon-YYYY`` and ``HH:MM:SS.sss`` strings of Julian dates."""
    unix_ms = np.round((jdate - 2440587.5) * 86400000.0).astype("int64")
    stamps = unix_ms.astype("datetime64[ms]")
    day = stamps.astype("datetime64[D]")
    iso_day = np.datetime_as_string(day)  # YYYY-MM-DD
    months = np.array(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                       "Nov", "Dec"])
    mon = months[(day.astype("datetime64[M]").astype(int) % 12)]
    date = np.char.add(np.char.add(np.char.add(np.char.add(
        [s[8:10] for s in iso_day], "-"), mon), "-"), [s[:4] for s in iso_day])
    utc = np.array([s[11:23] for s in np.datetime_as_string(stamps, unit="ms")])
    return date, utc


_WRITER: dict[str, Any] = {}  # what _write_table needs, set once per process


def _set_writer_state(tables: ThermalTables, rock: np.ndarray, params: Mapping[str, Any],
                      seed: int) -> None:
    _WRITER.update(tables=tables, rock=rock, params=params, seed=seed)


def orbits_per_batch(params: Mapping[str, Any]) -> int:
    """Orbits simulated and written together: ORBITS_PER_BATCH, fewer when that
    would exceed ROWS_PER_BATCH rows (at least one orbit)."""
    rows_per_orbit = params["samples_per_orbit"] * params["detectors"] * len(params["channels"])
    return max(1, min(ORBITS_PER_BATCH, ROWS_PER_BATCH // rows_per_orbit))


def _write_table(job: tuple[Path, int, tuple[int, int]]) -> int:
    """Observe orbits ``lo <= k < hi`` and write them as table ``path`` (the
    ``index``-th of the mission, seeded by it); returns the rows written."""
    path, index, (lo, hi) = job
    tables, rock, params, seed = (_WRITER[k] for k in ("tables", "rock", "params", "seed"))
    rng = np.random.default_rng([seed, index])  # each file reproducible on its own
    step = orbits_per_batch(params)
    batches = (simulate_observations(tables, rock, params, (a, min(a + step, hi)), rng)
               for a in range(lo, hi, step))
    preamble = [
        "Header: Diviner Lunar Radiometer RDR table (SIMULATED by vaemap)",
        f"Header: orbits {lo + 1}-{hi}, seed {seed}, nside {tables.nside}",
        f"Header: published fixed-format layout, fill values {rdr.UNKNOWN:.0f} and "
        f"{rdr.INVALID:.0f}",
    ]
    rows = rdr.write_table(path, batches, preamble, params["packaging"],
                           label=params["packaging"] == "zip")
    log.info("wrote %s: %d rows", path.name, rows)
    return rows


def run(outdir: str | Path, config: Mapping[str, Any], *, workers: int = 1) -> dict[str, Any]:
    """Simulate a survey: RDR tables, ``truth.h5`` and ground-truth FITS maps.

    Parameters
    ----------
    outdir : path
        Directory for ``rdr/`` (the tables, named as the archive names them, see
        :func:`vaemap.products.simulated_rdr_names`), ``truth.h5`` and
        ``truth_<factor>.fits``.
    config : mapping
        Validated configuration; uses the ``simulate`` section.
    workers : int
        Processes that solve the thermal model, and write the tables, side by side.

    Returns
    -------
    dict
        Summary: rows written per file, pixels, anomalies.
    """
    from vaemap.healpix import write_partial_map

    params = config["simulate"]
    seed, nside = params["seed"], params["nside"]
    outdir = Path(outdir)
    (outdir / "rdr").mkdir(parents=True, exist_ok=True)

    surface = make_surface(nside, params, seed)
    rock = surface["rock_fraction"].astype(np.float32)
    jobs = [(outdir / "rdr" / name, i, span) for i, (name, span) in
            enumerate(zip(simulated_rdr_names(params), simulated_table_orbits(params),
                          strict=True))]
    # The per-column regolith table lives in node-local scratch ($TMPDIR), not
    # in each process: memory stays bounded whatever simulate.nside.
    with scratch_dir("vaemap-simulate-") as scratch:
        log.info("solving the thermal model for %d surface columns and their seasons (%d "
                 "processes)", surface["pix"].size, workers)
        tables = thermal_tables(surface, nside, workers, scratch=scratch)
        # Tables are independent (each has its own random stream): written side by side.
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(workers, len(jobs)), initializer=_set_writer_state,
                                     initargs=(tables, rock, params, seed)) as pool:
                written = list(pool.map(_write_table, jobs))
        else:
            _set_writer_state(tables, rock, params, seed)
            written = [_write_table(job) for job in jobs]
    rows_written = {path.name: rows for (path, _, _), rows in zip(jobs, written, strict=True)}

    attrs = provenance_attrs(config, **TRUTH.identity(), nside=nside, ordering="NESTED",
                             body="MOON", seed=seed, parameters=dict(params),
                             factor_units=TRUTH_FACTORS)
    with atomic_hdf5(outdir / "truth.h5") as h5:
        h5.attrs.update(attrs)
        for key, spec in TRUTH.fields.items():
            write_dataset(h5, key, surface[key].astype(spec.dtype, copy=False),
                          attrs={"unit": spec.unit})
    for key in TRUTH_MAPS:
        write_partial_map(outdir / f"truth_{key}.fits", surface["pix"],
                          surface[key].astype(np.float32), nside,
                          column=key.upper(), unit=TRUTH_FACTORS.get(key, ""),
                          extra_header={"PRODUCT": f"ground truth {key}", "SEED": seed})
    summary = {
        "rows": rows_written,
        "pixels": int(surface["pix"].size),
        "anomalous_pixels": int(surface["anomaly_mask"].sum()),
    }
    return summary
