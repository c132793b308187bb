"""train.headline_metric=balanced_accuracy (the GTSRB recipes): compare's Δ column, paired wins and
verdict use balanced accuracy, overall accuracy stays beside it; recomputed here in plain Python from
metrics this test writes. The default (overall accuracy) tables are pinned by test_compare*.py."""

from __future__ import annotations

import csv
import json
import re
from argparse import Namespace

import pytest

from conftest import tiny_run_overrides
from test_compare_aggregation import random_metrics, write_cell

METHODS, SEEDS, K = ("ce", "bs", "ccar_bs"), (0, 1, 2), 10


@pytest.fixture(scope="module")
def comparison(tiny_idx_root, tmp_path_factory):
    from longtail.engine.compare import plan_cells, write_comparison

    output = tmp_path_factory.mktemp("headline")
    args = Namespace(methods=",".join(METHODS), seeds=",".join(map(str, SEEDS)), imbalance_factors=None,
                     paired=True, recipe=None, config=None, output=str(output),
                     overrides=tiny_run_overrides(tiny_idx_root, output) + ["train.headline_metric=balanced_accuracy"])
    cells, _ = plan_cells(args)
    metrics = random_metrics(cells)
    for cell in cells:
        write_cell(output, cell, metrics[(cell.method, cell.seed)])
    write_comparison(output, cells, "ce")
    return output, metrics, cells


def mean(values):
    return sum(values) / len(values)


def wins(metrics, method, key):
    return sum(metrics[(method, s)][key] > metrics[("ce", s)][key] for s in SEEDS)


def test_table_has_the_headline_delta_then_overall_and_counts_headline_wins(comparison):
    output, metrics, _ = comparison
    text = (output / "comparison.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header.endswith("| Balanced | ECE | Δ Balanced vs ce | Δ Overall vs ce | wins |")
    for method in METHODS:
        line = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        balanced = 100 * (mean([metrics[(method, s)]["balanced_accuracy"] for s in SEEDS])
                          - mean([metrics[("ce", s)]["balanced_accuracy"] for s in SEEDS]))
        overall = 100 * (mean([metrics[(method, s)]["accuracy"] for s in SEEDS])
                         - mean([metrics[("ce", s)]["accuracy"] for s in SEEDS]))
        assert cells[-3:] == [f"{balanced:+.2f}", f"{overall:+.2f}", f"{wins(metrics, method, 'balanced_accuracy')}/3"]
    assert "Headline: balanced accuracy" in text


def test_verdict_leads_with_balanced_accuracy_and_keeps_overall(comparison):
    output, metrics, _ = comparison
    text = (output / "comparison.md").read_text()
    sentences = [line for line in text.splitlines() if line.startswith("On ")]
    assert [re.match(r"On ([a-z -]+?),", s).group(1) for s in sentences] == [
        "balanced accuracy", "overall accuracy", "worst-class accuracy"]
    means = {m: mean([metrics[(m, s)]["balanced_accuracy"] for s in SEEDS]) for m in METHODS}
    leader = max(means, key=means.get)
    assert sentences[0].startswith(f"On balanced accuracy, {leader} led ({100 * means[leader]:.2f} %)")


def test_json_and_csv_carry_both_win_counts(comparison):
    output, metrics, _ = comparison
    rows = json.loads((output / "comparison.json").read_text())["rows"]
    with open(output / "comparison.csv", newline="") as handle:
        table = {row["method"]: row for row in csv.DictReader(handle)}
    for row in rows:
        method = row["method"]
        assert row["headline"] == "balanced_accuracy" == table[method]["headline"]
        assert row["headline_wins_vs_reference"] == wins(metrics, method, "balanced_accuracy")
        assert int(table[method]["headline_wins"]) == row["headline_wins_vs_reference"]
        assert row["overall_wins_vs_reference"] == wins(metrics, method, "accuracy") == int(table[method]["wins"])


def test_the_headline_does_not_change_a_cells_identity(comparison):
    from longtail.engine.compare import config_hash

    _, _, cells = comparison
    config = cells[0].config.to_dict()
    other = json.loads(json.dumps(config))
    other["train"]["headline_metric"] = "accuracy"
    assert config_hash(config) == config_hash(other)


def test_a_bad_headline_is_refused():
    from longtail.engine.config import ConfigError
    from longtail.engine.config.recipes import build_config

    with pytest.raises(ConfigError, match="train.headline_metric='ece' is not valid; choose one of: accuracy, "
                                          "balanced_accuracy"):
        build_config(overrides=["train.headline_metric=ece"])


def test_a_key_added_to_the_schema_later_keeps_a_recorded_cell_reusable(comparison):
    """A cell recorded before a key existed (its config.yaml lacks it) has the identity of the same
    cell now, with the key at its default; a changed value still changes the identity."""
    from longtail.engine.compare import _changed_settings, config_hash

    _, _, cells = comparison
    now = cells[0].config.to_dict()
    older = json.loads(json.dumps(now))
    del older["data"]["class_order"], older["data"]["validation_group_scope"]
    assert config_hash(older) == config_hash(now)
    changed = json.loads(json.dumps(older))
    changed["data"]["n_max"] = 7
    assert config_hash(changed) != config_hash(now)
    assert _changed_settings(now, changed) == "data.n_max: None -> 7"
