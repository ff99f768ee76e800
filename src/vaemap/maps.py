"""Map products: partial HEALPix FITS and PNG renderings of every per-pixel product.

One FITS file per product (each latent's μ and σ, reconstruction errors,
anomaly score, observation count), NESTED, with units, body and provenance in
the header; one PNG per product (Mollweide, geographic orientation, robust
percentile colour limits, unobserved pixels in grey).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vaemap.healpix import write_partial_map
from vaemap.io import atomic_path

__all__ = ["map_products", "render_png", "run"]

log = logging.getLogger(__name__)


def map_products(latent_dim: int) -> dict[str, dict[str, str]]:
    """Names, titles and units of the map products for ``latent_dim`` latents.

    The names are the file stems, ``<name>.fits`` and ``<name>.png``.
    """
    products: dict[str, dict[str, str]] = {}
    for k in range(latent_dim):
        products[f"latent{k}_mu"] = {"title": f"latent {k}: posterior mean μ", "unit": "",
                                     "fits": f"latent {k} posterior mean (mu)"}
        products[f"latent{k}_sigma"] = {"title": f"latent {k}: posterior σ", "unit": "",
                                        "fits": f"latent {k} posterior std (sigma)"}
    products["recon_error"] = {"title": "reconstruction error (RMS)", "unit": "K",
                               "fits": "reconstruction error, RMS over observed bins"}
    products["recon_l1"] = {"title": "reconstruction error (L1)", "unit": "K",
                            "fits": "reconstruction error, mean abs over observed bins"}
    products["anomaly_score"] = {"title": "anomaly score (robust z of L1 error)", "unit": "",
                                 "fits": "anomaly score, robust z of the L1 error"}
    products["n_obs"] = {"title": "observations per pixel", "unit": "count",
                         "fits": "accepted observations per pixel"}
    return products


def _values(h5: h5py.File, name: str) -> np.ndarray:
    if name.startswith("latent"):
        k = int(name[len("latent"):].split("_")[0])
        if name.endswith("_mu"):
            return h5["mu"][:, k]
        return np.exp(0.5 * h5["logvar"][:, k])
    return h5[name][...].astype(np.float32)


def render_png(path: str | Path, pix: np.ndarray, values: np.ndarray, nside: int, *,
               title: str, unit: str, cmap: str = "viridis",
               percentiles: tuple[float, float] = (1.0, 99.0)) -> None:
    """Mollweide PNG of a partial NESTED map (geographic: east to the right)."""
    import healpy as hp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = np.full(hp.nside2npix(nside), hp.UNSEEN)
    full[pix] = values
    finite = values[np.isfinite(values)]
    lo, hi = (np.percentile(finite, percentiles) if finite.size else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0
    hp.mollview(full, nest=True, flip="geo", title=title, unit=unit, min=lo, max=hi,
                cmap=cmap, badcolor="lightgray", cbar=True)
    fig = plt.gcf()
    fig.set_size_inches(8.5, 5.0)
    hp.graticule(dpar=30, dmer=60, alpha=0.4)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def run(latents: str | Path, outdir: str | Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``<name>.fits`` and ``<name>.png`` for every product of ``latents.h5``."""
    outdir = Path(outdir)
    params = config["maps"]
    written = []
    with h5py.File(latents, "r") as h5:
        nside = int(h5.attrs["nside"])
        latent_dim = int(h5["mu"].shape[1])
        pix = h5["pix"][...]
        for name, meta in map_products(latent_dim).items():
            values = _values(h5, name)
            header = {"PRODUCT": meta["fits"], "LATENTS": latent_dim,
                      "BETA": float(config["model"]["beta"])}
            write_partial_map(outdir / f"{name}.fits", pix, values, nside,
                              column=name.upper(), unit=meta["unit"], extra_header=header)
            render_png(outdir / f"{name}.png", pix, values, nside, title=meta["title"],
                       unit=meta["unit"], cmap=params["cmap"],
                       percentiles=tuple(params["percentiles"]))
            written.append(name)
    log.info("wrote %d map products to %s", len(written), outdir)
    return {"products": written, "outdir": str(outdir)}
