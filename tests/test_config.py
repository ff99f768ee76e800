import json

import pytest

from vaemap.config import ConfigError, load_config, validate_config


def test_defaults_are_filled_in_nested_sections():
    cfg = validate_config({})
    assert cfg["model"]["latent_dim"] == 5
    assert cfg["profiles"]["bins"] == 120
    assert cfg["ingest"]["qge"] == 12


def test_demo_config_equals_schema_defaults(tiny_config):
    from conftest import REPO

    assert load_config(REPO / "config" / "config.yaml") == validate_config({})


@pytest.mark.parametrize(
    ("cfg", "path", "reason"),
    [
        ({"model": {"beta": -1}}, "model.beta", "minimum"),
        ({"model": {"latent_dim": "four"}}, "model.latent_dim", "not of type"),
        ({"profiles": {"nside": 33}}, "profiles.nside", "is not one of"),
        ({"device": "gpu"}, "device", "does not match"),
        ({"train": {"epochz": 3}}, "train.epochz", "unknown key"),
    ],
)
def test_invalid_value_names_key_path_and_reason(cfg, path, reason):
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert f"{path}:" in str(err.value)
    assert reason in str(err.value)


def test_cross_key_constraint():
    with pytest.raises(ConfigError, match=r"ingest\.nside"):
        validate_config({"ingest": {"nside": 16}, "profiles": {"nside": 32}})


def test_overrides_and_json_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  beta: 0.5\n  latent_dim: 6\n")
    cfg = load_config(path, overrides=["model.beta=1.5"],
                      json_text=json.dumps({"train": {"epochs": 2}}))
    assert cfg["model"]["beta"] == 1.5
    assert cfg["model"]["latent_dim"] == 6
    assert cfg["train"]["epochs"] == 2
    assert cfg["train"]["batch_size"] == 128  # default kept


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("overlay", ["validation.yaml", "moseley2020.yaml", "allchannels.yaml"])
def test_config_overlays_validate_over_the_default(overlay):
    """The shipped overlays (the validation Moon, the paper's set-up, all channels) are
    valid layered
    over config/config.yaml, and change only what they say."""
    import yaml
    from conftest import REPO

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    extra = yaml.safe_load((REPO / "config" / overlay).read_text())
    merged = {k: ({**base[k], **v} if isinstance(v, dict) else v) for k, v in extra.items()}
    cfg = validate_config({**base, **merged})
    assert cfg["results"] != "results"  # never overwrites the default run's products
    if overlay == "validation.yaml":
        assert cfg["simulate"]["seed"] != base["simulate"]["seed"]  # another Moon
    elif overlay == "allchannels.yaml":
        assert cfg["simulate"]["seed"] == base["simulate"]["seed"]  # the test Moon
        assert cfg["ingest"]["channels"] == cfg["simulate"]["channels"] == list(range(1, 10))
        assert cfg["model"] == base["model"] or cfg["model"] == validate_config(base)["model"]
    else:
        assert cfg["simulate"]["seed"] == base["simulate"]["seed"]
        assert cfg["ingest"]["channels"] == [7] and cfg["model"]["tc_weight"] == 0.0


def test_command_line_strings_are_read_against_the_schema():
    """Snakemake keeps the scalars of a nested --config value as strings; they are
    read again where the schema wants a number, a boolean or a list of them, and
    left alone where it wants text."""
    from vaemap.config import retype_strings

    given = {"profiles": {"bins": "96", "nside": "32"}, "model": {"beta": "0.5"},
             "encode": {"store_recon": "false"}, "maps": {"percentiles": ["2", "98.5"]},
             "results": 2024, "title": "123", "train": {"epochz": "3"}}
    assert retype_strings(given) == {
        "profiles": {"bins": 96, "nside": 32}, "model": {"beta": 0.5},
        "encode": {"store_recon": False}, "maps": {"percentiles": [2, 98.5]},
        "results": "2024", "title": "123", "train": {"epochz": "3"}}
    assert retype_strings({"train": {"epochs": "many"}}) == {"train": {"epochs": "many"}}


def test_errors_name_the_option_a_value_came_from(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  beta: 0.5\n")
    with pytest.raises(ConfigError, match=r"^--set: profiles\.bins: 100 local-time bins"):
        load_config(path, overrides=["profiles.bins=100"])
    with pytest.raises(ConfigError, match=r"--set: train\.epochs: -3 is less than"):
        load_config(path, overrides=["train.epochs=-3"])
    with pytest.raises(ConfigError, match=rf"{path}: model\.beta: -1 is less than"):
        path.write_text("model:\n  beta: -1\n")
        load_config(path, overrides=["train.epochs=3"])


@pytest.mark.parametrize(("given", "message"), [
    ("profiles={bins: 96}", None),
    ("profiles={bins: 100}", "--config: profiles.bins: 100 local-time bins cannot be halved"),
    ("train={epochs: -3}", "--config: train.epochs: -3 is less than the minimum of 1"),
])
def test_snakemake_config_values_are_typed_and_blamed_on_config(tmp_path, given, message):
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile",
                           str(REPO / "workflow" / "Snakefile"), "--configfile",
                           str(REPO / "config" / "config.yaml"), "--config", given,
                           "--directory", str(tmp_path)], capture_output=True, text=True)
    if message is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr
        assert "config.yaml: profiles" not in proc.stdout + proc.stderr
