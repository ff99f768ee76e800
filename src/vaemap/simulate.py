"""A physics-based synthetic Moon written as Diviner RDR tables, with its ground truth.

The surface is a HEALPix map of spatially coherent factors — normal albedo
(maria and highlands), H-parameter, east/west and north/south slope from a
random topography, rock abundance — plus injected anomalies of known place and
kind (1: warm rocky fresh craters; 2: cold spots of fluffy, low-inertia
regolith).  Every pixel's periodic diurnal temperature comes from the Hayne et
al. (2017) thermal model (:mod:`vaemap.thermal`).

The surface is then observed the way Diviner observes it: a polar orbit fixed
in inertial space, so that the Moon's sidereal rotation moves the ground track
west while the Sun moves at the synodic rate and the local time of the track
drifts once through 24 h per year; several detectors across track; Gaussian
noise; emission angles; and a fraction of rows with bad quality or activity
flags, off-nadir pointing or fill values, which ingest must reject.  The rows are
streamed to RDR tables in the archive's published layout and packaging (zipped,
with a PDS3 label beside each; see :mod:`vaemap.rdr`) one orbit batch at a time, so memory is
bounded whatever the mission length.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import healpy as hp
import numpy as np

from vaemap import thermal
from vaemap.healpix import MOON_RADIUS_KM, pix_to_lonlat
from vaemap.io import atomic_path, provenance_attrs, write_dataset
from vaemap.products import (
    SIMULATION_START_JD,
    TRUTH,
    TRUTH_FACTORS,
    TRUTH_MAPS,
    simulated_rdr_names,
    simulated_table_orbits,
)
from vaemap.rdr import RDR_COLUMNS, format_rows, header_line

__all__ = ["make_surface", "run", "simulate_observations"]

log = logging.getLogger(__name__)

SIDEREAL_DAY_D = 27.321661  # lunar sidereal rotation, Earth days
SYNODIC_DAY_D = 29.530589  # lunar solar day, Earth days
JDATE_START = SIMULATION_START_JD
LRO_ALTITUDE_KM = 50.0
STEPS_PER_DAY = 120  # local-time resolution (0.2 h) of the per-pixel temperature table
ORBITS_PER_BATCH = 200


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


def facet_geometry(slope_ew: np.ndarray, slope_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Facet slope and azimuth (degrees; azimuth clockwise from north) from the
    east/west and north/south tilt components (degrees, positive = facing east/north)."""
    tx, ty = np.tan(np.radians(slope_ew)), np.tan(np.radians(slope_ns))
    slope = np.degrees(np.arctan(np.hypot(tx, ty)))
    azimuth = np.mod(np.degrees(np.arctan2(tx, ty)), 360.0)
    return slope, azimuth


def temperature_table(surface: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Diurnal regolith and rock temperature of every pixel at STEPS_PER_DAY local
    times, each (npix, STEPS_PER_DAY) float32 kelvin (rock NaN where there is none)."""
    slope, azimuth = facet_geometry(surface["slope_ew"], surface["slope_ns"])
    local_time = np.arange(STEPS_PER_DAY) * 24.0 / STEPS_PER_DAY
    t_reg, t_rock = thermal.surface_temperature_components(
        surface["lat"], local_time, albedo=surface["albedo"], h_param=surface["h_param"],
        slope_deg=slope, azimuth_deg=azimuth, rock_fraction=surface["rock_fraction"],
        steps_per_day=STEPS_PER_DAY,
    )
    return t_reg.astype(np.float32), t_rock.astype(np.float32)


def simulate_observations(
    tables: tuple[np.ndarray, np.ndarray],
    rock_fraction: np.ndarray,
    nside: int,
    params: Mapping[str, Any],
    orbit_range: tuple[int, int],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """RDR rows for orbits ``orbit_range[0] <= k < orbit_range[1]`` as column arrays.

    ``tables`` holds the per-pixel diurnal regolith and rock temperatures, each
    (npix, STEPS_PER_DAY) kelvin; ``rock_fraction`` (npix,) mixes them per channel.
    """
    k0, k1 = orbit_range
    per_day = params["orbits_per_day"]
    n_samp, n_det = params["samples_per_orbit"], params["detectors"]
    channels = np.asarray(params["channels"])
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

    pix = hp.ang2pix(nside, lon, lat, nest=True, lonlat=True)
    pos = local_time / 24.0 * STEPS_PER_DAY
    i0 = np.floor(pos).astype(np.int64) % STEPS_PER_DAY
    w = (pos - np.floor(pos)).astype(np.float32)
    i1 = (i0 + 1) % STEPS_PER_DAY
    t_reg = (1 - w) * tables[0][pix, i0] + w * tables[0][pix, i1]
    t_rock = (1 - w) * tables[1][pix, i0] + w * tables[1][pix, i1]
    frac = rock_fraction[pix]

    n = orbit.size
    n_ch = channels.size
    c = np.tile(channels, n)
    # Each footprint is seen in every channel; rows are footprint-major.
    rep = np.repeat(np.arange(n), n_ch)
    tb = np.empty(rep.size)
    for j, ch in enumerate(channels):
        # Radiances of rock and regolith add inside the footprint (Planck mixing).
        tb[j::n_ch] = thermal.mix_planck(t_reg, t_rock, frac,
                                         thermal.DIVINER_WAVELENGTH_UM[int(ch)])
    tb += rng.normal(0, params["noise_k"], rep.size)
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
    tb[bad[how == 5]] = -9999.0
    wavelength = np.array([thermal.DIVINER_WAVELENGTH_UM[int(ch)] for ch in c])
    radiance = np.where(tb > 0, thermal.planck_radiance(tb, wavelength), -9999.0)

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
        "sundist": np.full(rep.size, 1.0),
        "sunlat": np.zeros(rep.size),
        "sunlon": np.round(np.mod(sun_lon_w, 360.0), 5),
        "sclk": np.round(_sclk(jdate), 3),
        "sclat": np.round(lat[rep], 4),
        "sclon": np.round(np.mod(lon[rep], 360.0), 5),
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
        "clon": np.round(np.mod(lon[rep], 360.0), 5),  # the RDR's 0-360 E
        "cemis": np.round(emission, 3),
        "csunzen": np.round(sunzen, 3),
        "csunazi": np.round(sunazi, 3),
        "cloctime": np.round(local_time[rep], 5),
        "qca": qca,
        "qge": qge,
        "qmi": qmi,
    }
    cols["date"], cols["utc"] = _date_strings(jdate)
    return cols


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


def _write_rdr(path: Path, batches, preamble: Sequence[str], packaging: str) -> int:
    """Stream column-batches to one RDR table in the published layout (atomically):
    ``#`` preamble lines, the padded ``#`` header, fixed-format CRLF rows; zipped
    (one table inside, as the archive ships it), gzipped or plain. Returns the
    rows written."""
    rows = 0
    member = path.name.split("_")[0] + "_RDR.TAB"
    with atomic_path(path, suffix=".part") as tmp, contextlib.ExitStack() as stack:
        if packaging == "zip":
            archive = stack.enter_context(zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED,
                                                          compresslevel=1))
            raw = stack.enter_context(archive.open(member, "w", force_zip64=True))
        elif packaging == "gzip":
            raw = stack.enter_context(gzip.open(tmp, "wb", compresslevel=1))
        else:
            raw = stack.enter_context(open(tmp, "wb"))
        sink = stack.enter_context(io.TextIOWrapper(raw, encoding="ascii", newline=""))
        sink.write("".join(f"# {line}\r\n" for line in preamble) + header_line())
        for cols in batches:
            sink.write(format_rows(cols))
            rows += len(cols["jdate"])
    return rows


def _write_label(path: Path, table: str, rows: int) -> None:
    """A PDS3 label beside a simulated table: its COLUMN objects, as the archive's."""
    widths = [len(c) for c in header_line().rstrip("\r\n").split(",")]
    lines = ["PDS_VERSION_ID = PDS3", "/* Diviner RDR table, SIMULATED by vaemap */",
             "RECORD_TYPE = STREAM", f'^TABLE = "{table}"', "OBJECT = TABLE",
             "  INTERCHANGE_FORMAT = ASCII", f"  ROWS = {rows}",
             f"  COLUMNS = {len(RDR_COLUMNS)}"]
    start = 1
    for number, (name, width) in enumerate(zip(RDR_COLUMNS, widths, strict=True), start=1):
        lines += ["  OBJECT = COLUMN", f"    NAME = {name.upper()}",
                  f"    COLUMN_NUMBER = {number}", f"    START_BYTE = {start}",
                  f"    BYTES = {width}", "    UNKNOWN_CONSTANT = -9999",
                  "    INVALID_CONSTANT = -9998", "  END_OBJECT = COLUMN"]
        start += width + 1
    lines += ["END_OBJECT = TABLE", "END"]
    with atomic_path(path) as tmp:
        tmp.write_text("\r\n".join(lines) + "\r\n")


def run(outdir: str | Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """Simulate a survey: RDR tables, ``truth.h5`` and ground-truth FITS maps.

    Parameters
    ----------
    outdir : path
        Directory for ``rdr/`` (the tables, named as the archive names them, see
        :func:`vaemap.products.simulated_rdr_names`), ``truth.h5`` and
        ``truth_<factor>.fits``.
    config : mapping
        Validated configuration; uses the ``simulate`` section.

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
    log.info("solving the thermal model for %d pixels", surface["pix"].size)
    tables = temperature_table(surface)
    rock = surface["rock_fraction"].astype(np.float32)

    names = simulated_rdr_names(params)
    rows_written = {}
    for i, (name, (lo, hi)) in enumerate(zip(names, simulated_table_orbits(params),
                                             strict=True)):
        rng = np.random.default_rng([seed, i])  # each file reproducible on its own
        batches = (
            simulate_observations(tables, rock, nside, params,
                                  (a, min(a + ORBITS_PER_BATCH, hi)), rng)
            for a in range(lo, hi, ORBITS_PER_BATCH)
        )
        preamble = [
            "Header: Diviner Lunar Radiometer RDR table (SIMULATED by vaemap)",
            f"Header: orbits {lo + 1}-{hi}, seed {seed}, nside {nside}",
            "Header: published fixed-format layout, fill values -9999 and -9998",
        ]
        rows_written[name] = _write_rdr(outdir / "rdr" / name, batches, preamble,
                                        params["packaging"])
        if params["packaging"] == "zip":
            _write_label(outdir / "rdr" / name.replace(".zip", ".lbl"),
                         name.split("_")[0] + "_RDR.TAB", rows_written[name])
        log.info("wrote %s: %d rows", name, rows_written[name])

    attrs = provenance_attrs(config, **TRUTH.identity(), nside=nside, ordering="NESTED",
                             body="MOON", seed=seed, parameters=dict(params),
                             factor_units=TRUTH_FACTORS)
    with atomic_path(outdir / "truth.h5") as tmp, h5py.File(tmp, "w") as h5:
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
