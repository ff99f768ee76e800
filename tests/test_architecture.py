"""The architecture's rules, checked: steps meet only through files, the DAG is
built from light modules, and readers reject a mismatched file with one clear
message naming it."""

import ast
import json
import re
import subprocess
import sys

import h5py
import pytest
import torch
from conftest import REPO

from vaemap import cli, profiles, train
from vaemap.products import LATENTS, PROFILES, ProductError, check_product, open_product

#: The pipeline steps: one module each, and none may import another.
STEPS = ("simulate", "ingest", "profiles", "emulator", "train", "encode", "maps", "evaluate")
SRC = REPO / "src" / "vaemap"


def _imported_vaemap_modules(path):
    """Every ``vaemap.X`` module a source file imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "vaemap":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("vaemap."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vaemap.")}
    return found


@pytest.mark.parametrize("step", STEPS)
def test_a_step_module_never_imports_another_step(step):
    others = _imported_vaemap_modules(SRC / f"{step}.py") & (set(STEPS) - {step})
    assert not others, f"vaemap.{step} imports the step module(s) {sorted(others)}"


def test_the_import_check_sees_nested_and_aliased_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from vaemap.encode import run\n"
                      "import vaemap.maps as m\nfrom vaemap import train, io\n")
    assert _imported_vaemap_modules(module) == {"encode", "maps", "train", "io"}


def test_building_the_dag_imports_no_heavy_package():
    modules = set()
    for smk in (REPO / "workflow").rglob("*.smk"):
        modules |= set(re.findall(r"^\s*(?:from|import) (vaemap[\w.]*)", smk.read_text(), re.M))
    assert modules, "common.smk imports nothing from vaemap?"
    code = (f"import sys\nfor m in {sorted(modules)!r}: __import__(m)\n"
            "print(sorted({'torch', 'h5py', 'healpy', 'matplotlib'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out.replace("'", '"')) == []


@pytest.fixture(scope="module")
def coarser_profiles(survey, tiny_config, tmp_path_factory):
    """Profiles of the tiny survey at nside 4 instead of the model's 8."""
    cfg = {**tiny_config, "profiles": {**tiny_config["profiles"], "nside": 4}}
    path = tmp_path_factory.mktemp("coarse") / "profiles_nside4.h5"
    profiles.run(survey["samples"], path, cfg)
    return path


def _cli(capsys, *argv):
    rc = cli.main([*map(str, argv), "-q"])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_profiles_of_another_nside_are_one_clear_error(trained, coarser_profiles, tmp_path,
                                                       capsys):
    rc, err = _cli(capsys, "encode", coarser_profiles, trained["model"], "--output",
                   tmp_path / "latents.h5")
    assert rc == 1
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert str(coarser_profiles) in err and "nside 4" in err and "nside 8" in err
    assert not (tmp_path / "latents.h5").exists()


def test_a_checkpoint_of_another_format_is_one_clear_error(survey, trained, tmp_path, capsys):
    ckpt = torch.load(trained["model"], weights_only=True)
    torch.save({**ckpt, "format": 1}, tmp_path / "old.pt")
    rc, err = _cli(capsys, "encode", survey["profiles_h5"], tmp_path / "old.pt", "--output",
                   tmp_path / "latents.h5")
    assert rc == 1 and "Traceback" not in err and len(err.splitlines()) == 1
    assert f"{tmp_path / 'old.pt'}: checkpoint format 1" in err
    (tmp_path / "torn.pt").write_bytes(trained["model"].read_bytes()[:5000])  # a torn copy
    rc, err = _cli(capsys, "maps", trained["latents"], "--profiles", survey["profiles_h5"],
                   "--model", tmp_path / "torn.pt", "--outdir", tmp_path / "maps")
    assert rc == 1 and len(err.splitlines()) == 1 and "weights_only" not in err
    assert f"{tmp_path / 'torn.pt'}: not a readable vaemap checkpoint" in err


def test_a_file_of_another_product_or_version_names_the_file(trained, survey, tmp_path):
    with pytest.raises(ProductError, match=r"latents\.h5: is a latents file, expected profiles"):
        train.load_profiles(trained["latents"])
    old = tmp_path / "old.h5"
    old.write_bytes(survey["profiles_h5"].read_bytes())
    with h5py.File(old, "a") as h5:
        h5.attrs["format_version"] = 0
    with pytest.raises(ProductError, match=r"old\.h5: profiles format version 0, this vaemap "
                                           r"reads version 1"):
        train.load_profiles(old)
    with h5py.File(old, "a") as h5:
        h5.attrs["format_version"] = 1
        del h5["n_obs"]
    with pytest.raises(ProductError, match=r"old\.h5: profiles file lacks dataset\(s\) n_obs"):
        train.load_profiles(old)
    with pytest.raises(ProductError, match=r"nope\.h5: profiles file not found"):
        train.load_profiles(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not HDF5")
    with pytest.raises(ProductError, match=r"text\.h5: cannot be read as an HDF5 profiles"):
        train.load_profiles(tmp_path / "text.h5")


def test_every_product_the_pipeline_writes_meets_its_contract(survey, trained):
    with open_product(survey["profiles_h5"], PROFILES, channels=[7], bins=24, nside=8) as h5:
        check_product(h5, survey["profiles_h5"], PROFILES)
    with open_product(trained["latents"], LATENTS, nside=8) as h5:
        assert h5["mu"].shape[1] == json.loads(str(h5.attrs["latent_dim"]))
    with pytest.raises(ProductError, match="channels \\[7\\], but the caller has \\[7, 8\\]"):
        with open_product(survey["profiles_h5"], PROFILES, channels=[7, 8],
                          against="the caller"):
            pass
    with pytest.raises(ProductError, match="24 local-time bins, but x has 120"):
        with open_product(survey["profiles_h5"], PROFILES, bins=120, against="x"):
            pass
