"""Configuration: one YAML file, validated against the JSON schema, defaults filled.

The same schema (``vaemap/schemas/config.schema.yaml``; ``workflow/schemas`` links
to it) is used by the Snakefile and by the command line, so a value that the
workflow accepts is a value every step accepts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = ["ConfigError", "load_config", "load_schema", "parse_override", "validate_config"]


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key path and the reason."""


def load_schema() -> dict[str, Any]:
    """Return the configuration JSON schema shipped with the package."""
    text = resources.files("vaemap").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _default_filling_validator() -> type:
    """A Draft 2020-12 validator that fills ``default`` values while validating.

    Defaults are set before the sub-properties are validated, so a section whose
    default is ``{}`` is created and then filled with its own defaults.
    """
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # jsonschema reports the parent; name the offending key itself.
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            path = ".".join(filter(None, [path, extra[0]]))
            return path
    return path or "<root>"


#: Keys that moved to the section of the step that reads them: old -> new.
_MOVED_KEYS = {"profiles.normalisation": "model.normalisation",
               "simulate.gzip": "simulate.packaging (zip, gzip or plain)",
               "simulate.noise_k": "simulate.noise_scale (a multiple of each channel's "
                                   "noise-equivalent radiance, not kelvin)"}


def validate_config(config: Mapping[str, Any] | None, source: str = "config") -> dict[str, Any]:
    """Validate ``config`` against the schema and return a copy with defaults filled.

    Parameters
    ----------
    config : mapping or None
        The user's configuration (may be partial; missing keys take defaults).
    source : str
        Name of where the values came from, used in error messages.

    Raises
    ------
    ConfigError
        On the first invalid value, naming its key path (e.g. ``model.beta``),
        the offending value and the reason.
    """
    instance = copy.deepcopy(dict(config or {}))
    for old, new in _MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(instance.get(section), dict) and key in instance[section]:
            raise ConfigError(f"{source}: {old}: this key is now {new}; rename it in your "
                              f"configuration")
    given = set(instance)
    validator = _default_filling_validator()(load_schema())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            if err.validator == "additionalProperties":
                lines.append(f"{source}: {_key_path(err)}: unknown key ({err.message})")
            else:
                lines.append(f"{source}: {_key_path(err)}: {err.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    _check_cross_keys(instance, given, source)
    return instance


def _check_cross_keys(cfg: dict[str, Any], given: set[str], source: str) -> None:
    """Constraints between keys that JSON schema cannot express.

    A constraint between two sections is checked only when both were given:
    a step run by Snakemake receives just the sections it depends on.
    """
    ing, prof = cfg["ingest"], cfg["profiles"]
    if {"ingest", "profiles"} <= given and ing["nside"] < prof["nside"]:
        raise ConfigError(
            f"{source}: ingest.nside: {ing['nside']} is coarser than profiles.nside "
            f"{prof['nside']}; samples must be indexed at least as finely as the map"
        )
    if ing["tb_min"] >= ing["tb_max"]:
        raise ConfigError(f"{source}: ingest.tb_min: must be below ingest.tb_max")
    if ing["reflectance_min"] >= ing["reflectance_max"]:
        raise ConfigError(f"{source}: ingest.reflectance_min: must be below "
                          f"ingest.reflectance_max")
    if {"profiles", "model"} <= given:
        from vaemap.presets import PRESETS

        depth = PRESETS[cfg["model"]["preset"]].get("depth", cfg["model"]["depth"])
        bins = cfg["profiles"]["bins"]
        if bins % 2**depth:
            raise ConfigError(
                f"{source}: profiles.bins: {bins} local-time bins cannot be halved "
                f"model.depth = {depth} times (preset {cfg['model']['preset']!r}); choose bins "
                f"divisible by {2**depth}, e.g. {bins - bins % 2**depth or 2**depth}")
    if "sweep" in given and cfg["seed"] in cfg["sweep"]["seed"]:
        raise ConfigError(f"{source}: sweep.seed: {cfg['seed']} is the main seed already; "
                          f"list only extra seeds")
    lo, hi = cfg["maps"]["percentiles"]
    if lo >= hi:
        raise ConfigError(f"{source}: maps.percentiles: {lo} must be below {hi}")
    if "data" in given and cfg["data"]["source"] == "rdr" and not cfg["data"]["rdr_files"]:
        raise ConfigError(f"{source}: data.rdr_files: must list RDR files when data.source is rdr")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``--set section.key=value`` override; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    key, value = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({reason})") from None


def _apply(cfg: dict[str, Any], path: list[str], value: Any) -> None:
    node = cfg
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    json_text: str | None = None,
) -> dict[str, Any]:
    """Load, merge and validate a configuration.

    Parameters
    ----------
    path : path, optional
        YAML configuration file; without it the schema defaults are used.
    overrides : iterable of str
        ``section.key=value`` strings applied after the file (values parsed as YAML).
    json_text : str, optional
        A JSON object merged over the file (how Snakemake rules pass their sections).
    """
    cfg: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        cfg = loaded or {}
    if json_text:
        try:
            extra = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json: not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"--config-json: expected a JSON object of sections "
                              f"({{\"model\": {{...}}}}), got a {type(extra).__name__}")
        for section, values in extra.items():
            if isinstance(values, dict) and isinstance(cfg.get(section), dict):
                cfg[section] = {**cfg[section], **values}
            else:
                cfg[section] = values
        source = f"{source} + --config-json"
    for text in overrides:
        key, value = parse_override(text)
        _apply(cfg, key, value)
    return validate_config(cfg, source)
