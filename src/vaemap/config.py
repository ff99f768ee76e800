"""Configuration: one YAML file, validated against the JSON schema, defaults filled.

The same schema (``vaemap/schemas/config.schema.yaml``; ``workflow/schemas`` links
to it) is used by the Snakefile and by the command line, so a value that the
workflow accepts is a value every step accepts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = ["ConfigError", "load_config", "load_schema", "parse_override", "retype_strings",
           "validate_config"]


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


_SCALARS = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}


def _types(schema: Mapping[str, Any]) -> set[str]:
    kind = schema.get("type", ())
    return {kind} if isinstance(kind, str) else set(kind)


def retype_strings(values: Any, schema: Mapping[str, Any] | None = None) -> Any:
    """``values`` with each string leaf read as YAML where the schema wants a
    number, boolean or null there and no string.

    Snakemake reads a nested ``--config 'profiles={bins: 100}'`` with YAML's base
    loader, which keeps every scalar a string ('100'); a key the schema types as
    a string (a path, a title) keeps its text whatever it looks like.
    """
    schema = load_schema() if schema is None else schema
    if isinstance(values, dict):
        props = schema.get("properties", {})
        return {k: retype_strings(v, props[k]) if k in props else v for k, v in values.items()}
    if isinstance(values, list) and isinstance(schema.get("items"), dict):
        return [retype_strings(v, schema["items"]) for v in values]
    kinds = _types(schema)
    if kinds == {"string"} and isinstance(values, int) and not isinstance(values, bool):
        return str(values)  # Snakemake read a top-level 'results=2024' as a number
    if isinstance(values, str) and kinds and "string" not in kinds:
        try:
            value = yaml.safe_load(values)
        except yaml.YAMLError:
            return values
        if any(isinstance(value, _SCALARS[k]) and not (k != "boolean" and isinstance(
                value, bool)) for k in kinds if k in _SCALARS) or (
                "array" in kinds and isinstance(value, list)) or (
                "object" in kinds and isinstance(value, dict)):
            return retype_strings(value, schema)
    return values


def _within(path: tuple, tree: Any) -> bool:
    """Whether the key path ``path`` lies inside the nested mapping ``tree``."""
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return False
        tree = tree[key]
    return bool(path)


def validate_config(config: Mapping[str, Any] | None, source: str = "config",
                    command_line: Mapping[str, Any] | None = None,
                    command_line_source: str = "--config") -> dict[str, Any]:
    """Validate ``config`` against the schema and return a copy with defaults filled.

    Parameters
    ----------
    config : mapping or None
        The user's configuration (may be partial; missing keys take defaults).
    source : str
        Name of where the values came from, used in error messages.
    command_line : mapping, optional
        The part of ``config`` given on the command line (Snakemake's
        ``--config``): an error at one of its keys names ``command_line_source``
        instead of ``source``.

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

    def where(key: str) -> str:
        return (command_line_source if command_line is not None
                and _within(tuple(key.split(".")), command_line) else source)

    if errors:
        lines = []
        for err in errors:
            key = _key_path(err)
            if err.validator == "additionalProperties":
                lines.append(f"{where(key)}: {key}: unknown key ({err.message})")
            else:
                lines.append(f"{where(key)}: {key}: {err.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    _check_cross_keys(instance, given, where)
    return instance


def _check_cross_keys(cfg: dict[str, Any], given: set[str],
                      where: Callable[[str], str]) -> None:
    """Constraints between keys that JSON schema cannot express; ``where(key)``
    names the file or option the key came from.

    A constraint between two sections is checked only when both were given:
    a step run by Snakemake receives just the sections it depends on.
    """

    def fail(key: str, reason: str) -> None:
        raise ConfigError(f"{where(key)}: {key}: {reason}")

    ing, prof = cfg["ingest"], cfg["profiles"]
    if {"ingest", "profiles"} <= given and ing["nside"] < prof["nside"]:
        fail("ingest.nside", f"{ing['nside']} is coarser than profiles.nside {prof['nside']}; "
                             f"samples must be indexed at least as finely as the map")
    if ing["tb_min"] >= ing["tb_max"]:
        fail("ingest.tb_min", "must be below ingest.tb_max")
    if ing["reflectance_min"] >= ing["reflectance_max"]:
        fail("ingest.reflectance_min", "must be below ingest.reflectance_max")
    if {"profiles", "model"} <= given:
        from vaemap.presets import PRESETS

        depth = PRESETS[cfg["model"]["preset"]].get("depth", cfg["model"]["depth"])
        bins = cfg["profiles"]["bins"]
        if bins % 2**depth:
            fail("profiles.bins", f"{bins} local-time bins cannot be halved model.depth = "
                                  f"{depth} times (preset {cfg['model']['preset']!r}); choose "
                                  f"bins divisible by {2**depth}, e.g. "
                                  f"{bins - bins % 2**depth or 2**depth}")
    if "sweep" in given and cfg["seed"] in cfg["sweep"]["seed"]:
        fail("sweep.seed", f"{cfg['seed']} is the main seed already; list only extra seeds")
    lo, hi = cfg["maps"]["percentiles"]
    if lo >= hi:
        fail("maps.percentiles", f"{lo} must be below {hi}")
    if "data" in given and cfg["data"]["source"] == "rdr" and not cfg["data"]["rdr_files"]:
        fail("data.rdr_files", "must list RDR files when data.source is rdr")


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
    given: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        _apply(cfg, key, value)
        _apply(given, key, value)
    return validate_config(cfg, source, command_line=given or None,
                           command_line_source="--set")
