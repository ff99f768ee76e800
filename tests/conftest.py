"""Shared fixtures: a tiny configuration and one small simulated survey per session."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from vaemap.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    """The validated tiny test configuration (fresh copy per use is the caller's job)."""
    return load_config(TINY)


@pytest.fixture(scope="session")
def survey(tmp_path_factory, tiny_config) -> dict:
    """A simulated survey run through simulate → ingest → profiles, shared by tests."""
    from vaemap import ingest, profiles, simulate
    from vaemap.products import simulated_rdr_names

    root = tmp_path_factory.mktemp("survey")
    sim = simulate.run(root / "simulate", tiny_config)
    rdr = [root / "simulate" / "rdr" / name
           for name in simulated_rdr_names(tiny_config["simulate"])]
    ing = ingest.run(rdr, root / "samples.h5", tiny_config)
    prof = profiles.run(root / "samples.h5", root / "profiles.h5", tiny_config)
    return {"root": root, "rdr": rdr, "simulate": sim, "ingest": ing, "profiles": prof,
            "truth": root / "simulate" / "truth.h5", "samples": root / "samples.h5",
            "profiles_h5": root / "profiles.h5"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, survey, tiny_config) -> dict:
    """A model trained for a few epochs on the tiny survey, and its encoding."""
    from vaemap import encode, train

    root = tmp_path_factory.mktemp("model")
    metrics = train.run(survey["profiles_h5"], root / "model.pt", tiny_config,
                        metrics_csv=root / "metrics.csv", curve_png=root / "curve.png",
                        sigma_png=root / "sigma.png",
                        progress=False)
    enc = encode.run(survey["profiles_h5"], root / "model.pt", root / "latents.h5",
                     tiny_config)
    return {"root": root, "model": root / "model.pt", "metrics": metrics, "encode": enc,
            "latents": root / "latents.h5"}


def write_packaged(path: Path, content: str) -> Path:
    """Write a table's text as the archive may ship it: plain, ``.gz`` or ``.zip``
    (one ``yyyymmddhhmm_RDR.TAB`` inside), chosen by the name's suffix."""
    import gzip
    import zipfile

    data = content.encode("latin-1")
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(path.name.split("_")[0] + "_RDR.TAB", data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def ingest_cfg() -> dict:
    """A default configuration with samples indexed at nside 32."""
    return load_config(overrides=["ingest.nside=32"])


def write_product(path: Path, spec, arrays: dict, **attrs) -> None:
    """Write a small product file by hand, as its writer would: every dataset of
    ``spec`` (those not in ``arrays`` filled with zeros of the right dtype and
    shape) and its identifying and required attributes (``attrs`` override)."""
    import numpy as np

    n = len(next(iter(arrays.values())))
    sizes = {d: arrays[name].shape[i] for name, f in spec.fields.items() if name in arrays
             for i, d in enumerate(f.dims)}
    defaults = {"nside": 8, "ordering": "NESTED", "body": "MOON", "channels": "[7]",
                "rejected": "{}", "rejected_pixels": "{}", "inputs": "[]", "rows_read": n,
                "accepted": n, "observed_bins": 0, "seed": 0, "latent_dim": sizes.get("latent", 0),
                "model": "", "bin_edges_h": np.linspace(0, 24, sizes.get("bins", 24) + 1)}
    with edit_product(path, "w") as h5:
        h5.attrs.update({**spec.identity(), **{k: defaults[k] for k in spec.attrs}, **attrs})
        for name, f in spec.fields.items():
            if name in arrays:
                h5[name] = np.asarray(arrays[name]).astype(f.dtype)
            elif not f.optional:
                h5[name] = np.zeros((n, *f.row_shape(sizes)), f.dtype)


@contextlib.contextmanager
def edit_product(path: Path, mode: str = "a"):
    """Open an HDF5 product to change it as a (faulty) vaemap step would have written
    it: its content checksum is recorded again on exit, so the readers' value checks,
    not the checksum, meet the change."""
    import h5py

    from vaemap.products import content_checksum

    with h5py.File(path, mode) as h5:
        yield h5
        h5.attrs["content_checksum"] = content_checksum(h5)


def strongest_anomaly_distance_deg(truth_h5: Path, catalogue_ecsv: Path) -> float:
    """Angular distance (degrees) from the strongest injected anomaly — the warm
    rocky pixel with the largest rock fraction — to the nearest region centre of
    the anomaly catalogue (inf when the catalogue is empty)."""
    import h5py
    import healpy as hp
    import numpy as np
    from astropy.table import Table

    with h5py.File(truth_h5) as h5:
        nside = int(h5.attrs["nside"])
        pix, kind, rock = h5["pix"][...], h5["anomaly_kind"][...], h5["rock_fraction"][...]
    strongest = pix[np.argmax(np.where(kind == 1, rock, -np.inf))]
    target = hp.pix2vec(nside, int(strongest), nest=True)
    table = Table.read(catalogue_ecsv, format="ascii.ecsv")
    if len(table) == 0:
        return float("inf")
    centres = np.array(hp.ang2vec(np.asarray(table["lon"]), np.asarray(table["lat"]),
                                  lonlat=True)).reshape(-1, 3)
    return float(np.degrees(np.arccos(np.clip(centres @ np.asarray(target), -1, 1))).min())
