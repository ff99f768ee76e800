"""HEALPix maps as georeferenced GeoTIFF rasters for GIS (QGIS, GDAL, ArcGIS, ISIS).

A map given as NESTED (pixel, value) pairs is sampled onto a raster in the
Moon's IAU 2015 coordinate reference systems as the PROJ database names them:
simple cylindrical (equirectangular, ``IAU_2015:30110``) and north and south
polar stereographic (``IAU_2015:30130`` / ``30135``), all on the IAU 2015
lunar sphere of radius 1737.4 km. Each raster cell takes the value of the
HEALPix pixel that holds its centre (healpy's ``ang2pix``; nearest-pixel
sampling, no smoothing), so a value in the GeoTIFF is a value of the map.
Rasters are written in strips, never as a whole-sphere array, as tiled,
deflate-compressed GeoTIFFs with a nodata value, the band's unit and
average-resampled overviews, by rasterio (GDAL).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import healpy as hp
import numpy as np

from vaemap.healpix import MOON_RADIUS_KM, pixel_side_km, sorted_pairs

__all__ = ["GRIDS", "NODATA", "RasterGrid", "raster_grid", "sample_grid", "write_geotiff"]

#: The value of cells no observed pixel covers.
NODATA = -9999.0

#: Grids by name: (IAU_2015 code, description). The polar grids reach from the
#: pole to ``POLAR_EDGE_LAT`` degrees of latitude.
GRIDS: dict[str, tuple[int, str]] = {
    "equirectangular": (30110, "simple cylindrical, clon = 0"),
    "north_polar": (30130, "north polar stereographic"),
    "south_polar": (30135, "south polar stereographic"),
}
POLAR_EDGE_LAT = 60.0
_STRIP_ROWS = 256  # rows sampled and written at a time (and the GeoTIFF's tile size)


@dataclass(frozen=True)
class RasterGrid:
    """A raster on one of :data:`GRIDS`: ``width`` × ``height`` cells of
    ``resolution_m`` metres whose top-left corner is at (``x0``, ``y0``) metres in
    the CRS ``IAU_2015:code``."""

    name: str
    code: int
    width: int
    height: int
    resolution_m: float
    x0: float
    y0: float

    @property
    def crs(self) -> str:
        return f"IAU_2015:{self.code}"

    def transform(self):
        from rasterio.transform import from_origin

        return from_origin(self.x0, self.y0, self.resolution_m, self.resolution_m)

    def lonlat(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Planetocentric longitude (east, [0, 360)) and latitude, degrees, of the
        cell centres in ``rows``, each (n_rows, width)."""
        row = np.arange(rows.start, rows.stop)[:, None] + 0.5
        col = np.arange(self.width)[None, :] + 0.5
        x = self.x0 + col * self.resolution_m
        y = self.y0 - row * self.resolution_m
        radius = MOON_RADIUS_KM * 1000.0
        if self.name == "equirectangular":
            lon = np.broadcast_to(np.degrees(x / radius), (row.size, self.width))
            lat = np.broadcast_to(np.degrees(y / radius), (row.size, self.width))
        else:  # stereographic on the sphere, scale 1 at the pole
            north = self.name == "north_polar"
            rho = np.hypot(x, y)
            colat = 2.0 * np.degrees(np.arctan(rho / (2.0 * radius)))
            lat = 90.0 - colat if north else colat - 90.0
            lon = np.degrees(np.arctan2(x, -y if north else y))
        return np.mod(lon, 360.0), lat


def raster_grid(name: str, nside: int, oversample: float = 1.0) -> RasterGrid:
    """The raster of grid ``name`` (one of :data:`GRIDS`) whose cells are as large
    as a HEALPix pixel at ``nside`` (÷ ``oversample``)."""
    if name not in GRIDS:
        raise ValueError(f"unknown raster grid {name!r}: expected one of {sorted(GRIDS)}")
    code = GRIDS[name][0]
    radius = MOON_RADIUS_KM * 1000.0
    resolution = pixel_side_km(nside) * 1000.0 / oversample
    if name == "equirectangular":
        width = math.ceil(2 * math.pi * radius / resolution)
        height = math.ceil(width / 2)
        resolution = 2 * math.pi * radius / width  # cells tile the sphere exactly
        return RasterGrid(name, code, width, height, resolution, -math.pi * radius,
                          0.5 * height * resolution)
    half = 2.0 * radius * math.tan(math.radians(90.0 - POLAR_EDGE_LAT) / 2.0)
    cells = 2 * math.ceil(half / resolution)
    return RasterGrid(name, code, cells, cells, resolution, -0.5 * cells * resolution,
                      0.5 * cells * resolution)


def sample_grid(grid: RasterGrid, rows: slice, nside: int, pix_sorted: np.ndarray,
                values_sorted: np.ndarray, fill: float = NODATA) -> np.ndarray:
    """The map's values at the centres of the cells in ``rows`` of ``grid``, float32
    (n_rows, width): each cell takes the value of the NESTED pixel at ``nside``
    holding its centre, ``fill`` where that pixel is not in ``pix_sorted`` (sorted
    pixel indices, with their ``values_sorted``)."""
    lon, lat = grid.lonlat(rows)
    cell_pix = hp.ang2pix(nside, lon.ravel(), lat.ravel(), nest=True, lonlat=True)
    where = np.searchsorted(pix_sorted, cell_pix).clip(max=max(pix_sorted.size - 1, 0))
    hit = pix_sorted[where] == cell_pix if pix_sorted.size else np.zeros(cell_pix.size, bool)
    out = np.full(cell_pix.size, fill, dtype=np.float32)
    out[hit] = values_sorted[where[hit]]
    return out.reshape(lon.shape)


def write_geotiff(path: str | Path, pix: np.ndarray, values: np.ndarray, nside: int,
                  grid: str, *, unit: str = "", description: str = "",
                  tags: Mapping[str, str] | None = None, oversample: float = 1.0) -> RasterGrid:
    """Write the NESTED map (``pix``, ``values``) at ``nside`` as a GeoTIFF on ``grid``
    (atomically): float32, nodata :data:`NODATA`, the band's ``unit`` and
    ``description``, ``tags`` as GDAL metadata, overviews by averaging.
    Non-finite values count as unobserved. Returns the grid written."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from vaemap.io import atomic_path

    raster = raster_grid(grid, nside, oversample)
    pix_sorted, values_sorted = sorted_pairs(pix, values, nside, path)
    block = _STRIP_ROWS if min(raster.width, raster.height) >= _STRIP_ROWS else None
    profile = {"driver": "GTiff", "width": raster.width, "height": raster.height, "count": 1,
               "dtype": "float32", "crs": raster.crs, "transform": raster.transform(),
               "nodata": NODATA, "compress": "deflate", "predictor": 3,
               "BIGTIFF": "IF_SAFER"}
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            for start in range(0, raster.height, _STRIP_ROWS):
                rows = slice(start, min(start + _STRIP_ROWS, raster.height))
                strip = sample_grid(raster, rows, nside, pix_sorted, values_sorted)
                dst.write(strip, 1, window=Window(0, start, raster.width, strip.shape[0]))
            dst.units = (unit,)
            dst.descriptions = (description,)
            # GeoTIFF keys hold EPSG codes only; the IAU code goes in the metadata
            dst.update_tags(BODY="MOON", CRS=raster.crs, HEALPIX_NSIDE=str(nside),
                            HEALPIX_ORDERING="NESTED",
                            GRID=f"{grid} ({GRIDS[grid][1]})", **dict(tags or {}))
            factors = [f for f in (2, 4, 8, 16, 32) if min(raster.width, raster.height) // f >= 8]
            if factors:
                dst.build_overviews(factors, Resampling.average)
                dst.update_tags(ns="rio_overview", resampling="average")
    return raster
