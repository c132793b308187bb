"""`longtail compare`: grid of cells, aggregate tables checked against the cells' own metrics, resume."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from conftest import tiny_run_overrides
from longtail.cli import main


def test_compare_grid_tables_and_resume(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "cmp"
    arguments = ["compare", "--methods", "ce,bs,ccar_bs", "--seeds", "0,1", "--reference", "ce", "--jobs", "1",
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
    from longtail.engine.rundir.checkpoint import load_checkpoint

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


def test_stale_cells_and_changed_data_are_refused_never_reused(tiny_idx_root, tmp_path, capsys):
    import gzip

    root = tmp_path / "data"
    root.mkdir()
    for item in tiny_idx_root.iterdir():
        (root / item.name).write_bytes(item.read_bytes())
    output = tmp_path / "cmp"
    arguments = ["compare", "--methods", "ce", "--output", str(output),
                 *tiny_run_overrides(root, tmp_path / "unused", epochs=1), "train.eval_train=false"]
    assert main(arguments) == 0
    table = (output / "comparison.md").read_text()
    capsys.readouterr()
    assert main([*arguments, "optim.lr=0.03"]) == 2
    error = capsys.readouterr().err
    assert "ce-seed0 (optim.lr: 0.02 -> 0.03)" in error and "cannot be reused" in error
    assert (output / "comparison.md").read_text() == table  # the tables still describe the cells on disk
    assert json.loads((output / "plan.json").read_text())["cells"][0]["config_hash"] == \
        json.loads((output / "comparison.json").read_text())["cells"]["ce-seed0"]
    # where / how fast a cell runs is not part of its identity
    assert main([*arguments, "train.threads=2", "train.progress=true"]) == 0
    assert "1 cells, 1 already finished, 0 to run" in capsys.readouterr().out
    # same settings, other data: the finished cell is refused, naming what changed
    labels = root / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8], raw[9] = raw[9], raw[8] if raw[8] != raw[9] else (raw[8] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    assert main(arguments) == 2
    assert "ce-seed0 (data changed: test split: the in-memory images / labels differ" in capsys.readouterr().err


def test_every_argument_is_checked_before_the_first_cell(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "cmp"
    base = ["--output", str(output), *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=1)]
    for extra, expected in ((["--methods", "ce,bs", "--reference", "cee"], "--reference cee is not among"),
                            (["--methods", "ce,ce"], "names a method twice"),
                            (["--methods", "ce", "--seeds", "0,x"], "cannot read the list"),
                            (["--methods", "ce", "--jobs", "0"], "--jobs must be at least 1"),
                            (["--methods", "ce", "--devices", "gpu0"], "is not a device"),
                            (["--methods", "ce,bs:optim.lr=-1"], "optim.lr=-1.0 is out of range"),
                            (["--methods", "ce"], "cell ce-seed0:")):
        missing_data = ["data.root=/nonexistent"] if expected.startswith("cell ce-seed0") else []
        assert main(["compare", *extra, *base, *missing_data]) == 2, extra
        assert expected in capsys.readouterr().err, extra
        assert not (output / "cells").exists()


def test_the_grid_stops_at_the_first_failing_cell(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "cmp"
    code = main(["compare", "--methods", "ce,bs:optim.lr=1e12,ccar_bs", "--jobs", "1", "--output", str(output),
                 *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=1), "train.eval_train=false"])
    assert code == 1
    captured = capsys.readouterr()
    log = output / "cells" / "bs_optim.lr-1e12-seed0.log"
    assert f"cell 2/3 bs_optim.lr-1e12-seed0 failed: NonFiniteLossError" in captured.err
    assert f"its log: {log}" in captured.err and "training diverged" in log.read_text()
    assert "cell 1/3: ce seed 0 ... done in" in captured.out and "test acc 0." in captured.out
    assert not (output / "cells" / "ccar_bs-seed0").exists()
    # The tables say what finished before the failure, and that they are partial.
    assert (output / "comparison.md").read_text().startswith("**Partial: 1 of 3 cells finished.**")
    report = json.loads((output / "comparison.json").read_text())
    assert report["complete"] is False and [row["method"] for row in report["rows"]] == ["ce"]


def test_one_seed_prints_a_table_without_spread_and_a_plain_verdict(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "cmp"
    assert main(["compare", "--methods", "ce,la,bs", "--reference", "ce", "--jobs", "1", "--output", str(output),
                 *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=1), "train.eval_train=false"]) == 0
    out = capsys.readouterr().out
    assert "| method | Overall |" in out and "±" not in out and "wins" not in out and "1/1" not in out
    rows = {r["method"]: r for r in json.loads((output / "comparison.json").read_text())["rows"]}
    leader = max(rows.values(), key=lambda r: r["accuracy"]["mean"])
    assert f"On overall accuracy, " in out and f"({100 * leader['accuracy']['mean']:.2f} %)" in out
    assert "with one seed there is no seed spread" in out
    assert ("la and bs are identical by construction (logit_adjusted with tau 1 is balanced_softmax"
            in out)
    assert rows["la"]["accuracy"]["mean"] == rows["bs"]["accuracy"]["mean"]  # as the note says


def test_identical_methods_are_found_from_the_resolved_config_not_the_name(tiny_idx_root, tmp_path):
    from argparse import Namespace

    from longtail.engine.compare import identical_methods, plan_cells

    args = Namespace(methods="la:loss.tau=2.0,bs,ccar_la,ccar_bs,ce,ce:optim.lr=0.02,focal_la", seeds="0",
                     imbalance_factors=None, paired=True, recipe=None, config=None, output=None,
                     overrides=tiny_run_overrides(tiny_idx_root, tmp_path))
    notes = identical_methods(plan_cells(args)[0])
    assert notes == ["ccar_la and ccar_bs are identical by construction (ccar_la with tau 1 is ccar_bs: the same "
                     "loss, gradient and run), so their rows are equal.",
                     "ce and ce:optim.lr=0.02 are identical by construction (their resolved configurations are "
                     "equal: the same loss, gradient and run), so their rows are equal."]


def test_verdict_with_seeds_compares_the_margin_with_the_spread():
    from longtail.engine.compare import verdict

    def row(method, overall, std, worst):
        return {"imbalance_factor": None, "method": method, "seeds": 3,
                "accuracy": {"mean": overall, "std": std}, "worst_class_accuracy": {"mean": worst, "std": 0.01}}

    text = verdict([row("ce", 0.70, 0.02, 0.10), row("ccar_bs", 0.80, 0.01, 0.50)], [])
    assert text.splitlines() == [
        "On overall accuracy, ccar_bs led (80.00 %), 10.00 points ahead of ce (70.00 %); the margin exceeds the "
        "seed spread (sample std up to 2.00 points over 3 seeds).",
        "On worst-class accuracy, ccar_bs led (50.00 %), 40.00 points ahead of ce (10.00 %); the margin exceeds "
        "the seed spread (sample std up to 1.00 points over 3 seeds)."]
    close = verdict([row("ce", 0.70, 0.02, 0.10), row("bs", 0.71, 0.03, 0.10)], [])
    assert "the margin does not exceed the seed spread (sample std up to 3.00 points" in close
    assert "On worst-class accuracy, ce and bs tie for the lead (10.00 %)." in close


def test_sigterm_is_passed_on_to_running_cells(tiny_idx_root, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    output = tmp_path / "cmp"
    command = [sys.executable, "-m", "longtail", "compare", "--methods", "ce,bs", "--jobs", "2", "--output",
               str(output), *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=200)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    histories = [output / "cells" / name / "history.jsonl" for name in ("ce-seed0", "bs-seed0")]
    while time.time() < deadline and not all(h.is_file() for h in histories):  # both cells are training
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, (out, err)
    for name in ("ce-seed0", "bs-seed0"):
        assert "received signal 15" in (output / "cells" / f"{name}.log").read_text()
        assert (output / "cells" / name / "checkpoints" / "last.pt").is_file()
        assert not (output / "cells" / name / "metrics.json").exists()


def test_jobs_default_is_one_process_per_core_one_per_device_and_never_more_than_the_cells(monkeypatch):
    import torch

    from longtail.engine import compare

    monkeypatch.setattr(compare, "usable_cores", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compare.default_jobs([], cells=20) == 8
    assert compare.default_jobs([], cells=3) == 3
    assert compare.default_jobs(["cuda:0", "cuda:1"], cells=20) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compare.default_jobs([], cells=20) == 1  # cells on one GPU would only compete for it


def test_bare_train_is_the_quick_start_comparing_ce_bs_and_ccar_bs(tiny_idx_root, tmp_path, capsys, monkeypatch):
    """README command 1 ends in `longtail train`: it must end with CE, BS and CCAR + BS side by side
    on overall and tail accuracy. The recipe's data is swapped for the tiny set to keep this test short."""
    from longtail import cli

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "pip install -e . && longtail train\n" in readme
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "QUICK_START_OVERRIDES",
                        [*cli.QUICK_START_OVERRIDES, *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=1)])
    assert main(["train"]) == 0
    out = capsys.readouterr().out
    assert "the quick start" in out and "cell 3/3:" in out
    assert "| ce |" in out and "| bs |" in out and "| ccar_bs |" in out and "| Few | Worst |" in out
    assert "On overall accuracy, " in out and "On worst-class accuracy, " in out
    (output,) = (tmp_path / "runs").iterdir()
    assert output.name.startswith("quickstart-")
    configs = [json.loads(json.dumps(__import__("yaml").safe_load((output / "cells" / f"{m}-seed0.yaml").read_text())))
               for m in ("ce", "bs", "ccar_bs")]
    assert [c["loss"]["name"] for c in configs] == ["ce", "bs", "ccar_bs"]
    assert all(c["optim"]["epochs"] == 1 and c["model"]["options"] == {"width": 16} for c in configs)


def _lock_is_free(path: Path) -> bool:
    import fcntl
    import os

    descriptor = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)


def test_a_killed_compare_ends_its_cells_and_nobody_trains_a_cell_twice(tiny_idx_root, tmp_path, capsys):
    """While `compare --jobs 2` trains, a second compare on the same output is refused (each cell is
    locked); after a SIGKILL of the first, its cells notice their compare is gone, save a checkpoint
    and exit, which frees the locks (each cell process holds its own cell's lock)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    output = tmp_path / "cmp"
    arguments = ["compare", "--methods", "ce,bs", "--jobs", "2", "--output", str(output),
                 *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=200)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-m", "longtail", *arguments], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    names = ("ce-seed0", "bs-seed0")
    histories = [output / "cells" / name / "history.jsonl" for name in names]
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not all(h.is_file() for h in histories):  # both cells are training
            time.sleep(0.2)
        assert all(h.is_file() for h in histories)
        second = subprocess.run([sys.executable, "-m", "longtail", *arguments], capture_output=True, text=True,
                                env=env, timeout=120)  # refused before any work: the cells are locked
        assert second.returncode == 2, second.stderr
        error = second.stderr
        assert "is being trained by another process right now" in error and "ce-seed0" in error
        assert process.poll() is None  # the first compare trains on, untouched
        locks = [output / "cells" / f"{name}.lock" for name in names]
        assert not any(_lock_is_free(lock) for lock in locks)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.time() + 60
        while time.time() < deadline and not all(_lock_is_free(lock) for lock in locks):
            time.sleep(0.2)
        assert all(_lock_is_free(lock) for lock in locks), "the cells of the killed compare kept training"
        for name in names:
            log = (output / "cells" / f"{name}.log").read_text()
            assert "has ended: stopping this cell" in log and "received signal 15" in log
            assert (output / "cells" / name / "checkpoints" / "last.pt").is_file()
    finally:
        if process.poll() is None:
            process.kill()


def test_a_second_resume_of_a_run_in_training_is_refused(tiny_idx_root, tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    from longtail.engine.rundir import checkpoint as ckpt

    output = tmp_path / "runs"
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=1), "train.run_name=r"]) == 0
    run = output / "r"
    state = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    state["config"]["optim"]["epochs"] = 200  # unfinished now: --resume trains on
    ckpt.save_checkpoint(run / "checkpoints" / "last.pt", state)
    (run / "metrics.json").unlink()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    first = subprocess.Popen([sys.executable, "-m", "longtail", "train", "--resume", str(run)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 60
        lock = run / ".lock"
        while time.time() < deadline and not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "longtail", "train", "--resume", str(run)],
                                capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2, second.stderr
        error = second.stderr
        assert f"the run {run} is being trained by another process right now" in error
        assert f"taken by process {first.pid}" in error
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)  # stopped (saving a checkpoint if it was already in its training loop)
        assert _lock_is_free(lock)
    finally:
        if first.poll() is None:
            first.kill()


def test_a_corrupt_or_python_tagged_cell_config_is_refused_never_run(tiny_idx_root, tmp_path, capsys):
    output = tmp_path / "cmp"
    arguments = ["compare", "--methods", "ce", "--output", str(output),
                 *tiny_run_overrides(tiny_idx_root, tmp_path / "unused", epochs=1), "train.eval_train=false"]
    assert main(arguments) == 0
    config = output / "cells" / "ce-seed0" / "config.yaml"
    marker = tmp_path / "code-ran"
    for content in (f"train: !!python/object/apply:os.system ['touch {marker}']\n".encode(),
                    b"\xff\xfe not utf-8", b"train: [1\n", b"train: 5\n", b"when: 2024-01-01\n", b"- a list\n"):
        config.write_bytes(content)
        capsys.readouterr()
        assert main(arguments) == 2, content
        error = capsys.readouterr().err
        assert "ce-seed0 (its config.yaml" in error and "cannot be reused" in error, (content, error)
        assert not marker.exists()
