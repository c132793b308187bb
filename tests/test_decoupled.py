"""Decoupled stage 2 (Kang et al. 2020): cRT and LWS from a finished stage-1 run."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine.rundir.checkpoint import load_checkpoint
from longtail.engine.evaluation.evaluate import evaluate_checkpoint


@pytest.fixture(scope="module")
def stage1(tiny_idx_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("stage1")
    assert main(["train", *tiny_run_overrides(tiny_idx_root, output, epochs=2), "train.run_name=run",
                 "train.eval_train=false"]) == 0
    return output / "run"


def stage2(tiny_idx_root, output, method, stage1_run, *extra):
    # The preset's 10 epochs shortened to 2; everything else (sampler, schedule) from the preset.
    return main(["train", "--method", method, *tiny_run_overrides(tiny_idx_root, output, epochs=2),
                 f"model.init_from={stage1_run}", "train.run_name=run", "train.eval_train=false", *extra])


def weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("method", ["crt", "lws"])
def test_stage2_trains_only_the_classifier(tiny_idx_root, tmp_path, stage1, method):
    assert stage2(tiny_idx_root, tmp_path, method, stage1) == 0
    run = tmp_path / "run"
    before, after = weights(stage1), weights(run)
    backbone = [k for k in before if not k.startswith("head.")]
    assert backbone and any("running_mean" in k for k in backbone)
    for key in backbone:  # parameters and batch-norm statistics of stage 1, bit for bit
        assert torch.equal(before[key], after[key]), key
    if method == "crt":  # a re-initialised classifier, retrained
        assert not torch.equal(before["head.weight"], after["head.weight"])
    else:  # the stage-1 classifier untouched under learnt per-class scales
        assert torch.equal(before["head.weight"], after["head.base_head.weight"])
        assert torch.equal(before["head.bias"], after["head.base_head.bias"])
        assert not torch.equal(after["head.scales"], torch.ones(10))
    config = (run / "config.yaml").read_text()
    assert "sampler: class_balanced" in config and f"decoupled: {method}" in config
    metrics = json.loads((run / "metrics.json").read_text())
    assert evaluate_checkpoint(run, "test", "cpu")["accuracy"] == metrics["test"]["accuracy"]


@pytest.mark.parametrize("extra, message", [
    (["model.init_from=/nonexistent/run"], "no checkpoint at /nonexistent/run"),
    (["data.imbalance_factor=5"], "different class counts"),
    (["model.options={width: 8}"], "do not fit this model"),
])
def test_stage2_bad_source_exits_2(tiny_idx_root, tmp_path, stage1, capsys, extra, message):
    output = tmp_path / "runs"
    assert stage2(tiny_idx_root, output, "crt", stage1, *extra) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert not output.exists() or not any(output.iterdir())


def test_decoupled_without_a_source_exits_2(tiny_idx_root, tmp_path, capsys):
    assert main(["train", "--method", "lws", *tiny_run_overrides(tiny_idx_root, tmp_path)]) == 2
    assert "model.init_from=RUN_DIR" in capsys.readouterr().err


def test_crt_starts_from_a_fresh_seeded_classifier_not_stage_1s(tiny_idx_root, tmp_path, stage1):
    """cRT's classifier before stage-2 training is what a new run with the same seed initialises,
    and differs from the trained stage-1 classifier; the backbone is stage 1's."""
    from longtail.engine.config import build_config
    from longtail.engine.training.trainer import Trainer

    common = [*tiny_run_overrides(tiny_idx_root, tmp_path, epochs=2), "train.eval_train=false", "train.seed=5"]
    config, label = build_config(None, None, [*common, f"model.init_from={stage1}"], "crt")
    crt = Trainer(config, label).model.state_dict()
    config, label = build_config(None, None, [*common, "model.init_from=null"], "ce")
    fresh = Trainer(config, label).model.state_dict()
    trained = weights(stage1)
    for key in ("head.weight", "head.bias"):
        assert torch.equal(crt[key], fresh[key]), key
        assert not torch.allclose(crt[key], trained[key])
    for key in trained:
        if not key.startswith("head."):
            assert torch.equal(crt[key], trained[key]), key
