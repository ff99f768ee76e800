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

import healpy as hp
import numpy as np
import pytest
from conftest import REPO

from vaemap.hips import ALADIN_JS, write_hips, write_viewer_for

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
               title="anomaly score", cut=(-1.0, 1.0))
    write_hips(root / "latent0_mu", pix[lat > -60], lat[lat > -60], nside,
               title="latent 0", cut=(-60.0, 90.0))
    page = write_viewer_for(root, aladin_js=REPO / ALADIN_JS, title="test")
    assert "./aladin.js" in page.read_text() and (root / "aladin.js").exists()

    shot = tmp_path / "viewer.png"
    proc = subprocess.run(["node", str(SCREENSHOT), f"{url}/index.html", str(shot)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shown"] == "anomaly_score"  # the anomaly score is shown first
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
    assert len({tuple(c) for c in equator}) > 10
