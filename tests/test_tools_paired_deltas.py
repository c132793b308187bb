"""tools/paired_deltas.py (RESULTS.md's method-vs-base tables) on a hand-made grid, checked with numpy."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

TOOL = Path(__file__).resolve().parent.parent / "tools" / "paired_deltas.py"
KEYS = ("accuracy", "balanced_accuracy", "many_accuracy", "medium_accuracy", "few_accuracy",
        "worst_class_accuracy", "ece", "confusion_spectral_norm")


def make_grid(root: Path, values: dict, methods=("bs", "ccar_bs")) -> None:
    """A compare output: plan.json naming every cell, metrics.json for the cells in ``values``."""
    cells = []
    for method in methods:
        for seed in (0, 1, 2):
            name = f"{method}-seed{seed}"
            cells.append({"name": name, "method": method, "seed": seed, "imbalance_factor": None})
            if (method, seed) in values:
                (root / "cells" / name).mkdir(parents=True)
                (root / "cells" / name / "metrics.json").write_text(json.dumps({"test": values[(method, seed)]}))
    (root / "plan.json").write_text(json.dumps({"cells": cells}))


def run(*args, prefix="| ccar_bs") -> list:
    out = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.startswith(prefix)]


def test_deltas_over_the_seeds_both_cells_finished_match_numpy(tmp_path):
    rng = np.random.default_rng(3)
    values = {(m, s): dict(zip(KEYS, rng.uniform(0.2, 0.9, len(KEYS)).tolist()))
              for m in ("bs", "ccar_bs") for s in (0, 1, 2)}
    del values[("ccar_bs", 2)]  # a grid still running: seed 2 of ccar_bs has not finished
    make_grid(tmp_path, values)
    [row] = run(tmp_path, "ccar_bs:bs", "--metrics", "balanced,few,spectral", "--wins-on", "balanced",
                "--paper", "ccar_bs:bs=+3.91")
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    for cell, (key, scale, digits) in zip(cells[2:5], (("balanced_accuracy", 100, 2), ("few_accuracy", 100, 2),
                                                        ("confusion_spectral_norm", 1, 3))):
        differences = np.array([scale * (values[("ccar_bs", s)][key] - values[("bs", s)][key]) for s in (0, 1)])
        assert cell == f"{differences.mean():+.{digits}f} ± {differences.std(ddof=1):.{digits}f}"
    wins = sum(values[("ccar_bs", s)]["balanced_accuracy"] > values[("bs", s)]["balanced_accuracy"] for s in (0, 1))
    assert cells[5] == f"{wins}/2"  # over the two paired seeds, not the three planned
    assert cells[6] == "+3.91"


def test_default_columns_are_the_ones_results_md_was_made_with(tmp_path):
    values = {(m, s): dict.fromkeys(KEYS, 0.5 + 0.1 * (m == "ccar_bs")) for m in ("bs", "ccar_bs") for s in (0, 1, 2)}
    make_grid(tmp_path, values)
    [row] = run(tmp_path, "ccar_bs:bs")
    assert row == "| ccar_bs vs bs | - | +10.00 ± 0.00 | +10.00 ± 0.00 | +10.00 ± 0.00 | +0.100 ± 0.000 | 3/3 |"


def test_methods_with_colons_pair_by_the_grid_s_method_names(tmp_path):
    augmented = "bs:data.autoaugment=true"
    values = {(m, s): dict.fromkeys(KEYS, 0.5 + 0.2 * (m == augmented)) for m in ("bs", augmented) for s in (0, 1, 2)}
    make_grid(tmp_path, values, methods=("bs", augmented))
    [row] = run(tmp_path, f"{augmented}:bs", "--paper", f"{augmented}:bs=+1", prefix="| bs:data")
    assert row.startswith(f"| {augmented} vs bs | - | +20.00 ± 0.00 |") and row.endswith("| 3/3 | +1 |")
    [row] = run(tmp_path, f"bs:{augmented}", prefix="| bs vs")
    assert row.startswith(f"| bs vs {augmented} | - | -20.00 ± 0.00 |")
    refused = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "ccar_bs:bs"], capture_output=True, text=True)
    assert refused.returncode == 2 and "no METHOD:BASE split" in refused.stderr  # never a silently missing row


def test_one_paired_seed_shows_its_difference_without_a_spread(tmp_path):
    values = {("bs", 0): dict.fromkeys(KEYS, 0.5), ("bs", 1): dict.fromkeys(KEYS, 0.6),
              ("ccar_bs", 0): dict.fromkeys(KEYS, 0.55)}  # ccar_bs seed 0 only: one paired seed
    make_grid(tmp_path, values)
    [row] = run(tmp_path, "ccar_bs:bs")
    assert row == "| ccar_bs vs bs | - | +5.00 | +5.00 | +5.00 | +0.050 | 1/1 |"
