"""The three dependency lists (pip, conda for users, conda for Snakemake rules) agree."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: conda-forge names of PyPI packages where they differ
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base",
              "snakemake": "snakemake-minimal", "xxhash": "python-xxhash"}


def _requirements(specs) -> dict[str, str]:
    out = {}
    for spec in specs:
        if not isinstance(spec, str) or spec == "pip":
            continue
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", spec).groups()
        out[name.lower()] = version.replace(" ", "")
    return out


def test_conda_environments_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = {CONDA_NAME.get(k, k): v for k, v in _requirements(project["dependencies"]).items()}
    pip["python"] = project["requires-python"].replace(" ", "")
    for env in ("environment.yml", "workflow/envs/vaemap.yaml"):
        conda = _requirements(yaml.safe_load((ROOT / env).read_text())["dependencies"])
        assert conda == pip, f"{env} differs from pyproject.toml"
