"""compare's plots with the method specs users write: long override chains must still lay out."""

import warnings

import pytest
from PIL import Image

from longtail.report.plots import _wrap_method, write_comparison_plots

LONG = ("bs:model.finetune=norm_bias:data.image_size=96:data.crop_padding=12:optim.lr=0.02:optim.epochs=4:"
        "optim.warmup_epochs=0")


def test_method_specs_wrap_at_their_colons_and_lose_no_character():
    wrapped = _wrap_method(LONG, width=40)
    assert wrapped.replace("\n", "") == LONG
    assert all(len(line) <= 40 for line in wrapped.splitlines())
    assert all(line.startswith(":") for line in wrapped.splitlines()[1:])  # breaks only at a colon
    assert _wrap_method("ccar_bs") == "ccar_bs"


def test_long_method_names_give_plots_without_layout_warnings(tmp_path):
    methods = ["bs", "ccar_bs", "car_bs", LONG, LONG.replace("norm_bias", "last_stage"),  # the fine-tuning grid's
               LONG.replace("norm_bias", "lora").replace("96", "64"), LONG.replace("norm_bias", "full").replace("96", "64")]
    rows = [{"method": m, "imbalance_factor": None, "per_class_accuracy": [0.9, 0.7, 0.6, 0.5, 0.3 + 0.05 * i],
             "accuracy": {"mean": 0.6, "std": 0.01}, "worst_class_accuracy": {"mean": 0.3, "std": 0.02}}
            for i, m in enumerate(methods)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Tight layout not applied" is a UserWarning
        write_comparison_plots(tmp_path, rows, [1400, 442, 140, 44, 14])
    for name in ("per_class_accuracy.png", "overall_vs_worst.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] > 0 and image.size[1] > 0
