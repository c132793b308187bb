"""Recipes follow the protocols they name (issue 11): schedules against transcriptions of the
reference code, iteration-based training, and the machine-checked docs/protocols.md tables."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from longtail.engine.config import ConfigError, build_config, load_recipe
from longtail.engine.training.schedules import learning_rate

from conftest import tiny_run_overrides


def ldam_drw_adjust_learning_rate(epoch: int, lr: float = 0.1) -> float:
    """Transcribed from kaidic/LDAM-DRW cifar_train.py ``adjust_learning_rate`` (epoch counts from 0)."""
    epoch = epoch + 1
    if epoch <= 5:
        return lr * epoch / 5
    if epoch > 180:
        return lr * 0.0001
    if epoch > 160:
        return lr * 0.01
    return lr


def balanced_softmax_lr(iteration: int, total=13000, warmup=800, start=0.05, peak=0.1, end=0.0) -> float:
    """The Balanced Softmax CIFAR protocol per iteration (methods.md section 5): linear warm-up from
    0.05 to 0.1 over 800 iterations, then cosine from 0.1 to 0 over the remaining iterations."""
    if iteration < warmup:
        return start + (peak - start) * iteration / warmup
    return end + (peak - end) * (1 + math.cos(math.pi * (iteration - warmup) / (total - warmup))) / 2


@pytest.mark.parametrize("protocol", ["cifar100-lt-r32", "cifar10-lt-r32"])
@pytest.mark.parametrize("method", ["ldam_drw", "ce_drw", "ce"])
def test_ldam_drw_recipes_reproduce_the_reference_lr_at_every_step(protocol, method):
    config, _ = load_recipe(f"{protocol}/{method}")
    optim = config.optim
    steps = 85  # batches per epoch: any number; the reference is constant within an epoch
    for epoch in range(optim.epochs):
        for batch in (0, steps // 2, steps - 1):
            ours = learning_rate(optim.lr, epoch + batch / steps, optim.epochs, optim.schedule, optim.warmup_epochs,
                                 tuple(optim.milestones), tuple(optim.milestone_factors), optim.min_lr,
                                 optim.warmup_style, optim.warmup_start_lr)
            assert ours == pytest.approx(ldam_drw_adjust_learning_rate(epoch, optim.lr), rel=1e-12), (epoch, batch)
    assert (optim.momentum, optim.weight_decay, config.data.batch_size) == (0.9, 2e-4, 128)


def test_ldam_drw_protocol_switches_drw_where_ldam_does():
    config, _ = load_recipe("cifar100-lt-r32/ldam_drw")
    assert config.loss.options["switch_fraction"] * config.optim.epochs == 160  # idx = epoch // 160


def test_stepwise_warmup_is_constant_within_an_epoch_and_linear_warmup_starts_where_asked():
    assert learning_rate(0.1, 0.0, 10, "constant", 5, warmup_style="stepwise") == pytest.approx(0.02)
    assert learning_rate(0.1, 0.99, 10, "constant", 5, warmup_style="stepwise") == pytest.approx(0.02)
    assert learning_rate(0.1, 4.5, 10, "constant", 5, warmup_style="stepwise") == pytest.approx(0.1)
    assert learning_rate(0.1, 0.0, 10, "constant", 5) == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(0.1, 0.0, 10, "constant", 2, warmup_start_lr=0.05) == pytest.approx(0.05)
    assert learning_rate(0.1, 1.0, 10, "constant", 2, warmup_start_lr=0.05) == pytest.approx(0.075)


@pytest.mark.parametrize("protocol", ["cifar100-lt-r32-bs", "cifar10-lt-r32-bs"])
def test_balanced_softmax_recipe_reproduces_the_protocol_per_iteration(protocol):
    config, _ = load_recipe(f"{protocol}/bs")
    optim = config.optim
    assert (optim.iterations, optim.warmup_iterations, config.data.batch_size) == (13000, 800, 512)
    assert (optim.weight_decay, optim.momentum, config.data.autoaugment, config.data.cutout) == (5e-4, 0.9, True, 16)
    assert config.loss.name == "bs"
    steps = 22  # CIFAR-100-LT IF 100: ceil(10847 / 512) batches per epoch
    for iteration in list(range(0, 13000, 97)) + [799, 800, 801, 12999]:
        position = iteration / steps
        ours = learning_rate(optim.lr, position, optim.iterations / steps, optim.schedule,
                             optim.warmup_iterations / steps, tuple(optim.milestones), tuple(optim.milestone_factors),
                             optim.min_lr, optim.warmup_style, optim.warmup_start_lr)
        assert ours == pytest.approx(balanced_softmax_lr(iteration), rel=1e-9, abs=1e-12), iteration


def test_iteration_based_training_runs_exactly_that_many_batches(tiny_idx_root, tmp_path):
    from longtail.engine.training.trainer import train

    overrides = tiny_run_overrides(tiny_idx_root, tmp_path) + [
        "optim.iterations=13", "optim.warmup_iterations=4", "optim.warmup_start_lr=0.01", "optim.schedule=cosine",
        "train.eval_train=false"]
    config, label = build_config(overrides=overrides)
    run_dir, results = train(config, label)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    steps = -(-sum(json.loads((run_dir / "class_counts.json").read_text())["train_counts"]) // 16)
    assert results["epochs"] == math.ceil(13 / steps) == len(history)
    from longtail.engine.rundir.checkpoint import load_checkpoint, run_checkpoint

    assert load_checkpoint(run_checkpoint(run_dir))["global_step"] == 13


@pytest.mark.parametrize("overrides, message", [
    (["optim.warmup_iterations=10"], "not both"),
    (["optim.warmup_style=stepwise", "optim.warmup_start_lr=0.01"], "linear warm-up"),
    (["optim.iterations=0"], r"optim.iterations=0 is out of range; valid: >= 1"),
    (["optim.iterations=100", "data.sampler=progressive"], "progressive"),
])
def test_iteration_options_refuse_contradictions(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


def test_in_memory_loader_applies_autoaugment_when_the_config_asks(tiny_idx_root):
    import torch

    from longtail.engine.training.data_setup import build_data
    from longtail.engine.runtime.distributed import DistributedContext

    def first_batch(autoaugment):
        config, _ = build_config(overrides=tiny_run_overrides(tiny_idx_root, "unused") + [
            f"data.autoaugment={str(autoaugment).lower()}", "data.crop_padding=0", "data.flip=false"])
        data = build_data(config, torch.device("cpu"), DistributedContext())
        data.train_loader.set_epoch(0)
        return next(iter(data.train_loader))[0]

    assert not torch.equal(first_batch(True), first_batch(False))


# ----------------------------------------------------------------- scheduled and head-bound losses

COUNTS = [500, 120, 30, 8]


def _effective_number_weights(counts, beta=0.9999):
    """LDAM-DRW cifar_train.py's DRW weights, in numpy."""
    import numpy as np

    per_class = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return per_class / per_class.sum() * len(counts)


def test_ccar_around_drw_receives_the_epoch_through_set_epoch():
    import torch

    from longtail import losses as L

    drw = L.DeferredReweighting(L.CrossEntropy(COUNTS), COUNTS, switch_epoch=3)
    ccar = L.CCAR(COUNTS, base=drw)
    assert hasattr(ccar, "set_epoch")
    logits = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    ccar.set_epoch(2)
    assert not drw.weights_active
    before = ccar(logits, targets)
    ccar.set_epoch(3)
    assert drw.weights_active and drw.epoch == 3
    after = ccar(logits, targets)
    # Independent: Omega = (e - f')^(omega - p_t) (spec section 1) times the (DRW-weighted) CE, mean.
    p = torch.softmax(logits, 1).gather(1, targets[:, None]).squeeze(1)
    frequency = torch.tensor(COUNTS, dtype=torch.float64)[targets] / sum(COUNTS)
    omega = 0.75
    dual = torch.where(p < omega, frequency, 1 - frequency)
    ccar_weight = (math.e - dual) ** (omega - p)
    w = torch.tensor(_effective_number_weights(COUNTS))[targets]
    ce = -torch.log(p)
    torch.testing.assert_close(before, (ccar_weight * ce).mean())
    torch.testing.assert_close(after, (ccar_weight * w * ce).mean())


def test_engine_steps_a_drw_loss_nested_in_ccar(tiny_idx_root, tmp_path):
    from longtail import losses as L
    from longtail.engine.training.trainer import Trainer

    config, label = build_config(overrides=tiny_run_overrides(tiny_idx_root, tmp_path, epochs=2) + [
        "loss.name=ccar_ce", "train.eval_train=false"])
    trainer = Trainer(config, label)
    try:
        drw = L.DeferredReweighting(L.CrossEntropy(trainer.class_counts), trainer.class_counts, switch_epoch=1)
        trainer.loss_fn = L.CCAR(trainer.class_counts, base=drw)
        trainer.fit()
        assert drw.epoch == 1 and drw.weights_active
    finally:
        trainer.close()


def test_drw_in_a_plain_loop_without_set_epoch_warns_once():
    import warnings

    import torch

    from longtail.losses import build_loss

    loss = build_loss("ce_drw", COUNTS)
    logits, targets = torch.randn(4, 4), torch.tensor([0, 1, 2, 3])
    with pytest.warns(UserWarning, match="set_epoch"):
        loss(logits, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(logits, targets)
        stepped = build_loss("ce_drw", COUNTS)
        stepped.set_epoch(0)
        stepped(logits, targets)


def test_ldam_is_bound_to_its_cosine_head():
    import warnings

    import torch

    from longtail.losses import build_loss
    from longtail.models.heads import CosineHead, LinearHead

    cosine = CosineHead(8, 4, scale=16.0)
    loss = build_loss("ldam", COUNTS, head=cosine)
    assert loss.logit_scale == 16.0
    features, targets = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checked head: no warning
        value = loss(cosine(features), targets)
    # Independent: s * (cos - m_y) for the true class, CE, with m_j = 0.5 * (N_min / N_j) ** 0.25.
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    margins = 0.5 * (counts.min() / counts) ** 0.25
    cos = cosine.cosine(features).double().detach()
    adjusted = 16.0 * (cos - torch.nn.functional.one_hot(targets, 4) * margins[targets][:, None])
    torch.testing.assert_close(value.double(), torch.nn.functional.cross_entropy(adjusted, targets), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one setting"):
        build_loss("ldam_drw", COUNTS, head=cosine, scale=30.0)
    with pytest.raises(ValueError, match="cosine-normalised"):
        build_loss("ldam_drw", COUNTS, head=LinearHead(8, 4))
    unbound = build_loss("ldam", COUNTS)
    with pytest.warns(UserWarning, match="head=model.head"):
        unbound(cosine(features), targets)


def test_engine_makes_ldam_scale_the_head_scale():
    import torch

    from longtail.engine.training.components import build_loss_fn

    config, _ = build_config("fashion-mnist-lt/ldam_drw", overrides=["model.head_scale=16"])
    assert build_loss_fn(config, COUNTS, torch.device("cpu")).loss.logit_scale == 16.0
    # Refused with the config, before any data is read (exit 2 from the CLI).
    with pytest.raises(ConfigError, match="model.head_scale=30"):
        build_config("fashion-mnist-lt/ldam_drw", overrides=["loss.scale=30"])
    with pytest.raises(ConfigError, match="model.head=cosine"):
        build_config("fashion-mnist-lt/ldam_drw", overrides=["model.head=linear"])


# ----------------------------------------------------------------- item 7: the reported spectral norm


def test_reported_test_spectral_norm_uses_the_runs_car_weighting(tiny_idx_root, tmp_path):
    import numpy as np
    import torch

    from longtail.engine.evaluation.evaluate import load_trained
    from longtail.engine.training.trainer import train

    config, label = build_config(overrides=tiny_run_overrides(tiny_idx_root, tmp_path, epochs=1) + [
        "regularizer.name=car", "regularizer.weighting=count", "regularizer.l0=3", "train.eval_train=false"])
    run_dir, results = train(config, label)
    reported = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert reported["confusion_spectral_norm_weighting"] == {
        "weighting": "count", "source": "this run's CAR regularizer", "l0": 3}
    # Independent: predictions -> numpy confusion (pred x true), columns / class size, diagonal 0,
    # columns times (N_j + l0)^-0.5 / mean, largest singular value.
    model, data, _, device = load_trained(run_dir, "cpu")
    predictions, labels = [], []
    with torch.no_grad():
        for images, targets in data.eval_loaders["test"]:
            predictions.append(model(images).argmax(1).numpy())
            labels.append(targets.numpy())
    predictions, labels = np.concatenate(predictions), np.concatenate(labels)
    k = len(data.class_counts)
    confusion = np.zeros((k, k))
    np.add.at(confusion, (predictions, labels), 1.0)
    hard = confusion / np.bincount(labels, minlength=k)[None, :]
    np.fill_diagonal(hard, 0.0)
    counts = np.asarray(data.class_counts, dtype=np.float64)

    def norm(raw):
        weights = np.maximum(raw / raw.mean(), 1e-3)
        return np.linalg.norm(hard * weights[None, :], ord=2)

    expected = norm((counts + 3) ** -0.5)
    assert reported["confusion_spectral_norm"] == pytest.approx(expected, rel=1e-6)
    assert abs(norm((counts / counts.sum() + 0.2) ** -0.5) - expected) > 1e-3  # the default would differ


# ----------------------------------------------------------------- item 1: never select on a test set


def test_selection_on_inat_val_is_refused_before_any_work(tmp_path, capsys):
    from longtail.cli import main

    code = main(["train", "data.name=inat2018", f"data.root={tmp_path}", "train.select_on=balanced_accuracy",
                 f"train.output_dir={tmp_path}/runs"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'val'" in err and "test split of inat2018" in err and "data.validation_per_class" in err
    assert not (tmp_path / "runs").exists()
    config, _ = build_config("inat2018-r50/ce", overrides=["train.select_on=balanced_accuracy"])
    assert config.data.validation_per_class == 1  # the recipe carves its validation split from training


def test_inat_val_list_is_never_a_validation_split(tmp_path):
    from PIL import Image

    from longtail.data import dataset_test_splits
    from longtail.engine.training.data_setup import _own_validation_set

    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    for split in ("train", "val"):
        (tmp_path / f"iNaturalist18_{split}.txt").write_text("img/a.png 0\n")
    assert dataset_test_splits("inat2018") == ("test", "val")
    assert dataset_test_splits("imagenet-lt") == ("test",)
    config, _ = build_config(overrides=["data.name=inat2018", f"data.root={tmp_path}"])
    assert _own_validation_set(config) is None


def _write_folder(root, counts, size=8, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per_class in (("train", counts), ("test", [3] * len(counts))):
        for c, n in enumerate(per_class):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_file_datasets_carve_a_seeded_per_class_validation_split_from_training(tmp_path):
    import torch

    from longtail.engine.training.data_setup import build_data
    from longtail.engine.runtime.distributed import DistributedContext

    _write_folder(tmp_path / "data", [6, 4, 3])

    def bundle(seed):
        config, _ = build_config(overrides=[
            "data.name=imagefolder", f"data.root={tmp_path / 'data'}", "data.image_size=8", "data.validation_per_class=2",
            f"data.split_seed={seed}", "data.workers=0", "data.batch_size=4", "train.select_on=balanced_accuracy",
            "data.in_memory=false"])
        return build_data(config, torch.device("cpu"), DistributedContext())

    data = bundle(0)
    assert data.class_counts == [4, 2, 1]
    assert data.split_info["validation"] == {"from": "train", "per_class": 2, "seed": 0, "size": 6}
    validation = data.eval_loaders["val"].dataset
    train = data.train_loader.dataset
    assert sorted(validation.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert not set(validation.paths) & set(train.paths)  # disjoint
    assert set(data.eval_loaders["train"].dataset.paths) == set(train.paths)
    assert validation.paths == bundle(0).eval_loaders["val"].dataset.paths  # seeded
    others = [bundle(seed).eval_loaders["val"].dataset.paths for seed in (1, 2, 3)]
    assert any(paths != validation.paths for paths in others)


# ----------------------------------------------------------------- item 9: ViT fine-tune augmentation


def test_random_resized_crop_matches_torchvision_resized_crop():
    import torch
    from torchvision.transforms.v2 import functional as TF

    from longtail.data.transforms.augment import RESIZED_CROP_COLUMNS, random_resized_crop, sample_uniforms, uniforms_to_resized_crop

    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = torch.tensor([[0.0, 0.0, 40.0, 40.0]] * 6)
    assert torch.equal(random_resized_crop(images, whole), images)
    uniforms = sample_uniforms(3, 0, torch.arange(6), RESIZED_CROP_COLUMNS.stop)
    boxes = uniforms_to_resized_crop(uniforms, 40, 40, (0.8, 1.0))
    area = boxes[:, 2] * boxes[:, 3] / 1600
    assert bool(((area > 0.77) & (area <= 1.0)).all())
    assert bool((boxes[:, 0] + boxes[:, 2] <= 40).all() and (boxes[:, 1] + boxes[:, 3] <= 40).all())
    ours = random_resized_crop(images, boxes)
    for b, (top, left, h, w) in enumerate(boxes.int().tolist()):
        reference = TF.resized_crop(images[b], top, left, h, w, [40, 40], antialias=False)
        # Inside the crop both read the same bilinear samples; at its edge torchvision clamps to the
        # crop, grid_sample reads the neighbouring pixel: compare the interior.
        diff = (ours[b].int() - reference.int()).abs()[:, 1:-1, 1:-1]
        assert int(diff.max()) <= 1


def test_vit_fine_tune_recipes_follow_the_authors_code():
    for protocol in ("cifar100-lt-vits-ft", "imagenet-lt-vits-ft", "inat2018-vits-ft"):
        config, _ = load_recipe(f"{protocol}/car")
        assert config.data.normalization == "imagenet", protocol
        assert config.data.crop_scale_min == 0.8 and config.optim.min_lr == 1e-6, protocol
        assert (config.optim.lr, config.optim.weight_decay, config.optim.epochs) == (5e-5, 0.05, 100)


def test_imagenet_normalization_and_resized_crop_reach_the_in_memory_loader(tiny_idx_root):
    import torch

    from longtail.engine.training.data_setup import build_data
    from longtail.engine.runtime.distributed import DistributedContext

    base = tiny_run_overrides(tiny_idx_root, "unused") + ["data.channels=3"]
    with pytest.raises(ConfigError, match="RGB"):
        config, _ = build_config(overrides=base + ["data.normalization=imagenet"])
        build_data(config, torch.device("cpu"), DistributedContext())
    with pytest.raises(ConfigError, match="crop_padding=0"):
        config, _ = build_config(overrides=base + ["data.crop_scale_min=0.8"])
        build_data(config, torch.device("cpu"), DistributedContext())

    def first(extra):
        config, _ = build_config(overrides=base + ["data.flip=false"] + extra)
        data = build_data(config, torch.device("cpu"), DistributedContext())
        data.train_loader.set_epoch(0)
        return next(iter(data.train_loader))[0]

    assert not torch.equal(first(["data.crop_padding=0"]), first(["data.crop_padding=0", "data.crop_scale_min=0.8"]))


# ----------------------------------------------------------------- item 10: docs/protocols.md = the recipes

PROTOCOLS_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocols.md"
TABLE_HEADER = ["key", "value", "reference value", "source", "note"]


def parse_protocol_tables(text: str) -> dict:
    """{("protocol" | "method", name): [row dicts]} from '### protocol `NAME`' / '### method `NAME`'
    headings, each followed by a table | key | value | reference value | source | note |."""
    tables, current = {}, None
    for line in text.splitlines():
        heading = re.match(r"^### (protocol|method) `([^`]+)`\s*$", line)
        if heading:
            current = (heading.group(1), heading.group(2))
            tables[current] = []
            continue
        if current is None or not line.startswith("|"):
            if line.startswith("#"):
                current = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells == TABLE_HEADER or set("".join(cells)) <= set("-: "):
            continue
        assert len(cells) == 5, f"{current}: a row needs 5 cells: {line}"
        key, value = (re.fullmatch(r"`([^`]*)`", cell) for cell in cells[:2])
        assert key and value, f"{current}: key and value must be `code`: {line}"
        tables[current].append({"key": key.group(1), "value": yaml.safe_load(value.group(1)),
                                "reference": cells[2], "source": cells[3], "note": cells[4]})
    return tables


def _flatten(mapping: dict, sections=("data", "model", "optim", "train", "loss", "regularizer")) -> dict:
    flat = {}
    for section in sections:
        values = mapping.get(section) or {}
        if isinstance(values, str):
            values = {"name": values}
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def _config_value(config, key: str):
    section, name = key.split(".", 1)
    if section in ("loss", "regularizer"):
        component = getattr(config, section)
        return component.name if name == "name" else component.options[name]
    return getattr(getattr(config, section), name)


def _same(documented, actual) -> bool:
    if isinstance(actual, (int, float)) and not isinstance(actual, bool) and isinstance(documented, (int, float)):
        return math.isclose(float(documented), float(actual), rel_tol=1e-12, abs_tol=0.0)
    if isinstance(actual, list) and isinstance(documented, list):
        return len(actual) == len(documented) and all(_same(d, a) for d, a in zip(documented, actual))
    return documented == actual


def test_protocols_doc_has_a_table_for_every_shipped_recipe_and_agrees_with_it():
    from longtail.engine.config import RECIPE_DIR, available_protocols, load_methods, method_overrides

    tables = parse_protocol_tables(PROTOCOLS_DOC.read_text(encoding="utf-8"))
    methods = load_methods()
    assert {name for kind, name in tables if kind == "protocol"} == set(available_protocols())
    assert {name for kind, name in tables if kind == "method"} == set(methods)
    for (kind, name), rows in tables.items():
        keys = [row["key"] for row in rows]
        assert len(keys) == len(set(keys)), f"{kind} {name}: a key twice"
        for row in rows:
            assert row["reference"] and row["source"], f"{kind} {name} {row['key']}: reference value and source"
        if kind == "protocol":
            with open(RECIPE_DIR / "protocols" / f"{name}.yaml", encoding="utf-8") as handle:
                recipe_keys = set(_flatten(yaml.safe_load(handle)))
            assert recipe_keys <= set(keys), f"protocol {name}: undocumented keys {sorted(recipe_keys - set(keys))}"
            config, _ = load_recipe(name)
            for row in rows:
                assert _same(row["value"], _config_value(config, row["key"])), (name, row["key"])
        else:
            preset = dict(methods[name])
            per_protocol = preset.pop("per_protocol", {}) or {}
            expected = {**_flatten(preset)}
            for protocol, overrides in per_protocol.items():
                expected.update({f"{key} @ {protocol}": value for key, value in _flatten(overrides).items()})
            assert set(expected) <= set(keys), f"method {name}: undocumented keys {sorted(set(expected) - set(keys))}"
            for row in rows:
                key, _, protocol = row["key"].partition(" @ ")
                actual = _flatten(method_overrides(name, protocol or None)).get(key)
                assert _same(row["value"], actual), (name, row["key"], row["value"], actual)


def test_car_recipes_use_the_ema_update_the_tracking_measurement_chose():
    for protocol in ("imagenet-lt-r50", "imagenet-lt-x50", "inat2018-r50", "imagenet-lt-vits", "inat2018-vits-ft"):
        for method in ("car", "car_bs", "car_ccar_bs"):
            config, _ = build_config(protocol, method=method)
            assert config.regularizer.options.get("ema_update") == "masked", (protocol, method)
    for protocol in ("imagenet-lt-x50", "imagenet-lt-r50", "inat2018-r50", "imagenet-lt-vits", "inat2018-vits"):
        config, _ = build_config(protocol, method="car_concutmix")
        assert config.regularizer.options.get("ema_update") == "masked", protocol
    for protocol in ("cifar100-lt-r32", "cifar100-lt-vits", "fashion-mnist-lt"):
        config, _ = build_config(protocol, method="car")
        assert "ema_update" not in config.regularizer.options  # K <= 100: the paper's full update
