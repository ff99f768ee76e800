"""The HiPS viewer page in a real browser: Debian's Chromium, headless, driven by
playwright-core (`viewer/screenshot.mjs`). It needs Node.js, `npm ci --prefix
viewer` (Aladin Lite, playwright-core) and `chromium`; `.ci/run` installs them,
and where one is missing the test says which and skips."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from html.parser import HTMLParser

import healpy as hp
import numpy as np
import pytest
from conftest import REPO

from vaemap.hips import ALADIN_JS, read_properties, write_hips, write_viewer, write_viewer_for

SCREENSHOT = REPO / "viewer" / "screenshot.mjs"
PLAYWRIGHT = REPO / "viewer" / "node_modules" / "playwright-core"


def viewer_unavailable() -> str | None:
    """Why the browser test cannot run here, or None."""
    if shutil.which("node") is None:
        return "no Node.js (node) on PATH"
    if not (REPO / ALADIN_JS).exists() or not PLAYWRIGHT.exists():
        return "Aladin Lite / playwright-core not installed: run `npm ci --prefix viewer`"
    if shutil.which("chromium") is None:
        return "no Chromium: install the distribution's `chromium` package"
    return None


@pytest.fixture
def served(tmp_path):
    """A local HTTP server over tmp_path/hips (loopback only); yields its URL."""
    root = tmp_path / "hips"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


#: Titles a hostile HiPS or command line might carry: markup, a script end, an
#: entity, quotes, a placeholder's name and a line break.
HOSTILE_TITLE = """x</title><script>window.pwned=1</script>&amp;"'__PRODUCTS__"""
HOSTILE_OBS = """y</script><script>window.pwned=2</script><!-- \u2028 ${1}\nhips_order = 99"""


class _Elements(HTMLParser):
    """The page's elements: how many <script> elements and the <title>'s text."""

    def __init__(self):
        super().__init__()
        self.scripts, self.title, self._in = [], "", None

    def handle_starttag(self, tag, attrs):
        self._in = tag
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "title":
            self.title += data
        elif self._in == "script":
            self.scripts[-1] += data


def test_viewer_page_escapes_every_value_it_embeds(tmp_path):
    """A hostile --title and a HiPS whose properties carry a hostile title reach the
    page as text: one <script> element (ours), the title shown as given, the
    product list read back unchanged, and no properties key injected by a line
    break."""
    aladin = tmp_path / "aladin.js"
    aladin.write_text("export default {};\n")
    nside = 8
    pix = np.arange(hp.nside2npix(nside))
    root = tmp_path / "hips"
    write_hips(root / "anomaly_score", pix, pix.astype(float), nside, title=HOSTILE_OBS,
               cut=(0.0, 1.0))
    props = read_properties(root / "anomaly_score")
    assert props["hips_order"] != "99" and "\n" not in props["obs_title"]
    page = write_viewer_for(root, aladin_js=aladin, title=HOSTILE_TITLE).read_text()
    parsed = _Elements()
    parsed.feed(page)
    assert len(parsed.scripts) == 1  # ours: the titles did not open or close one
    assert parsed.title == f"vaemap: {HOSTILE_TITLE}"
    listed = json.loads(parsed.scripts[0].split("const products = ", 1)[1].split(";\n", 1)[0])
    assert listed[0]["title"] == props["obs_title"] and "</script>" in listed[0]["title"]
    assert "</script><script>" not in page and "<!--" not in page.split("<script", 1)[1]
    # a placeholder's name in a value is not expanded again
    write_viewer(root, [{"name": "a", "title": "__TITLE__", "unit": "", "cut": [0, 1]}],
                 title="__PRODUCTS__", aladin_js=aladin)
    parsed = _Elements()
    parsed.feed((root / "index.html").read_text())
    assert parsed.title == "vaemap: __PRODUCTS__" and '"title": "__TITLE__"' in parsed.scripts[0]


@pytest.mark.slow
def test_viewer_page_loads_tiles_and_shows_the_map(served, tmp_path):
    reason = viewer_unavailable()
    if reason:
        pytest.skip(reason)
    root, url = served
    nside = 32
    pix = np.arange(hp.nside2npix(nside))
    lon, lat = hp.pix2ang(nside, pix, nest=True, lonlat=True)
    # two products: bands of longitude, and a polar cap missing (unobserved)
    write_hips(root / "anomaly_score", pix, np.sin(np.radians(4 * lon)), nside,
               title=f"anomaly score {HOSTILE_OBS}", cut=(-1.0, 1.0))
    write_hips(root / "latent0_mu", pix[lat > -60], lat[lat > -60], nside,
               title="latent 0", cut=(-60.0, 90.0))
    page = write_viewer_for(root, aladin_js=REPO / ALADIN_JS, title=HOSTILE_TITLE)
    assert "./aladin.js" in page.read_text() and (root / "aladin.js").exists()

    shot = tmp_path / "viewer.png"
    proc = subprocess.run(["node", str(SCREENSHOT), f"{url}/index.html", str(shot)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shown"] == "anomaly_score"  # the anomaly score is shown first
    assert result["pwned"] is None  # no injected script ran
    assert result["title"] == f"vaemap: {HOSTILE_TITLE}"
    assert result["tiles"] > 0, result  # FITS tiles were fetched from our server
    # only the network errors of the closed sandbox (Aladin asks its home server
    # for a list of surveys), no error of the page itself
    assert not [e for e in result["errors"]
                if "ERR_NAME_NOT_RESOLVED" not in e and "Failed to fetch" not in e
                and "status of 404" not in e and "alasky" not in e], result["errors"]

    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    body = image[150:550, 200:800]  # the middle of the Mollweide ellipse
    assert body.std() > 20, "the map area is blank"
    # the longitude bands show as several distinct colours along the equator
    equator = body[body.shape[0] // 2, :, :].round(-1)
    # (more than a flat fill; Aladin may still be drawing from the low-order Allsky)
    assert len({tuple(c) for c in equator}) > 5
