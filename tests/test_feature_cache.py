"""Feature cache: training the classifier on cached features equals training it through the backbone."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from longtail.data.sampling.samplers import build_sampler
from longtail.losses import build_loss
from longtail.models import apply_finetune, create_model, extract_features


def _long_tailed_images(seed: int = 0):
    counts = [40, 12, 5]
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), j) for j, n in enumerate(counts)])
    images = torch.randn(len(labels), 3, 32, 32, generator=generator) + labels[:, None, None, None] * 0.3
    return TensorDataset(images, labels), counts


def _train_head(model, dataset, counts, features_only: bool, loss_name: str, sampler_name: str, epochs: int = 3):
    torch.manual_seed(0)
    sampler = build_sampler(sampler_name, dataset.labels if features_only else dataset.tensors[1], seed=7)
    loss = build_loss(loss_name, counts)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        if features_only:
            dataset.set_epoch(epoch)
        for inputs, targets in DataLoader(dataset, batch_size=16, sampler=sampler):
            logits = model.head(inputs) if features_only else model(inputs)
            optimizer.zero_grad()
            loss(logits, targets).backward()
            optimizer.step()
    return model.head.weight.detach().clone(), model.head.bias.detach().clone()


@pytest.mark.parametrize("loss_name,sampler_name", [("bs", "instance"), ("ccar_bs", "class_balanced"), ("la", "sqrt")])
def test_cached_and_uncached_training_give_the_same_classifier(loss_name, sampler_name):
    torch.set_num_threads(1)
    dataset, counts = _long_tailed_images()
    torch.manual_seed(3)
    direct = create_model("resnet20", num_classes=3)
    cached = create_model("resnet20", num_classes=3)
    cached.load_state_dict(direct.state_dict())
    apply_finetune(direct, "classifier")
    apply_finetune(cached, "classifier")
    cache = extract_features(cached, dataset, batch_size=32)
    assert cache.features.shape == (1, len(dataset), 64) and torch.equal(cache.labels, dataset.tensors[1])
    weight_a, bias_a = _train_head(direct, dataset, counts, False, loss_name, sampler_name)
    weight_b, bias_b = _train_head(cached, cache.dataset(), counts, True, loss_name, sampler_name)
    assert not torch.allclose(weight_a, cached.head.weight.new_zeros(()).expand_as(weight_a))
    assert torch.allclose(weight_a, weight_b, atol=1e-5) and torch.allclose(bias_a, bias_b, atol=1e-5)


def test_views_cycle_with_the_epoch_and_a_trainable_backbone_is_refused(tmp_path):
    dataset, _ = _long_tailed_images()

    class Jitter(torch.utils.data.Dataset):  # a random augmentation: every pass differs
        def __len__(self):
            return len(dataset)

        def __getitem__(self, index):
            image, label = dataset[index]
            return image + 0.1 * torch.randn_like(image), label

    model = create_model("resnet20", num_classes=3)
    apply_finetune(model, "classifier")
    cache = extract_features(model, Jitter(), views=2)
    assert cache.features.shape[0] == 2 and not torch.equal(cache.features[0], cache.features[1])
    cached = cache.dataset()
    cached.set_epoch(3)
    assert torch.equal(cached[5][0], cache.features[1, 5])
    cache.save(tmp_path / "cache.pt")
    assert torch.equal(type(cache).load(tmp_path / "cache.pt").features, cache.features)

    lora = create_model("resnet20", num_classes=3)
    apply_finetune(lora, "lora")
    with pytest.raises(ValueError, match="frozen backbone.*classifier"):
        extract_features(lora, dataset)
