"""tools/partial_tables.py: a running grid's finished cells as partial comparison tables, checked
against the metrics written into the cells (numpy for the means)."""

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np

from conftest import tiny_run_overrides

TOOL = Path(__file__).resolve().parent.parent / "tools" / "partial_tables.py"


def test_finished_cells_become_partial_tables_and_the_grid_is_only_read(tiny_idx_root, tmp_path):
    from longtail.engine.compare import plan_cells
    from longtail.report.tables import SUMMARY_COLUMNS

    grid, out = tmp_path / "grid", tmp_path / "out"
    overrides = tiny_run_overrides(tiny_idx_root, grid)
    cells, _ = plan_cells(Namespace(methods="bs,ccar_bs", seeds="0,1", imbalance_factors=None, paired=True,
                                    recipe=None, config=None, output=str(grid), overrides=overrides))
    rng = np.random.default_rng(4)
    finished = {"bs-seed0", "bs-seed1", "ccar_bs-seed0"}  # ccar_bs seed 1 still training
    metrics = {}
    for cell in cells:
        folder = grid / "cells" / cell.name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("{}\n")
        (folder / "class_counts.json").write_text(json.dumps({"train_counts": [40 - 3 * j for j in range(10)]}))
        if cell.name in finished:
            test = {key: float(rng.uniform(0.1, 0.9)) for key, _ in SUMMARY_COLUMNS}
            test["per_class_accuracy"] = rng.uniform(0, 1, 10).tolist()
            metrics[cell.name] = test
            (folder / "metrics.json").write_text(json.dumps({"test": test}))
    before = sorted(str(p.relative_to(grid)) for p in grid.rglob("*"))

    result = subprocess.run([sys.executable, str(TOOL), str(grid), str(out), "--methods", "bs,ccar_bs",
                             "--seeds", "0,1", *overrides], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(grid)) for p in grid.rglob("*")) == before  # nothing written in the grid
    text = (out / "comparison.md").read_text()
    assert text.startswith("**Partial: 3 of 4 cells finished.**")
    report = json.loads((out / "comparison.json").read_text())
    rows = {row["method"]: row for row in report["rows"]}
    balanced = [metrics[f"bs-seed{s}"]["balanced_accuracy"] for s in (0, 1)]
    assert rows["bs"]["balanced_accuracy"]["mean"] == np.mean(balanced)
    assert abs(rows["bs"]["balanced_accuracy"]["std"] - np.std(balanced, ddof=1)) < 1e-12
    assert rows["ccar_bs"]["seeds"] == 1 and rows["ccar_bs"]["balanced_accuracy"]["std"] is None
    delta = metrics["ccar_bs-seed0"]["accuracy"] - metrics["bs-seed0"]["accuracy"]  # paired on seed 0 only
    assert abs(rows["ccar_bs"]["accuracy"]["delta"] - delta) < 1e-12
    assert sorted(p.name for p in out.glob("*-seed*.md")) == sorted(f"{name}.md" for name in finished)
    assert f"{100 * metrics['ccar_bs-seed0']['accuracy']:.2f}" in (out / "ccar_bs-seed0.md").read_text()

    # OUT/plan.json names the whole grid, so paired_deltas on OUT pairs every seed both cells finished
    # (here seed 0 only: ccar_bs seed 1 is still training), even where the grid's own plan.json is
    # another compare call's
    (grid / "plan.json").write_text(json.dumps({"cells": []}))
    deltas = subprocess.run([sys.executable, str(TOOL.parent / "paired_deltas.py"), str(out), "ccar_bs:bs",
                             "--metrics", "balanced", "--wins-on", "balanced"], capture_output=True, text=True)
    assert deltas.returncode == 0, deltas.stderr
    [row] = [line for line in deltas.stdout.splitlines() if line.startswith("| ccar_bs vs bs")]
    difference = 100 * (metrics["ccar_bs-seed0"]["balanced_accuracy"] - metrics["bs-seed0"]["balanced_accuracy"])
    wins = int(difference > 0)
    assert row == f"| ccar_bs vs bs | - | {difference:+.2f} | {wins}/1 |"

    refused = subprocess.run([sys.executable, str(TOOL), str(grid), str(out), "--methods", "ccar_bs,bs",
                              "--seeds", "1", *overrides], capture_output=True, text=True)
    assert refused.returncode == 1 and "has no finished cell yet" in refused.stderr  # ccar_bs seed 1 not done
    unknown = subprocess.run([sys.executable, str(TOOL), str(grid), str(out), "--methods", "bs,nosuch",
                              "--seeds", "0", *overrides], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown method 'nosuch'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
