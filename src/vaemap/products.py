"""The files between the steps: one home for every product's contract.

Each HDF5 product (``samples.h5``, ``profiles.h5``, ``latents.h5``,
``truth.h5``) is described once here by a :class:`ProductSpec`: its datasets
(dtype, dimensions, unit), the root attributes every copy carries, and a
format version.  Writers take their dataset layout and identifying attributes
from the spec; readers open a product with :func:`open_product`, which checks
the file against the spec (and against what the reader expects: nside,
channels, bins) and raises one :class:`ProductError` naming the file and what
is wrong, instead of a ``KeyError`` three steps later.

Also here: the ground-truth factor names and anomaly kinds of the simulator,
the names of the map products, and the names of the simulated RDR tables —
everything the workflow needs to plan the DAG.  This module imports only
numpy (h5py lazily, when a file is opened), so ``workflow/rules/common.smk``
can import it without pulling in torch, h5py or healpy.

See ``docs/architecture.md`` for how the steps use these contracts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ANOMALY_KINDS",
    "EMULATOR_FORMAT",
    "LATENTS",
    "PROFILES",
    "SAMPLES",
    "SCORED_FACTORS",
    "TRUTH",
    "TRUTH_FACTORS",
    "TRUTH_MAPS",
    "Field",
    "ProductError",
    "ProductSpec",
    "check_finite",
    "check_pixels",
    "check_product",
    "content_checksum",
    "map_products",
    "open_product",
    "read_finite",
    "recorded_checksum",
    "simulated_rdr_names",
]


#: Version of ``emulator.pt``'s layout (:mod:`vaemap.forward_model` writes and
#: reads it; 2: the learned T⁴ in units of each column's diurnal-mean T⁴, 1: in
#: one unit for every column). Here, beside the products, because the workflow
#: plans on it: a new layout re-trains the emulator (``settings/physics.json``).
EMULATOR_FORMAT = 2


class ProductError(ValueError):
    """A file that does not hold the product a step expects; the message names the
    file and what is wrong (wrong product, old format, missing dataset, another
    nside or channel list)."""


@dataclass(frozen=True)
class Field:
    """One dataset of a product.

    ``dims`` names the axes; the first is always ``n`` (one row per sample or
    pixel), the others (``channels``, ``bins``, ``latent``) are fixed per file.
    ``final_only`` datasets are absent from tile parts (e.g. the anomaly score,
    which needs every pixel).
    """

    dtype: type
    dims: tuple[str, ...] = ("n",)
    unit: str = ""
    doc: str = ""
    final_only: bool = False
    optional: bool = False

    def row_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The shape of one row, given the sizes of the fixed dimensions."""
        return tuple(sizes[d] for d in self.dims[1:])


@dataclass(frozen=True)
class ProductSpec:
    """The contract of one HDF5 product: datasets, required root attributes, version."""

    name: str
    version: int
    fields: dict[str, Field]
    attrs: tuple[str, ...] = ()
    doc: str = ""

    def identity(self) -> dict[str, Any]:
        """Root attributes that identify a file as this product and format version."""
        return {"product": self.name, "format_version": self.version}

    def layout(self, *, part: bool = False, **sizes: int) -> dict[str, tuple[type, tuple]]:
        """``{dataset: (dtype, row shape)}`` of the non-optional datasets, for writers."""
        return {name: (f.dtype, f.row_shape(sizes)) for name, f in self.fields.items()
                if not f.optional and not (part and f.final_only)}

    def units(self) -> dict[str, str]:
        """``{dataset: unit}`` of the datasets that have one."""
        return {name: f.unit for name, f in self.fields.items() if f.unit}


#: ``samples.h5`` (ingest): one row per accepted observation, sorted by NESTED
#: pixel, then time.
SAMPLES = ProductSpec(
    "samples", 1,
    {
        "pix": Field(np.int64, doc="NESTED pixel at the samples nside"),
        "lat": Field(np.float32, unit="deg", doc="footprint centre latitude, north"),
        "lon": Field(np.float32, unit="deg", doc="footprint centre longitude, east [0, 360)"),
        "local_time": Field(np.float32, unit="h", doc="local solar time [0, 24)"),
        "tb": Field(np.float32, unit="K", doc="brightness temperature"),
        "emission": Field(np.float32, unit="deg", doc="emission angle"),
        "channel": Field(np.uint8, doc="Diviner channel 1-9"),
        "det": Field(np.uint8, doc="detector 1-21"),
        "jdate": Field(np.float64, unit="d", doc="Julian date (UTC)"),
    },
    attrs=("nside", "ordering", "body", "channels", "rows_read", "accepted", "rejected",
           "inputs"),
    doc="quality-filtered observations, HEALPix-indexed",
)

#: ``profiles.h5`` (profiles): one row per kept map pixel.
PROFILES = ProductSpec(
    "profiles", 1,
    {
        "pix": Field(np.int64, doc="NESTED pixel at the map nside"),
        "lat": Field(np.float32, unit="deg", doc="pixel centre latitude"),
        "lon": Field(np.float32, unit="deg", doc="pixel centre longitude, east [0, 360)"),
        "profile": Field(np.float32, ("n", "channels", "bins"), unit="K",
                         doc="mean brightness temperature per local-time bin, NaN where "
                             "empty (reflectance for the solar channels 1-2: see the "
                             "channel_units attribute)"),
        "count": Field(np.uint16, ("n", "channels", "bins"),
                       doc="observations averaged in each bin"),
        "n_obs": Field(np.int32, doc="observations of the pixel, all channels and bins"),
    },
    attrs=("nside", "ordering", "body", "channels", "bin_edges_h", "rejected_pixels",
           "observed_bins"),
    doc="per-pixel diurnal profiles (channels x local-time bins)",
)

#: Ground-truth factors of the simulator, as stored in ``truth.h5``, with units: also
#: the physical parameters a physics decoder maps, named alike.
TRUTH_FACTORS: dict[str, str] = {
    "albedo": "",
    "h_param": "m",
    "slope_ew": "deg",
    "slope_ns": "deg",
    "rock_fraction": "",
}

#: Words for the truth factors in titles and FITS headers.
_PHYSICAL_TITLES: dict[str, str] = {
    "albedo": "bolometric albedo", "h_param": "H-parameter (regolith density scale)",
    "slope_ew": "east/west slope (east-facing > 0)", "slope_ns": "north/south slope "
    "(north-facing > 0)", "rock_fraction": "rock area fraction",
}

#: ``latents.h5`` (encode): one row per encoded pixel.
LATENTS = ProductSpec(
    "latents", 3,  # 3: recon_z; 2: recon_error_channel
    {
        "pix": Field(np.int64, doc="NESTED pixel at the map nside"),
        "mu": Field(np.float32, ("n", "latent"), doc="posterior mean of each latent"),
        "logvar": Field(np.float32, ("n", "latent"), doc="posterior log-variance"),
        "recon_error": Field(np.float32, unit="K", doc="RMS error over observed bins"),
        "recon_l1": Field(np.float32, unit="K", doc="mean absolute error over observed bins"),
        "recon_norm_l1": Field(np.float32,
                               doc="mean absolute error in units of each bin's spread"),
        "recon_z": Field(np.float32, doc="mean absolute calibrated residual: error / the "
                                         "bin's σ in the model's likelihood"),
        "recon_z_night": Field(np.float32, doc="recon_z over the thermal channels' night "
                                               "bins (local time 18-6 h)"),
        "recon_error_channel": Field(np.float32, ("n", "channels"),
                                     doc="RMS error over each channel's observed bins (K for "
                                         "channels 3-9, reflectance for 1-2; NaN: none)"),
        "n_obs": Field(np.int32, doc="observations of the pixel"),
        "anomaly_score": Field(np.float32, final_only=True,
                               doc="robust z of the anomaly metric over all pixels"),
        "anomaly": Field(np.uint8, final_only=True, doc="1 above the anomaly threshold"),
        "recon": Field(np.float32, ("n", "channels", "bins"), unit="K", optional=True,
                       doc="reconstruction of the latent mean (encode.store_recon)"),
        # a physics decoder's (model.decoder: physics)
        **{name: Field(np.float32, unit=unit, optional=True,
                       doc="physical parameter of the latent mean (posterior median)")
           for name, unit in TRUTH_FACTORS.items()},
        **{f"{name}_sigma": Field(np.float32, unit=unit, optional=True,
                                  doc="its posterior σ (delta method)")
           for name, unit in TRUTH_FACTORS.items()},
        "physics_error": Field(np.float32, optional=True,
                               doc="the anomaly metric's error of the physics term alone at "
                                   "the encoder's latents"),
    },
    attrs=("nside", "ordering", "body", "latent_dim", "channels", "model", "model_weights"),
    doc="latents, reconstruction errors and anomaly score per pixel",
)

#: Injected anomaly kinds (``anomaly_kind`` code -> name); 0 is background.
ANOMALY_KINDS: dict[int, str] = {1: "warm_rocky", 2: "cold_spot"}

#: ``truth.h5`` (simulate, synthetic data only): the generating factors per pixel.
TRUTH = ProductSpec(
    "truth", 1,
    {
        "pix": Field(np.int64, doc="NESTED pixel at the simulation nside"),
        "lon": Field(np.float32, unit="deg", doc="pixel centre longitude"),
        "lat": Field(np.float32, unit="deg", doc="pixel centre latitude"),
        **{name: Field(np.float32, unit=unit, doc="ground-truth factor")
           for name, unit in TRUTH_FACTORS.items()},
        "anomaly_mask": Field(np.uint8, doc="1 inside an injected anomaly"),
        "anomaly_kind": Field(np.uint8, doc="0 none, " + ", ".join(
            f"{k} {v.replace('_', ' ')}" for k, v in ANOMALY_KINDS.items())),
    },
    attrs=("nside", "ordering", "body", "seed"),
    doc="ground truth of a simulated Moon",
)

#: Factors the latents are scored against. ``slope_pole`` is the north/south
#: slope signed by hemisphere (positive = facing the pole): a north-facing slope
#: is cold in the north and warm in the south, so the raw ``slope_ns`` has no
#: single thermal effect and correlates with nothing globally.
SCORED_FACTORS: tuple[str, ...] = ("albedo", "h_param", "slope_ew", "slope_pole",
                                   "rock_fraction")

#: Ground-truth maps simulate writes as ``truth_<name>.fits``.
TRUTH_MAPS: tuple[str, ...] = (*TRUTH_FACTORS, "anomaly_kind")


#: Julian date where simulated missions start: 2009-09-15, the start of LRO's
#: science mapping phase.
SIMULATION_START_JD = 2455089.5

#: File suffix of each ``simulate.packaging``.
RDR_PACKAGING = {"zip": "_rdr.zip", "gzip": "_RDR.TAB.gz", "plain": "_RDR.TAB"}


def simulated_table_orbits(params: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The orbits ``[first, stop)`` of each simulated RDR table (``simulate`` section)."""
    n_orbits = round(params["days"] * params["orbits_per_day"])
    bounds = np.linspace(0, n_orbits, params["files"] + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def simulated_rdr_names(params: Mapping[str, Any]) -> list[str]:
    """The archive names of the tables a simulation writes: the start of each
    table's first orbit, ``yyyymmddhhmm`` with the minutes floored to ten, as
    the PDS names its ten-minute products, plus the packaging's suffix
    (``..._rdr.zip`` by default; a PDS3 ``..._rdr.lbl`` label lies beside each)."""
    import datetime as dt

    names = []
    for first, _ in simulated_table_orbits(params):
        jd = SIMULATION_START_JD + first / params["orbits_per_day"]
        when = dt.datetime(2000, 1, 1, 12, tzinfo=dt.UTC) + dt.timedelta(days=jd - 2451545.0)
        when -= dt.timedelta(minutes=when.minute % 10, seconds=when.second,
                             microseconds=when.microsecond)
        names.append(when.strftime("%Y%m%d%H%M") + RDR_PACKAGING[params["packaging"]])
    if len(set(names)) != len(names):
        raise ValueError(f"simulate.files: {params['files']} tables of {params['days']} days "
                         f"would start in the same ten minutes; use fewer files")
    return names


def map_products(latent_dim: int, independent_components: bool = False,
                 channels: Sequence[int] = (), physical: bool = False
                 ) -> dict[str, dict[str, Any]]:
    """Names, titles, units and sources of the map products for ``latent_dim`` latents.

    The names are the file stems, ``maps/<name>.fits`` and ``maps/<name>.png``;
    with ``independent_components`` also ``ic0`` ... (the latent means rotated
    to independent components, see :func:`vaemap.stats.ica_components`); with
    several ``channels``, one reconstruction-error map per channel
    (``recon_error_ch7`` ...); with ``physical`` (a physics decoder's latents)
    the physical parameters, named and in the units of :data:`TRUTH_FACTORS`,
    each with its posterior σ (``h_param``, ``h_param_sigma`` ...), and
    ``physics_error``, the error of the physics term alone. Each product's
    ``source`` says where its values come from, once: ``{"dataset": name}`` of
    ``latents.h5`` (``"ica"``: the rotation maps computes), with ``"column"`` an
    index into its second axis and ``"transform": "sigma"`` for
    ``exp(logvar / 2)`` (``vaemap.maps`` reads them so; adding a product is
    adding its entry here).
    """
    from vaemap.instrument import channel_unit

    products: dict[str, dict[str, Any]] = {}
    for k in range(latent_dim):
        products[f"latent{k}_mu"] = {"title": f"latent {k}: posterior mean μ", "unit": "",
                                     "fits": f"latent {k} posterior mean (mu)",
                                     "source": {"dataset": "mu", "column": k}}
        products[f"latent{k}_sigma"] = {"title": f"latent {k}: posterior σ", "unit": "",
                                        "fits": f"latent {k} posterior std (sigma)",
                                        "source": {"dataset": "logvar", "column": k,
                                                   "transform": "sigma"}}
    if independent_components:
        for k in range(latent_dim):
            products[f"ic{k}"] = {"title": f"independent component {k} of the latent means",
                                  "unit": "", "fits": f"independent component {k} of the "
                                                      f"latent means (FastICA, unit variance)",
                                  "source": {"dataset": "ica", "column": k}}
    if physical:
        for name, unit in TRUTH_FACTORS.items():
            words = _PHYSICAL_TITLES[name]
            products[name] = {"title": f"{words} (posterior median)", "unit": unit,
                              "fits": f"{words}, posterior median",
                              "source": {"dataset": name}}
            products[f"{name}_sigma"] = {"title": f"{words}: posterior σ", "unit": unit,
                                         "fits": f"{words}, posterior std",
                                         "source": {"dataset": f"{name}_sigma"}}
        products["physics_error"] = {
            "title": "physics residual (error of the thermal model alone)", "unit": "",
            "fits": "error of the physics term alone (encode anomaly_metric)",
            "source": {"dataset": "physics_error"}}
    products["recon_error"] = {"title": "reconstruction error (RMS)", "unit": "K",
                               "fits": "reconstruction error, RMS over observed bins",
                               "source": {"dataset": "recon_error"}}
    if len(channels) > 1:
        for j, c in enumerate(channels):
            unit = channel_unit(c)
            products[f"recon_error_ch{c}"] = {
                "title": f"reconstruction error of channel {c} (RMS)", "unit": unit,
                "fits": f"reconstruction error of channel {c}, RMS over its observed bins",
                "source": {"dataset": "recon_error_channel", "column": j}}
    products["recon_l1"] = {"title": "reconstruction error (L1)", "unit": "K",
                            "fits": "reconstruction error, mean abs over observed bins",
                            "source": {"dataset": "recon_l1"}}
    products["anomaly_score"] = {"title": "anomaly score (robust z of the reconstruction error)",
                                 "unit": "", "fits": "anomaly score, robust z of the error",
                                 "source": {"dataset": "anomaly_score"}}
    products["n_obs"] = {"title": "observations per pixel", "unit": "count",
                         "fits": "accepted observations per pixel",
                         "source": {"dataset": "n_obs"}}
    return products


def _attr(h5, key: str) -> Any:
    value = h5.attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        import json

        return json.loads(value)
    return value


#: Bytes of one dataset hashed at a time by :func:`content_checksum` (bounded memory).
_HASH_BLOCK_BYTES = 1 << 26


def content_checksum(h5) -> str:
    """``"xxh3_128:<hex>"`` of an HDF5 product's content: every dataset's name,
    dtype, shape and values (read in row blocks, so memory stays bounded), in
    name order. Attributes (provenance, configuration, times) are left out, so
    two runs that compute the same values have the same checksum however they
    were stored (compression, chunks) and whenever they ran. Writers record it
    as the ``content_checksum`` attribute (:func:`vaemap.io.atomic_hdf5`), the
    next step records it as its input's, and readers of a whole product check it
    (:func:`check_product`)."""
    import h5py
    import xxhash

    digest = xxhash.xxh3_128()
    names: list[str] = []
    h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset)
                  else None)
    for name in sorted(names):
        dset = h5[name]
        digest.update(f"{name}|{dset.dtype.str}|{dset.shape}\n".encode())
        if dset.shape == () or dset.size == 0:
            if dset.shape == ():
                digest.update(np.ascontiguousarray(dset[()]).tobytes())
            continue
        row_bytes = max(1, dset.dtype.itemsize * int(np.prod(dset.shape[1:], dtype=np.int64)))
        step = max(1, _HASH_BLOCK_BYTES // row_bytes)
        for a in range(0, dset.shape[0], step):
            digest.update(np.ascontiguousarray(dset[a:a + step]).tobytes())
    return f"xxh3_128:{digest.hexdigest()}"


def check_product(h5, path: str | Path, spec: ProductSpec, *, part: bool | None = False,
                  nside: int | None = None, channels: Sequence[int] | None = None,
                  bins: int | None = None, model_weights: str | None = None,
                  profiles_checksum: str | None = None, verify: bool = True,
                  against: str = "the configuration") -> None:
    """Check an open HDF5 file against ``spec`` and the reader's expectations.

    Parameters
    ----------
    h5 : h5py.File
        The open file.
    path : path
        Its name, for the message.
    spec : ProductSpec
        The product the reader expects.
    part : bool or None
        True: must be a tile part (``part_of_tile``); False: must be a whole
        product; None: either.
    nside, channels, bins : optional
        What the file must hold (``nside`` exactly; the ``channels`` list and
        the number of ``bins`` of a profiles-shaped dataset).
    model_weights : str, optional
        The weights checksum of the model the product must have been made with.
    profiles_checksum : str, optional
        The checksum of the profiles file the product must have been made from
        (checked where the product records one).
    verify : bool
        Check the recorded ``content_checksum`` against the values (reads the
        whole file once; a reader of one tile's rows of a large product passes
        False and relies on the whole-product readers downstream).
    against : str
        Where the expected values come from, for the message (e.g. ``"model.pt"``).

    Raises
    ------
    ProductError
        Naming ``path`` and the first thing that is wrong.
    """
    product = h5.attrs.get("product")
    if isinstance(product, bytes):
        product = product.decode()
    if product is None:
        raise ProductError(f"{path}: not a vaemap {spec.name} file, or one written by an older "
                           f"vaemap (no 'product' attribute); re-run the step that makes it")
    if product != spec.name:
        raise ProductError(f"{path}: is a {product} file, expected {spec.name}")
    version = int(h5.attrs.get("format_version", -1))
    if version != spec.version:
        raise ProductError(f"{path}: {spec.name} format version {version}, this vaemap reads "
                           f"version {spec.version}; re-run the step that makes it")
    is_part = "part_of_tile" in h5.attrs
    if part is True and not is_part:
        raise ProductError(f"{path}: not a tile part of {spec.name} (no part_of_tile attribute)")
    if part is False and is_part:
        raise ProductError(f"{path}: is tile part {_attr(h5, 'part_of_tile')} of {spec.name}; "
                           f"merge the parts first")
    missing = [name for name, f in spec.fields.items()
               if not f.optional and not (is_part and f.final_only) and name not in h5]
    if missing:
        raise ProductError(f"{path}: {spec.name} file lacks dataset(s) {', '.join(missing)}")
    missing_attrs = [a for a in spec.attrs if a not in h5.attrs]
    if missing_attrs:
        raise ProductError(f"{path}: {spec.name} file lacks attribute(s) "
                           f"{', '.join(missing_attrs)}")
    rows = {h5[name].shape[0] for name in spec.fields if name in h5}
    if len(rows) > 1:
        raise ProductError(f"{path}: {spec.name} datasets differ in length {sorted(rows)}")
    for name, f in spec.fields.items():
        if name in h5 and h5[name].dtype != np.dtype(f.dtype):
            raise ProductError(f"{path}: dataset {name} is {h5[name].dtype}, expected "
                               f"{np.dtype(f.dtype)}")
    if nside is not None and int(h5.attrs["nside"]) != nside:
        raise ProductError(f"{path}: nside {int(h5.attrs['nside'])}, but {against} has "
                           f"nside {nside}")
    if channels is not None and "channels" in spec.attrs:
        have = [int(c) for c in _attr(h5, "channels")]
        if have != [int(c) for c in channels]:
            raise ProductError(f"{path}: channels {have}, but {against} has "
                               f"{[int(c) for c in channels]}")
    if model_weights is not None and "model_weights" in spec.attrs:
        made_by = str(h5.attrs["model_weights"])
        if made_by != model_weights:
            raise ProductError(f"{path}: was made by another model (weights {made_by}), not "
                               f"{against} ({model_weights}); re-run encode with this model")
    if profiles_checksum is not None and "profiles_checksum" in h5.attrs:
        made_from = str(h5.attrs["profiles_checksum"])
        if made_from != profiles_checksum:
            raise ProductError(f"{path}: was made from other profiles ({made_from}), not "
                               f"{against} ({profiles_checksum}); re-run encode on them")
    if bins is not None:
        for name, f in spec.fields.items():
            if "bins" in f.dims and name in h5:
                have = h5[name].shape[f.dims.index("bins")]
                if have != bins:
                    raise ProductError(f"{path}: {have} local-time bins, but {against} has "
                                       f"{bins}")
    recorded = h5.attrs.get("content_checksum")
    if recorded is None:
        raise ProductError(f"{path}: {spec.name} file records no content checksum (written by "
                           f"an older vaemap or another tool); re-run the step that makes it")
    if verify:
        try:
            actual = content_checksum(h5)
        except OSError as exc:  # a chunk HDF5 cannot decompress
            raise ProductError(f"{path}: {spec.name} file is damaged; a dataset cannot be read "
                               f"({str(exc).splitlines()[0]}); re-run the step that makes "
                               f"it") from None
        if actual != str(recorded):
            raise ProductError(f"{path}: {spec.name} file's values do not match the checksum "
                               f"recorded when it was written ({recorded}, now {actual}): the "
                               f"file was changed or damaged; re-run the step that makes it")


def read_finite(h5, path: str | Path, name: str, what: str = "") -> np.ndarray:
    """Dataset ``name`` of an open product, refused with one :class:`ProductError`
    naming the file, the dataset and how many values are NaN or infinite when
    any is: a reader that depends on the values (latents, scores) must never
    turn them into silent gaps or zeros. ``what`` says what a bad value means."""
    values = h5[name][...]
    _refuse_nonfinite(path, name, what, [values], len(values) if values.ndim else 1)
    return values


def check_finite(h5, path: str | Path, name: str, what: str = "",
                 block_rows: int = 1 << 20) -> None:
    """:func:`read_finite`'s check of dataset ``name``, read ``block_rows`` rows at
    a time (a reader that needs the check, not the values, of a whole map)."""
    data = h5[name]
    if data.ndim == 0:
        _refuse_nonfinite(path, name, what, [data[()]], 1)
    else:
        _refuse_nonfinite(path, name, what, (data[a:a + block_rows]
                                             for a in range(0, data.shape[0], block_rows)),
                          data.shape[0])


def _refuse_nonfinite(path: str | Path, name: str, what: str, blocks, total: int) -> None:
    """One ProductError when any of the ``blocks`` of dataset ``name`` (``total``
    rows) holds a NaN or infinite value."""
    bad = rows = 0
    for block in blocks:
        wrong = ~np.isfinite(np.asarray(block))
        bad += int(wrong.sum())
        rows += int(wrong.reshape(len(wrong), -1).any(axis=1).sum()) if wrong.ndim \
            else int(wrong)
    if bad:
        raise ProductError(f"{path}: {name} holds {bad} NaN or infinite values (in {rows} "
                           f"of {total} rows){'; ' + what if what else ''}")


def check_pixels(pix: np.ndarray, nside: int, path: str | Path, name: str = "pix",
                 increasing: bool = True) -> None:
    """Refuse HEALPix indices outside ``[0, 12·nside²)`` (and, with ``increasing``,
    not strictly increasing, as every pixel-indexed product is written), with
    one :class:`ProductError` naming the file and the first bad index."""
    npix = 12 * int(nside) ** 2
    outside = np.flatnonzero((pix < 0) | (pix >= npix))
    if outside.size:
        raise ProductError(f"{path}: {name}[{outside[0]}] = {pix[outside[0]]} is not a pixel "
                           f"of nside {nside} (0 to {npix - 1}); {outside.size} such rows")
    if increasing and pix.size > 1:
        wrong = np.flatnonzero(np.diff(pix) <= 0)
        if wrong.size:
            raise ProductError(f"{path}: {name} is not strictly increasing at row "
                               f"{wrong[0] + 1} ({pix[wrong[0]]} then {pix[wrong[0] + 1]})")


@contextlib.contextmanager
def open_product(path: str | Path, spec: ProductSpec, **expect: Any) -> Iterator[Any]:
    """Open an HDF5 product for reading and check it (see :func:`check_product`).

    A missing file, or one HDF5 cannot read, raises :class:`ProductError`
    naming the file too. Yields the open ``h5py.File``.
    """
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter our writers use)

    path = Path(path)
    if not path.exists():
        raise ProductError(f"{path}: {spec.name} file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ProductError(f"{path}: cannot be read as an HDF5 {spec.name} file "
                           f"({str(exc).splitlines()[0]})") from None
    with h5:
        check_product(h5, path, spec, **expect)
        yield h5


def recorded_checksum(path: str | Path, spec: ProductSpec) -> str:
    """The ``content_checksum`` a product recorded when it was written (the file is
    checked as ``spec``, its values are not re-hashed): what a step records as its
    input's identity and what a later reader compares."""
    with open_product(path, spec, part=None, verify=False) as h5:
        return str(h5.attrs["content_checksum"])
