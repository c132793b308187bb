"""Light fine-tuning through the engine (issue 23): config keys checked before any work, frozen parts in
eval with no gradient during a real run, trainable / total parameters recorded, cached-feature training
equal to image training, TTA in `longtail eval`, and predict / export of adapter runs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_run_overrides
from longtail.cli import main
from longtail.engine.rundir.checkpoint import load_run_checkpoint, run_checkpoint

# small_cnn with a random backbone (no weights exist offline for it): every mode's mechanics, in seconds.
RANDOM = ["model.random_backbone=true"]


def _run(tiny_idx_root, tmp_path, name, *extra, epochs=2):
    code = main(["train", *tiny_run_overrides(tiny_idx_root, tmp_path, epochs=epochs), f"train.run_name={name}",
                 *extra])
    assert code == 0
    return tmp_path / name


def _weights(run_dir):
    return load_run_checkpoint(run_checkpoint(run_dir))["model"]


@pytest.mark.parametrize("overrides, message", [
    (["model.finetune=classifier"], "it would stay random"),
    (["model.finetune=bitfit"], "model.finetune='bitfit' is not valid"),
    (["model.finetune=lora", "model.lora_rank=0"], "model.lora_rank=0 is out of range"),
    (["model.finetune=lora", "model.lora_targets=attention", *RANDOM], "model.lora_targets='attention' is not valid"),
    (["model.classifier_init=text"], "needs a CLIP model"),
    (["data.feature_cache=sometimes"], "data.feature_cache must be of type"),
    (["model.finetune=classifier", "data.feature_cache=true", "loss.name=bcl", *RANDOM], "own image views"),
    (["model.finetune=classifier", "data.feature_cache=true", "data.mixing=mixup", *RANDOM], "mixes images"),
    (["model.finetune=adaptformer", *RANDOM], "needs a vision transformer"),
])
def test_bad_finetune_configs_exit_2_before_work(tiny_idx_root, tmp_path, capsys, overrides, message):
    code = main(["train", *tiny_run_overrides(tiny_idx_root, tmp_path), *overrides])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*/checkpoints"))


def test_feature_cache_on_with_a_training_backbone_is_refused(tiny_idx_root, tmp_path, capsys):
    code = main(["train", *tiny_run_overrides(tiny_idx_root, tmp_path), "model.finetune=norm_bias",
                 "data.feature_cache=true", *RANDOM])
    assert code == 2
    assert "the backbone trains" in capsys.readouterr().err


def test_frozen_parts_keep_weights_and_statistics_and_counts_are_recorded(tiny_idx_root, tmp_path, capsys):
    """norm_bias on small_cnn: only biases, norm affines and the head move; batch-norm running statistics
    (updated only in train mode) stay the initial ones; metrics.json / environment.json say how many train."""
    # The initial backbone: a classifier-only run (its backbone frozen from the same seed's initialisation).
    start = _run(tiny_idx_root, tmp_path, "start", "model.finetune=classifier", *RANDOM, epochs=1)
    tuned = _run(tiny_idx_root, tmp_path, "tuned", "model.finetune=norm_bias", "optim.lr=0.05", *RANDOM)
    before, after = _weights(start), _weights(tuned)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    running = {k for k in before if "running_" in k or "num_batches_tracked" in k}
    assert running and not moved & running, f"running statistics changed: {sorted(moved & running)}"
    weights = {k for k in before if k.endswith(".weight") and not k.startswith("head.") and before[k].dim() > 1}
    assert weights and not moved & weights, f"frozen conv weights changed: {sorted(moved & weights)}"
    assert any(k.startswith("head.") for k in moved) and any(k.endswith(".bias") and not k.startswith("head.")
                                                            for k in moved)
    metrics = json.loads((tuned / "metrics.json").read_text())
    environment = json.loads((tuned / "environment.json").read_text())
    assert metrics["parameters"] == environment["parameters"]
    assert metrics["parameters"]["finetune"] == "norm_bias"
    assert 0 < metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    trainable = sum(v.numel() for k, v in after.items() if k.startswith("head.") or k.endswith(".bias")
                    or (k.endswith(".weight") and v.dim() == 1))  # small_cnn: conv / bn / head, bn weight 1-D
    assert metrics["parameters"]["trainable"] == trainable
    assert f"parameters: {trainable:,} of" in capsys.readouterr().out


def test_no_gradient_reaches_frozen_parameters_in_a_training_step(tiny_idx_root, tmp_path):
    from longtail.engine.config import build_config
    from longtail.engine.training.trainer import Trainer

    config, _ = build_config(overrides=[*tiny_run_overrides(tiny_idx_root, tmp_path), "model.finetune=lora", *RANDOM])
    trainer = Trainer(config, "lora")
    try:
        images, targets = next(iter(trainer.data.train_loader))
        trainer.train_model.train()
        trainer.loss_fn(trainer.train_model(images), targets).backward()
        frozen = [(n, p) for n, p in trainer.model.named_parameters() if not p.requires_grad]
        trainable = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
        assert frozen and trainable
        assert all(p.grad is None for _, p in frozen)
        assert all(p.grad is not None for n, p in trainable if ".lora." in n or n.startswith("head."))
        pinned = [m for n, m in trainer.model.named_modules() if n.endswith(".base")]
        assert pinned and not any(m.training for m in pinned)
        assert trainer.model.head.training
    finally:
        trainer.close()


@pytest.mark.parametrize("loss, sampler, head", [("ce", "instance", "linear"), ("bs", "class_balanced", "linear"),
                                                 ("ldam_drw", "sqrt", "cosine")])
def test_cached_features_train_the_same_classifier(tiny_idx_root, tmp_path, loss, sampler, head):
    """Same data, sampler and order, no augmentation: a classifier trained on cached features equals
    the one trained through the frozen backbone (up to float summation order)."""
    common = ["model.finetune=classifier", *RANDOM, f"loss.name={loss}", f"data.sampler={sampler}", f"model.head={head}",
              "data.crop_padding=0", "data.flip=false", "train.precision=fp32"]
    cached = _run(tiny_idx_root, tmp_path, f"cached-{loss}", *common, "data.feature_cache=true", epochs=3)
    images = _run(tiny_idx_root, tmp_path, f"images-{loss}", *common, "data.feature_cache=false", epochs=3)
    a, b = _weights(cached), _weights(images)
    assert a.keys() == b.keys()
    head = [k for k in a if k.startswith("head.")]
    assert not torch.equal(a[head[0]], _weights(_run(tiny_idx_root, tmp_path, f"init-{loss}", *common,
                                                     "optim.lr=1e-12", epochs=1))[head[0]])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    ma = json.loads((cached / "metrics.json").read_text())
    mb = json.loads((images / "metrics.json").read_text())
    assert ma["test"]["accuracy"] == pytest.approx(mb["test"]["accuracy"], abs=1e-9)


def test_auto_cache_only_when_the_backbone_is_frozen(tiny_idx_root, tmp_path, capsys):
    _run(tiny_idx_root, tmp_path, "auto-classifier", "model.finetune=classifier", *RANDOM, epochs=1)
    assert "feature cache:" in capsys.readouterr().out
    _run(tiny_idx_root, tmp_path, "auto-full", epochs=1)
    assert "feature cache:" not in capsys.readouterr().out


def test_class_mean_initialisation_starts_at_the_normalised_class_means(tiny_idx_root, tmp_path):
    """optim.lr ~ 0: the trained cosine head is the start, which must be the normalised mean feature of
    each class over the training images (computed here independently, in float64)."""
    from longtail.engine.evaluation.evaluate import load_trained

    run = _run(tiny_idx_root, tmp_path, "ncm", "model.finetune=classifier", "model.head=cosine", *RANDOM,
               "model.classifier_init=class_mean", "optim.lr=1e-12", "train.precision=fp32", epochs=1)
    model, data, _, _ = load_trained(run, "cpu", with_train_split=True)
    sums, counts = None, torch.zeros(len(data.class_counts), dtype=torch.float64)
    with torch.no_grad():
        for images, labels in data.eval_loaders["train"]:
            features = model.features(images).double()
            sums = torch.zeros(len(counts), features.shape[1], dtype=torch.float64) if sums is None else sums
            for feature, label in zip(features, labels):
                sums[label] += feature
                counts[label] += 1
    expected = sums / counts[:, None]
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(model.head.weight.double(), expected, rtol=1e-5, atol=1e-6)


def test_tta_in_eval(tiny_idx_root, tmp_path, capsys):
    """--tta flip scores the mean logits of image and mirror: checked against the model run on both by hand."""
    from longtail.engine.evaluation.evaluate import evaluate_run, load_trained

    run = _run(tiny_idx_root, tmp_path, "tta", epochs=1)
    plain = evaluate_run(run, "test", "cpu")["test"]
    flipped = evaluate_run(run, "test", "cpu", tta="flip")["test"]
    assert plain["tta"] == "none" and flipped["tta"] == "flip"
    model, data, _, _ = load_trained(run, "cpu")
    correct = total = 0
    with torch.no_grad():
        for images, labels in data.eval_loaders["test"]:
            logits = (model(images) + model(torch.flip(images, dims=[3]))) / 2
            correct += int((logits.argmax(1) == labels).sum())
            total += labels.numel()
    assert flipped["accuracy"] == pytest.approx(correct / total, abs=1e-12)
    from longtail.engine.evaluation.inference import load_run

    loaded = load_run(run)  # what `longtail predict --tta flip` uses
    batch = torch.rand(5, loaded.preprocess.channels, *loaded.preprocess.size)
    with torch.no_grad():
        expected = (loaded.model(batch) + loaded.model(batch.flip(-1))) / 2
    torch.testing.assert_close(loaded.with_tta("flip").classify(batch), expected)
    assert main(["eval", str(run), "--tta", "five_crop"]) == 0
    assert main(["eval", str(run), "--tta", "sideways"]) == 2
    assert "--tta 'sideways' is not valid" in capsys.readouterr().err


def test_lora_run_exports_merged_and_onnx_matches(tiny_idx_root, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from longtail.engine.evaluation.inference import load_run

    run = _run(tiny_idx_root, tmp_path, "lora-export", "model.finetune=lora", "optim.lr=0.05", *RANDOM, epochs=1)
    output = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--output", str(output)]) == 0
    loaded = load_run(run)
    assert any(".lora." in k for k in _weights(run))  # adapters were trained and saved as such
    images = torch.rand(3, loaded.preprocess.channels, *loaded.preprocess.size)
    with torch.no_grad():
        expected = loaded.classify(images).numpy()
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert abs(got - expected).max() < 1e-4


def test_clip_normalisation_is_open_clips(tmp_path):
    """data.normalization=clip uses OpenAI CLIP's mean / std (read from open_clip itself)."""
    open_clip = pytest.importorskip("open_clip")
    from conftest import write_image_folder
    from longtail.engine.config import build_config
    from longtail.engine.runtime.distributed import DistributedContext
    from longtail.engine.training.data_setup import build_data

    for split in ("train", "test"):
        write_image_folder(tmp_path / "pics", [6, 3], size=(16, 16), split=split)
    config, _ = build_config(overrides=["data.name=imagefolder", f"data.root={tmp_path / 'pics'}",
                                        "data.normalization=clip", "train.progress=false"])
    data = build_data(config, torch.device("cpu"), DistributedContext())
    assert data.preprocessing.mean == pytest.approx(tuple(open_clip.OPENAI_DATASET_MEAN), abs=1e-7)
    assert data.preprocessing.std == pytest.approx(tuple(open_clip.OPENAI_DATASET_STD), abs=1e-7)


def test_a_cached_run_resumes_to_the_uninterrupted_result(tiny_idx_root, tmp_path):
    """A resumed run rebuilds the feature cache (it is not in the checkpoint) and continues exactly."""
    from longtail.engine.config import build_config
    from longtail.engine.training.trainer import Trainer, _StopFlag

    overrides = ["model.finetune=classifier", "model.classifier_init=class_mean", "model.head=cosine", *RANDOM,
                 "loss.name=bs", "train.precision=fp32"]
    reference = _run(tiny_idx_root, tmp_path, "whole", *overrides, epochs=4)
    config, _ = build_config(overrides=[*tiny_run_overrides(tiny_idx_root, tmp_path, epochs=4), *overrides,
                                        "train.run_name=halves"])
    trainer = Trainer(config, "halves")
    try:
        with _StopFlag() as stop:
            for _ in range(2):  # what fit() does for the first two epochs, then the process "dies"
                record = trainer.train_epoch(stop)
                trainer.state.history.append(record)
                trainer.state.epoch += 1
                trainer.state.batch = 0
                trainer.save()
    finally:
        trainer.close()
    assert main(["train", "--resume", str(tmp_path / "halves")]) == 0
    whole = json.loads((reference / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "halves" / "metrics.json").read_text())
    assert resumed["test"]["accuracy"] == whole["test"]["accuracy"]
    for key, value in _weights(reference).items():
        torch.testing.assert_close(_weights(tmp_path / "halves")[key], value, rtol=0, atol=1e-6, msg=key)
