"""Every training option takes effect in the real Trainer, seen through an observable that does
not depend on accuracy: what the loss received, what the forward saw, what the optimizer did.

Each expected value is computed here independently (float64 torch / closed forms), never by the
engine's own helpers. Each test fails when the engine ignores its option (the breaks tried are
listed in docs/mutation.md).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine_probe import (make_trainer, parameters, run_epochs, spy_forward, spy_loss, spy_step, tiny_model)

# ----------------------------------------------------------------------------- samplers


def expected_share(counts, q: float) -> torch.Tensor:
    weights = torch.tensor(counts, dtype=torch.float64) ** q
    return weights / weights.sum()


def epoch_class_counts(calls, epoch, num_classes):
    targets = torch.cat([c["targets"] for c in calls if c["epoch"] == epoch])
    return torch.bincount(targets, minlength=num_classes).double()


@pytest.mark.parametrize("sampler, q", [("instance", 1.0), ("sqrt", 0.5), ("class_balanced", 0.0),
                                        ("power", 0.25)])
def test_sampler_sets_the_class_frequencies_the_loss_sees(tiny_idx_root, tmp_path, monkeypatch, sampler, q):
    tiny_model(monkeypatch)
    extra = ["data.sampler_q=0.25"] if sampler == "power" else []
    trainer = make_trainer(tiny_idx_root, tmp_path, f"data.sampler={sampler}", *extra)
    loss = spy_loss(trainer)
    run_epochs(trainer, 1)
    counts = trainer.class_counts
    seen = epoch_class_counts(loss.calls, 0, len(counts))
    total = seen.sum()
    assert total == sum(counts)  # one epoch = as many draws as training images
    # Exact quotas per epoch: every class within one draw of N * p_j (p_j proportional to N_j ** q).
    assert torch.all((seen - total * expected_share(counts, q)).abs() < 1.0), (seen, counts)


def test_progressive_sampler_moves_from_instance_to_class_balanced(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    epochs = 3
    trainer = make_trainer(tiny_idx_root, tmp_path, "data.sampler=progressive", epochs=epochs)
    loss = spy_loss(trainer)
    run_epochs(trainer, epochs)
    counts = trainer.class_counts
    for epoch in range(epochs):
        q = 1 - epoch / (epochs - 1)  # q(t) = 1 - t / (T - 1), spec methods.md section 4
        seen = epoch_class_counts(loss.calls, epoch, len(counts))
        assert torch.all((seen - seen.sum() * expected_share(counts, q)).abs() < 1.0), (epoch, seen)


# ----------------------------------------------------------------------------- optimisation


def test_one_accumulated_step_equals_one_large_batch_step(tiny_idx_root, tmp_path, monkeypatch):
    # 400 images (imbalance 1): 25 batches of 16, or 50 of 8 accumulated in pairs, every pair one step.
    tiny_model(monkeypatch)
    common = ["data.imbalance_factor=1", "optim.weight_decay=0.001"]
    large = make_trainer(tiny_idx_root, tmp_path / "large", *common, "data.batch_size=16")
    small = make_trainer(tiny_idx_root, tmp_path / "small", *common, "data.batch_size=8",
                         "optim.grad_accumulation=2")
    steps_large, steps_small = spy_step(large), spy_step(small)
    for p, q in zip(parameters(large), parameters(small)):
        assert torch.equal(p, q)
    run_epochs(large, 1)
    run_epochs(small, 1)
    assert len(steps_large.calls) == len(steps_small.calls) == 25
    for p, q in zip(parameters(large), parameters(small)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    unaccumulated = make_trainer(tiny_idx_root, tmp_path / "plain", *common, "data.batch_size=8")
    run_epochs(unaccumulated, 1)  # the observable can tell: 50 small steps end elsewhere
    assert max((p - q).abs().max().item() for p, q in zip(parameters(large), parameters(unaccumulated))) > 1e-3


def total_norm(tensors) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def test_gradient_clipping_bounds_the_norm_the_optimizer_sees(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    trainer = make_trainer(tiny_idx_root, tmp_path, "optim.clip_grad_norm=0.01", "optim.lr=0.5")
    steps = spy_step(trainer)
    run_epochs(trainer, 1)
    norms = [total_norm(call["grads"]) for call in steps.calls]
    assert all(n <= 0.01 * (1 + 1e-5) for n in norms), norms
    assert all(n > 0.01 * (1 - 1e-4) for n in norms)  # the raw norms are larger: every step was clipped
    free = make_trainer(tiny_idx_root, tmp_path / "free", "optim.lr=0.5")
    unclipped = spy_step(free)
    run_epochs(free, 1)
    assert min(total_norm(call["grads"]) for call in unclipped.calls) > 0.02


def test_adamw_steps_with_decoupled_decay(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    lr, decay = 0.01, 0.1
    trainer = make_trainer(tiny_idx_root, tmp_path, "optim.name=adamw", f"optim.lr={lr}",
                           f"optim.weight_decay={decay}")
    steps = spy_step(trainer)
    run_epochs(trainer, 1)
    first, second = steps.calls[0], steps.calls[1]
    eps, beta1, beta2 = 1e-8, 0.9, 0.999
    for p0, g, p1 in zip(first["params"], first["grads"], first["after"]):
        # Step 1 of AdamW: m_hat = g, v_hat = g^2; the decay multiplies the weights, not the gradient.
        expected = p0.double() * (1 - lr * decay) - lr * g.double() / (g.double().abs() + eps)
        torch.testing.assert_close(p1.double(), expected, rtol=1e-5, atol=1e-6)
    for g1, p1, g2, p2 in zip(first["grads"], second["params"], second["grads"], second["after"]):
        g1, g2 = g1.double(), g2.double()
        m = ((1 - beta1) * beta1 * g1 + (1 - beta1) * g2) / (1 - beta1 ** 2)
        v = ((1 - beta2) * beta2 * g1 ** 2 + (1 - beta2) * g2 ** 2) / (1 - beta2 ** 2)
        expected = p1.double() * (1 - lr * decay) - lr * m / (v.sqrt() + eps)
        torch.testing.assert_close(p2.double(), expected, rtol=1e-5, atol=1e-6)
    state = trainer.optimizer.state_dict()["state"][0]
    assert {"exp_avg", "exp_avg_sq"} <= set(state)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_weight_decay_and_nesterov(tiny_idx_root, tmp_path, monkeypatch, nesterov):
    tiny_model(monkeypatch)
    lr, decay, momentum = 0.05, 0.01, 0.8
    trainer = make_trainer(tiny_idx_root, tmp_path, f"optim.lr={lr}", f"optim.weight_decay={decay}",
                           f"optim.momentum={momentum}", f"optim.nesterov={str(nesterov).lower()}")
    steps = spy_step(trainer)
    run_epochs(trainer, 1)
    buffers = None
    for call in steps.calls[:3]:
        directions = [g.double() + decay * p.double() for p, g in zip(call["params"], call["grads"])]
        buffers = directions if buffers is None else [momentum * b + d for b, d in zip(buffers, directions)]
        for p0, d, b, p1 in zip(call["params"], directions, buffers, call["after"]):
            update = d + momentum * b if nesterov else b
            torch.testing.assert_close(p1.double(), p0.double() - lr * update, rtol=1e-5, atol=1e-7)


def reference_lr(base, position, epochs, schedule, warmup, milestones=(), factors=(), min_lr=0.0):
    """The documented schedule, written out again: linear warm-up to ``base`` over ``warmup`` epochs,
    then constant / multistep (factor of the last passed milestone) / cosine to ``min_lr``."""
    if position < warmup:
        return base * position / warmup
    if schedule == "multistep":
        factor = 1.0
        for milestone, f in zip(milestones, factors):
            if position >= milestone:
                factor = f
        return base * factor
    progress = (position - warmup) / (epochs - warmup)
    return min_lr + (base - min_lr) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize("schedule, extra", [
    ("multistep", ["optim.milestones=[2, 3]", "optim.milestone_factors=[0.1, 0.01]"]),
    ("cosine", ["optim.min_lr=0.001"]),
])
def test_learning_rate_of_every_step_follows_warmup_and_schedule(tiny_idx_root, tmp_path, monkeypatch,
                                                                  schedule, extra):
    tiny_model(monkeypatch)
    epochs, base = 4, 0.2
    trainer = make_trainer(tiny_idx_root, tmp_path, f"optim.schedule={schedule}", "optim.warmup_epochs=1.5",
                           f"optim.lr={base}", *extra, epochs=epochs)
    steps = spy_step(trainer)
    run_epochs(trainer, epochs)
    per_epoch = trainer.data.steps_per_epoch
    assert len(steps.calls) == epochs * per_epoch
    for index, call in enumerate(steps.calls):
        position = index // per_epoch + (index % per_epoch) / per_epoch
        expected = reference_lr(base, position, epochs, schedule, 1.5, (2, 3), (0.1, 0.01), 0.001)
        assert call["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-9), (index, position)


# ----------------------------------------------------------------------------- what the loss receives


def test_label_smoothing_reaches_the_loss(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    trainer = make_trainer(tiny_idx_root, tmp_path, "loss.name=ce", "loss.label_smoothing=0.3")
    loss = spy_loss(trainer)
    run_epochs(trainer, 1)
    for call in loss.calls[:3]:
        log_p = F.log_softmax(call["logits"].double(), dim=1)
        nll = -log_p.gather(1, call["targets"][:, None]).squeeze(1)
        expected = (0.7 * nll - 0.3 * log_p.mean(dim=1)).mean()
        assert call["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_gamma_reaches_the_loss(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    trainer = make_trainer(tiny_idx_root, tmp_path, "loss.name=focal", "loss.gamma=3.0")
    loss = spy_loss(trainer)
    run_epochs(trainer, 1)
    for call in loss.calls[:3]:
        log_p = F.log_softmax(call["logits"].double(), dim=1).gather(1, call["targets"][:, None]).squeeze(1)
        expected = (-(1 - log_p.exp()) ** 3 * log_p).mean()
        assert call["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_drw_weights_switch_on_at_the_configured_epoch(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    beta, epochs = 0.999, 4
    trainer = make_trainer(tiny_idx_root, tmp_path, "loss.name=ce_drw", "loss.switch_fraction=0.5",
                           f"loss.beta={beta}", epochs=epochs)
    loss = spy_loss(trainer)
    run_epochs(trainer, epochs)
    counts = torch.tensor(trainer.class_counts, dtype=torch.float64)
    weights = (1 - beta) / (1 - beta ** counts)  # effective number of samples (Cui et al. 2019)
    weights = weights * len(counts) / weights.sum()
    for call in loss.calls:
        nll = F.cross_entropy(call["logits"].double(), call["targets"], reduction="none")
        if call["epoch"] < 2:  # switch at 0.5 * 4 epochs: unweighted before
            expected = nll.mean()
        else:  # weighted mean, as LDAM-DRW's F.cross_entropy(weight=w)
            w = weights[call["targets"]]
            expected = (w * nll).sum() / w.sum()
        assert call["loss"].item() == pytest.approx(expected.item(), rel=1e-5), call["epoch"]
    assert {c["epoch"] for c in loss.calls} == set(range(epochs))


def cutmix_partners(mixed, originals, own):
    """Indices j of the batch images that, with ``own``, explain every pixel of ``mixed``."""
    return [j for j, other in enumerate(originals) if torch.all((mixed == own) | (mixed == other))]


def mixup_partner(mixed, originals, own, lam):
    """Index j of the batch image with mixed == lam * own + (1 - lam) * originals[j]."""
    errors = [(mixed - lam * own - (1 - lam) * other).abs().max().item() for other in originals]
    return min(range(len(originals)), key=errors.__getitem__)


@pytest.mark.parametrize("mixing", ["mixup", "cutmix"])
def test_mixing_gives_the_loss_the_soft_targets_of_the_images_the_model_saw(tiny_idx_root, tmp_path, monkeypatch,
                                                                            mixing):
    tiny_model(monkeypatch)
    trainer = make_trainer(tiny_idx_root, tmp_path, f"data.mixing={mixing}", "data.mixing_until_epoch=1", epochs=2)
    loader_batches = []
    original_iter = type(trainer.data.train_loader).__iter__

    def recording_iter(loader):
        for images, labels in original_iter(loader):
            loader_batches.append((images.clone(), labels.clone()))
            yield images, labels

    monkeypatch.setattr(type(trainer.data.train_loader), "__iter__", recording_iter)
    forward, loss = spy_forward(trainer), spy_loss(trainer)
    run_epochs(trainer, 2)
    num_classes = len(trainer.class_counts)
    steps = trainer.data.steps_per_epoch
    mixed_rows = 0
    for (images, labels), seen, call in list(zip(loader_batches, forward.calls, loss.calls))[:steps]:
        targets = call["targets"]
        assert targets.shape == (len(labels), num_classes)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(labels)))
        soft_rows = (targets.max(dim=1).values < 1).nonzero().flatten()
        batch_lam = targets[soft_rows[0], labels[soft_rows[0]]].item() if len(soft_rows) else None
        for i in range(len(labels)):
            if mixing == "mixup":  # one lam per batch, read off a row whose two labels differ
                if batch_lam is None:
                    continue
                lam = batch_lam
                j = mixup_partner(seen["images"][i], images, images[i], lam)
                torch.testing.assert_close(seen["images"][i], lam * images[i] + (1 - lam) * images[j])
                candidates = [j]
            else:  # one box per batch: every pixel is the image's own or its partner's
                changed = (seen["images"] != images).any(dim=0).any(dim=0).nonzero()
                if len(changed) == 0:
                    continue
                height, width = images.shape[-2:]
                box = (changed[:, 0].max() - changed[:, 0].min() + 1) * (changed[:, 1].max() - changed[:, 1].min() + 1)
                lam = 1 - box.item() / (height * width)  # at least the changed pixels are pasted
                if batch_lam is not None:  # the exact-area lambda: the box holds no fewer pixels
                    assert batch_lam <= lam + 1e-6
                    lam = batch_lam
                candidates = cutmix_partners(seen["images"][i], images, images[i])
                assert candidates
            options = [lam * F.one_hot(labels[i], num_classes) + (1 - lam) * F.one_hot(labels[j], num_classes)
                       for j in candidates]
            assert any(torch.allclose(targets[i], option.float()) for option in options), (targets[i], options)
            mixed_rows += 0 < lam < 1
    assert mixed_rows > 0
    # data.mixing_until_epoch=1: the second epoch trains on the images and labels as loaded.
    for (images, labels), seen, call in list(zip(loader_batches, forward.calls, loss.calls))[steps:]:
        assert torch.equal(seen["images"], images) and torch.equal(call["targets"], labels)


# ----------------------------------------------------------------------------- precision, layout, split


def test_bf16_autocast_is_on_inside_the_training_forward(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    state = lambda: {"autocast": torch.is_autocast_enabled("cpu"), "dtype": torch.get_autocast_dtype("cpu")}
    trainer = make_trainer(tiny_idx_root, tmp_path, "train.precision=bf16")
    forward = spy_forward(trainer, state)
    run_epochs(trainer, 1)
    assert forward.calls and all(c["autocast"] and c["dtype"] == torch.bfloat16 for c in forward.calls)
    assert all(c["output_dtype"] == torch.bfloat16 for c in forward.calls)
    plain = make_trainer(tiny_idx_root, tmp_path / "fp32")
    forward = spy_forward(plain, state)
    run_epochs(plain, 1)
    assert not any(c["autocast"] for c in forward.calls)
    assert all(c["output_dtype"] == torch.float32 for c in forward.calls)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_reaches_the_model_and_its_inputs(tiny_idx_root, tmp_path, channels_last):
    # The real small CNN (its convolutions are what the layout is for), on 3-channel inputs: with one
    # channel both layouts have the same strides.
    trainer = make_trainer(tiny_idx_root, tmp_path, "data.channels=3", f"model.channels_last={str(channels_last).lower()}")
    conv = trainer.model.backbone[0].weight
    forward = spy_forward(trainer)
    run_epochs(trainer, 1)
    for call in forward.calls:
        images = call["images"]
        assert images.shape[1] == 3
        assert images.stride()[1] == 1 if channels_last else images.is_contiguous()
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert conv.is_contiguous() != channels_last


def test_validation_images_are_never_trained_on(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    trainer = make_trainer(tiny_idx_root, tmp_path, "data.validation_per_class=3", "data.batch_size=10")
    forward = spy_forward(trainer)
    run_epochs(trainer, 1)

    def keys(images):
        return {image.numpy().tobytes() for image in images}

    trained = set().union(*(keys(c["images"]) for c in forward.calls))
    validation = set().union(*(keys(images) for images, _ in trainer.data.eval_loaders["val"]))
    test = set().union(*(keys(images) for images, _ in trainer.data.eval_loaders["test"]))
    assert len(validation) == 3 * len(trainer.class_counts)
    assert trained.isdisjoint(validation)
    assert trained.isdisjoint(test)
    assert len(trained) == sum(trainer.class_counts)  # every remaining training image was used


# ----------------------------------------------------------------------------- augmentation, schedule of outputs


def seen_images(root, output, monkeypatch, *overrides):
    tiny_model(monkeypatch)
    trainer = make_trainer(root, output, *overrides)
    forward = spy_forward(trainer)
    run_epochs(trainer, 1)
    return torch.cat([c["images"] for c in forward.calls]), trainer


@pytest.mark.parametrize("augmentation", ["flip", "crop", "cutout"])
def test_augmentation_options_change_the_images_the_model_sees_as_documented(tiny_idx_root, tmp_path, monkeypatch,
                                                                          augmentation):
    """The same sample order with and without the option (augmentation has its own random stream):
    every seen image must be its plain self under the documented transformation."""
    plain, _ = seen_images(tiny_idx_root, tmp_path / "plain", monkeypatch)
    option = {"flip": ["data.flip=true"], "crop": ["data.crop_padding=2"], "cutout": ["data.cutout=8"]}[augmentation]
    seen, trainer = seen_images(tiny_idx_root, tmp_path / "aug", monkeypatch, *option)
    black = plain.min().item()  # the normalised value of a 0 pixel (the padding fill)
    changed = 0
    for image, original in zip(seen, plain):
        if torch.equal(image, original):
            continue
        changed += 1
        if augmentation == "flip":
            assert torch.equal(image, original.flip(-1))
        elif augmentation == "crop":
            padded = F.pad(original, (2, 2, 2, 2), value=black)
            shifts = [(dy, dx) for dy in range(5) for dx in range(5)
                      if torch.equal(image, padded[:, dy:dy + 28, dx:dx + 28])]
            assert shifts, "not a shifted copy within 2 pixels"
        else:  # a hole of at most 8 x 8 pixels filled with the mean colour (0 after normalisation)
            rows, cols = (image != original)[0].nonzero(as_tuple=True)
            assert torch.all(image[0, rows, cols] == 0)
            assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8
    assert changed > len(seen) // 4, changed


def test_mixing_probability_zero_never_mixes(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    trainer = make_trainer(tiny_idx_root, tmp_path, "data.mixing=mixup", "data.mixing_prob=0.0")
    loss = spy_loss(trainer)
    run_epochs(trainer, 1)
    for call in loss.calls:  # one-hot rows: the loss saw the labels as they were
        assert torch.equal(call["targets"].max(dim=1).values, torch.ones(len(call["targets"])))


def test_eval_every_and_checkpoint_every_follow_their_periods(tiny_idx_root, tmp_path, monkeypatch):
    tiny_model(monkeypatch)
    trainer = make_trainer(tiny_idx_root, tmp_path, "train.eval_every=2", "train.checkpoint_every=3", epochs=5)
    saves = []
    original = trainer.save
    trainer.save = lambda: (saves.append(trainer.state.epoch), original())
    trainer.fit()
    tested = [record["epoch"] for record in trainer.state.history if "test" in record]
    assert tested == [1, 3]  # after epochs 2 and 4 of 5; the last epoch has the final evaluation
    assert saves == [3, 5]  # after epoch 3, and at the end


def test_rgb_arrays_train_at_their_native_size_and_channels(tmp_path):
    """A CIFAR-10 python folder (RGB arrays, in memory) through the real data setup and model."""
    import pickle

    import numpy as np

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    from engine_probe import QUIET
    from longtail.engine.config import build_config
    from longtail.engine.training.trainer import Trainer

    config, label = build_config(None, None, [
        "data.name=cifar10", f"data.root={tmp_path / 'cifar'}", "data.batch_size=25", "optim.epochs=1",
        "optim.warmup_epochs=0", f"train.output_dir={tmp_path / 'runs'}", "train.progress=false", "train.threads=1",
        "train.device=cpu", *QUIET])
    trainer = Trainer(config, label)
    forward = spy_forward(trainer)
    run_epochs(trainer, 1)
    assert [tuple(c["images"].shape) for c in forward.calls] == [(25, 3, 32, 32)] * 4
