"""Config: keys and types checked before work, recipes that resolve, method presets, overrides."""

from __future__ import annotations

import pytest
import torch
import yaml

from longtail.engine.config import (ConfigError, available_protocols, available_recipes, build_config,
                                    config_from_dict, load_methods, parse_override)
from longtail.engine.training.components import build_loss_fn
from longtail.engine.training.schedules import learning_rate
from longtail.models import available_models
from longtail.regularizers import CAR


def test_defaults_are_the_embedded_recipe():
    config, label = build_config()
    assert label == "fashion-mnist-lt"
    assert config.data.name == "fashion-mnist-lt" and config.model.name == "small_cnn"
    assert config.loss.name == "ce" and config.regularizer.name == "none"


def test_overrides_are_typed():
    config, _ = build_config(overrides=["optim.lr=0.05", "loss.name=ccar_bs", "loss.omega=0.5",
                                        "regularizer.name=car", "regularizer.alpha=0.1", "data.flip=false",
                                        "optim.milestones=[3, 6]", "optim.milestone_factors=[0.1, 0.01]"])
    assert config.optim.lr == 0.05
    assert config.loss.name == "ccar_bs" and config.loss.options == {"omega": 0.5}
    assert config.regularizer.name == "car" and config.regularizer.options == {"alpha": 0.1}
    assert config.data.flip is False and config.optim.milestones == [3, 6]


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown key 'optim.lrr'; valid keys in 'optim': name, lr"),
    ("optimizer.lr=0.1", "not a valid key"),
    ("optim.lr=fast", "optim.lr must be of type float, got 'fast'"),
    ("optim.epochs=2.5", "optim.epochs must be of type int"),
    ("data.flip=3", "data.flip must be of type bool"),
    ("train.precision=fp8", "train.precision='fp8' is not valid; choose one of: auto, fp32, bf16, fp16"),
    ("optim.milestones=[1]", "must have the same length"),
    ("lr", "must look like section.key=value"),
])
def test_bad_overrides_name_the_key_and_the_valid_choices(override, message):
    with pytest.raises(ConfigError, match=None) as error:
        build_config(overrides=[override])
    assert message in str(error.value)


def test_changing_a_component_name_drops_the_previous_components_options():
    # the focal preset sets loss.gamma; naming another loss on the command line drops it
    config, _ = build_config(method="focal", overrides=["loss.name=bs"])
    assert config.loss.name == "bs" and config.loss.options == {}
    # within one layer the order does not matter, so an option that fits neither reading is refused
    with pytest.raises(ConfigError, match="gamma is not an option of loss 'bs'"):
        build_config(overrides=["loss.name=focal", "loss.gamma=1.0", "loss.name=bs"])


def test_override_values_are_read_as_yaml():
    assert parse_override("data.root=null") == ("data.root", None)
    assert parse_override("optim.milestones=[1, 2]") == ("optim.milestones", [1, 2])
    assert parse_override("model.name=resnet32") == ("model.name", "resnet32")


def test_unknown_recipe_and_method_list_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*fashion-mnist-lt"):
        build_config("nope")
    with pytest.raises(ConfigError, match="unknown method 'magic'; valid methods: .*ccar_bs"):
        build_config("fashion-mnist-lt", method="magic")


def test_yaml_config_file_with_base_recipe(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"base": "cifar100-lt-r32/ldam_drw", "optim": {"epochs": 10}}))
    config, label = build_config(config_file=str(path))
    assert label == "mine"
    assert config.optim.epochs == 10 and config.loss.name == "ldam_drw" and config.model.head == "cosine"
    path.write_text(yaml.safe_dump({"optim": {"learning_rate": 1}}))
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rate'"):
        build_config(config_file=str(path))
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(config_file=str(tmp_path / "missing.yaml"))


def test_every_shipped_recipe_resolves_to_buildable_components():
    """Each protocol/method recipe names a real model, loss (with valid options) and regularizer."""
    recipes = available_recipes()
    assert {"cifar100-lt-r32/ccar_bs", "cifar10-lt-r32/ldam_drw", "imagenet-lt-r50/car",
            "inat2018-r50/ccar_la", "fashion-mnist-lt/car_ccar_bs"} <= set(recipes)
    counts = [500, 200, 50, 10, 5]
    for recipe in recipes:
        config, _ = build_config(recipe)
        assert config.model.name in available_models() or config.model.name.startswith("timm:"), recipe
        build_loss_fn(config, counts, torch.device("cpu"))
        if config.regularizer.name == "car":
            CAR(counts, **config.regularizer.options)
        assert config_from_dict(config.to_dict()) == config


def test_cifar_protocol_is_the_published_one():
    config, _ = build_config("cifar100-lt-r32/bs")
    assert (config.model.name, config.data.batch_size, config.optim.lr, config.optim.epochs) == ("resnet32", 128, 0.1, 200)
    assert config.optim.milestones == [160, 180] and config.optim.milestone_factors == [0.01, 0.0001]
    ldam, _ = build_config("cifar100-lt-r32/ldam_drw")
    # LDAM-DRW's adjust_learning_rate: x0.01 after 160, x0.0001 after 180 (methods.md section 5, corrected).
    assert ldam.optim.weight_decay == 2e-4 and ldam.optim.milestone_factors == [0.01, 0.0001]
    assert ldam.loss.options["switch_fraction"] == 0.8
    assert build_loss_fn(ldam, [500, 5], torch.device("cpu")).switch_epoch == 160
    vit, _ = build_config("imagenet-lt-vits-ft/ldam_drw")
    assert vit.optim.weight_decay == 0.05 and vit.model.head == "cosine"
    short, _ = build_config("fashion-mnist-lt/ldam_drw", overrides=["optim.epochs=6"])
    assert build_loss_fn(short, [500, 5], torch.device("cpu")).switch_epoch == 5
    both, _ = build_config("fashion-mnist-lt/ldam_drw", overrides=["loss.switch_epoch=3"])
    with pytest.raises(ConfigError, match="not both"):
        build_loss_fn(both, [500, 5], torch.device("cpu"))


def test_every_method_preset_is_described_and_used():
    methods = load_methods()
    for name, preset in methods.items():
        assert preset.get("description"), name
    assert set(available_protocols()) >= {"fashion-mnist-lt", "mnist-lt", "cifar10-lt-r32", "cifar100-lt-r32",
                                          "imagenet-lt-r50", "inat2018-r50"}


def test_learning_rate_schedule_values():
    # CIFAR-LT protocol: linear warm-up over 5 epochs, x0.01 from 160, x0.0001 from 180.
    common = dict(total_epochs=200, schedule="multistep", warmup_epochs=5, milestones=(160, 180),
                  milestone_factors=(0.01, 0.0001))
    assert learning_rate(0.1, 0.0, **common) == pytest.approx(0.0, abs=1e-9)
    assert learning_rate(0.1, 2.5, **common) == pytest.approx(0.05)
    assert learning_rate(0.1, 5.0, **common) == pytest.approx(0.1)
    assert learning_rate(0.1, 159.99, **common) == pytest.approx(0.1)
    assert learning_rate(0.1, 160.0, **common) == pytest.approx(0.001)
    assert learning_rate(0.1, 185.0, **common) == pytest.approx(0.00001)
    cosine = dict(total_epochs=10, schedule="cosine", warmup_epochs=0, min_lr=0.0)
    assert learning_rate(1.0, 5.0, **cosine) == pytest.approx(0.5)
    assert learning_rate(1.0, 10.0, **cosine) == pytest.approx(0.0, abs=1e-12)
