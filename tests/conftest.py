"""Shared fixtures: a tiny configuration and one small simulated survey per session."""

from __future__ import annotations

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

    root = tmp_path_factory.mktemp("survey")
    sim = simulate.run(root / "simulate", tiny_config)
    rdr = sorted((root / "simulate" / "rdr").iterdir())
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
                        progress=False)
    enc = encode.run(survey["profiles_h5"], root / "model.pt", root / "latents.h5",
                     tiny_config)
    return {"root": root, "model": root / "model.pt", "metrics": metrics, "encode": enc,
            "latents": root / "latents.h5"}
