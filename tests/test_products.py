"""encode, maps and evaluate: contracts, FITS readability and metric correctness."""

import json

import h5py
import healpy as hp
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import strongest_anomaly_distance_deg
from PIL import Image

from vaemap import baselines, evaluate, maps, metrics, tables
from vaemap.products import ProductError, map_products
from vaemap.stats import anomaly_z, ica_components, robust_z


def test_robust_z_known_values():
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    # median 3, MAD 1 -> 0.6745 * (x - 3)
    np.testing.assert_allclose(z, 0.6745 * np.array([-2, -1, 0, 1, 97.0]))
    assert np.isnan(robust_z(np.array([np.nan]))).all()
    assert np.isfinite(robust_z(np.array([1.0, 1.0, 1.0, 5.0]))).all()


def test_latitude_bands_merge_small_polar_bands_equatorward():
    from vaemap.stats import latitude_bands

    # 100 pixels in each 10° band up to 70°, 20 in 70-80°, 5 in 80-90°, both hemispheres
    lat = np.concatenate([np.full(100, 5.0 + 10 * b) * (-1) ** b for b in range(7)]
                         + [np.full(20, -75.0), np.full(5, 85.0)])
    bands = latitude_bands(lat, 10.0, min_pixels=50)
    assert np.array_equal(bands[:700], np.repeat(np.arange(7), 100))  # |lat|: hemispheres joined
    assert (bands[700:] == 6).all()  # 80-90° (5) joins 70-80°, which (25) joins 60-70°
    # a map smaller than one band is one band, whatever the latitudes
    assert np.unique(latitude_bands(np.array([1.0, 45.0, 89.0]), 10.0)).size == 1


def test_band_scales_over_parts_are_numpys_exact_median_and_mad():
    """The score's median and MAD per band, computed from parts read one at a time
    (tiles of a map no job holds whole), are numpy's to the last bit, and so is
    the score; a band with more than half its errors equal falls back to the
    mean absolute deviation as robust_z does."""
    from vaemap.stats import BandScales, latitude_bands, streamed_median

    rng = np.random.default_rng(3)
    n = 20_000
    lat = rng.uniform(-90, 90, n)
    error = rng.lognormal(0.0, 0.7, n).astype(np.float32).astype(np.float64)
    error[rng.uniform(size=n) < 0.01] = np.nan  # unobserved: stays NaN, not counted
    error[-7:] = -3.5  # negative values sort right too
    tied = np.abs(lat) < 10
    error[tied & (rng.uniform(size=n) < 0.8)] = 2.0  # a band whose MAD is 0
    bands = latitude_bands(lat, 10.0)
    whole = anomaly_z(error, lat, 10.0)
    for b in np.unique(bands):
        x = error[(bands == b) & np.isfinite(error)]
        med = np.median(x)
        mad = np.median(np.abs(x - med)) or np.mean(np.abs(x - med)) / 0.7979
        expect = 0.6745 * (error[bands == b] - med) / mad
        if b == 0:
            assert np.median(np.abs(x - med)) == 0  # the fallback is exercised
            np.testing.assert_allclose(whole[bands == b], expect, rtol=1e-12)
        else:
            np.testing.assert_array_equal(whole[bands == b], expect)
    order = rng.permutation(n)  # parts of any size and order, one of them empty
    pieces = [order[:1], order[1:5000], order[5000:5000], order[5000:]]
    scales = BandScales.of(lambda: ((error[i], lat[i]) for i in pieces), 10.0)
    split = np.empty(n)
    for i in pieces:
        split[i] = scales.score(error[i], lat[i])
    np.testing.assert_array_equal(split[~tied], whole[~tied])
    np.testing.assert_allclose(split, whole, rtol=1e-12)
    assert streamed_median(lambda: (error[i] for i in pieces)) == np.nanmedian(error)


def test_parameter_scores_measure_the_sigma_calibration():
    """Errors twice as wide as the stated σ: coverage of ±1σ about 0.38, and the
    factor that would make it 0.68 about 2 (after which it is 0.68 exactly)."""
    rng = np.random.default_rng(4)
    n = 50_000
    truth = rng.uniform(0.05, 0.1, (n, 1))
    sigma = np.full((n, 1), 0.004)
    values = truth + rng.normal(0, 2 * 0.004, (n, 1))
    scores = metrics.parameter_scores(values, sigma, truth, ["h_param"])["h_param"]
    assert abs(scores["coverage_1sigma"] - 0.383) < 0.01
    assert abs(scores["sigma_scale_68"] - 2.0) < 0.05
    again = metrics.parameter_scores(values, sigma * scores["sigma_scale_68"], truth,
                                     ["h_param"])["h_param"]
    assert abs(again["coverage_1sigma"] - 0.68) < 1e-3


def test_anomaly_z_scores_each_pixel_against_its_latitude():
    """A pole that every pixel fits worse is not anomalous by latitude band; a pixel
    worse than its own band is, equally at the equator and the pole."""
    from vaemap.stats import anomaly_z

    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.uniform(-10, 10, 900), rng.uniform(80, 90, 100)])
    error = np.concatenate([rng.normal(1.0, 0.1, 900), rng.normal(3.0, 0.3, 100)])
    error[10] = 1.8  # 8 spreads above the equatorial band: anomalous there
    flat = anomaly_z(error, lat, 0.0)
    np.testing.assert_array_equal(flat, robust_z(error))
    assert (flat[900:] > 3.5).all() and flat[10] > 3.5  # the pole swamps the catalogue
    banded = anomaly_z(error, lat, 10.0)
    assert (banded[900:] > 3.5).mean() < 0.05 and banded[10] > 3.5
    np.testing.assert_allclose(banded[:900], robust_z(error[:900]))


def test_roc_auc_and_average_precision_known_answers():
    label = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), label) == 1.0
    assert metrics.roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), label) == 0.0
    assert metrics.roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), label) == 0.5
    assert metrics.average_precision(np.array([0.1, 0.2, 0.8, 0.9]), label) == 1.0
    # ranking: pos, neg, pos -> precisions 1, 2/3
    assert metrics.average_precision(np.array([3.0, 2.0, 1.0]), np.array([1, 0, 1])) == (
        pytest.approx((1 + 2 / 3) / 2))
    assert np.isnan(metrics.roc_auc(np.ones(3), np.zeros(3)))


def test_spearman_perfect_and_entangled_codes():
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(500, 2))
    disentangled = np.column_stack([np.exp(factors[:, 1]), -factors[:, 0]])
    rho = metrics.spearman_matrix(disentangled, factors)
    np.testing.assert_allclose(np.abs(rho), [[0, 1], [1, 0]], atol=0.1)
    entangled = np.column_stack([factors.sum(1), factors[:, 0] - factors[:, 1]])
    rho = metrics.spearman_matrix(entangled, factors)
    assert np.all(np.abs(rho) > 0.5)
    # the entangled code still holds both factors: its linear read-out says so,
    # where no single latent reaches them; noise holds neither
    assert np.abs(rho).max() < 0.8
    np.testing.assert_allclose(metrics.linear_readout(entangled, factors), 1.0, atol=1e-6)
    assert metrics.linear_readout(rng.normal(size=(500, 2)), factors).max() < 0.2


def test_latents_contract(trained, survey):
    with h5py.File(trained["latents"]) as h5, h5py.File(survey["profiles_h5"]) as p:
        n = p["pix"].shape[0]
        np.testing.assert_array_equal(h5["pix"][...], p["pix"][...])
        assert h5["mu"].shape == (n, 5) and h5["logvar"].shape == (n, 5)
        for key in ("recon_error", "recon_l1", "recon_z", "recon_z_night", "anomaly_score"):
            assert h5[key].shape == (n,) and np.isfinite(h5[key][...]).all()
        # the calibrated residual is about 1 σ where the model fits (|z| of a
        # Gaussian averages 0.8), and the score is the robust z of its night part
        # among the pixels of each 10° latitude band
        assert 0.3 < np.median(h5["recon_z"][...]) < 2.0
        assert float(h5.attrs["score_band_deg"]) == 10.0
        lat = p["lat"][...]
        np.testing.assert_allclose(h5["anomaly_score"][...],
                                   anomaly_z(h5["recon_z_night"][...], lat, 10.0),
                                   rtol=1e-4, atol=1e-4)
        assert not np.allclose(h5["anomaly_score"][...], robust_z(h5["recon_z_night"][...]),
                               atol=1e-2)
        assert h5["recon"].shape == p["profile"].shape
        assert (h5["recon_l1"][...] <= h5["recon_error"][...] + 1e-4).all()
        assert h5.attrs["ordering"] == "NESTED"


def test_maps_fits_and_png(trained, survey, tiny_config, tmp_path):
    maps.run(trained["latents"], survey["profiles_h5"], trained["model"], tmp_path, tiny_config)
    with h5py.File(trained["latents"]) as h5:
        pix, mu, nside = h5["pix"][...], h5["mu"][...], int(h5.attrs["nside"])
        score = h5["anomaly_score"][...]
    for name in map_products(4, independent_components=True):
        fits_path, png = tmp_path / f"{name}.fits", tmp_path / f"{name}.png"
        m = hp.read_map(fits_path, nest=None)
        assert m.size == hp.nside2npix(nside)
        assert np.isfinite(m[pix]).all() and (m[pix] != hp.UNSEEN).all()
        image = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert image.std() > 10  # not blank
    m0 = hp.read_map(tmp_path / "latent0_mu.fits", nest=None)
    np.testing.assert_array_equal(m0[pix], mu[:, 0])  # exact, float32 both
    ic = ica_components(mu.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(hp.read_map(tmp_path / "ic1.fits", nest=None)[pix], ic[:, 1])
    assert abs(float(np.std(ic[:, 1])) - 1.0) < 0.01  # unit variance
    np.testing.assert_array_equal(hp.read_map(tmp_path / "anomaly_score.fits", nest=None)[pix],
                                  score)
    catalogue = Table.read(tmp_path / "anomalies.ecsv", format="ascii.ecsv")
    assert catalogue["lon"].unit == "deg" and catalogue.meta["ordering"] == "NESTED"
    # The strongest injected anomaly is in the catalogue: a region centred on it
    # (within the injected radius plus one pixel).
    reach = tiny_config["simulate"]["anomaly_radius_deg"] + np.degrees(hp.nside2resol(nside))
    assert strongest_anomaly_distance_deg(survey["truth"], tmp_path / "anomalies.ecsv") < reach
    for figure in ("anomaly_profiles.png", "latent_traversal.png"):
        image = np.asarray(Image.open(tmp_path / figure).convert("L"), dtype=float)
        assert image.std() > 10
    for fits_path in tmp_path.glob("*.fits"):  # every FITS product is valid FITS
        with fits.open(fits_path, checksum=True) as hdus:
            hdus.verify("exception")
    # GIS rasters: every product on every grid; a known pixel's value where it lies
    import rasterio
    from rasterio.warp import transform

    grids = tiny_config["maps"]["geotiff"]
    assert set(grids) == {"equirectangular", "north_polar", "south_polar"}
    for name in map_products(4, independent_components=True):
        for grid in grids:
            assert (tmp_path / f"{name}_{grid}.tif").stat().st_size > 0
    by_pix = dict(zip(pix.tolist(), mu[:, 0].tolist(), strict=True))
    with rasterio.open(tmp_path / "latent0_mu_equirectangular.tif") as ds:
        band = ds.read(1)
        for p in pix[:: max(1, pix.size // 25)]:
            lon, lat = hp.pix2ang(nside, int(p), nest=True, lonlat=True)
            x, y = transform("IAU_2015:30100", ds.crs, [lon], [lat])
            row, col = ds.index(x[0], y[0])
            near = [by_pix.get(q) for q in [int(p), *hp.get_all_neighbours(nside, int(p),
                                                                           nest=True)]]
            assert band[row, col] in [np.float32(v) for v in near if v is not None]
    header = fits.getheader(tmp_path / "recon_error.fits", 1)
    assert any("vaemap config" in str(h) for h in header["HISTORY"])
    assert header["ORDERING"] == "NESTED"
    assert header["BODY"] == "MOON"
    assert header["TTYPE2"] == "RECON_ERROR" and header["TUNIT2"] == "K"
    assert int(header["NSIDE"]) == nside
    assert header["PIXKM"] == pytest.approx(1778.0 / nside, rel=0.05)


def test_evaluate_with_and_without_truth(trained, survey, tiny_config, tmp_path):
    m = evaluate.run(trained["latents"], survey["truth"], tmp_path / "t", tiny_config,
                     profiles=survey["profiles_h5"], model=trained["model"])
    assert 0.0 <= m["mig"] <= 1.0 and 0.0 <= m["dci"]["disentanglement"] <= 1.0
    assert set(m["baselines"]) == {"pca", "ica_pca", "pca_zero_filled"}
    assert set(m["boosted_probe"]["best_abs_spearman"]) == set(metrics.FACTOR_NAMES)
    assert m["anomaly_metric"] == "calibrated_z_night"
    assert "| MIG |" in (tmp_path / "t" / "metrics.md").read_text()
    assert m["ground_truth"] is True
    assert set(m["best_abs_spearman"]) == set(metrics.FACTOR_NAMES)
    assert 0.0 <= m["anomaly"]["roc_auc"] <= 1.0
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["pixels"] == m["pixels"]
    assert "| best abs Spearman, albedo |" in (tmp_path / "t" / "metrics.md").read_text()
    assert set(m["linear_probe"]["r2"]) == set(metrics.FACTOR_NAMES)
    assert "linear probe (supervised reference) ¹" in (tmp_path / "t" / "metrics.md").read_text()
    assert m["training_seed"] == tiny_config["seed"]
    # the model alone (no profiles): no baselines, but still its training seed
    model_only = evaluate.run(trained["latents"], survey["truth"], tmp_path / "mo",
                              tiny_config, model=trained["model"])
    assert "baselines" not in model_only and model_only["training_seed"] == tiny_config["seed"]
    real = evaluate.run(trained["latents"], None, tmp_path / "r", tiny_config)
    assert real["ground_truth"] is False and "no ground truth" in real["note"]
    assert "spearman" not in real
    assert (tmp_path / "r" / "kl.png").exists()
    assert not (tmp_path / "r" / "correlation.png").exists()


def test_linear_probe_known_answers(trained, survey):
    """A factor that is a linear function of two bins is read back (R² ≈ 1, ρ ≈ 1);
    a factor independent of the data is not (R² ≤ ~0)."""
    data = baselines.normalised_profiles(survey["profiles_h5"], trained["model"])
    pix, lat, x = data.pix, data.lat, data.x
    n = len(pix)
    rng = np.random.default_rng(0)
    flat = x.reshape(n, -1)
    linear = 2.0 * flat[:, 3] - flat[:, 10] + 0.3 * np.sin(np.radians(lat))
    factors = np.column_stack([linear, rng.normal(size=n), linear, linear, linear])
    with h5py.File(trained["latents"]) as h5:
        nside = int(h5.attrs["nside"])
    probe = baselines.linear_probe(data, nside, factors, ridge=1e-6)
    assert probe["r2"]["albedo"] > 0.95 and probe["best_abs_spearman"]["albedo"] > 0.95
    assert probe["r2"]["h_param"] < 0.05 and probe["best_abs_spearman"]["h_param"] < 0.3


def _low_rank_profiles(n=3000, bins=24, rank=2, gap_fraction=0.4, seed=0):
    """Profiles that are exactly ``rank``-dimensional, with a pattern of gaps that
    depends on the code (as latitude sets coverage), as NormalisedProfiles."""
    rng = np.random.default_rng(seed)
    code = rng.normal(size=(n, rank))
    basis = np.stack([np.sin(2 * np.pi * (np.arange(bins) + 0.5) * (k + 1) / bins)
                      for k in range(rank)])
    x = (code @ basis)[:, None, :]
    # bins go missing more often where the first code is high
    p_gap = gap_fraction * (1 + np.tanh(code[:, :1]))[:, :, None] / 2
    mask = (rng.random(x.shape) > p_gap).astype(float)
    data = baselines.NormalisedProfiles(np.arange(n), np.zeros(n), np.where(mask > 0, x, 0.0),
                                        mask, np.ones((1, bins)), mask.copy())
    return data, code, x


def test_masked_pca_sees_through_gaps_that_zero_filling_does_not():
    data, code, truth = _low_rank_profiles()
    masked, summary = baselines.masked_pca(data, 2, impute_components=2)
    zero = baselines.pca_zero_filled(data, 2)
    err_masked = np.abs(masked.recon - truth).max()
    err_zero = np.abs(zero.recon - truth).mean()
    assert err_masked < 0.01 and err_zero > 0.1, (err_masked, err_zero)  # gaps seen through
    # the masked code spans the true code (canonical correlations ~ 1)
    q1, _ = np.linalg.qr(masked.code - masked.code.mean(0))
    q2, _ = np.linalg.qr(code - code.mean(0))
    assert np.linalg.svd(q1.T @ q2, compute_uv=False).min() > 0.999
    assert summary.shape == (len(code), 2)


def test_fit_noise_recovers_a_count_aware_variance():
    rng = np.random.default_rng(1)
    n, bins = 20000, 6
    count = rng.integers(1, 6, size=(n, 1, bins)).astype(float)
    v_obs, v_floor = np.array([4.0, 1.0, 0.5, 2.0, 3.0, 0.1]), 0.25
    residual = rng.normal(size=count.shape) * np.sqrt(v_obs / count + v_floor)
    var = baselines.fit_noise(residual, np.ones_like(count), count)
    expected = v_obs / count + v_floor
    assert np.abs(var / expected - 1).max() < 0.1
    # a variance that does not average down is all floor
    flat = rng.normal(size=count.shape)
    assert np.abs(baselines.fit_noise(flat, np.ones_like(count), count) - 1).max() < 0.08


def test_boosted_probe_reads_a_non_linear_factor_the_linear_one_misses():
    rng = np.random.default_rng(2)
    n, bins = 2000, 24
    summary = rng.normal(size=(n, 3))
    x = np.repeat(summary[:, :1], bins, axis=1)[:, None, :] + 0.01 * rng.normal(size=(n, 1, bins))
    data = baselines.NormalisedProfiles(np.arange(n, dtype=np.int64), np.zeros(n), x,
                                        np.ones_like(x), np.ones((1, bins)), np.ones_like(x))
    factor = np.abs(summary[:, 0])  # symmetric: no linear read-out exists
    factors = np.column_stack([factor, rng.normal(size=n), factor, factor, factor])
    boosted = baselines.boosted_probe(data, 8, factors, summary)
    linear = baselines.linear_probe(data, 8, factors)
    assert boosted["best_abs_spearman"]["albedo"] > 0.9
    assert linear["best_abs_spearman"]["albedo"] < 0.3
    assert boosted["best_abs_spearman"]["h_param"] < 0.2


def test_anomaly_catalogue_groups_connected_pixels():
    nside = 16
    pix = np.arange(hp.nside2npix(nside))
    score = np.zeros(pix.size)
    blob_a = hp.query_disc(nside, hp.ang2vec(30.0, 10.0, lonlat=True), np.radians(8), nest=True)
    blob_b = hp.query_disc(nside, hp.ang2vec(200.0, -40.0, lonlat=True), np.radians(5),
                           nest=True)
    score[blob_a] = 5.0
    score[blob_b] = 9.0
    table = maps.anomaly_catalogue(pix, score, nside, threshold=3.5)
    assert len(table) == 2
    assert table["n_pixels"][0] == blob_b.size and table["peak_score"][0] == 9.0
    assert table["lon"][1] == pytest.approx(30.0, abs=2.0)
    assert table["lat"][1] == pytest.approx(10.0, abs=2.0)
    assert table["area"][0] > 0
    empty = maps.anomaly_catalogue(pix, np.zeros(pix.size), nside, threshold=3.5)
    assert len(empty) == 0


def test_mig_and_dci_on_known_codes():
    rng = np.random.default_rng(1)
    factors = rng.uniform(size=(4000, 3))
    perfect = factors[:, [2, 0, 1]] * np.array([3.0, -1.0, 0.5])  # permuted, rescaled
    mig, gaps = metrics.mutual_information_gap(perfect, factors)
    assert mig > 0.8 and gaps.min() > 0.8
    d = metrics.dci(perfect, factors)
    assert d["disentanglement"] > 0.95 and d["completeness"] > 0.95
    assert d["informativeness_r2"] > 0.99
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    entangled = factors @ rotation
    mig_e, _ = metrics.mutual_information_gap(entangled, factors)
    d_e = metrics.dci(entangled, factors)
    assert mig_e < 0.5 * mig
    assert d_e["disentanglement"] < 0.7 and d_e["completeness"] < 0.7
    assert d_e["informativeness_r2"] > 0.99  # rotation loses no information
    noise = rng.normal(size=(4000, 3))
    assert metrics.dci(noise, factors)["informativeness_r2"] < 0.05


def test_connected_regions_and_region_recall():
    from vaemap.healpix import connected_regions

    nside = 16
    pix = np.arange(hp.nside2npix(nside))
    disc_a = hp.query_disc(nside, hp.ang2vec(30.0, 10.0, lonlat=True), np.radians(6), nest=True)
    disc_b = hp.query_disc(nside, hp.ang2vec(200.0, -40.0, lonlat=True), np.radians(6),
                           nest=True)
    n, label = connected_regions(nside, np.concatenate([disc_a, disc_b]))
    assert n == 2 and len(set(label[: disc_a.size])) == 1
    kind = np.zeros(pix.size, int)
    kind[disc_a], kind[disc_b] = 1, 2
    score = np.zeros(pix.size)
    score[disc_a[0]] = 10.0  # one pixel of the warm region is found; the cold one is missed
    recall = metrics.region_recall(pix, nside, kind, score, threshold=3.5)
    assert recall["warm_rocky_regions"] == 1 and recall["warm_rocky_found"] == 1
    assert recall["cold_spot_regions"] == 1 and recall["cold_spot_found"] == 0


def test_tiles_then_merge_equal_one_job(trained, survey, tiny_config, tmp_path):
    from vaemap import encode
    from vaemap.healpix import parse_tile

    cfg = {**tiny_config, "encode": {**tiny_config["encode"], "tile_nside": 1}}
    parts = []
    for index in reversed(range(12)):  # any order: merge sorts the parts
        parts.append(tmp_path / f"tile_{index}.h5")
        encode.run(survey["profiles_h5"], trained["model"], parts[-1], cfg, tile=f"1/{index}")
    summary = encode.merge(parts, tmp_path / "latents.h5", cfg)
    with h5py.File(trained["latents"]) as one, h5py.File(tmp_path / "latents.h5") as merged:
        assert summary["pixels"] == one["pix"].size
        assert set(merged) == set(one)
        for key in ("pix", "n_obs", "anomaly"):
            np.testing.assert_array_equal(merged[key][...], one[key][...])
        for key in ("mu", "logvar", "recon_error", "recon_norm_l1", "anomaly_score", "recon"):
            np.testing.assert_allclose(merged[key][...], one[key][...], rtol=1e-4, atol=1e-4)
        assert merged.attrs["ordering"] == "NESTED" and "anomaly_metric" in merged.attrs
    with h5py.File(parts[0]) as part:
        assert "anomaly_score" not in part and part.attrs["part_of_tile"] == "1/11"
    with pytest.raises(ValueError, match="overlap"):
        encode.merge([parts[0], parts[0]], tmp_path / "bad.h5", cfg)
    with pytest.raises(ValueError, match="not a tile part of latents"):
        encode.merge([trained["latents"]], tmp_path / "bad.h5", cfg)
    for bad, message in (("3/0", "power of 2"), ("1/12", "outside"), ("x", "NSIDE/INDEX")):
        with pytest.raises(ValueError, match=message):
            parse_tile(bad)
    # a part made by another model: refused through open_tile_parts, naming it
    other = tmp_path / "other.h5"
    other.write_bytes(parts[3].read_bytes())
    with h5py.File(other, "a") as h5:
        h5.attrs["model_weights"] = "xxh3_128:0"
    with pytest.raises(ProductError, match=r"other\.h5: model_weights xxh3_128:0 differs"):
        encode.merge([parts[0], other], tmp_path / "bad.h5", cfg)
    assert not (tmp_path / "bad.h5").exists()


def test_profile_tiles_of_another_grid_are_refused(survey, tiny_config, tmp_path):
    """merge_profiles checks its parts as profiles.run's readers check a product
    (products.check_product): the configured nside and bins, one channel list."""
    from vaemap import profiles

    cfg = {**tiny_config, "profiles": {**tiny_config["profiles"], "tile_nside": 1}}
    parts = [tmp_path / f"p{i}.h5" for i in (0, 1)]
    for i, part in enumerate(parts):
        profiles.run(survey["samples"], part, cfg, tile=f"1/{i}")
    profiles.merge(parts, tmp_path / "ok.h5", cfg)
    coarser = {**cfg, "profiles": {**cfg["profiles"], "bins": cfg["profiles"]["bins"] // 2}}
    with pytest.raises(ProductError, match=r"p\d\.h5: \d+ local-time bins, but the profiles "
                                           r"configuration has"):
        profiles.merge(parts, tmp_path / "bad.h5", coarser)
    other_nside = {**cfg, "profiles": {**cfg["profiles"], "nside": cfg["profiles"]["nside"] * 2}}
    with pytest.raises(ProductError, match=r"p\d\.h5: nside \d+, but the profiles"):
        profiles.merge(parts, tmp_path / "bad.h5", other_nside)
    assert not (tmp_path / "bad.h5").exists()


def test_ica_unmixes_rotated_independent_sources():
    """Two independent non-Gaussian factors seen through a rotated code come back
    one per component (up to order and sign); the raw code mixes them."""
    rng = np.random.default_rng(0)
    sources = np.column_stack([rng.uniform(-1, 1, 4000), rng.laplace(size=4000)])
    angle = np.radians(35)
    code = sources @ np.array([[np.cos(angle), -np.sin(angle)],
                               [np.sin(angle), np.cos(angle)]])
    raw = np.abs(metrics.spearman_matrix(code, sources))
    ic = np.abs(metrics.spearman_matrix(ica_components(code), sources))
    assert raw.max(axis=0).min() < 0.9
    assert ic.max(axis=0).min() > 0.98 and ic.max(axis=1).min() > 0.98
    # a collapsed (constant) latent beside them: unmixed the same, a zero component
    with_dead = np.column_stack([code[:, 0], np.full(len(code), 0.3), code[:, 1]])
    ic3 = ica_components(with_dead)
    np.testing.assert_array_equal(ic3[:, 2], 0.0)
    assert np.abs(metrics.spearman_matrix(ic3[:, :2], sources)).max(axis=0).min() > 0.98
    assert (ica_components(np.zeros((50, 3))) == 0).all()  # every latent collapsed


def test_a_large_maps_rotation_is_fitted_on_a_sample_and_streamed(tmp_path, monkeypatch):
    """Beyond ICA_FIT_ROWS pixels the rotation is fitted on a seeded sample: the
    maps' block-by-block columns are the same bits as ica_components on the
    whole code (what evaluate scores), and the same rotation, to 1e-3, as a fit
    on every pixel."""
    from vaemap import stats

    rng = np.random.default_rng(4)
    n = 5000
    sources = np.column_stack([rng.uniform(-1, 1, n), rng.laplace(size=n),
                               rng.exponential(size=n)])
    mixing = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    code = np.column_stack([sources @ mixing, np.full(n, 0.2)]).astype(np.float32)
    whole = ica_components(code.astype(np.float64))  # n ≤ ICA_FIT_ROWS: every pixel
    for module in (stats, maps):
        monkeypatch.setattr(module, "ICA_BLOCK_ROWS", 700)  # several blocks, a ragged last
    monkeypatch.setattr(stats, "ICA_FIT_ROWS", 2000)
    sampled = ica_components(code.astype(np.float64))
    assert stats.ica_sample(n).size == 2000 and stats.ica_sample(1999) is None
    np.testing.assert_array_equal(sampled[:, 3], 0.0)  # the constant latent stays zero
    match = np.abs(np.corrcoef(whole[:, :3].T, sampled[:, :3].T)[:3, 3:]).max(axis=1)
    assert (match > 0.999).all()
    with h5py.File(tmp_path / "latents.h5", "w") as h5:
        h5["mu"] = code
    with h5py.File(tmp_path / "latents.h5") as h5:
        columns = maps._IcaColumns(h5["mu"])
        assert columns.full is None  # fitted on the sample, not read whole
        for k in range(4):
            np.testing.assert_array_equal(columns[:, k], sampled[:, k].astype(np.float32))


def test_summarize_aggregates_each_method_over_its_seeds(trained, survey, tiny_config,
                                                        tmp_path):
    m = evaluate.run(trained["latents"], survey["truth"], tmp_path / "e", tiny_config,
                     profiles=survey["profiles_h5"], model=trained["model"])
    path = tmp_path / "e" / "metrics.json"
    shifted = json.loads(path.read_text())  # as if another seed did better by 0.1
    shifted["anomaly"]["roc_auc"] -= 0.1
    shifted["training_seed"] = 7
    (tmp_path / "other.json").write_text(json.dumps(shifted))
    out = tables.summarize([path, tmp_path / "other.json", path],
                           ["main", "seed=7", "beta=0"], tmp_path / "summary.json",
                           tmp_path / "summary.md", tmp_path / "runs.csv", main_label="VAE")
    methods = out["methods"]
    assert list(methods) == ["VAE", "ICA rotation of the VAE", "PCA (mask-aware)",
                             "ICA of the mask-aware PCA", "PCA (gaps zero-filled)",
                             "linear probe (supervised reference)",
                             "boosted-tree probe (supervised reference)", "AE (β = 0)"]
    assert methods["VAE"]["runs"] == 2 and methods["AE (β = 0)"]["runs"] == 1
    auc = methods["VAE"]["metrics"]["anomaly.roc_auc"]
    assert auc["mean"] == pytest.approx(m["anomaly"]["roc_auc"] - 0.05)
    assert auc["sd"] == pytest.approx(0.1 / np.sqrt(2))
    assert methods["AE (β = 0)"]["metrics"]["anomaly.roc_auc"]["sd"] is None
    # PCA is scored with the VAE's own statistic and threshold, on the same pixels
    pca = m["baselines"]["pca"]
    assert pca["factor_pixels"] == m["factor_pixels"] and "catalogue" in pca["anomaly"]
    assert "matched_abs_spearman.h_param" in methods["PCA (mask-aware)"]["metrics"]
    table = (tmp_path / "summary.md").read_text()
    assert f"{auc['mean']:.3f} ± {auc['sd']:.3f}" in table
    assert (tmp_path / "runs.csv").read_text().splitlines()[0].startswith("label,training_seed")
    # runs of another simulated Moon are refused, naming the files
    shifted["moon_seed"] = 12345
    (tmp_path / "moon.json").write_text(json.dumps(shifted))
    with pytest.raises(ValueError, match="different simulated Moons"):
        tables.summarize([path, tmp_path / "moon.json"], ["main", "seed=7"],
                           tmp_path / "x.json")


def test_readme_block_is_generated_from_the_summary(tmp_path):
    summary = {"moon_seed": 1969, "factor_pixels": 100, "anomaly_metric": "normalised_l1",
               "methods": {"VAE": {"runs": 3, "training_seeds": [42, 43, 44], "metrics": {
                   "anomaly.roc_auc": {"mean": 0.9512, "sd": 0.0123, "values": []}}}}}
    (tmp_path / "s.json").write_text(json.dumps(summary))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{tables.README_START}\nSTALE TABLE\n{tables.README_END}\nrest\n")
    assert not tables.update_readme(tmp_path / "s.json", readme, check=True)
    tables.update_readme(tmp_path / "s.json", readme)
    text = readme.read_text()
    assert "| anomaly ROC-AUC | 0.951 ± 0.012 |" in text and "seeds 42, 43, 44" in text
    assert text.startswith("intro\n") and text.endswith("rest\n") and "STALE TABLE" not in text
    assert tables.update_readme(tmp_path / "s.json", readme, check=True)


def test_channels_block_sets_the_channel_sets_beside_their_targets(tmp_path):
    def summary(albedo, probe, moon=1969):
        cell = {"mean": albedo, "sd": 0.01, "values": []}
        return {"moon_seed": moon, "factor_pixels": 100, "anomaly_metric": "normalised_l1",
                "methods": {
            "VAE": {"runs": 3, "training_seeds": [42, 43, 44],
                    "metrics": {"best_abs_spearman.albedo": cell}},
            tables.PROBE: {"runs": 3, "training_seeds": [42, 43, 44], "metrics": {
                "best_abs_spearman.albedo": {"mean": probe, "sd": 0.0, "values": []}}}}}

    for name, s in (("a", summary(0.35, 0.46)), ("b", summary(0.33, 0.81)),
                    ("c", summary(0.5, 0.5, moon=7))):
        (tmp_path / f"{name}.json").write_text(json.dumps(s))
    readme = tmp_path / "README.md"
    readme.write_text(f"{tables.README_START}\n{tables.README_END}\n"
                      f"{tables.CHANNELS_START}\nSTALE\n{tables.CHANNELS_END}\n")
    tables.update_readme(tmp_path / "a.json", readme,
                           channels=[("7", tmp_path / "a.json"), ("1-9", tmp_path / "b.json")])
    text = readme.read_text()
    assert ("| target | " + " | ".join(["≥ 0.9 × probe"] * 5) + " | ≥ 0.99 | ≥ 0.95 |") in text
    assert "| 7 (3) | 0.350 ± 0.010 (0.46) | — |" in text
    assert "| 1-9 (3) | 0.330 ± 0.010 (0.81) | — |" in text and "STALE" not in text
    assert tables.update_readme(tmp_path / "a.json", readme, check=True,
                                  channels=[("7", tmp_path / "a.json"),
                                            ("1-9", tmp_path / "b.json")])
    with pytest.raises(ValueError, match="different simulated Moons"):
        tables.channels_table([("7", summary(0.3, 0.4)), ("x", summary(0.3, 0.4, moon=7))])


def test_hungarian_matching_gives_each_factor_its_own_latent():
    rho = np.array([[0.9, 0.8, 0.0],  # latent 0 is best for factors 0 and 1
                    [0.1, 0.7, 0.0]])
    matched, latent_of = metrics.matched_assignment(rho)
    np.testing.assert_array_equal(latent_of, [0, 1, -1])
    np.testing.assert_allclose(matched, [0.9, 0.7, 0.0])


def test_the_readme_results_block_is_the_generated_one():
    """The README's table is `vaemap readme-table docs/results/metrics.json` (written
    by `make results-table` from the demo's results), not typed by hand."""
    from conftest import REPO

    summary = json.loads((REPO / "docs" / "results" / "metrics.json").read_text())
    assert tables.readme_block(summary) in (REPO / "README.md").read_text()
    assert summary["moon_seed"] == 1969  # the test Moon, never tuned on
    vae = next(iter(summary["methods"].values()))
    assert vae["runs"] >= 3 and len(set(vae["training_seeds"])) == vae["runs"]
    # ... and so is the channels block beside it (`make results-table`)
    sets = [("7 (default)", summary),
            ("1-9", json.loads((REPO / "docs" / "results" / "allchannels.json").read_text()))]
    assert tables.channels_block(sets) in (REPO / "README.md").read_text()
    assert sets[1][1]["moon_seed"] == 1969
    assert next(iter(sets[1][1]["methods"].values()))["runs"] >= 3
