"""`longtail compare`: grid of cells, aggregate tables checked against the cells' own metrics, resume."""

from __future__ import annotations

import csv
import json
import statistics

from conftest import tiny_run_overrides
from longtail.cli import main


def test_compare_grid_tables_and_resume(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "cmp"
    arguments = ["compare", "--methods", "ce,bs,ccar_bs", "--seeds", "0,1", "--reference", "ce",
                 "--output", str(output), *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=1),
                 "train.eval_train=false"]
    assert main(arguments) == 0
    assert "6 cells, 0 already finished, 6 to run" in capsys.readouterr().out
    cells = {p.name: json.loads((p / "metrics.json").read_text())["test"] for p in (output / "cells").iterdir()
             if p.is_dir()}
    assert sorted(cells) == sorted(f"{m}-seed{s}" for m in ("ce", "bs", "ccar_bs") for s in (0, 1))

    # Paired: the same seed gives every method the same long-tailed split and initial data order.
    hashes = {json.loads((output / "cells" / name / "class_counts.json").read_text())["split"]["longtail"]["index_hash"]
              for name in cells}
    assert len(hashes) == 1

    rows = {row["method"]: row for row in json.loads((output / "comparison.json").read_text())["rows"]}
    for method in ("ce", "bs", "ccar_bs"):
        overall = [cells[f"{method}-seed{s}"]["accuracy"] for s in (0, 1)]
        worst = [cells[f"{method}-seed{s}"]["worst_class_accuracy"] for s in (0, 1)]
        assert rows[method]["accuracy"]["mean"] == statistics.mean(overall)
        assert abs(rows[method]["accuracy"]["std"] - statistics.stdev(overall)) < 1e-12
        assert rows[method]["worst_class_accuracy"]["mean"] == statistics.mean(worst)
        reference = statistics.mean(cells[f"ce-seed{s}"]["accuracy"] for s in (0, 1))
        assert abs(rows[method]["accuracy"]["delta"] - (statistics.mean(overall) - reference)) < 1e-12
        wins = sum(cells[f"{method}-seed{s}"]["accuracy"] > cells[f"ce-seed{s}"]["accuracy"] for s in (0, 1))
        assert rows[method]["overall_wins_vs_reference"] == wins
    assert rows["ce"]["accuracy"]["delta"] == 0 and rows["ce"]["overall_wins_vs_reference"] == 0

    table = (output / "comparison.md").read_text()
    best = max(rows.values(), key=lambda r: r["accuracy"]["mean"])
    assert f"| {best['method']} | **{100 * best['accuracy']['mean']:.2f}" in table
    with open(output / "comparison.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    assert (output / "per_class_accuracy.png").is_file() and (output / "overall_vs_worst.png").is_file()

    # Interrupted comparison: delete one finished cell; only that one runs again, in a subprocess.
    before = (output / "cells" / "ce-seed0" / "metrics.json").stat().st_mtime_ns
    for path in sorted((output / "cells" / "bs-seed1").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert main([*arguments, "--jobs", "2"]) == 0
    assert "6 cells, 5 already finished, 1 to run" in capsys.readouterr().out
    assert (output / "cells" / "ce-seed0" / "metrics.json").stat().st_mtime_ns == before
    rerun = json.loads((output / "cells" / "bs-seed1" / "metrics.json").read_text())["test"]
    assert rerun == cells["bs-seed1"]  # a subprocess reproduces the in-process cell exactly


def test_method_specs_carry_their_own_overrides(tiny_idx_root, tmp_path):
    from argparse import Namespace

    from longtail.engine.compare import plan_cells

    args = Namespace(methods="ccar_ce,ccar_ce:loss.omega=0.25,car:regularizer.alpha=1.0:regularizer.beta=0.9",
                     seeds="3", imbalance_factors="10,20", paired=True, recipe=None, config=None, output=None,
                     overrides=tiny_run_overrides(tiny_idx_root, tmp_path))
    cells, _ = plan_cells(args)
    by_name = {cell.name: cell for cell in cells}
    assert sorted(by_name) == sorted(f"{m}-if{f}-seed3" for f in (10, 20) for m in
                                     ("ccar_ce", "ccar_ce_loss.omega-0.25", "car_regularizer.alpha-1.0_regularizer.beta-0.9"))
    assert by_name["ccar_ce_loss.omega-0.25-if10-seed3"].config.loss.options == {"omega": 0.25}
    car = by_name["car_regularizer.alpha-1.0_regularizer.beta-0.9-if20-seed3"].config
    assert car.regularizer.options == {"alpha": 1.0, "beta": 0.9} and car.data.imbalance_factor == 20
    assert car.train.seed == 3


def test_stage2_methods_start_from_their_stage1_cell(tiny_idx_root, tmp_path, capsys):
    from longtail.engine.checkpoint import load_checkpoint

    output = tmp_path / "cmp"
    # crt before ce in the list: the stage-1 cells still run first; lws names its source explicitly.
    arguments = ["compare", "--methods", "crt,ce,bs,lws:model.init_from=^bs", "--seeds", "1", "--output",
                 str(output), *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=1), "train.eval_train=false"]
    assert main([*arguments, "--jobs", "2"]) == 0
    cells = output / "cells"
    for seed in (1,):
        for stage2, source in (("crt", "ce"), ("lws_model.init_from-_bs", "bs")):
            run = cells / f"{stage2}-seed{seed}"
            config = json.loads(json.dumps(load_checkpoint(run / "checkpoints" / "last.pt")["config"]))
            assert config["model"]["init_from"] == str(cells / f"{source}-seed{seed}")
            before = load_checkpoint(cells / f"{source}-seed{seed}" / "checkpoints" / "last.pt")["model"]
            after = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
            assert all(torch_equal(before[k], after[k]) for k in before if not k.startswith("head."))
    rows = [row["method"] for row in json.loads((output / "comparison.json").read_text())["rows"]]
    assert rows == ["crt", "ce", "bs", "lws:model.init_from=^bs"]
    capsys.readouterr()
    assert main(["compare", "--methods", "ce,crt:model.init_from=^la", *arguments[3:]]) == 2
    assert "names no other method" in capsys.readouterr().err
    assert main(["compare", "--methods", "crt", *arguments[3:]]) == 2
    assert "add one to --methods" in capsys.readouterr().err


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)
