"""`longtail compare` aggregation recomputed independently (plain Python, no numpy / pandas) for
every column of comparison.csv / .json / .md, from cells whose metrics this test writes itself;
and resuming a cell that has a checkpoint but no metrics (not only a missing cell)."""

from __future__ import annotations

import csv
import json
import math
import random
import re
import signal
from argparse import Namespace

import pytest

from conftest import tiny_run_overrides
from engine_probe import QUIET, tiny_model

# Direction of "best" per column, stated here, not read from the code: calibration errors and
# losses are better when lower, accuracies when higher.
LOWER_IS_BETTER = {"ece", "nll", "brier", "loss"}
METHODS, SEEDS, FACTORS = ("ce", "bs", "la"), (0, 1, 2), (10.0, 20.0)
K = 10


def sample_mean(values):
    return sum(values) / len(values)


def sample_std(values):
    mean = sample_mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def random_metrics(cells, seed: int = 3) -> dict:
    """(method, seed) -> random test metrics (every summary column and K per-class accuracies) per cell."""
    from longtail.report.tables import SUMMARY_COLUMNS

    rng = random.Random(seed)
    metrics = {}
    for cell in cells:
        test = {key: rng.uniform(0.05, 0.95) for key, _ in SUMMARY_COLUMNS}
        test["per_class_accuracy"] = [rng.uniform(0, 1) for _ in range(K)]
        metrics[(cell.method, cell.seed)] = test
    return metrics


def write_cell(output, cell, test):
    """A finished cell as compare reads it: its test metrics and training counts."""
    folder = output / "cells" / cell.name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test": test}))
    (folder / "class_counts.json").write_text(json.dumps({"train_counts": [40 - 3 * j for j in range(K)]}))


@pytest.fixture(scope="module")
def comparison(tiny_idx_root, tmp_path_factory):
    from longtail.engine.compare import plan_cells, write_comparison
    from longtail.report.tables import SUMMARY_COLUMNS

    output = tmp_path_factory.mktemp("aggregate")
    args = Namespace(methods=",".join(METHODS), seeds=",".join(map(str, SEEDS)),
                     imbalance_factors=",".join(map(str, FACTORS)), paired=True, recipe=None, config=None,
                     output=str(output), overrides=tiny_run_overrides(tiny_idx_root, output))
    cells, _ = plan_cells(args)
    rng = random.Random(7)
    metrics = {}
    keys = [key for key, _ in SUMMARY_COLUMNS]
    for cell in cells:
        test = {key: rng.uniform(0.05, 0.95) for key in keys}
        test["per_class_accuracy"] = [rng.uniform(0, 1) for _ in range(K)]
        metrics[(cell.imbalance_factor, cell.method, cell.seed)] = test
        write_cell(output, cell, test)
    write_comparison(output, cells, "ce")
    return output, metrics, keys


def expected_row(metrics, factor, method, key):
    values = [metrics[(factor, method, s)][key] for s in SEEDS]
    reference = sample_mean([metrics[(factor, "ce", s)][key] for s in SEEDS])
    return sample_mean(values), sample_std(values), sample_mean(values) - reference


def best_method(metrics, factor, key):
    means = {m: sample_mean([metrics[(factor, m, s)][key] for s in SEEDS]) for m in METHODS}
    choose = min if key in LOWER_IS_BETTER else max
    return choose(means, key=means.get)


def test_json_rows_are_the_seed_means_stds_deltas_and_wins(comparison):
    output, metrics, keys = comparison
    rows = json.loads((output / "comparison.json").read_text())["rows"]
    assert [(r["imbalance_factor"], r["method"]) for r in rows] == [(f, m) for f in FACTORS for m in METHODS]
    for row in rows:
        factor, method = row["imbalance_factor"], row["method"]
        for key in keys:
            mean, std, delta = expected_row(metrics, factor, method, key)
            assert row[key]["mean"] == pytest.approx(mean, abs=1e-12), key
            assert row[key]["std"] == pytest.approx(std, abs=1e-12), key
            assert row[key]["delta"] == pytest.approx(delta, abs=1e-12), key
        per_class = [sample_mean([metrics[(factor, method, s)]["per_class_accuracy"][j] for s in SEEDS])
                     for j in range(K)]
        assert row["per_class_accuracy"] == pytest.approx(per_class, abs=1e-12)
        wins = sum(metrics[(factor, method, s)]["accuracy"] > metrics[(factor, "ce", s)]["accuracy"] for s in SEEDS)
        assert row["overall_wins_vs_reference"] == wins and row["seeds"] == len(SEEDS)


def test_csv_has_every_column_from_the_seeds(comparison):
    output, metrics, keys = comparison
    with open(output / "comparison.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(FACTORS) * len(METHODS)
    for row in rows:
        factor, method = float(row["imbalance_factor"]), row["method"]
        for key in keys:
            mean, std, delta = expected_row(metrics, factor, method, key)
            assert float(row[f"{key}_mean"]) == pytest.approx(mean, abs=1e-12), key
            assert float(row[f"{key}_std"]) == pytest.approx(std, abs=1e-12), key
            assert float(row[f"{key}_delta"]) == pytest.approx(delta, abs=1e-12), key


def test_markdown_cells_and_best_per_column_direction(comparison):
    from longtail.report.tables import SUMMARY_COLUMNS

    output, metrics, keys = comparison
    text = (output / "comparison.md").read_text()
    sections = re.split(r"### imbalance factor ", text)[1:]
    assert len(sections) == len(FACTORS)
    directions_seen = set()
    for factor, section in zip(FACTORS, sections):
        assert section.startswith(f"{factor:g}\n")
        lines = [line for line in section.splitlines() if line.startswith("| ")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        assert header[1:1 + len(keys)] == [title for _, title in SUMMARY_COLUMNS]
        for line in lines[1:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            method = cells[0]
            for key, cell in zip(keys, cells[1:]):
                mean, std, _ = expected_row(metrics, factor, method, key)
                plain = f"{100 * mean:.2f} ± {100 * std:.2f}"
                best = best_method(metrics, factor, key) == method
                assert cell == (f"**{plain}**" if best else plain), (factor, method, key, cell)
                if best:
                    directions_seen.add(key in LOWER_IS_BETTER)
            delta = expected_row(metrics, factor, method, "accuracy")[2]
            assert cells[1 + len(keys)] == f"{100 * delta:+.2f}"
    assert directions_seen == {True, False}  # both directions were exercised (ECE is lower-is-better)
    # The construction makes direction matter: the lowest mean ECE is not the highest.
    for factor in FACTORS:
        means = [sample_mean([metrics[(factor, m, s)]["ece"] for s in SEEDS]) for m in METHODS]
        assert min(means) != max(means)


def test_a_checkpointed_cell_is_resumed_not_restarted(tiny_idx_root, tmp_path, monkeypatch):
    """A comparison interrupted inside a cell's second epoch leaves that cell with a checkpoint and no
    metrics; the next `compare` resumes it (its first epoch's record, timing included, survives)
    and ends with the metrics of an uninterrupted comparison."""
    from longtail.cli import main
    from longtail.engine.training.trainer import Trainer

    tiny_model(monkeypatch)

    def arguments(output):
        return ["compare", "--methods", "ce", "--seeds", "0", "--output", str(output),
                *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=3), *QUIET, "train.device=cpu"]

    assert main(arguments(tmp_path / "reference")) == 0
    reference = json.loads((tmp_path / "reference" / "cells" / "ce-seed0" / "metrics.json").read_text())

    original = Trainer._loss_terms

    def interrupt(self, logits, targets):
        if self.state.global_step == 13:  # epoch 1, batch 3
            signal.raise_signal(signal.SIGTERM)
        return original(self, logits, targets)

    monkeypatch.setattr(Trainer, "_loss_terms", interrupt)
    output = tmp_path / "cmp"
    assert main(arguments(output)) == 128 + signal.SIGTERM  # the cell saved a checkpoint; compare exits 128+N
    cell = output / "cells" / "ce-seed0"
    assert not (cell / "metrics.json").exists() and (cell / "checkpoints" / "last.pt").exists()
    first_epoch = (cell / "history.jsonl").read_text().splitlines()[0]
    monkeypatch.setattr(Trainer, "_loss_terms", original)
    assert main(arguments(output)) == 0
    history = (cell / "history.jsonl").read_text().splitlines()
    assert len(history) == 3 and history[0] == first_epoch  # not retrained: the same record, same timing
    assert json.loads((cell / "metrics.json").read_text())["test"] == reference["test"]


def test_partial_tables_cover_the_finished_cells_with_paired_deltas(tiny_idx_root, tmp_path):
    """A grid still running: each method's mean over its finished seeds, the delta and wins over the
    seeds its reference finished too, no row for a method with no finished cell, and files that say
    they are partial; the finished grid's tables then equal the ordinary ones."""
    from longtail.engine.compare import plan_cells, write_comparison

    args = Namespace(methods="ce,bs,la", seeds="0,1,2", imbalance_factors=None, paired=True, recipe=None,
                     config=None, output=str(tmp_path), overrides=tiny_run_overrides(tiny_idx_root, tmp_path))
    cells, _ = plan_cells(args)
    finished = {("ce", 0), ("ce", 1), ("bs", 1), ("bs", 2)}  # la: none yet
    metrics = random_metrics(cells)
    for cell in cells:
        if (cell.method, cell.seed) in finished:
            write_cell(tmp_path, cell, metrics[(cell.method, cell.seed)])
    write_comparison(tmp_path, cells, "ce", partial=True)

    report = json.loads((tmp_path / "comparison.json").read_text())
    assert report["complete"] is False and report["finished_cells"] == 4 and report["cells_in_grid"] == 9
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == {"ce", "bs"}
    bs = rows["bs"]
    assert (bs["seeds"], bs["paired_seeds"]) == (2, 1)  # bs seeds 1, 2; ce has seed 1 of them
    accuracy = [metrics[("bs", s)]["accuracy"] for s in (1, 2)]
    assert bs["accuracy"]["mean"] == pytest.approx(sample_mean(accuracy))
    assert bs["accuracy"]["std"] == pytest.approx(sample_std(accuracy))
    assert bs["accuracy"]["delta"] == pytest.approx(metrics[("bs", 1)]["accuracy"] - metrics[("ce", 1)]["accuracy"])
    assert bs["overall_wins_vs_reference"] == int(metrics[("bs", 1)]["accuracy"] > metrics[("ce", 1)]["accuracy"])
    assert rows["ce"]["seeds"] == 2 and rows["ce"]["accuracy"]["delta"] == pytest.approx(0.0)
    text = (tmp_path / "comparison.md").read_text()
    assert text.startswith("**Partial: 4 of 9 cells finished.**")
    assert re.search(r"\| bs \|.*\| \d/1 \|", text), text  # wins out of the one paired seed
    with open(tmp_path / "comparison.csv") as handle:
        csv_rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert csv_rows["bs"]["seeds"] == "2" and csv_rows["bs"]["paired_seeds"] == "1"

    for cell in cells:  # the rest finishes: the same call without partial gives the complete tables
        if not (tmp_path / "cells" / cell.name / "metrics.json").exists():
            write_cell(tmp_path, cell, metrics[(cell.method, cell.seed)])
    write_comparison(tmp_path, cells, "ce")
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert report["complete"] is True and len(report["rows"]) == 3
    assert all(row["seeds"] == row["paired_seeds"] == 3 for row in report["rows"])
    assert not (tmp_path / "comparison.md").read_text().startswith("**Partial")


def test_partial_tables_show_no_spread_for_a_method_with_one_finished_seed(tiny_idx_root, tmp_path):
    """Mid-grid, `ce` has three finished seeds and `bs` one: `ce` is mean ± sample std, `bs` its one
    value with no "± 0.00" (one seed has no spread; its std is null in the json and empty in the csv),
    and a `seeds` column says how many seeds each row is over."""
    from longtail.engine.compare import plan_cells, write_comparison
    from longtail.report.tables import SUMMARY_COLUMNS

    args = Namespace(methods="ce,bs", seeds="0,1,2", imbalance_factors=None, paired=True, recipe=None,
                     config=None, output=str(tmp_path), overrides=tiny_run_overrides(tiny_idx_root, tmp_path))
    cells, _ = plan_cells(args)
    metrics = random_metrics(cells, seed=11)
    for cell in cells:
        if cell.method == "ce" or cell.seed == 0:
            write_cell(tmp_path, cell, metrics[(cell.method, cell.seed)])
    write_comparison(tmp_path, cells, "ce", partial=True)

    rows = {row["method"]: row for row in json.loads((tmp_path / "comparison.json").read_text())["rows"]}
    assert rows["bs"]["seeds"] == 1 and rows["bs"]["accuracy"]["std"] is None
    assert rows["bs"]["accuracy"]["mean"] == pytest.approx(metrics[("bs", 0)]["accuracy"])
    ce_accuracy = [metrics[("ce", s)]["accuracy"] for s in (0, 1, 2)]
    assert rows["ce"]["accuracy"]["std"] == pytest.approx(sample_std(ce_accuracy))

    lines = (tmp_path / "comparison.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    titles = [cell.strip() for cell in header.strip("|").split("|")]
    assert titles[-2:] == ["wins", "seeds"]
    bs_line = next(line for line in lines if line.startswith("| bs |"))
    ce_line = next(line for line in lines if line.startswith("| ce |"))
    bs_cells = [cell.strip().strip("*") for cell in bs_line.strip("|").split("|")]
    assert "±" not in bs_line and bs_cells[-1] == "1" and bs_cells[-2] in ("0/1", "1/1")
    for (key, _), text in zip(SUMMARY_COLUMNS, bs_cells[1:]):
        assert text == f"{100 * metrics[('bs', 0)][key]:.2f}", key
    assert ce_line.count("±") == len(SUMMARY_COLUMNS) and ce_line.rstrip(" |").endswith("3")
    assert f"{100 * sample_mean(ce_accuracy):.2f} ± {100 * sample_std(ce_accuracy):.2f}" in ce_line
    assert "a value without ± is from one seed" in (tmp_path / "comparison.md").read_text()
    with open(tmp_path / "comparison.csv", newline="") as handle:
        csv_rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert csv_rows["bs"]["accuracy_std"] == "" and csv_rows["bs"]["seeds"] == "1"
    assert float(csv_rows["ce"]["accuracy_std"]) == pytest.approx(sample_std(ce_accuracy))
