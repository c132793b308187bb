"""Recipe and preset numbers pinned against the *reference* column of docs/protocols.md.

tests/test_protocols.py checks that each table's `value` column is what the recipe loads; that
alone lets a number change in the recipe and the `value` cell together. Here every number a recipe
sets must also appear in the row's `reference value` cell (the value read in the paper or the
reference code), or in its `note` (where a deliberate deviation is named with the value used).
Rows whose reference is "(none)" / "(not given)" are this project's own choices and pin nothing.
A failure names the row's reference and source.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import pytest

from longtail.engine.config import load_recipe, method_overrides

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocols.md"
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE]-?\d+)?(?![\w.])")
NO_REFERENCE = ("(none)", "(not given)")


def numbers_in(text: str) -> list:
    return [float(n) for n in NUMBER.findall(text.replace("`", " "))]


def numbers_of(value) -> list:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, list):
        return [n for v in value for n in numbers_of(v)]
    return []


@functools.lru_cache(maxsize=None)
def tables() -> dict:
    from test_protocols import parse_protocol_tables

    return parse_protocol_tables(DOC.read_text(encoding="utf-8"))


def rows():
    for (kind, name), entries in tables().items():
        for row in entries:
            if row["reference"].strip() not in NO_REFERENCE:
                yield pytest.param(kind, name, row, id=f"{kind} {name} {row['key']}")


@functools.lru_cache(maxsize=None)
def recipe(name: str):
    return load_recipe(name)[0]


def actual_value(kind: str, name: str, key: str):
    """What the shipped recipe sets for ``key``, read from the recipe files, not from the table."""
    if kind == "protocol":
        config = recipe(name)
        section, option = key.split(".", 1)
        if section in ("loss", "regularizer"):
            component = getattr(config, section)
            return component.name if option == "name" else component.options.get(option)
        return getattr(getattr(config, section), option)
    key, _, protocol = key.partition(" @ ")
    section, option = key.split(".", 1)
    values = method_overrides(name, protocol or None).get(section)
    if isinstance(values, str):
        values = {"name": values}
    return (values or {}).get(option)


def inherited_numbers(kind: str, row: dict) -> list:
    """A note "as `OTHER`" refers to the same key's row of table OTHER (e.g. ce_drw "as `ldam_drw`")."""
    match = re.match(r"as `([^`]+)`", row["note"].strip())
    if not match:
        return []
    other = tables().get((kind, match.group(1)), [])
    return [n for r in other if r["key"] == row["key"] for n in numbers_in(r["reference"]) + numbers_in(r["note"])]


@pytest.mark.parametrize("kind, name, row", list(rows()))
def test_recipe_numbers_are_the_referenced_ones(kind, name, row):
    value = actual_value(kind, name, row["key"])
    documented = numbers_in(row["reference"]) + numbers_in(row["note"]) + inherited_numbers(kind, row)
    for number in numbers_of(value):
        assert any(math.isclose(number, d, rel_tol=1e-9, abs_tol=1e-12) for d in documented), (
            f"{kind} {name}: {row['key']} = {value!r}, but the reference is {row['reference']!r} "
            f"({row['source']}) and the note names no such value: {row['note']!r}")


def component_rows():
    for (kind, name), entries in tables().items():
        for row in entries:
            if kind == "method" and row["key"] in ("loss.name", "regularizer.name"):
                named = re.findall(r"\b([a-z_]+)\s*=?\s*(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)\b", row["reference"])
                if named:
                    yield pytest.param(name, row, named, id=f"method {name} {row['key']}")


@pytest.mark.parametrize("name, row, named", list(component_rows()))
def test_component_defaults_are_the_referenced_ones(name, row, named):
    """A `loss.name` / `regularizer.name` row whose reference names parameters ("alpha 0.3, beta 0.5")
    pins the component the preset builds: its defaults included, which no `value` cell shows."""
    import torch

    from longtail.engine.training.components import build_loss_fn, build_regularizer
    from longtail.engine.config import build_config

    config, _ = build_config(None, None, [], name)
    counts = [100, 50, 10]
    build = build_loss_fn if row["key"] == "loss.name" else build_regularizer
    component = build(config, counts, torch.device("cpu"))
    modules = [component, *component.modules()] if isinstance(component, torch.nn.Module) else [component]
    for parameter, number in named:
        for module in modules:  # the component or a wrapped one (DRW around LDAM, CCAR around its base)
            actual = getattr(module, parameter, None)
            if isinstance(actual, (int, float)) and not isinstance(actual, bool):
                assert math.isclose(float(actual), float(number), rel_tol=1e-9), (
                    f"method {name}: {parameter} = {actual}, but the reference is {row['reference']!r} "
                    f"({row['source']})")
                break
