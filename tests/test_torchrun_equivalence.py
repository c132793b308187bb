"""The engine under torchrun equals one process: `longtail train` on 2 gloo processes and on one
process, with the same global batch, end on the same parameters (float tolerance).

The model is cRT's stage 2 (Kang et al. 2020) on a real small CNN: its backbone and batch-norm
statistics are frozen (eval mode), so the batch-norm statistics, which differ between a batch of
24 and two of 12, cannot make the runs differ. What is compared is everything the engine does:
the class-balanced sampler's draw split over ranks, each rank's share of the global batch, the
per-sample augmentation, DDP's gradient averaging, the lr schedule per step, 2 epochs of 9 steps.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine.rundir.checkpoint import load_checkpoint
from conftest import free_port
from test_torchrun import torchrun_executable

# Imbalance factor 4 gives 216 training images: 9 global batches of 24 (12 per rank), nothing
# padded or dropped, so both runs see exactly the same images per step.
# Augmentation is on (crop, flip, Cutout): each sample's augmentation depends on (seed, epoch, its
# position in the epoch's global draw), so a rank's 12 images are augmented as they are inside
# the one process's batch of 24. fp32: the comparison is to float32 rounding; train.precision=auto
# would pick bf16 on a CPU with native bf16, whose rounding differs between a batch of 24 and two
# shards of 12.
COMMON = ["data.imbalance_factor=4", "data.batch_size=24", "data.crop_padding=2", "data.flip=true",
          "data.cutout=6", "train.eval_train=false", "train.device=cpu", "optim.lr=0.5", "train.precision=fp32"]


def test_two_processes_end_on_the_parameters_of_one(tiny_idx_root, tmp_path):
    stage1 = tmp_path / "stage1"
    assert main(["train", *tiny_run_overrides(tiny_idx_root, stage1, epochs=1), *COMMON, "train.run_name=run"]) == 0
    stage2 = ["--method", "crt", *tiny_run_overrides(tiny_idx_root, tmp_path, epochs=2), *COMMON,
              f"model.init_from={stage1 / 'run'}"]
    assert main(["train", *stage2, "train.run_name=single"]) == 0
    command = [torchrun_executable(), "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "longtail", "train", *stage2, "train.run_name=pair"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    pair = load_checkpoint(tmp_path / "pair" / "checkpoints" / "last.pt")
    assert single["global_step"] == pair["global_step"] == 18
    for key, value in single["model"].items():
        torch.testing.assert_close(pair["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # Not vacuous: the classifier moved far from its initialisation in those 18 steps.
    initial = load_checkpoint(stage1 / "run" / "checkpoints" / "last.pt")["model"]
    assert (single["model"]["head.weight"] - initial["head.weight"]).abs().max() > 0.05
