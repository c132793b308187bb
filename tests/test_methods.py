"""Methods live with the method (engine/methods, docs/architecture.md "Methods"): the config, data
setup and trainer never branch on a method's name, and a new method is one module plus a preset."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine import methods
from longtail.engine.config import build_config
from longtail.engine.methods import plan_for

SRC = Path(__file__).resolve().parents[1] / "src" / "longtail" / "engine"
GENERIC = [SRC / "training" / "trainer.py", SRC / "training" / "components.py", SRC / "training" / "data_setup.py",
           *sorted((SRC / "config").glob("*.py"))]


def _method_names() -> set[str]:
    names = set(methods.all_loss_names())
    names |= {m.name for m in methods.available_methods()}
    return names


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: p.name)
def test_generic_code_has_no_branch_on_a_method_name(path):
    """No comparison with a method's name, and no test of loss.name / model.decoupled, in the config,
    the data setup, the components or the trainer."""
    names = _method_names()
    assert {"ccar_bs", "concutmix", "ldam_drw", "crt", "lws"} <= names
    offending = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        parts = [node.left, *node.comparators]
        for part in parts:
            for inner in ast.walk(part):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str) and inner.value in names:
                    offending.append(f"line {node.lineno}: compares with {inner.value!r}")
                if isinstance(inner, ast.Attribute) and (
                        (inner.attr == "name" and isinstance(inner.value, ast.Attribute) and inner.value.attr == "loss")
                        or inner.attr == "decoupled"):
                    offending.append(f"line {node.lineno}: tests {ast.unparse(inner)}")
    assert not offending, f"{path.name} branches on a method:\n" + "\n".join(offending)


@pytest.mark.parametrize("recipe, loss, stage", [
    ("fashion-mnist-lt/ce", "standard", "none"),
    ("fashion-mnist-lt/ccar_bs", "standard", "none"),
    ("fashion-mnist-lt/ldam_drw", "ldam", "none"),
    ("fashion-mnist-lt/concutmix", "contrastive", "none"),
    ("fashion-mnist-lt/crt", "standard", "crt"),
    ("fashion-mnist-lt/lws", "standard", "lws"),
])
def test_plan_picks_each_presets_methods(recipe, loss, stage):
    config, _ = build_config(recipe)
    plan = plan_for(config)
    assert (plan.loss.name, plan.stage.name) == (loss, stage)


TOY = '''
"""A toy method for the test: CE whose hooks leave a trace."""
import torch.nn.functional as F
from torch import nn

from longtail.engine.errors import ConfigError
from longtail.engine.methods.base import Method


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def forward(self, logits, targets):
        self.steps += 1
        return F.cross_entropy(logits, targets)


class Toy(Method):
    name = "toy"
    kind = "loss"

    def claims(self, config):
        return config.loss.name == "toy_ce"

    def loss_names(self):
        return ("toy_ce",)

    def check(self, config):
        if config.loss.options:
            raise ConfigError("loss.name=toy_ce takes no options")

    def objective(self, config, class_counts, device, rank, head):
        return Counting()

    def epoch_statistics(self, objective):
        return {"toy_steps": objective.steps}


METHODS = (Toy(),)
'''


def test_a_new_method_is_one_module(tiny_idx_root, tmp_path, monkeypatch, capsys):
    """A module dropped into the methods package's path is found, checked, built, stepped and its
    statistics reach history.jsonl, with no change anywhere else."""
    package = tmp_path / "extra_methods"
    package.mkdir()
    (package / "toy.py").write_text(textwrap.dedent(TOY))
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(package)])
    methods.available_methods.cache_clear()
    try:
        assert main(["train", *tiny_run_overrides(tiny_idx_root, tmp_path, epochs=2), "loss.name=toy_ce",
                     "loss.bogus=1"]) == 2
        assert "takes no options" in capsys.readouterr().err
        assert main(["train", *tiny_run_overrides(tiny_idx_root, tmp_path, epochs=2), "loss.name=toy_ce",
                     "train.run_name=toy"]) == 0
    finally:
        methods.available_methods.cache_clear()
    history = [json.loads(line) for line in (tmp_path / "toy" / "history.jsonl").read_text().splitlines()]
    steps = [h["toy_steps"] for h in history]
    assert len(steps) == 2 and 0 < steps[0] < steps[1]
