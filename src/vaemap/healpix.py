"""HEALPix helpers for planetary maps: NESTED indexing, tiles and pixel sizes.

All indices in vaemap are NESTED, longitudes degrees east in [0, 360) and
latitudes degrees north. Thin wrappers over healpy with the ordering explicit.
"""

from __future__ import annotations

import bisect

import healpy as hp
import numpy as np

__all__ = [
    "HEALSPARSE_MIN_NSIDE",
    "MOON_RADIUS_KM",
    "connected_regions",
    "downgrade_pairs",
    "lonlat_to_pix",
    "parent_pix",
    "pix_to_lonlat",
    "pixel_side_km",
    "sorted_pairs",
    "wrap_lon",
    "write_healsparse_map",
    "write_partial_map",
]

MOON_RADIUS_KM = 1737.4


def wrap_lon(lon_deg: np.ndarray) -> np.ndarray:
    """Longitudes wrapped into [0, 360) degrees east."""
    return np.mod(lon_deg, 360.0)


def lonlat_to_pix(nside: int, lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    """NESTED pixel index (int64) of points at (lon, lat) in degrees."""
    return hp.ang2pix(nside, np.asarray(lon_deg), np.asarray(lat_deg), nest=True, lonlat=True)


def pix_to_lonlat(nside: int, pix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (lon in [0, 360), lat) in degrees of NESTED pixels."""
    lon, lat = hp.pix2ang(nside, np.asarray(pix), nest=True, lonlat=True)
    return wrap_lon(lon), lat


def parent_pix(pix: np.ndarray, nside: int, nside_parent: int) -> np.ndarray:
    """NESTED index of the pixel at ``nside_parent`` that contains each pixel at ``nside``.

    In NESTED ordering a parent holds a contiguous block of 4**k children, so this
    is an integer shift: no geometry needed.
    """
    if nside_parent > nside:
        raise ValueError(f"nside_parent {nside_parent} is finer than nside {nside}")
    k = int(np.log2(nside)) - int(np.log2(nside_parent))
    return np.asarray(pix, dtype=np.int64) >> (2 * k)


def pixel_side_km(nside: int, radius_km: float = MOON_RADIUS_KM) -> float:
    """Approximate side of a pixel (square root of its area), kilometres."""
    return float(np.sqrt(hp.nside2pixarea(nside)) * radius_km)


def downgrade_pairs(pix: np.ndarray, values: np.ndarray, nside: int, nside_out: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Average a partial NESTED map given as (pixel, value) pairs to ``nside_out``.

    Returns the observed parent pixels (sorted, int64) and the mean of their
    finite children's values (float64): memory grows with the pairs, not with
    the sphere at ``nside``. With ``nside_out >= nside`` the pairs come back
    sorted, unchanged.
    """
    pix = np.asarray(pix, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(values)
    if nside_out >= nside:
        order = np.argsort(pix[keep], kind="stable")
        return pix[keep][order], values[keep][order]
    parents, inverse = np.unique(parent_pix(pix[keep], nside, nside_out), return_inverse=True)
    sums = np.bincount(inverse, weights=values[keep], minlength=parents.size)
    counts = np.bincount(inverse, minlength=parents.size)
    return parents, sums / counts


def sorted_pairs(pix: np.ndarray, values: np.ndarray, nside: int, where) -> tuple[
        np.ndarray, np.ndarray]:
    """The observed (pixel, value) pairs of a NESTED map at ``nside``, sorted by pixel:
    int64 pixels and float32 values, non-finite values left out. Raises naming
    ``where`` (the file being written) when a pixel is outside the sphere or
    listed twice."""
    pix = np.asarray(pix, dtype=np.int64)
    vals = np.asarray(values, dtype=np.float32)
    if pix.shape != vals.shape or pix.ndim != 1:
        raise ValueError(f"{where}: pixels {pix.shape} and values {vals.shape} must be two "
                         "equal 1-d arrays")
    keep = np.isfinite(vals)
    order = np.argsort(pix[keep], kind="stable")
    pix, vals = pix[keep][order], vals[keep][order]
    npix = hp.nside2npix(nside)
    if pix.size and (pix[0] < 0 or pix[-1] >= npix):
        raise ValueError(f"{where}: pixel indices outside 0..{npix - 1} (nside {nside})")
    if pix.size > 1 and (repeated := np.flatnonzero(np.diff(pix) == 0)).size:
        raise ValueError(f"{where}: pixel {pix[repeated[0]]} is listed twice")
    return pix, vals


def write_partial_map(
    path,
    pix: np.ndarray,
    values: np.ndarray,
    nside: int,
    *,
    column: str,
    unit: str = "",
    extra_header: dict | None = None,
    history: list[tuple[str, str]] | None = None,
) -> int:
    """Write a partial NESTED HEALPix FITS map of ``values`` at pixels ``pix`` (atomically).

    The file is the HEALPix explicit-index convention that healpy's
    ``read_map`` and every HEALPix reader take: a binary table of ``PIXEL``
    (32-bit, or 64-bit where 12·nside² needs it) and the value (float32,
    ``unit``), sorted by pixel, with ``INDXSCHM = 'EXPLICIT'``. It is built from
    the pairs alone, never a full-sphere array (an nside-8192 map of 10 M
    observed pixels needs some 200 MB, not the sphere's 3.2 GB). Non-finite
    values are left out: unlisted pixels are unobserved (``hp.UNSEEN`` when
    read back as a full map). The header carries the ordering, nside,
    ``BODY = 'MOON'``, the planetocentric east-positive longitude convention,
    units and the package version, plus any ``extra_header`` cards (keys up to
    8 characters) and ``history`` cards (``("HISTORY", text)`` pairs, e.g. the
    producing configuration). Returns the number of pixels written.
    """
    from astropy.io import fits

    from vaemap import __version__
    from vaemap.io import atomic_path

    pix, vals = sorted_pairs(pix, values, nside, path)
    npix = hp.nside2npix(nside)
    wide = npix > np.iinfo(np.int32).max
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="PIXEL", format="K" if wide else "J",
                    array=pix if wide else pix.astype(np.int32)),
        fits.Column(name=column, format="E", unit=unit or None, array=vals),
    ])
    cards = [
        ("PIXTYPE", "HEALPIX", "HEALPIX pixelisation"),
        ("ORDERING", "NESTED", "pixel ordering scheme"),
        ("NSIDE", nside, "resolution parameter"),
        ("FIRSTPIX", 0, "first pixel index (0 based)"),
        ("LASTPIX", npix - 1, "last pixel index (0 based)"),
        ("INDXSCHM", "EXPLICIT", "indexing: explicit PIXEL column"),
        ("OBJECT", "PARTIAL", "sky coverage: partial"),
        ("OBS_NPIX", int(pix.size), "number of pixels listed"),
        ("BODY", "MOON", "target body"),
        ("COORDTYP", "PLANETOCENTRIC", "latitude planetocentric, degrees north"),
        ("LONCONV", "EAST", "longitude positive east, [0, 360)"),
        ("BUNIT", unit, "unit of the map values"),
        ("PIXKM", round(pixel_side_km(nside), 3), "approximate pixel side on the Moon, km"),
        ("CREATOR", f"vaemap {__version__}", "software that wrote this map"),
    ]
    cards += [(key[:8].upper(), value) for key, value in (extra_header or {}).items()]
    for card in cards:
        table.header.append(card)
    for key, text in history or []:
        if key == "HISTORY":
            table.header.add_history(text)
        else:
            table.header.append((key, text))
    hdus = fits.HDUList([fits.PrimaryHDU(), table])
    hdus.verify("exception")
    with atomic_path(path) as tmp:
        hdus.writeto(tmp, overwrite=True, checksum=True)
    return int(pix.size)


#: Maps at this nside and finer are also written as HealSparse maps.
HEALSPARSE_MIN_NSIDE = 4096


def write_healsparse_map(path, pix: np.ndarray, values: np.ndarray, nside: int, *,
                         unit: str = "", metadata: dict | None = None,
                         nside_coverage: int | None = None) -> int:
    """Write (pixel, value) pairs of a NESTED map as a HealSparse map (atomically).

    HealSparse keeps a full-sphere coverage map at ``nside_coverage`` and
    float32 values only inside the coverage pixels that hold data, so its
    memory and file follow the observed area (Rubin's format for maps of
    10⁹-pixel spheres; read it with ``healsparse.HealSparseMap.read``). By
    default a coverage pixel holds 64 × 64 map pixels (nside / 64, at least 32).
    Non-finite values are left out. ``metadata`` (FITS keys up to 8
    characters) joins ``BODY``, ``ORDERING`` and ``BUNIT``. Returns the
    number of pixels written.
    """
    import healsparse

    from vaemap.io import atomic_path

    # checked here: healsparse's own uniqueness check copies the pixels several times
    pix, vals = sorted_pairs(pix, values, nside, path)
    if nside_coverage is None:
        nside_coverage = max(32, nside // 64)
    sparse = healsparse.HealSparseMap.make_empty(min(nside_coverage, nside), nside,
                                                 np.float32)
    sparse.update_values_pix(pix, vals, nest=True, check_unique=False)
    sparse.metadata = {"BODY": "MOON", "ORDERING": "NESTED", "BUNIT": unit,
                       **{key[:8].upper(): value for key, value in (metadata or {}).items()}}
    with atomic_path(path) as tmp:
        sparse.write(str(tmp), clobber=True)
    return int(pix.size)


def connected_regions(nside: int, pix: np.ndarray) -> tuple[int, np.ndarray]:
    """Group NESTED pixels into connected regions (8-neighbour adjacency).

    Returns ``(n_regions, label)`` with ``label[i]`` the region of ``pix[i]``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pix = np.asarray(pix, dtype=np.int64)
    if pix.size == 0:
        return 0, np.empty(0, dtype=np.int64)
    order = np.argsort(pix)
    neighbours = hp.get_all_neighbours(nside, pix, nest=True).T  # (n, 8), -1 = none
    pos = np.searchsorted(pix[order], neighbours.clip(min=0))
    pos = np.minimum(pos, pix.size - 1)
    hit = (neighbours >= 0) & (pix[order][pos] == neighbours)
    rows = np.repeat(np.arange(pix.size), 8).reshape(-1, 8)[hit]
    cols = order[pos[hit]]
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(pix.size, pix.size))
    n, label = connected_components(graph, directed=False)
    return int(n), label


def parse_tile(tile: str) -> tuple[int, int]:
    """``"NSIDE/INDEX"`` -> (nside, index) of a NESTED tile; ValueError says what is wrong."""
    try:
        nside_s, index_s = tile.split("/")
        nside, index = int(nside_s), int(index_s)
    except ValueError:
        raise ValueError(f"tile {tile!r}: expected NSIDE/INDEX, e.g. 2/17") from None
    if nside < 1 or nside & (nside - 1):
        raise ValueError(f"tile {tile!r}: nside {nside} is not a power of 2")
    if not 0 <= index < 12 * nside**2:
        raise ValueError(f"tile {tile!r}: index outside 0..{12 * nside**2 - 1}")
    return nside, index


def tile_pixel_range(tile: str, nside: int) -> tuple[int, int]:
    """The NESTED pixels ``[first, stop)`` at ``nside`` inside ``tile`` ("NSIDE/INDEX").

    In NESTED ordering a tile is one contiguous block of pixels, which is why
    steps scale out by tile: each job reads one slice of a pixel-sorted file.
    """
    tile_nside, index = parse_tile(tile)
    if tile_nside > nside:
        raise ValueError(f"tile {tile!r} is finer than the map's nside {nside}")
    per_tile = (nside // tile_nside) ** 2
    return index * per_tile, (index + 1) * per_tile


def sorted_row_range(pix, first: int, stop: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a sorted pixel column (array or HDF5 dataset) whose
    pixel lies in ``[first, stop)``, by binary search: a dataset is read a few
    elements at a time, never whole."""
    return bisect.bisect_left(pix, first), bisect.bisect_left(pix, stop)
