"""Map files at any resolution: partial HEALPix FITS from (pixel, value) pairs,
HealSparse at nside >= 4096, read back by their standard readers."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
from astropy.io import fits

from vaemap.healpix import downgrade_pairs, write_healsparse_map, write_partial_map


def _read_pairs(path):
    """(pixels, values, header) of a partial map, read with astropy alone."""
    with fits.open(path, checksum=True) as hdus:
        hdus.verify("exception")
        table = hdus[1]
        return (np.asarray(table.data["PIXEL"]), np.asarray(table.data.field(1)),
                table.header.copy())


def test_partial_fits_round_trips_through_healpy_and_astropy(tmp_path):
    path = tmp_path / "m.fits"
    pix = np.array([700, 3, 5, 100])
    values = np.array([1.5, 2.0, np.nan, 4.0])
    n = write_partial_map(path, pix, values, 8, column="TB", unit="K",
                          extra_header={"product": "test"}, history=[("HISTORY", "a=1")])
    assert n == 3  # the NaN is unobserved, not written
    full = hp.read_map(path, nest=True)
    assert full[3] == 2.0 and full[100] == 4.0 and full[700] == 1.5
    assert full[5] == hp.UNSEEN and (full == hp.UNSEEN).sum() == 768 - 3
    got_pix, got, header = _read_pairs(path)
    np.testing.assert_array_equal(got_pix, [3, 100, 700])  # sorted by pixel
    np.testing.assert_array_equal(got, np.float32([2.0, 4.0, 1.5]))
    assert header["INDXSCHM"] == "EXPLICIT" and header["ORDERING"] == "NESTED"
    assert header["NSIDE"] == 8 and header["BODY"] == "MOON" and header["TUNIT2"] == "K"
    assert header["PRODUCT"] == "test" and "a=1" in str(header["HISTORY"])
    assert header.get("CHECKSUM") and table_dtype(path)["PIXEL"] == np.dtype(">i4")


def table_dtype(path):
    with fits.open(path) as hdus:
        return hdus[1].data.dtype


def test_pixel_column_is_64_bit_where_nside_needs_it(tmp_path):
    """At nside 16384 (3.2 G pixels) indices pass 2**31: the PIXEL column is 64-bit,
    and writing touches no full-sphere array."""
    nside = 16384
    pix = np.array([12 * nside**2 - 1, 2**31 + 5, 7], dtype=np.int64)
    write_partial_map(tmp_path / "big.fits", pix, np.array([1.0, 2.0, 3.0]), nside,
                      column="X")
    got_pix, got, header = _read_pairs(tmp_path / "big.fits")
    assert table_dtype(tmp_path / "big.fits")["PIXEL"] == np.dtype(">i8")
    np.testing.assert_array_equal(got_pix, [7, 2**31 + 5, 12 * nside**2 - 1])
    np.testing.assert_array_equal(got, np.float32([3.0, 2.0, 1.0]))
    assert header["LASTPIX"] == 12 * nside**2 - 1


def test_bad_pixels_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(ValueError, match=r"m\.fits: pixel 5 is listed twice"):
        write_partial_map(tmp_path / "m.fits", np.array([5, 5]), np.ones(2), 4, column="X")
    with pytest.raises(ValueError, match=r"outside 0\.\.191"):
        write_partial_map(tmp_path / "m.fits", np.array([192]), np.ones(1), 4, column="X")
    assert not (tmp_path / "m.fits").exists()


def test_healsparse_map_reads_back_at_known_pixels(tmp_path):
    import healsparse

    nside = 4096
    pix = np.array([10, 11, 5_000_000, 12 * nside**2 - 1], dtype=np.int64)
    values = np.array([1.0, np.nan, 3.0, 4.0])
    assert write_healsparse_map(tmp_path / "m.hsp", pix, values, nside, unit="K",
                                metadata={"product": "test"}) == 3
    sparse = healsparse.HealSparseMap.read(tmp_path / "m.hsp")
    assert sparse.nside_sparse == nside
    np.testing.assert_array_equal(np.sort(sparse.valid_pixels), [10, 5_000_000, 12 * nside**2 - 1])
    got = sparse.get_values_pix(pix, nest=True)
    np.testing.assert_array_equal(got[[0, 2, 3]], np.float32([1.0, 3.0, 4.0]))
    assert got[1] == hp.UNSEEN
    assert sparse.metadata["BODY"] == "MOON" and sparse.metadata["BUNIT"] == "K"
    assert sparse.metadata["PRODUCT"] == "test"
    with pytest.raises(ValueError, match=r"d\.hsp: pixel 11 is listed twice"):
        write_healsparse_map(tmp_path / "d.hsp", np.array([11, 3, 11]), np.ones(3), nside)
    assert not (tmp_path / "d.hsp").exists()


def test_downgrade_pairs_averages_the_children():
    # nside 4 -> 2: children 0..3 of parent 0, 4..7 of parent 1
    parents, means = downgrade_pairs(np.array([0, 1, 2, 5, 9]),
                                     np.array([1.0, 3.0, np.nan, 10.0, 7.0]), 4, 2)
    np.testing.assert_array_equal(parents, [0, 1, 2])
    np.testing.assert_allclose(means, [2.0, 10.0, 7.0])
    same, values = downgrade_pairs(np.array([9, 2]), np.array([1.0, 2.0]), 4, 4)
    np.testing.assert_array_equal(same, [2, 9])
    np.testing.assert_array_equal(values, [2.0, 1.0])


def _projection(params: dict) -> dict:
    """PROJ parameters without the defaults that equivalent forms spell out or omit
    (scale 1, latitude of true scale 0 for eqc and at the pole for stere)."""
    params = dict(params)
    if params.get("k", 1) == 1:
        params.pop("k", None)
    if params.get("lat_ts", 0) == 0 or abs(params.get("lat_ts", 0)) == 90 == abs(
            params.get("lat_0", 0)):
        params.pop("lat_ts", None)
    return params


@pytest.mark.parametrize("grid", ["equirectangular", "north_polar", "south_polar"])
def test_geotiff_places_known_pixels_at_their_longitude_and_latitude(tmp_path, grid):
    """Each raster is read back by rasterio (GDAL): its CRS is the IAU 2015 Moon
    CRS of its grid, and points given in planetocentric longitude and latitude,
    projected by GDAL's PROJ, land on cells holding their HEALPix pixel's value."""
    import rasterio
    from rasterio.warp import transform

    from vaemap.rasters import GRIDS, NODATA, write_geotiff

    nside = 16
    pix = np.arange(hp.nside2npix(nside))
    _, lat_c = hp.pix2ang(nside, pix, nest=True, lonlat=True)
    values = pix.astype(np.float64)  # each pixel's value is its own index
    values[lat_c < -70] = np.nan  # an unobserved cap: nodata there
    path = tmp_path / f"{grid}.tif"
    write_geotiff(path, pix, values, nside, grid, unit="K", description="pixel index",
                  tags={"PRODUCT": "test"}, oversample=2)
    with rasterio.open(path) as ds:
        iau = rasterio.crs.CRS.from_string(f"IAU_2015:{GRIDS[grid][0]}")
        assert ds.tags()["CRS"] == f"IAU_2015:{GRIDS[grid][0]}"
        # GeoTIFF keys hold only EPSG codes: the IAU CRS is stored by value and read
        # back with its name and parameters (the polar ones as the equivalent
        # lat_ts = 90 form of k = 1)
        assert ds.crs.to_wkt().split('"')[1] == iau.to_wkt().split('"')[1]  # the name
        assert _projection(ds.crs.to_dict()) == _projection(iau.to_dict())
        assert ds.nodata == NODATA and ds.units == ("K",) and ds.descriptions == ("pixel index",)
        assert ds.tags()["BODY"] == "MOON" and ds.tags()["PRODUCT"] == "test"
        assert ds.overviews(1), "no overviews"
        band = ds.read(1)
        lat_range = {"equirectangular": (-60, 60), "north_polar": (62, 88),
                     "south_polar": (-69, -62)}[grid]
        rng = np.random.default_rng(1)
        lon = rng.uniform(0, 360, 40)
        lat = rng.uniform(*lat_range, 40)
        xs, ys = transform("IAU_2015:30100", ds.crs, lon.tolist(), lat.tolist())
        for x, y, lo, la in zip(xs, ys, lon, lat, strict=True):
            row, col = ds.index(x, y)
            expected = hp.ang2pix(nside, lo, la, nest=True, lonlat=True)
            # a cell is one HEALPix pixel wide: its centre may fall in a neighbour
            near = set(hp.get_all_neighbours(nside, expected, nest=True).tolist()) | {expected}
            assert int(band[row, col]) in near, (lo, la, band[row, col], expected)
        if grid == "south_polar":  # the unobserved cap around the pole
            x, y = transform("IAU_2015:30100", ds.crs, [0.0], [-89.0])
            row, col = ds.index(x[0], y[0])
            assert band[row, col] == NODATA
        observed = band[band != NODATA]
        assert observed.size and np.isin(observed, pix).all()  # values of the map, unmixed


def test_hips_tiles_moc_and_allsky_read_back_by_their_readers(tmp_path):
    """A HiPS of a partial map: reproject's HiPS reader finds every observed
    pixel's value where that pixel lies (tiles in the standard's order), mocpy
    reads the coverage, and the properties name the Moon."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from mocpy import MOC
    from reproject.hips import hips_as_dask_array

    from vaemap.hips import read_properties, write_hips

    nside = 64
    pix = np.arange(hp.nside2npix(nside))
    lon, lat = hp.pix2ang(nside, pix, nest=True, lonlat=True)
    keep = lat > -30  # the south is unobserved
    values = (np.sin(np.radians(3 * lon)) * np.cos(np.radians(lat))).astype(np.float32)
    out = tmp_path / "hips" / "product"
    info = write_hips(out, pix[keep], values[keep], nside, title="test map", unit="K",
                      cut=(-1.0, 1.0))
    assert info["order"] == 3  # at least order 3 for Aladin Lite
    props = read_properties(out)
    assert props["hips_body"] == "moon" and props["hips_order"] == "3"
    assert props["hips_tile_format"] == "fits" and props["hips_pixel_cut"] == "-1 1"
    assert props["obs_title"] == "test map" and props["bunit"] == "K"

    image, wcs = hips_as_dask_array(str(out), level=3)
    image = np.asarray(image.compute())
    rng = np.random.default_rng(3)
    probe_lon = rng.uniform(0, 360, 200)
    probe_lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 200)))
    rows, cols = wcs.world_to_array_index(SkyCoord(probe_lon, probe_lat, unit="deg"))
    got = image[rows, cols]
    at = hp.ang2pix(nside, probe_lon, probe_lat, nest=True, lonlat=True)
    seen = lat[at] > -30
    np.testing.assert_allclose(got[seen], values[at[seen]], rtol=0, atol=1e-6)
    assert np.isnan(got[~seen]).all()  # unobserved stays blank

    moc = MOC.load(out / "Moc.fits")
    assert moc.sky_fraction == pytest.approx(keep.mean(), abs=1e-9)
    assert float(props["moc_sky_fraction"]) == pytest.approx(keep.mean(), abs=1e-6)
    inside = moc.contains_lonlat(lon=probe_lon * u_deg(), lat=probe_lat * u_deg())
    np.testing.assert_array_equal(inside, seen)
    for order in range(4):
        allsky = fits.getdata(out / f"Norder{order}" / "Allsky.fits")
        per_row = int(np.sqrt(12 * 4**order))
        assert allsky.shape == (-(-12 * 4**order // per_row) * 64, per_row * 64)
    tile = fits.getdata(out / "Norder3" / "Dir0" / "Npix0.fits")
    assert tile.shape == (64, 64) and np.isfinite(tile).all()  # the north is observed


def u_deg():
    import astropy.units as u

    return u.deg


def test_hips_products_are_checked_against_the_runs_products():
    from vaemap.maps import hips_products

    products = {"anomaly_score": {}, "latent0_mu": {}}
    assert hips_products(["all"], products) == ["anomaly_score", "latent0_mu"]
    assert hips_products(["latent0_mu"], products) == ["latent0_mu"]
    with pytest.raises(ValueError, match=r"maps\.hips: latent9_mu not among"):
        hips_products(["latent9_mu"], products)
