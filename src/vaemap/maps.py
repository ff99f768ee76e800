"""Map products: partial HEALPix FITS and PNG renderings of every per-pixel product.

One FITS file per product (each latent's μ and σ, reconstruction errors,
anomaly score, observation count), NESTED, with units, body and provenance in
the header; one PNG per product (Mollweide, geographic orientation, robust
percentile colour limits, unobserved pixels in grey).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vaemap.figures import pyplot, save_figure
from vaemap.healpix import (
    HEALSPARSE_MIN_NSIDE,
    downgrade_pairs,
    write_healsparse_map,
    write_partial_map,
)
from vaemap.hips import write_hips
from vaemap.io import atomic_path
from vaemap.products import (
    LATENTS,
    PROFILES,
    ProductError,
    check_finite,
    check_pixels,
    map_products,
    open_product,
    recorded_checksum,
)
from vaemap.rasters import write_geotiff
from vaemap.stats import ICA_BLOCK_ROWS, IcaRotation, ica_components, ica_sample

__all__ = ["MAP_PARTS", "anomaly_catalogue", "latent_traversal", "render_png", "run"]

log = logging.getLogger(__name__)


class _IcaColumns:
    """The independent components of ``latents.h5``'s ``mu`` (n, latent_dim), one
    column at a time (``ica[:, k]``): the rotation evaluate scores as "VAE +
    ICA" (:func:`vaemap.stats.ica_components`). A map small enough to be fitted
    whole is read whole; a larger one is fitted on its seeded sample's rows and
    rotated block by block, so the job holds one column of the map, not every
    latent."""

    def __init__(self, mu: h5py.Dataset):
        self.mu, n = mu, int(mu.shape[0])
        sample = ica_sample(n)
        self.full = self.rotation = None
        if sample is None:
            self.full = ica_components(mu[...].astype(np.float64))
            return
        rows = []
        for a in range(0, n, ICA_BLOCK_ROWS):
            inside = sample[(sample >= a) & (sample < a + ICA_BLOCK_ROWS)] - a
            rows.append(mu[a:a + ICA_BLOCK_ROWS][inside])
        self.rotation = IcaRotation.fit(np.concatenate(rows))

    def __getitem__(self, key: tuple[slice, int]) -> np.ndarray:
        _, column = key
        if self.full is not None:
            return self.full[:, column]
        n = int(self.mu.shape[0])
        out = np.empty(n, np.float32)  # what _values makes of it: one cast, early or late
        for a in range(0, n, ICA_BLOCK_ROWS):
            out[a:a + ICA_BLOCK_ROWS] = self.rotation.transform(
                self.mu[a:a + ICA_BLOCK_ROWS])[:, column]
        return out


def _values(h5: h5py.File, source: Mapping[str, Any], ica: _IcaColumns | None = None
            ) -> np.ndarray:
    """A map product's values, (n,) float32, from where its ``source`` says
    (:func:`vaemap.products.map_products`)."""
    data = ica if source["dataset"] == "ica" else h5[source["dataset"]]
    column = source.get("column")
    values = data[:, column] if column is not None else data[...]
    if source.get("transform") == "sigma":
        values = np.exp(0.5 * values)
    return np.asarray(values, dtype=np.float32)


def _colour_limits(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo, hi = (np.percentile(finite, percentiles) if finite.size else (0.0, 1.0))
    return float(lo), float(hi if hi > lo else lo + 1.0)


#: The finest nside a PNG is drawn at (maps finer than it are averaged to it).
DISPLAY_NSIDE = 1024


def hips_products(requested: list[str], products: Mapping[str, Any]) -> list[str]:
    """The products of ``maps.hips`` (``["all"]``: every one), checked against this
    run's ``products``."""
    if requested == ["all"]:
        return list(products)
    unknown = sorted(set(requested) - set(products))
    if unknown:
        raise ValueError(f"maps.hips: {', '.join(unknown)} not among this run's map "
                         f"products ({', '.join(products)}, or all)")
    return list(requested)


def _graticule_labels(step_lat: int, step_lon: int) -> None:
    """Latitude labels along the central meridian and longitude labels along the
    equator of the current Mollweide panel (degrees, east positive)."""
    import healpy as hp
    from matplotlib import patheffects

    # A white halo keeps the labels readable on any colour of the map.
    text = {"lonlat": True, "fontsize": 8, "color": "black",
            "path_effects": [patheffects.withStroke(linewidth=2.5, foreground="white")]}
    for lat in range(-90 + step_lat, 90, step_lat):
        hp.projtext(0.0, lat, f"{lat:+d}°" if lat else "0°", ha="left", va="bottom", **text)
    for lon in range(-180 + step_lon, 180, step_lon):
        if lon:
            hp.projtext(lon, 0.0, f"{lon % 360:d}°E", ha="center", va="top", **text)


def render_png(path: str | Path, pix: np.ndarray, values: np.ndarray, nside: int, *,
               title: str, unit: str, cmap: str = "viridis",
               percentiles: tuple[float, float] = (1.0, 99.0),
               region: Mapping[str, Any] | None = None) -> None:
    """Four views of a partial NESTED map in one PNG, with one labelled colour bar.

    Top: the globe (Mollweide, east to the right, graticule every 30° with its
    latitudes and longitudes written on it); bottom: the north and south polar
    caps (orthographic, graticule every 15° of latitude from the pole) and a
    cartesian zoom on ``region`` (``{"name", "lon": [min, max], "lat": [min,
    max]}``, degrees). Every panel shares the colour scale, limited to the
    ``percentiles`` of the observed values (values beyond are drawn at the
    ends); pixels without a value (unobserved, or no profile kept) are grey, as
    the legend says.
    """
    import healpy as hp
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    # A figure shows no more than ~1000 pixels across the globe: draw from the
    # map averaged to at most DISPLAY_NSIDE, so a full-sphere array stays small
    # whatever the map's own nside.
    shown, shown_values = downgrade_pairs(pix, values, nside, min(nside, DISPLAY_NSIDE))
    full = np.full(hp.nside2npix(min(nside, DISPLAY_NSIDE)), hp.UNSEEN)
    full[shown] = shown_values
    lo, hi = _colour_limits(values, percentiles)
    # One colour bar for the figure (below), not healpy's per panel: its ticks
    # are only the limits, and under the globe it collides with the pole titles.
    style = {"nest": True, "flip": "geo", "min": lo, "max": hi, "cmap": cmap,
             "badcolor": "lightgray", "cbar": False}
    fig = plt.figure(figsize=(11.0, 9.5))
    # healpy redraws the whole figure after every panel and graticule (seven
    # times); only the saved image needs drawing, which halves the time per map.
    fig.canvas.draw_idle = lambda *args, **kwargs: None
    hp.mollview(full, fig=fig.number, sub=(2, 1, 1), title="", margins=(0.01, 0.04, 0.01, 0.06),
                **style)
    hp.graticule(dpar=30, dmer=30, alpha=0.4)
    _graticule_labels(30, 60)
    fig.suptitle(title, fontsize=14, y=0.985)
    hp.orthview(full, fig=fig.number, sub=(2, 3, 4), rot=(0, 90, 0), half_sky=True,
                title="north pole (15° circles)", margins=(0.01, 0.08, 0.01, 0.02), **style)
    hp.graticule(dpar=15, dmer=30, alpha=0.4)
    hp.orthview(full, fig=fig.number, sub=(2, 3, 5), rot=(0, -90, 0), half_sky=True,
                title="south pole (15° circles)", margins=(0.01, 0.08, 0.01, 0.02), **style)
    hp.graticule(dpar=15, dmer=30, alpha=0.4)
    if region is not None:
        lon0, lon1 = region["lon"]
        centre = 0.5 * (lon0 + lon1)
        hp.cartview(full, fig=fig.number, sub=(2, 3, 6), rot=(centre, 0, 0),
                    lonra=[lon0 - centre, lon1 - centre], latra=list(region["lat"]),
                    title=f"{region['name']} (lon {lon0:g}..{lon1:g}, lat "
                          f"{region['lat'][0]:g}..{region['lat'][1]:g}; 10° grid)",
                    margins=(0.01, 0.08, 0.01, 0.02), **style)
        hp.graticule(dpar=10, dmer=10, alpha=0.4)
    image = next(im for ax in fig.axes for im in ax.get_images())
    bar = fig.colorbar(image, cax=fig.add_axes((0.2, 0.045, 0.6, 0.022)),
                       orientation="horizontal", extend="both")
    ticks = MaxNLocator(nbins=6).tick_values(lo, hi)
    bar.set_ticks(ticks[(ticks >= lo) & (ticks <= hi)])
    bar.formatter.set_powerlimits((-3, 4))  # scientific notation only when needed
    bar.set_label(f"{title} [{unit}]" if unit else title)
    fig.legend(handles=[Patch(facecolor="lightgray", edgecolor="0.5",
                              label="no value (unobserved or rejected)")],
               loc="lower right", bbox_to_anchor=(0.995, 0.005), fontsize=8, frameon=False)
    save_figure(fig, path, dpi=90)


def anomaly_catalogue(pix: np.ndarray, score: np.ndarray, nside: int, threshold: float):
    """Connected regions of anomalous pixels as an astropy Table, strongest first.

    Pixels with ``score > threshold`` are linked to their (up to 8) HEALPix
    neighbours that are anomalous too; each connected group is one region,
    with the score-weighted centre (lon, lat in degrees), area (km²), pixel
    count, peak and mean score, and the pixel of the peak.
    """
    import astropy.units as u
    import healpy as hp
    from astropy.table import Table

    from vaemap.healpix import MOON_RADIUS_KM, connected_regions

    hot = np.flatnonzero(np.isfinite(score) & (score > threshold))
    columns = ["region", "lon", "lat", "area", "n_pixels", "peak_score", "mean_score",
               "peak_pix"]
    if hot.size == 0:
        table = Table(names=columns, dtype=[int, float, float, float, int, float, float, int])
    else:
        hot_pix = pix[hot]
        n_regions, label = connected_regions(nside, hot_pix)
        vec = np.array(hp.pix2vec(nside, hot_pix, nest=True)).T
        weight = score[hot]
        area_px = hp.nside2pixarea(nside) * MOON_RADIUS_KM**2
        records = []
        for k in range(n_regions):
            members = label == k
            centre = (vec[members] * weight[members, None]).sum(axis=0)
            lon, lat = hp.vec2ang(centre / np.linalg.norm(centre), lonlat=True)
            peak = np.argmax(np.where(members, weight, -np.inf))
            records.append((float(np.mod(lon[0], 360.0)), float(lat[0]),
                            float(members.sum() * area_px), int(members.sum()),
                            float(weight[members].max()), float(weight[members].mean()),
                            int(hot_pix[peak])))
        records.sort(key=lambda r: -r[4])
        table = Table(rows=[(i + 1, *r) for i, r in enumerate(records)], names=columns)
    table["lon"].unit, table["lat"].unit, table["area"].unit = u.deg, u.deg, u.km**2
    table.meta.update({"nside": nside, "ordering": "NESTED", "body": "MOON",
                       "threshold": threshold,
                       "description": "connected regions of pixels whose anomaly score "
                                      "(robust z of the reconstruction error) exceeds "
                                      "the threshold; lon east [0, 360), planetocentric lat"})
    return table


def _plot_region_profiles(path: Path, table, latents: h5py.File, profiles: h5py.File,
                          n_top: int = 6) -> None:
    """Observed vs reconstructed profile at the peak pixel of the top regions."""
    plt = pyplot()
    pix = latents["pix"][...]
    edges = profiles.attrs["bin_edges_h"]
    centres = 0.5 * (edges[1:] + edges[:-1])
    n = min(n_top, len(table))
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True, constrained_layout=True)
    for ax, row in zip(axes.flat, table[:n], strict=False):
        i = int(np.searchsorted(pix, row["peak_pix"]))
        observed = profiles["profile"][i, 0]
        ax.plot(centres, observed, "o", ms=3, label="observed")
        if "recon" in latents:
            ax.plot(centres, latents["recon"][i, 0], "-", label="reconstruction")
        ax.set_title(f"#{row['region']}: lon {row['lon']:.1f}°, lat {row['lat']:.1f}°, "
                     f"z = {row['peak_score']:.1f}", fontsize=9)
        ax.set_ylabel("T (K)")
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("local time (h)")
        ax.set_xticks(range(0, 25, 6))
    if n:
        axes.flat[0].legend(fontsize=8)
    else:
        fig.suptitle("no pixel above the anomaly threshold")
    save_figure(fig, path)


def latent_traversal(path: Path, model, norm, latents: h5py.File, n_steps: int = 7,
                     lat_deg: float = 0.0) -> None:
    """Decode a sweep of each latent around the median code (others held at it).

    One panel per latent: profiles for values from the 5th to the 95th
    percentile of that latent's posterior means, at latitude ``lat_deg``, so
    a scientist can see which diurnal behaviour each latent controls.
    ``model`` and ``norm`` are the loaded model and its normaliser
    (:func:`vaemap.model.load_checkpoint`).
    """
    import torch

    from vaemap.model import latitude_condition

    plt = pyplot()
    mu = latents["mu"][...]
    median = np.median(mu, axis=0)
    k = mu.shape[1]
    bins = model.cfg.bins
    lt = (np.arange(bins) + 0.5) * 24.0 / bins
    cmap = plt.get_cmap("coolwarm")
    # Top row: the profiles; bottom row: their difference from the median code's
    # profile, which makes night-time effects (a few kelvin) visible.
    fig, axes = plt.subplots(2, k, figsize=(3.6 * k, 6.0), sharex=True, sharey="row",
                             constrained_layout=True, squeeze=False)
    lat = torch.tensor([lat_deg])
    mean = norm.mean_at(lat)[0]
    cond = latitude_condition(lat.repeat(n_steps), model.cfg.n_cond)
    with torch.inference_mode():
        base = norm.to_kelvin(model.decode(torch.from_numpy(median[None]).float(), cond[:1]),
                              mean=mean)[0, 0].numpy()
        for j in range(k):
            values = np.percentile(mu[:, j], np.linspace(5, 95, n_steps))
            z = np.repeat(median[None], n_steps, axis=0)
            z[:, j] = values
            out = norm.to_kelvin(model.decode(torch.from_numpy(z).float(), cond), mean=mean)
            for i, prof in enumerate(out[:, 0].numpy()):
                colour = cmap(i / max(n_steps - 1, 1))
                axes[0, j].plot(lt, prof, color=colour, lw=1.2)
                axes[1, j].plot(lt, prof - base, color=colour, lw=1.2)
            axes[0, j].set_title(f"latent {j}: {values[0]:+.2f} (blue) … {values[-1]:+.2f} "
                                 f"(red)", fontsize=9)
            axes[1, j].axhline(0.0, color="0.5", lw=0.6)
            axes[1, j].set_xlabel("local time (h)")
            axes[1, j].set_xticks(range(0, 25, 6))
    axes[0, 0].set_ylabel(f"T (K) at latitude {lat_deg:g}°")
    axes[1, 0].set_ylabel("ΔT from the median code (K)")
    save_figure(fig, path)


def _config_history(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The producing configuration as FITS HISTORY cards (70 characters each)."""
    import json

    text = "vaemap config: " + json.dumps(config, sort_keys=True, separators=(",", ":"))
    return [("HISTORY", text[i:i + 70]) for i in range(0, len(text), 70)]


#: What a maps job writes: each product's files (FITS, HealSparse, GeoTIFF, PNG),
#: its HiPS tile set, and the figures and catalogue of the whole map.
MAP_PARTS = ("files", "hips", "extras")


def run(latents: str | Path, profiles: str | Path, model: str | Path, outdir: str | Path,
        config: Mapping[str, Any], threads: int = 1, *, products: list[str] | None = None,
        parts: tuple[str, ...] = MAP_PARTS) -> dict[str, Any]:
    """Write every map product, the anomaly catalogue and the latent traversal.

    In ``outdir``: ``<name>.fits`` and ``<name>.png`` for each of
    :func:`map_products` (and ``<name>.hsp``, a HealSparse map, at nside ≥
    :data:`~vaemap.healpix.HEALSPARSE_MIN_NSIDE`, and ``<name>_<grid>.tif``, a
    GeoTIFF, for each grid of ``maps.geotiff``); ``hips/<name>/``, a HiPS tile
    set with its coverage MOC, for each product of ``maps.hips``;
    ``anomalies.ecsv`` (astropy ECSV) and
    ``anomaly_profiles.png``; ``latent_traversal.png``. ``threads`` figures
    are drawn at once (separate processes).

    ``products`` (names of :func:`map_products`; default all) and ``parts``
    (of :data:`MAP_PARTS`) select what this job writes, so that the maps can
    be split over jobs (``maps.per_product``: a job per product's files, one
    per HiPS tile set, one for the catalogue and figures), each holding one
    product's values. Each file is written exactly as the single job writes it.
    """
    unknown_parts = sorted(set(parts) - set(MAP_PARTS))
    if unknown_parts:
        raise ValueError(f"maps: unknown part(s) {', '.join(unknown_parts)}; expected "
                         f"{', '.join(MAP_PARTS)}")
    # torch is imported here, not at module level: the figure workers import
    # this module and need only numpy, healpy and matplotlib.
    from vaemap.model import load_checkpoint

    outdir = Path(outdir)
    params = config["maps"]
    region = params["region"]
    written = []
    model_net, norm, ckpt = load_checkpoint(model)
    with open_product(latents, LATENTS, nside=int(ckpt["nside"]), channels=ckpt["channels"],
                      model_weights=ckpt["weights_checksum"],
                      profiles_checksum=recorded_checksum(profiles, PROFILES),
                      against=f"the model {model} and the profiles {profiles}") as h5, \
            open_product(profiles, PROFILES, nside=int(ckpt["nside"]),
                         channels=ckpt["channels"], bins=int(ckpt["arch"]["bins"]),
                         against=f"the model {model}") as prof:
        nside = int(h5.attrs["nside"])
        latent_dim = int(h5["mu"].shape[1])
        pix = h5["pix"][...]
        if pix.size == 0:
            raise ProductError(f"{latents}: holds no pixels; nothing to map")
        check_pixels(pix, nside, latents)
        # maps must not drop pixels silently
        fix = "re-encode with a working model (vaemap encode)"
        # (checked a block at a time: a job of one product holds only its values)
        for name in ("mu", "logvar", "anomaly_score"):
            check_finite(h5, latents, name, fix)
        block = 1 << 22
        if prof["pix"].shape != pix.shape or any(
                not np.array_equal(prof["pix"][a:a + block], pix[a:a + block])
                for a in range(0, pix.size, block)):
            raise ValueError(f"{profiles} and {latents} hold different pixels")
        history = _config_history(config)
        every = map_products(latent_dim, params["independent_components"],
                             json.loads(h5.attrs["channels"]), physical="physics_error" in h5)
        hips = hips_products(params["hips"], every)
        chosen = list(every) if products is None else list(products)
        unknown = sorted(set(chosen) - set(every))
        if unknown:
            raise ValueError(f"maps: {', '.join(unknown)} not among this run's map products "
                             f"({', '.join(every)})")
        if "files" not in parts:  # a HiPS job: only the tile sets of maps.hips
            chosen = [name for name in chosen if "hips" in parts and name in hips]
        ica = None
        if any(every[name]["source"]["dataset"] == "ica" for name in chosen):
            # The same rotation (data, seed) that evaluate scores as "VAE + ICA".
            ica = _IcaColumns(h5["mu"])
        # Rendering dominates; figures are independent, so draw them in parallel.
        with ProcessPoolExecutor(max_workers=max(1, threads),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = []
            for name in chosen:
                meta = every[name]
                values = _values(h5, meta["source"], ica)
                # Where the values come from: the latents' content checksum and
                # the model's weights (the FITS CHECKSUM/DATASUM cards cover this
                # file's own content).
                header = {"PRODUCT": meta["fits"], "LATENTS": latent_dim,
                          "BETA": float(ckpt["config"]["model"]["beta"]),
                          "LATSUM": str(h5.attrs["content_checksum"]),
                          "MODELSUM": str(ckpt["weights_checksum"])}
                if "files" in parts:
                    write_partial_map(outdir / f"{name}.fits", pix, values, nside,
                                      column=name.upper(), unit=meta["unit"],
                                      extra_header=header, history=history)
                    if nside >= HEALSPARSE_MIN_NSIDE:
                        write_healsparse_map(outdir / f"{name}.hsp", pix, values, nside,
                                             unit=meta["unit"], metadata=header)
                    for grid in params["geotiff"]:
                        jobs.append(pool.submit(
                            write_geotiff, outdir / f"{name}_{grid}.tif", pix, values, nside,
                            grid, unit=meta["unit"], description=meta["title"],
                            tags={"PRODUCT": meta["fits"]}))
                    jobs.append(pool.submit(
                        render_png, outdir / f"{name}.png", pix, values, nside,
                        title=meta["title"], unit=meta["unit"], cmap=params["cmap"],
                        percentiles=tuple(params["percentiles"]), region=region))
                if name in hips and "hips" in parts:  # (while the figures are drawn)
                    write_hips(outdir / "hips" / name, pix, values, nside, title=meta["title"],
                               unit=meta["unit"], max_order=params["hips_max_order"],
                               cut=_colour_limits(values, tuple(params["percentiles"])))
                written.append(name)
            for job in jobs:
                job.result()
        regions = None
        if "extras" in parts:
            threshold = float(h5.attrs["anomaly_threshold"])
            table = anomaly_catalogue(pix, h5["anomaly_score"][...], nside, threshold)
            with atomic_path(outdir / "anomalies.ecsv") as tmp:
                table.write(tmp, format="ascii.ecsv", overwrite=True)
            _plot_region_profiles(outdir / "anomaly_profiles.png", table, h5, prof)
            latent_traversal(outdir / "latent_traversal.png", model_net, norm, h5)
            regions = len(table)
    log.info("wrote %d map products (%s)%s to %s", len(written), ", ".join(parts),
             "" if regions is None else f", {regions} anomaly regions", outdir)
    return {"products": written, "anomaly_regions": regions, "pixels": int(pix.size),
            "outdir": str(outdir)}
