"""BCL / ConCutMix / CAR + ConCutMix as methods: heads, training step, CLI paths, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine.rundir.checkpoint import CHECKPOINT_NAME
from longtail.data.loading.pair_loader import PairBatch
from longtail.engine.methods.contrastive import ConCutMixObjective, ConCutMixSettings
from longtail.engine.config import ConfigError, build_config
from longtail.models import BCLModel, create_model
from longtail.regularizers import CAR

COUNTS = [30, 12, 6, 3]


def step(settings, model, batch_size=8, epoch=0, batch_index=0, regularizer=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    views = [torch.randn(batch_size, 3, 32, 32, generator=generator) for _ in range(4)]
    labels_a = torch.arange(batch_size) % 4
    batch = PairBatch(views[0], (views[1], views[2]), views[3], labels_a.flip(0))
    objective = ConCutMixObjective(settings, COUNTS, seed=seed)
    import contextlib
    return objective.training_step(model, batch, labels_a, epoch, batch_index, contextlib.nullcontext,
                                   regularizer, lambda terms: None)


def head_gradients(terms, model):
    model.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    def norm(module):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return float(sum(g.abs().sum() for g in grads)) if grads else 0.0
    return norm(model.projection), norm(model.prototype_head), norm(model.model.features_ if False else model.model)


def test_projection_and_prototype_heads_get_gradient_only_from_the_contrastive_loss():
    torch.manual_seed(0)
    model = BCLModel(create_model("resnet20", 4, head="cosine"), feat_dim=16)
    settings = ConCutMixSettings(cutmix_prob=1.0, rectify_from_epoch=0, topk=2)  # mixed and rectified (epoch 1)
    terms = step(settings, model, epoch=1)
    terms.pop("contrastive")
    projection, prototype, rest = head_gradients(terms, model)
    assert projection == 0.0 and prototype == 0.0 and rest > 0  # the rectified label is detached
    terms = step(ConCutMixSettings(a_cls=0.0, cutmix_prob=1.0), model)
    projection, prototype, _ = head_gradients(terms, model)
    assert projection > 0 and prototype > 0


@pytest.mark.parametrize("name, options", [
    ("resnet32", {}),
    ("resnext50_32x4d", {}),
    ("timm:vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),
])
@pytest.mark.parametrize("head", ["cosine", "linear"])
def test_bcl_heads_fit_every_backbone(name, options, head):
    base = create_model(name, 5, head=head, **options)
    model = BCLModel(base, feat_dim=8)
    images = torch.randn(6, 3, 32, 32)
    logits, projection, prototypes = model(images, heads=True, num_classify=2)
    assert logits.shape == (2, 5) and projection.shape == (6, 8) and prototypes.shape == (5, 8)
    model.eval()
    torch.testing.assert_close(model(images[:2]), base(images[:2]))  # plain forward = the classifier's logits


def test_car_gets_raw_logits_soft_area_label_when_mixed_hard_otherwise():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, logits, targets):
            seen.append((logits, targets))
            return logits.sum() * 0

    torch.manual_seed(0)
    model = BCLModel(create_model("resnet20", 4, head="cosine"), feat_dim=8)
    step(ConCutMixSettings(cutmix_prob=1.0, tau=1.0), model, regularizer=Recorder())
    logits, targets = seen[-1]
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
    model.eval()
    # raw logits of the classification view (no logit adjustment) reach CAR
    step(ConCutMixSettings(cutmix_prob=0.0, tau=1.0), model, regularizer=Recorder())
    logits, targets = seen[-1]
    assert targets.dtype == torch.long and targets.shape == (8,)


def test_bad_options_are_refused_before_training():
    # build_config runs settings_from_config's checks itself: the refusals come with the config
    with pytest.raises(ConfigError, match="unknown option"):
        build_config("fashion-mnist-lt", method="concutmix", overrides=["loss.topK=3"])
    with pytest.raises(ConfigError, match="no effect"):
        build_config("fashion-mnist-lt", method="bcl", overrides=["loss.omega_s=0.1"])
    with pytest.raises(ConfigError, match="data.mixing=none"):
        build_config("fashion-mnist-lt", method="concutmix", overrides=["data.mixing=cutmix"])


METHOD = ["--method", "car_concutmix", "loss.rectify_from_epoch=1", "loss.topk=3", "train.eval_train=false",
          "data.validation_per_class=2", "train.select_on=balanced_accuracy"]


def test_train_eval_posthoc_and_rectification_statistics(tiny_idx_root, tmp_path):
    assert main(["train", *METHOD, *tiny_run_overrides(tiny_idx_root, tmp_path, epochs=3), "train.run_name=run"]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert all("contrastive" in h and h["contrastive"] > 0 for h in history)
    assert "rectified_label_mass" not in history[1] and 0 < history[2]["rectified_label_mass"] < 0.05
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert main(["posthoc", str(run), "--method", "logit_adjust", "--taus", "0,1", "--device", "cpu"]) == 0
    assert 0 <= metrics["test"]["accuracy"] <= 1


EPOCHS = 4


def _history_without_timing(path):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("seconds", "images_per_s")} for line in lines]


def test_sigterm_mid_epoch_and_sigkill_then_resume_are_exact(tiny_idx_root, tmp_path):
    """Final metrics and every history line (losses, rectified_label_mass of the interrupted epoch)
    equal the uninterrupted run's; epochs after the first rectify, so the signal lands in one."""
    method = [*METHOD, "loss.rectify_from_epoch=0"]
    reference = tmp_path / "reference"
    assert main(["train", *method, *tiny_run_overrides(tiny_idx_root, reference, epochs=EPOCHS),
                 "train.run_name=run"]) == 0
    expected = json.loads((reference / "run" / "metrics.json").read_text())
    expected_history = _history_without_timing(reference / "run" / "history.jsonl")
    assert all("rectified_label_mass" in line for line in expected_history[1:])
    for kill in (signal.SIGTERM, signal.SIGKILL):
        output = tmp_path / kill.name
        command = [sys.executable, "-m", "longtail", "train", *method,
                   *tiny_run_overrides(tiny_idx_root, output, epochs=EPOCHS), "train.run_name=run"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        history = output / "run" / "history.jsonl"
        deadline = time.time() + 120
        checkpoint = output / "run" / "checkpoints" / CHECKPOINT_NAME
        while not (history.exists() and len(history.read_text().splitlines()) >= 1 and checkpoint.exists()):
            assert process.poll() is None and time.time() < deadline, process.stderr.read()
            time.sleep(0.01)
        time.sleep(0.05)
        process.send_signal(kill)
        process.wait(timeout=60)
        process.stderr.close()
        assert not (output / "run" / "metrics.json").exists(), "finished before the signal"
        assert main(["train", "--resume", str(output / "run")]) == 0
        resumed = json.loads((output / "run" / "metrics.json").read_text())
        assert resumed["test"] == expected["test"] and resumed["selected"] == expected["selected"]
        assert _history_without_timing(output / "run" / "history.jsonl") == expected_history, kill.name


@pytest.mark.parametrize("in_memory", [False, True])
def test_concutmix_on_a_folder_of_real_colour_jpegs(tmp_path, in_memory):
    """RGB JPEG files: per-image torchvision views in a DataLoader (files), or decoded once and
    batched kornia views (in memory)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    root = tmp_path / "images"
    for split, per_class in (("train", [10, 6, 3]), ("test", [3, 3, 3])):
        for label, count in enumerate(per_class):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = (torch.rand(32, 32, 3, generator=generator) * 80 + 80 * label).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{index}.jpg", quality=90)
    output = tmp_path / "runs"
    assert main(["train", "--method", "concutmix", "data.name=imagefolder", f"data.root={root}",
                 "data.imbalance_factor=null", "data.image_size=32", "data.workers=0", "data.batch_size=8",
                 "model.name=resnet20", "loss.cutmix_prob=1.0", "loss.rectify_from_epoch=0", "loss.topk=2",
                 "optim.epochs=2", "optim.warmup_epochs=0", "optim.lr=0.01", f"train.output_dir={output}",
                 "train.progress=false", "train.threads=1", "train.run_name=run", f"data.in_memory={in_memory}"]) == 0
    history = [json.loads(line) for line in (output / "run" / "history.jsonl").read_text().splitlines()]
    assert history[1]["rectified_label_mass"] > 0 and history[0]["contrastive"] > 0


def test_every_concutmix_recipe_resolves_to_the_released_values():
    from longtail.engine.methods.contrastive import settings_from_config
    from longtail.engine.config import available_recipes

    names = [r for r in available_recipes() if r.rpartition("/")[2] in ("bcl", "bcl_cutmix", "concutmix", "car_concutmix")]
    assert len(names) >= 40
    for name in names:
        settings_from_config(build_config(name)[0])
    config = build_config("cifar100-lt-r32/concutmix", overrides=["data.imbalance_factor=50"])[0]
    settings = settings_from_config(config)
    assert (settings.tau, settings.topk, settings.rectify_from_epoch, config.data.batch_size, config.optim.lr) == \
        (0.75, 30, 100, 256, 0.15)
    with pytest.raises(ConfigError, match="per imbalance factor"):
        settings_from_config(build_config("cifar100-lt-r32/concutmix", overrides=["data.imbalance_factor=200"])[0])
    x50 = settings_from_config(build_config("imagenet-lt-x50/car_concutmix")[0])
    assert (x50.tau, x50.temperature, x50.feat_dim, x50.b_scl, x50.rectify_from_epoch) == (0.99, 0.07, 1024, 0.35, 60)
    assert settings_from_config(build_config("cifar10-lt-r32/bcl_cutmix")[0]).rectify_from_epoch is None


def test_car_concutmix_under_torchrun_two_cpu_processes(tiny_idx_root, tmp_path):
    """The whole method under torchrun (gloo): pair sampler shares, global contrastive keys, CAR."""
    import os

    from conftest import free_port
    from test_torchrun import torchrun_executable

    output = tmp_path / "runs"
    command = [torchrun_executable(), "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "longtail", "train", *METHOD,
               *tiny_run_overrides(tiny_idx_root, output, epochs=3), "train.device=cpu", "train.run_name=run"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "run" / "metrics.json").read_text())
    assert metrics["test"]["num_samples"] == 200
    history = [json.loads(line) for line in (output / "run" / "history.jsonl").read_text().splitlines()]
    assert history[2]["rectified_label_mass"] > 0 and all(h["contrastive"] > 0 for h in history)
