"""Merging recipe mappings and ``section.key=value`` overrides into a :class:`RunConfig`, with every
key and value type checked as it is set."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Optional

import yaml

from longtail.engine.config.schema import (OPEN_SECTIONS, TYPED_SECTIONS, ComponentConfig, ConfigError, RunConfig,
                                           load_yaml)


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` or raise a ConfigError naming ``key``."""
    if isinstance(annotation, str):
        annotation = eval_annotation(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [a for a in options if a is not type(None)]
        return _check_value(value, inner[0], key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # "nan", "inf", "1e-3" written as text: a number, range-checked later
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is list or origin is list:
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            return list(value)
        raise ConfigError(f"{key} must be a list of numbers like [160, 180], got {value!r}")
    elif annotation is dict:
        if isinstance(value, dict):
            return value
    else:  # pragma: no cover - every field type is handled above
        raise TypeError(f"unsupported annotation {annotation} for {key}")
    expected = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key} must be of type {expected}, got {value!r} ({type(value).__name__})")


def eval_annotation(text: str) -> Any:
    return {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict,
            "Optional[str]": Optional[str], "Optional[int]": Optional[int],
            "Optional[float]": Optional[float], "Optional[bool]": Optional[bool]}[text]


def _section_fields(section_cls) -> dict:
    return {f.name: f for f in dataclasses.fields(section_cls)}


def apply_mapping(config: RunConfig, mapping: dict, source: str) -> None:
    """Merge a nested mapping (from YAML) into ``config`` in place, checking keys and types."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(mapping).__name__}")
    for section, values in mapping.items():
        if section in ("base", "method"):
            continue  # consumed by the recipe loader
        if section == "description":
            config.description = str(values)
            continue
        if section in OPEN_SECTIONS:
            if isinstance(values, str):
                values = {"name": values}
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: '{section}' must be a mapping with a 'name', got {values!r}")
            # `name` first: setting a new name drops the previous component's options, and options
            # written before `name` in the same mapping belong to the new component.
            for key, value in sorted(values.items(), key=lambda item: item[0] != "name"):
                if key == "options" and isinstance(value, dict):  # the saved form: {name, options: {...}}
                    for option, option_value in value.items():
                        set_override(config, f"{section}.{option}", option_value, source)
                else:
                    set_override(config, f"{section}.{key}", value, source)
            continue
        if section not in TYPED_SECTIONS:
            valid = ", ".join(("description",) + TYPED_SECTIONS + OPEN_SECTIONS)
            raise ConfigError(f"{source}: unknown section '{section}'; valid sections: {valid}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping, got {values!r}")
        for key, value in values.items():
            set_override(config, f"{section}.{key}", value, source)


def set_override(config: RunConfig, dotted: str, value: Any, source: str = "override") -> None:
    """Set ``section.key`` to ``value`` with key and type checks."""
    parts = dotted.split(".")
    section = parts[0]
    if section in OPEN_SECTIONS:
        component: ComponentConfig = getattr(config, section)
        if len(parts) == 2 and parts[1] == "name":
            if not isinstance(value, str):
                raise ConfigError(f"{source}: {dotted} must be a name, got {value!r}")
            if value != component.name:
                component.options = {}  # options belong to the previous component
            component.name = value
            return
        if len(parts) == 2:
            component.options[parts[1]] = value
            return
        if len(parts) == 3 and parts[1] == "options":
            component.options[parts[2]] = value
            return
        raise ConfigError(f"{source}: '{dotted}' is not a valid key; use {section}.name or {section}.<option>")
    if section not in TYPED_SECTIONS or len(parts) != 2:
        valid = ", ".join(TYPED_SECTIONS + OPEN_SECTIONS)
        raise ConfigError(f"{source}: '{dotted}' is not a valid key; keys look like section.key with section in: {valid}")
    section_obj = getattr(config, section)
    fields = _section_fields(type(section_obj))
    key = parts[1]
    if key not in fields:
        raise ConfigError(
            f"{source}: unknown key '{dotted}'; valid keys in '{section}': {', '.join(fields)}"
        )
    setattr(section_obj, key, _check_value(value, fields[key].type, f"{source}: {dotted}"))


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is read as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. optim.lr=0.05)")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override '{text}': cannot read value {raw!r}: {error}") from error
    return key.strip(), value

