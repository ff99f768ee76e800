"""HEALPix maps as HiPS tile sets with a coverage MOC, and an Aladin Lite page.

A HiPS (IVOA Hierarchical Progressive Survey) is what Aladin and Aladin Lite
browse: FITS tiles of HEALPix pixels at every order down to the map's, an
``Allsky`` mosaic of the coarsest orders, a ``properties`` file and a MOC of
the covered area. Each product of a map becomes one HiPS directory:

* FITS tiles of 64 × 64 pixels, written straight from the (pixel, value)
  pairs (a HiPS tile *is* a block of HEALPix pixels), in the pixel order that
  astropy's ``reproject.hips`` gives its tiles (read off once);
* ``Norder<k>/Allsky.fits`` for the orders up to 3, each tile reduced to at
  most 64 × 64 (the mosaic Aladin shows before fetching tiles);
* ``Moc.fits``, the observed pixels as a Multi-Order Coverage map (mocpy);
* ``properties`` naming the Moon as the body (``hips_body = moon``), the
  unit and the colour cut. Longitude and latitude are planetocentric; the
  HiPS frame is the survey frame HiPS clients know (``equatorial``, RA =
  longitude east, Dec = latitude).

:func:`write_viewer` adds a self-contained ``index.html`` built on Aladin Lite
(the ``aladin-lite`` npm package, installed with ``npm ci --prefix viewer``)
that switches between the products; serve the directory with
``python -m http.server -d results/maps/hips`` and open the printed address.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
from astropy.wcs import WCS

from vaemap.healpix import downgrade_pairs, sorted_pairs
from vaemap.io import atomic_dir, atomic_path, scratch_dir
from vaemap.rasters import raster_grid, sample_grid

__all__ = ["ALADIN_JS", "HIPS_TILE_WIDTH", "write_hips", "write_viewer"]

#: Width of a HiPS tile in pixels (a tile at order k holds pixels of order k + 6).
HIPS_TILE_WIDTH = 64
#: Where `npm ci --prefix viewer` puts Aladin Lite, relative to the repository.
ALADIN_JS = Path("viewer") / "node_modules" / "aladin-lite" / "dist" / "aladin.js"
_ALLSKY_TILE = 64
#: The coarsest deepest order of a HiPS: Aladin Lite shows nothing below order 3.
MIN_HIPS_ORDER = 3


@functools.cache
def tile_pixel_order(tile_width: int = HIPS_TILE_WIDTH) -> np.ndarray:
    """(tile_width, tile_width) int array: which of a tile's 4^m children (NESTED,
    m = log2 tile_width) each array element of a HiPS FITS tile holds.

    The HiPS standard orders a tile's pixels the same way in every tile of every
    order. The ordering is read off reproject's own tiles, once: astropy's
    reproject writes the order-0 tiles of an image whose every cell holds the
    index of its HEALPix pixel, and all twelve must agree.
    """
    from astropy.io import fits
    from reproject import reproject_interp
    from reproject.hips import reproject_to_hips

    m = hp.nside2order(tile_width)
    grid = raster_grid("equirectangular", 2**m, oversample=8.0)
    index = np.arange(12 * 4**m)
    image = sample_grid(grid, slice(0, grid.height), 2**m, index,
                        index.astype(np.float32), fill=np.nan)
    with scratch_dir("vaemap-hips-order-") as tmp:
        out = tmp / "hips"
        reproject_to_hips((image, _car_wcs(grid)), coord_system_out="equatorial",
                          reproject_function=reproject_interp, output_directory=str(out),
                          level=0, tile_size=tile_width, order="nearest-neighbor")
        tiles = [fits.getdata(tile_path(out, 0, base)) - base * 4.0**m for base in range(12)]
    first = tiles[0].astype(np.int64)
    # (cells at the image's seam, longitude 180, may be blank: compare the rest)
    if not np.array_equal(np.sort(first.ravel()), np.arange(4**m)) or not all(
            np.array_equal(t[np.isfinite(t)], first[np.isfinite(t)]) for t in tiles):
        raise RuntimeError("HiPS tiles of reproject do not share one pixel ordering: "
                           "cannot write tiles directly")
    return first


def _car_wcs(grid) -> WCS:
    """The celestial WCS of an equirectangular :class:`~vaemap.rasters.RasterGrid`
    (longitude east as RA to the right, latitude as Dec up, degrees)."""
    step_deg = 360.0 / grid.width
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---CAR", "DEC--CAR"]
    wcs.wcs.crval = [0.0, 0.0]
    wcs.wcs.crpix = [grid.width / 2 + 0.5, grid.height / 2 + 0.5]
    wcs.wcs.cdelt = [step_deg, -step_deg]
    return wcs


def write_hips(outdir: str | Path, pix: np.ndarray, values: np.ndarray, nside: int, *,
               title: str, unit: str = "", max_order: int = 11,
               cut: tuple[float, float] | None = None) -> dict:
    """Write the NESTED map (``pix``, ``values``) at ``nside`` as a HiPS in ``outdir``
    (replaced as a whole: built beside it, then renamed).

    Tiles are written straight from the pairs: a tile of order k holds the
    map's pixels of order k + 6 (64 × 64, in the HiPS ordering of
    :func:`tile_pixel_order`), averaged from finer pixels or repeated from
    coarser ones, NaN where unobserved; only tiles with data are written. The
    deepest order is the map's, at most ``max_order`` + 6 pixels and at least
    order 3 tiles (Aladin Lite draws the body from order 3). ``cut`` (default:
    the 1st and 99th percentiles) is the colour range clients start with.
    Returns the HiPS's order, tile count and observed sky fraction.
    """
    from astropy.io import fits
    from mocpy import MOC

    outdir = Path(outdir)
    pix, values = sorted_pairs(pix, values, nside, outdir)
    m = hp.nside2order(HIPS_TILE_WIDTH)
    map_order = hp.nside2order(nside)
    level = max(min(map_order, max_order + m) - m, MIN_HIPS_ORDER)
    inside = tile_pixel_order()
    lo, hi = cut if cut is not None else (
        tuple(float(v) for v in np.percentile(values, [1.0, 99.0])) if values.size
        else (0.0, 1.0))

    with atomic_dir(outdir) as building:
        tiles = 0
        for order in range(level + 1):
            pixel_order = order + m
            if pixel_order <= map_order:  # average the map's pixels into this order's
                cells, cell_values = downgrade_pairs(pix, values, nside, 2**pixel_order)
            else:  # a finer HiPS pixel repeats its parent's value
                shift = 2 * (pixel_order - map_order)
                cells = (pix[:, None] << shift) + np.arange(1 << shift)[None, :]
                cells, cell_values = cells.ravel(), np.repeat(values, 1 << shift)
            for index in np.unique(cells >> (2 * m)):
                start = np.searchsorted(cells, index << (2 * m))
                stop = np.searchsorted(cells, (index + 1) << (2 * m))
                block = np.full(4**m, np.nan, dtype=np.float32)
                block[cells[start:stop] - (index << (2 * m))] = cell_values[start:stop]
                path = tile_path(building, order, int(index))
                path.parent.mkdir(parents=True, exist_ok=True)
                header = fits.Header([("ORDER", order), ("NPIX", int(index)), ("BUNIT", unit)])
                fits.PrimaryHDU(block[inside], header=header).writeto(path)
                tiles += 1
        for allsky_order in range(min(level, 3) + 1):
            write_allsky(building, allsky_order)
        moc = MOC.from_healpix_cells(pix, np.full(pix.size, map_order, dtype=np.uint8),
                                     map_order)
        moc.save(str(building / "Moc.fits"), format="fits", overwrite=True)
        sky_fraction = float(moc.sky_fraction)
        properties = {
            "creator_did": f"ivo://vaemap/P/moon/{outdir.name}",
            "obs_title": title,
            "obs_description": f"{title}; planetocentric longitude east (RA) and latitude (Dec) "
                               "on the Moon",
            "dataproduct_type": "image",
            "hips_version": "1.4",
            "hips_builder": "vaemap",
            "hips_release_date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "hips_status": "public master clonableOnce",
            "hips_body": "moon",
            "hips_frame": "equatorial",
            "hips_order": level,
            "hips_order_min": 0,
            "hips_tile_width": HIPS_TILE_WIDTH,
            "hips_tile_format": "fits",
            "hips_pixel_bitpix": -32,
            "hips_pixel_cut": f"{lo:.6g} {hi:.6g}",
            "hips_initial_fov": 180,
            "hips_initial_ra": 0,
            "hips_initial_dec": 0,
            "moc_sky_fraction": f"{sky_fraction:.6f}",
            "bunit": unit,
        }
        # one line per key: a line break in a user's title or unit must not start a
        # key of its own (the format has no quoting), so control characters become spaces
        (building / "properties").write_text(
            "".join(f"{key:<20} = {_one_line(value)}\n" for key, value in properties.items()),
            encoding="utf-8")
    return {"order": level, "tiles": tiles, "sky_fraction": sky_fraction}


def tile_path(hips: Path, order: int, index: int) -> Path:
    """Where a HiPS keeps tile ``index`` of ``order`` (directories of 10,000 tiles)."""
    return hips / f"Norder{order}" / f"Dir{index // 10000 * 10000}" / f"Npix{index}.fits"


def write_allsky(hips: Path, order: int) -> Path:
    """``Norder<order>/Allsky.fits``: every tile of ``order`` reduced to at most 64 ×
    64 pixels (block means, NaN where no tile), tile ``i`` at column ``i mod n``
    and row ``i div n`` from the top of the mosaic, n = ⌊√(12·4^order)⌋ tiles
    per row, FITS rows bottom-up as in the tiles themselves."""
    from astropy.io import fits

    n_tiles = 12 * 4**order
    per_row = math.isqrt(n_tiles)
    rows = -(-n_tiles // per_row)
    size = min(_ALLSKY_TILE, HIPS_TILE_WIDTH)
    mosaic = np.full((rows * size, per_row * size), np.nan, dtype=np.float32)
    factor = HIPS_TILE_WIDTH // size
    for index in range(n_tiles):
        path = tile_path(hips, order, index)
        if not path.exists():
            continue
        tile = fits.getdata(path).astype(np.float32)
        small = tile.reshape(size, factor, size, factor).mean(axis=(1, 3))
        row, col = divmod(index, per_row)
        top = mosaic.shape[0] - (row + 1) * size  # row 0 of the mosaic is its top
        mosaic[top:top + size, col * size:(col + 1) * size] = small
    out = hips / f"Norder{order}" / "Allsky.fits"
    out.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(mosaic).writeto(out, overwrite=True)
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vaemap: __TITLE__</title>
<style>
  html, body { margin: 0; height: 100%; font-family: sans-serif; background: #111; color: #eee; }
  #bar { padding: 6px 10px; }
  #aladin { width: 100%; height: calc(100% - 40px); }
  select { font-size: 14px; }
</style>
</head>
<body>
<div id="bar">
  <label>Map <select id="product"></select></label>
  <span id="info"></span>
</div>
<div id="aladin"></div>
<script type="module">
// Self-contained: Aladin Lite (aladin.js) and the tiles are served from this
// directory, so the page works offline (Aladin Lite still asks its home server
// for its list of sky surveys when it can reach it).
import A from "./aladin.js";
const products = __PRODUCTS__;
await A.init;
function hips(p) {  // one product's HiPS, coloured between its cuts
  return A.imageHiPS("./" + p.name, {
    name: p.title, imgFormat: "fits", colormap: "viridis", stretch: "linear",
    minCut: p.cut[0], maxCut: p.cut[1],
  });
}
const aladin = A.aladin("#aladin", {
  survey: hips(products[0]), projection: "MOL", fov: 360, target: "0 0", cooFrame: "ICRSd",
  showCooGrid: true, showReticle: false, showLayersControl: false,
  showFullscreenControl: false, showGotoControl: false, showFrame: false,
  showProjectionControl: false, showZoomControl: false, showShareControl: false,
  showSimbadPointerControl: false, showCooGridControl: false, showContextMenu: false,
});
const select = document.getElementById("product");
function show(name) {
  const p = products.find((q) => q.name === name);
  aladin.setBaseImageLayer(hips(p));
  document.getElementById("info").textContent =
    ` ${p.title}${p.unit ? " [" + p.unit + "]" : ""}, colours ${p.cut[0].toPrecision(3)}` +
    ` to ${p.cut[1].toPrecision(3)}` +
    " (longitude east = RA, latitude = Dec)";
  window.vaemapShown = p.name;
}
for (const p of products) {
  const option = document.createElement("option");
  option.value = p.name; option.textContent = p.title;
  select.appendChild(option);
}
select.addEventListener("change", () => show(select.value));
show(products[0].name);
</script>
</body>
</html>
"""


def write_viewer(hips_root: str | Path, products: Sequence[Mapping], *, title: str,
                 aladin_js: str | Path) -> Path:
    """Write ``index.html`` and a copy of Aladin Lite's ``aladin.js`` into
    ``hips_root``, the directory holding one HiPS per product. ``products`` are
    ``{"name", "title", "unit", "cut": [lo, hi]}`` (the first is shown first).
    Returns the page's path."""
    hips_root = Path(hips_root)
    aladin_js = Path(aladin_js)
    if not aladin_js.exists():
        raise FileNotFoundError(
            f"{aladin_js}: Aladin Lite is not installed; run `npm ci --prefix viewer` in the "
            "vaemap checkout (it installs the aladin-lite npm package)")
    if not products:
        raise ValueError("write_viewer: no products to show")
    shutil.copyfile(aladin_js, hips_root / "aladin.js")
    values = {"__TITLE__": html.escape(str(title), quote=True),
              "__PRODUCTS__": script_json([dict(p) for p in products])}
    # one pass, so a value that holds a placeholder's name is never expanded again
    page = re.sub("__TITLE__|__PRODUCTS__", lambda m: values[m.group(0)], _PAGE)
    path = hips_root / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _one_line(value: Any) -> str:
    """``value`` as text with every control character (line breaks included) a space."""
    return re.sub(r"[\x00-\x1f\x7f\u2028\u2029]", " ", str(value))


def script_json(value: Any) -> str:
    """``value`` as JSON safe inside an HTML ``<script>`` element: ``<``, ``>`` and
    ``&`` are written as ``\\u`` escapes (so no ``</script>`` or ``<!--`` can end
    or open anything), as is every non-ASCII character (``json.dumps``' default,
    which covers the line separators U+2028/9); JSON and JavaScript read them
    back as the same characters. Everything a user supplies (titles from
    ``--title`` or a HiPS ``properties`` file) reaches the page only this way or
    through :func:`html.escape`."""
    text = json.dumps(value, ensure_ascii=True)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text


def read_properties(hips: str | Path) -> dict[str, str]:
    """A HiPS's ``properties`` file as a dict of strings."""
    out = {}
    for line in (Path(hips) / "properties").read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def write_viewer_for(hips_root: str | Path, *, aladin_js: str | Path,
                     title: str = "vaemap maps") -> Path:
    """:func:`write_viewer` for every HiPS under ``hips_root`` (its subdirectories
    with a ``properties`` file), described by their properties; the anomaly
    score first when there is one."""
    hips_root = Path(hips_root)
    products = []
    for props_path in sorted(hips_root.glob("*/properties")):
        props = read_properties(props_path.parent)
        lo, hi = (float(v) for v in props["hips_pixel_cut"].split())
        products.append({"name": props_path.parent.name, "title": props["obs_title"],
                         "unit": props.get("bunit", ""), "cut": [lo, hi]})
    if not products:
        raise FileNotFoundError(f"{hips_root}: no HiPS (no */properties) to show; list "
                                "products in maps.hips and run the maps step")
    products.sort(key=lambda p: p["name"] != "anomaly_score")
    return write_viewer(hips_root, products, title=title, aladin_js=aladin_js)
