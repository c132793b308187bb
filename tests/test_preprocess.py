"""Preprocessing: one description of evaluation input, checked against PIL / torchvision / numpy."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.data import InMemoryLoader, Preprocessing
from longtail.data.transforms.preprocess import to_uint8_image


def rgb_image(height=30, width=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_round_trip_through_json_and_bad_descriptions():
    prep = Preprocessing(size=(28, 28), mean=(0.3,), std=(0.2,), resize="resize", color="L", channels=3)
    again = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert again == prep and again.channels == 3 and again.size == (28, 28)
    good = prep.to_dict()
    for bad in ([1, 2], {**good, "resize": "stretch"}, {**good, "mean": [0.1, 0.2]}, {**good, "std": [0.0]},
                {**good, "size": [0, 3]}, {**good, "extra": 1}, {k: v for k, v in good.items() if k != "mean"},
                {**good, "format": "other/9"}, {**good, "crop_ratio": 2.0}, {**good, "color": "CMYK"}):
        with pytest.raises(ValueError):
            Preprocessing.from_dict(bad)
    with pytest.raises(ValueError, match="single-channel"):
        Preprocessing(size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3, channels=1)


def test_normalisation_matches_numpy_and_pil_equals_tensor_input():
    image = rgb_image()
    prep = Preprocessing(size=(30, 40), mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2))
    expected = (np.asarray(image, dtype=np.float64) / 255 - [0.1, 0.2, 0.3]) / [0.5, 0.25, 0.2]
    out = prep(image)
    assert out.shape == (3, 30, 40)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    assert torch.equal(prep(tensor), out)
    assert torch.equal(prep(tensor.unsqueeze(0).repeat(2, 1, 1, 1))[1], out)
    assert torch.equal(prep([image, image])[0], out)
    with pytest.raises(ValueError, match="native size"):
        prep(rgb_image(32, 32))  # policy 'none' never resizes behind the user's back


def test_grey_conversion_is_pils():
    image = rgb_image(16, 16, seed=3)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    assert torch.equal(to_uint8_image(tensor, "L")[0], torch.from_numpy(np.asarray(image.convert("L"))))
    prep = Preprocessing(size=(16, 16), mean=(0.5,), std=(0.5,), color="L", channels=3)
    out = prep(image)
    assert out.shape == (3, 16, 16) and torch.equal(out[0], out[2]) and torch.equal(prep(tensor), out)


def test_resize_and_center_crop_match_torchvision():
    from torchvision.transforms import v2

    image = rgb_image(180, 240, seed=1)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    prep = Preprocessing(size=(64, 64), mean=(0.0,) * 3, std=(1 / 255,) * 3, resize="resize_center_crop")
    reference = v2.CenterCrop(64)(v2.Resize(73, antialias=True)(tensor)).to(torch.float32)  # int(64 / 0.875) = 73
    out = prep(image)
    assert out.shape == (3, 64, 64)
    assert (out - reference).abs().max() <= 1.0  # same geometry; interpolation rounding may differ by one level
    plain = Preprocessing(size=(20, 24), mean=(0.0,) * 3, std=(1 / 255,) * 3, resize="resize")
    reference = v2.Resize((20, 24), antialias=True)(tensor).to(torch.float32)
    assert (plain(image) - reference).abs().max() <= 1.0


def test_in_memory_evaluation_batches_are_exactly_the_preprocessing():
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10) % 3
    prep = Preprocessing(size=(32, 32), mean=(0.3,), std=(0.3,), resize="resize", color="L", channels=3)
    loader = InMemoryLoader(images, labels=labels, batch_size=4, preprocessing=prep)
    batches = torch.cat([batch for batch, _ in loader])
    assert torch.equal(batches, prep(images))
