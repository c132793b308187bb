"""Shipped recipes (``recipes/protocols/*.yaml`` + the method presets of ``recipes/methods.yaml``),
user YAML files and ``build_config``: defaults <- recipe or file <- method preset <- overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from longtail.engine.config.overrides import apply_mapping, parse_override, set_override
from longtail.engine.config.schema import (OPEN_SECTIONS, RECIPE_DIR, ComponentConfig, ConfigError, RunConfig,
                                           dataset_title, load_yaml)
from longtail.engine.config.validate import validate


def available_protocols() -> list[str]:
    return sorted(p.stem for p in (RECIPE_DIR / "protocols").glob("*.yaml"))


def load_methods() -> dict:
    with open(RECIPE_DIR / "methods.yaml", encoding="utf-8") as handle:
        return load_yaml(handle)


def available_recipes() -> list[str]:
    """Every shipped recipe: each protocol alone and combined with each method it lists."""
    names = []
    for protocol in available_protocols():
        names.append(protocol)
        names.extend(f"{protocol}/{method}" for method in protocol_methods(protocol))
    return names


def read_yaml(path: Path) -> dict:
    """A YAML mapping from a file, every failure (missing, unreadable, not UTF-8, not YAML) a ConfigError."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = load_yaml(handle) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {path}") from error
    except IsADirectoryError as error:
        raise ConfigError(f"config {path} is a directory; give a YAML file") from error
    except PermissionError as error:
        raise ConfigError(f"config {path} cannot be read (permission denied)") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {error.start}: {error.reason}); "
                          f"save it as UTF-8 YAML") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def protocol_methods(protocol: str) -> list[str]:
    data = read_yaml(RECIPE_DIR / "protocols" / f"{protocol}.yaml")
    return list(data.get("methods", []))


def method_overrides(method: str, protocol: Optional[str] = None) -> dict:
    """The section mapping a method preset adds (protocol-specific entries win)."""
    methods = load_methods()
    if method not in methods:
        raise ConfigError(f"unknown method '{method}'; valid methods: {', '.join(sorted(methods))}")
    preset = dict(methods[method])
    per_protocol = preset.pop("per_protocol", {}) or {}
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in preset.items()}
    if protocol and protocol in per_protocol:
        for section, values in per_protocol[protocol].items():
            if isinstance(values, dict) and isinstance(merged.get(section), dict):
                merged[section].update(values)
            else:
                merged[section] = values
    return merged


def load_recipe(name: str) -> tuple[RunConfig, str]:
    """Build the config of a shipped recipe ``protocol`` or ``protocol/method``."""
    protocol, _, method = name.partition("/")
    if protocol not in available_protocols():
        raise ConfigError(
            f"unknown recipe '{name}'; run `longtail recipes` for the list. Protocols: "
            f"{', '.join(available_protocols())}"
        )
    config = RunConfig()
    data = read_yaml(RECIPE_DIR / "protocols" / f"{protocol}.yaml")
    data.pop("methods", None)
    data.pop("paper", None)
    apply_mapping(config, data, f"recipe {protocol}")
    if method:
        apply_mapping(config, method_overrides(method, protocol), f"method {method}")
    return config, name


def build_config(
    recipe: Optional[str] = None,
    config_file: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    method: Optional[str] = None,
) -> tuple[RunConfig, str]:
    """Defaults <- recipe or YAML file <- method preset <- overrides. Returns (config, label)."""
    if recipe and config_file:
        raise ConfigError("give either --recipe or --config, not both")
    if config_file:
        config = RunConfig()
        data = read_yaml(Path(config_file))
        base = data.get("base")
        if base:
            config, _ = load_recipe(str(base))
        apply_mapping(config, data, str(config_file))
        label = Path(config_file).stem
    else:
        config, label = load_recipe(recipe or "fashion-mnist-lt")
    if method:
        protocol = label.partition("/")[0]
        apply_mapping(config, method_overrides(method, protocol), f"method {method}")
        label = f"{protocol}/{method}"
    parsed = [parse_override(text) for text in overrides or []]
    # Option order never matters: `loss.omega=0.5 loss.name=ccar_bs` keeps omega. Component names
    # go first (stable sort), so a name given on the command line replaces the recipe's component
    # and every option given with it, before or after, is kept.
    parsed.sort(key=lambda item: not _is_component_name(item[0]))
    for key, value in parsed:
        set_override(config, key, value)
    validate(config)
    if not recipe and not config_file and config.data.name != RunConfig().data.name:
        # No recipe named: the default recipe's name would misname a run on other data (the
        # user's image folder), in the run directory, the log and the plots.
        label = dataset_title(config) + (f"/{method}" if method else "")
        # ...and its description would describe the embedded dataset instead of the user's data.
        config.description = (f"{config.data.name} data with the default recipe's model, optimiser and "
                              f"schedule (fashion-mnist-lt; see `longtail recipes` for others)")
    return config, label


def _is_component_name(dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    return section in OPEN_SECTIONS and key == "name"


def config_from_dict(mapping: dict) -> RunConfig:
    """Rebuild a RunConfig from its saved ``to_dict()`` form (e.g. inside a checkpoint)."""
    config = RunConfig()
    mapping = dict(mapping)
    for section in OPEN_SECTIONS:
        values = mapping.pop(section, None)
        if values is not None:
            setattr(config, section, ComponentConfig(name=values["name"], options=dict(values.get("options", {}))))
    apply_mapping(config, mapping, "saved config")
    validate(config)
    return config

