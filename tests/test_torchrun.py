"""`longtail train` under torchrun: 2 CPU processes (gloo) complete one run with one set of outputs,
selecting the epoch on a validation split evaluated across both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import tiny_run_overrides, free_port



def torchrun_executable() -> str:
    torchrun = Path(sys.executable).with_name("torchrun")
    return str(torchrun) if torchrun.exists() else shutil.which("torchrun")


def test_torchrun_two_cpu_processes(tiny_idx_root, tmp_path):
    output = tmp_path / "runs"
    command = [torchrun_executable(), "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "longtail", "train",
               "--method", "car_bs", "data.sampler=class_balanced", "data.validation_per_class=2",
               "train.select_on=balanced_accuracy",
               *tiny_run_overrides(tiny_idx_root, output, epochs=2), "train.device=cpu"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in output.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # rank 0 alone creates and writes the run directory
    run = runs[0]
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    # Evaluation is sharded over the 2 ranks and summed back: every test image counted exactly once.
    assert metrics["test"]["num_samples"] == 200 and metrics["val"]["num_samples"] == 20
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    curve = [h["val"]["balanced_accuracy"] for h in history]
    assert metrics["selected"]["epoch"] == curve.index(max(curve))  # on the val split of both ranks together
    assert result.stdout.count("run directory:") == 1
