"""The synthetic Moon: determinism, format, ground truth reachable from the pixel index."""

import re
import zipfile

import h5py
import healpy as hp
import numpy as np

from vaemap import simulate
from vaemap.healpix import pix_to_lonlat
from vaemap.products import TRUTH_FACTORS, simulated_rdr_names
from vaemap.rdr import RDR_COLUMNS, label_columns, read_table
from vaemap.thermal import surface_temperature_components


def test_rdr_tables_are_in_the_published_layout(survey):
    """Zipped as the archive ships them, a label beside, '#' preamble and padded
    '#' header, fixed-width CRLF rows with quoted right-justified date and time."""
    path = survey["rdr"][0]
    assert re.fullmatch(r"\d{12}_rdr\.zip", path.name)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == [path.name.split("_")[0] + "_RDR.TAB"]
        lines = archive.read(archive.namelist()[0]).split(b"\r\n")[:6]
    assert all(line.startswith(b"# Header") for line in lines[:3])
    header = lines[3].decode()
    assert header.startswith("#        date,            utc,")
    assert [n.strip().lstrip("#").strip() for n in header.split(",")] == list(RDR_COLUMNS)
    assert len(lines[4]) == len(lines[3]) and [i for i, c in enumerate(lines[4]) if c == 44] \
        == [i for i, c in enumerate(lines[3]) if c == 44]  # the header lines up
    assert re.match(rb'"\d\d-[A-Z][a-z]{2}-\d{4}", "\d\d:\d\d:\d\d\.\d{3}", ', lines[4])
    label = path.with_name(path.name.replace(".zip", ".lbl"))
    assert label_columns(label) == list(RDR_COLUMNS)


def test_simulation_is_deterministic(tiny_config, tmp_path):
    cfg = {**tiny_config, "simulate": {**tiny_config["simulate"], "days": 20.0}}
    simulate.run(tmp_path / "a", cfg)
    simulate.run(tmp_path / "b", cfg)
    for name in simulated_rdr_names(cfg["simulate"]):
        a = zipfile.ZipFile(tmp_path / "a" / "rdr" / name)
        b = zipfile.ZipFile(tmp_path / "b" / "rdr" / name)
        assert a.read(a.namelist()[0]) == b.read(b.namelist()[0])
    with h5py.File(tmp_path / "a" / "truth.h5") as ha, h5py.File(tmp_path / "b" / "truth.h5") as hb:
        np.testing.assert_array_equal(ha["albedo"][...], hb["albedo"][...])


def test_truth_contract_and_fits(survey, tiny_config):
    nside = tiny_config["simulate"]["nside"]
    with h5py.File(survey["truth"]) as h5:
        assert int(h5.attrs["nside"]) == nside
        np.testing.assert_array_equal(h5["pix"][...], np.arange(hp.nside2npix(nside)))
        for key in TRUTH_FACTORS:
            assert h5[key].shape == (hp.nside2npix(nside),)
        kind = h5["anomaly_kind"][...]
        assert set(np.unique(kind)) <= {0, 1, 2} and (kind == 1).any() and (kind == 2).any()
        np.testing.assert_array_equal(h5["anomaly_mask"][...], kind > 0)
        albedo = h5["albedo"][...]
    m = hp.read_map(survey["root"] / "simulate" / "truth_albedo.fits", nest=None)
    np.testing.assert_allclose(m, albedo, rtol=1e-6)


def test_truth_is_reachable_from_the_observations(survey, tiny_config):
    """Observed temperatures of warm-rock anomaly pixels are warmer at night."""
    nside = tiny_config["simulate"]["nside"]
    with h5py.File(survey["truth"]) as t:
        kind = t["anomaly_kind"][...]
    with h5py.File(survey["samples"]) as s:
        pix, lt, tb = s["pix"][...], s["local_time"][...], s["tb"][...]
    shift = 2 * int(np.log2(tiny_config["ingest"]["nside"] // nside))
    k = kind[pix >> shift]
    night = (lt > 20) | (lt < 4)
    assert np.median(tb[night & (k == 1)]) > np.median(tb[night & (k == 0)]) + 10
    assert np.median(tb[night & (k == 2)]) < np.median(tb[night & (k == 0)])


def test_ingest_accepts_the_simulation_unchanged(survey):
    ing = survey["ingest"]
    assert ing["accepted"] > 0.9 * ing["rows_read"]
    assert ing["accepted"] + sum(ing["rejected"].values()) == ing["rows_read"]
    assert set(ing["rejected"]) >= {"activity_flag", "emission_angle", "fill_value"}


def test_multichannel_brightness_reveals_rocks(tiny_config, tmp_path):
    """Channels 3-9: radiance mixing makes rocky footprints brighter at short wavelengths."""
    cfg = {**tiny_config, "simulate": {**tiny_config["simulate"], "days": 30.0, "files": 1,
                                       "channels": [3, 7, 9], "noise_scale": 0.0,
                                       "bad_fraction": 0.0, "packaging": "plain"}}
    simulate.run(tmp_path, cfg)
    path = tmp_path / "rdr" / simulated_rdr_names(cfg["simulate"])[0]
    table = {k: np.concatenate([b[k] for b in blocks]) for k in ("c", "tb", "cloctime",
                                                                  "clon", "clat")
             for blocks in [list(read_table(path, ("c", "tb", "cloctime", "clon", "clat")))]}
    c = table["c"]
    tb = table["tb"]
    lt = table["cloctime"]
    assert set(np.unique(c)) == {3, 7, 9}
    t3, t9 = tb[c == 3], tb[c == 9]  # footprint-major rows: aligned
    night = (lt[c == 3] > 20) | (lt[c == 3] < 4)
    with h5py.File(tmp_path / "truth.h5") as h5:
        rock = h5["rock_fraction"][...]
    pix = hp.ang2pix(cfg["simulate"]["nside"], table["clon"][c == 3], table["clat"][c == 3],
                     nest=True, lonlat=True)
    rocky = night & (rock[pix] > 0.2)
    assert rocky.sum() > 0
    assert np.all(t3[rocky] > t9[rocky] + 5.0)


def test_the_sun_follows_the_seasons():
    """Sub-solar latitude swings ±1.54° with the eclipse year; the Sun's distance
    follows Earth's orbit (nearest in early January) and the lunation."""
    jd = simulate.SIMULATION_START_JD + np.arange(0.0, 730.0, 0.25)
    sunlat, sundist = simulate.solar_geometry(jd)
    assert 1.5 < sunlat.max() <= simulate.LUNAR_OBLIQUITY_DEG
    assert -simulate.LUNAR_OBLIQUITY_DEG <= sunlat.min() < -1.5
    assert 0.978 < sundist.min() < 0.985 and 1.015 < sundist.max() < 1.022
    nearest = jd[np.argmin(sundist[: 4 * 365])]
    assert abs(nearest - simulate.PERIHELION_JD) < 20  # early January, give or take a lunation


def test_rdr_sun_columns_carry_the_season(survey):
    table = {k: np.concatenate([b[k] for b in read_table(survey["rdr"][0],
                                                         ("jdate", "sunlat", "sundist"))])
             for k in ("jdate", "sunlat", "sundist")}
    sunlat, sundist = simulate.solar_geometry(table["jdate"])
    np.testing.assert_allclose(table["sunlat"], sunlat, atol=1e-3)
    np.testing.assert_allclose(table["sundist"], sundist, atol=1e-4)
    assert np.ptp(table["sunlat"]) > 0.5 and np.ptp(table["sundist"]) > 0.005


def test_noon_at_75_degrees_changes_with_the_season_as_the_thermal_model_predicts():
    """The seasonal tables against the thermal model solved directly at the season's
    sub-solar latitude and Sun distance, for flat columns near 75° N."""
    nside = 16
    pix = np.arange(12 * nside**2)
    lat = pix_to_lonlat(nside, pix)[1]
    flat = {"lat": lat, "albedo": np.full(pix.size, 0.12), "h_param": np.full(pix.size, 0.06),
            "slope_ew": np.zeros(pix.size), "slope_ns": np.zeros(pix.size),
            "rock_fraction": np.zeros(pix.size)}
    tables = simulate.thermal_tables(flat, nside, workers=2)
    column = int(np.argmin(np.abs(lat - 75.0)))
    seasons = ((1.5, 0.985), (-1.5, 1.015), (0.0, 1.0))
    table_noon = [float(tables.at(np.array([column]), np.array([12.0]), np.array([d]),
                                  np.array([r]))[0][0]) for d, r in seasons]
    direct_noon = [float(surface_temperature_components(
        lat[column], [12.0], declination_deg=d, solar_distance_au=r, steps_per_day=120)[0][0, 0])
        for d, r in seasons]
    summer, winter = direct_noon[0] - direct_noon[2], direct_noon[1] - direct_noon[2]
    assert summer > 3.0 and winter < -3.0  # the season matters at 75°: several kelvin
    np.testing.assert_allclose(table_noon, direct_noon, atol=0.6)
    np.testing.assert_allclose(table_noon[0] - table_noon[1], direct_noon[0] - direct_noon[1],
                               rtol=0.1)


def test_a_profile_pixel_mixes_several_surface_columns(survey, tiny_config):
    """The surface is simulated finer than the profiles: the observations of one
    profile pixel come from several surface columns, with different factors."""
    surface_nside = tiny_config["simulate"]["nside"]
    profile_nside = tiny_config["profiles"]["nside"]
    assert surface_nside > profile_nside
    with h5py.File(survey["samples"]) as s:
        pix = s["pix"][...]  # at the ingest nside, here the surface's
    assert int(tiny_config["ingest"]["nside"]) == surface_nside
    children = np.unique(pix)
    parents, columns_per_pixel = np.unique(children >> 2 * int(np.log2(surface_nside
                                                                         // profile_nside)),
                                           return_counts=True)
    assert np.mean(columns_per_pixel) > 3.0
    with h5py.File(survey["truth"]) as t:
        albedo = t["albedo"][...]
    spread = [np.ptp(albedo[children[(children >> 2) == p]]) for p in parents[:50]]
    assert np.median(spread) > 0.002


def test_solar_channels_are_reflectance_and_ingest_counts_each_channel(tiny_config, tmp_path):
    """Channels 1-2 are written as the archive stores them, a reflectance relative to a
    normally lit Lambertian surface (albedo x cos i by day, 0 at night), and ingest
    keeps them with their own range and counts every rejection per channel."""
    from vaemap import ingest

    sim = {**tiny_config["simulate"], "days": 30.0, "files": 1, "channels": [1, 7],
           "noise_scale": 0.0, "packaging": "plain"}
    cfg = {**tiny_config, "simulate": sim,
           "ingest": {**tiny_config["ingest"], "channels": [1, 7]}}
    simulate.run(tmp_path, cfg)
    path = tmp_path / "rdr" / simulated_rdr_names(sim)[0]
    cols = ("c", "tb", "radiance", "cloctime", "clat", "clon", "af", "qca", "cemis")
    table = {k: np.concatenate([b[k] for b in read_table(path, cols)]) for k in cols}
    good = (table["af"] == 110) & (table["qca"] == 0) & (table["cemis"] < 10) \
        & (table["tb"] > -9998)
    solar = good & (table["c"] == 1)
    night = ((table["cloctime"] > 19) | (table["cloctime"] < 5)) & (np.abs(table["clat"]) < 60)
    assert np.abs(table["tb"][solar & night]).max() < 0.001
    noon = solar & (np.abs(table["cloctime"] - 12) < 1) & (np.abs(table["clat"]) < 30)
    with h5py.File(tmp_path / "truth.h5") as h5:
        albedo = h5["albedo"][...]
    pix = hp.ang2pix(sim["nside"], table["clon"][noon], table["clat"][noon], nest=True,
                     lonlat=True)
    ratio = table["tb"][noon] / albedo[pix]  # = cos i: near 1 at the equator at noon
    assert 0.6 < np.median(ratio) <= 1.0
    assert np.corrcoef(table["tb"][noon], albedo[pix])[0, 1] > 0.5
    lit = solar & (table["tb"] > 0.02)
    np.testing.assert_allclose(table["radiance"][lit] / table["tb"][lit], 382.0,
                               rtol=0.05)  # in-band radiance at about 1 AU
    result = ingest.run([path], tmp_path / "samples.h5", cfg)
    per = result["per_channel"]
    assert set(per) == {"1", "7"}
    assert per["1"]["accepted"] > 0.9 * per["7"]["accepted"]  # reflectances pass their range
    rejected = {reason: sum(c.get(reason, 0) for c in per.values())
                for reason in result["rejected"] if reason not in ("channel", "malformed",
                                                                    "duplicate")}
    assert rejected == {k: v for k, v in result["rejected"].items() if k in rejected}


def test_regolith_table_on_disk_gives_the_same_rows_in_bounded_memory(tiny_config, tmp_path):
    """The per-column table written to scratch (as `simulate` does) gives exactly the
    temperatures of the in-memory table, and the rows of a table are simulated in
    batches of at most ROWS_PER_BATCH rows, so no process holds a whole table of
    columns or of rows."""
    params = tiny_config["simulate"]
    nside = 8
    surface = simulate.make_surface(nside, params, seed=3)
    in_memory = simulate.thermal_tables(surface, nside, workers=2)
    on_disk = simulate.thermal_tables(surface, nside, workers=2, scratch=tmp_path)
    assert on_disk.regolith == tmp_path / "regolith.npy"
    np.testing.assert_array_equal(np.load(on_disk.regolith), in_memory.regolith)
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 12 * nside**2, 500)
    when = (rng.uniform(0, 24, 500), rng.uniform(-1.5, 1.5, 500), rng.uniform(0.98, 1.02, 500))
    for a, b in zip(in_memory.at(pix, *when), on_disk.at(pix, *when), strict=True):
        np.testing.assert_array_equal(a, b)
    rock = surface["rock_fraction"].astype(np.float32)
    rows_a = simulate.simulate_observations(in_memory, rock, params, (0, 3),
                                            np.random.default_rng(1))
    rows_b = simulate.simulate_observations(on_disk, rock, params, (0, 3),
                                            np.random.default_rng(1))
    for key in rows_a:
        np.testing.assert_array_equal(rows_a[key], rows_b[key])

    assert simulate.orbits_per_batch(params) == simulate.ORBITS_PER_BATCH  # small orbits
    survey_orbit = {**params, "samples_per_orbit": 1100, "detectors": 21, "channels": [7]}
    assert simulate.orbits_per_batch(survey_orbit) == 2  # 46,200 rows <= ROWS_PER_BATCH
    every_channel = {**survey_orbit, "channels": list(range(1, 10))}
    assert simulate.orbits_per_batch(every_channel) == 1  # one orbit, however many rows


def test_angles_are_wrapped_after_rounding():
    """A longitude of 359.999996° is written as 0.00000, not as 360.00000 (which the
    archive never writes and ingest rejects): 23 of the 107 M rows of the scale run
    were lost that way before."""
    lon = np.array([359.999996, -1e-7, 360.0, 180.123456, -0.5])
    np.testing.assert_array_equal(simulate._rounded_angle(lon, 360.0, 5),
                                  [0.0, 0.0, 0.0, 180.12346, 359.5])
    hours = simulate._rounded_angle(np.array([23.999999, 24.0, 12.5]), 24.0, 5)
    np.testing.assert_array_equal(hours, [0.0, 0.0, 12.5])
