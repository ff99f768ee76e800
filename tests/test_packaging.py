"""The three dependency lists (pip, conda for users, conda for Snakemake rules) agree."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: conda-forge names of PyPI packages where they differ
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base",
              "snakemake": "snakemake-minimal", "xxhash": "python-xxhash",
              "isal": "python-isal"}


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
    # the users' environment also brings the SLURM executor (the `slurm` extra);
    # a rule's environment runs inside a job and needs no executor
    slurm = _requirements(project["optional-dependencies"]["slurm"])
    for env, expected in (("environment.yml", {**pip, **slurm}),
                          ("workflow/envs/vaemap.yaml", pip)):
        conda = _requirements(yaml.safe_load((ROOT / env).read_text())["dependencies"])
        assert conda == expected, f"{env} differs from pyproject.toml"
