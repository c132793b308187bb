"""ResNet-20/32/44/56 for 32x32 images (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016, section 4.2: 3 stages of n basic blocks, 16/32/64 channels, depth 6n+2).

This is the network of the long-tail CIFAR literature: the ``resnet_cifar.py`` of LDAM-DRW
(Cao et al., NeurIPS 2019, https://github.com/kaidic/LDAM-DRW), itself from
akamaster/pytorch_resnet_cifar10. Kept identical so that results are comparable:

- option-A shortcut: where a block halves the resolution and doubles the channels, the identity is
  subsampled (stride 2) and zero-padded with planes // 4 channels on each side: no parameters;
- kaiming-normal init (fan-in, gain sqrt(2)) for every conv and the linear classifier;
- global average pooling to a 64-d feature, then the classifier (``.head``).

Parameter counts (a test pins them): ResNet-32 has 464,154 parameters with 10 classes and
470,004 with 100 classes ("0.46M" in He et al.'s table 6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import LinearHead

__all__ = ["ResNetCifar", "BasicBlock", "OptionAShortcut", "resnet20", "resnet32", "resnet44", "resnet56"]

STAGE_WIDTHS = (16, 32, 64)


def kaiming_init_(module: nn.Module) -> None:
    """LDAM-DRW's ``_weights_init``: kaiming-normal weights for conv and linear layers (biases keep
    PyTorch's default); batch-norm keeps weight 1 / bias 0."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut (He et al. 2016, option A): subsample by 2, zero-pad the channels.

    A named module rather than LDAM-DRW's ``LambdaLayer(lambda ...)`` so that the model pickles,
    deep-copies and compiles.
    """

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        extra = planes - in_planes
        if extra < 0 or extra % 2:
            raise ValueError(f"option-A shortcut needs an even channel increase, got {in_planes} -> {planes}")
        self.pad_before = extra // 2
        self.pad_after = extra - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"pad_channels=({self.pad_before}, {self.pad_after})"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (no bottleneck, no conv shortcut)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if stride != 2:
                raise ValueError("option-A shortcut is defined for stride 2 only")
            self.shortcut: nn.Module = OptionAShortcut(in_planes, planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth 6n+2 with ``.features(x) -> (B, 64)`` and ``.head`` (features -> logits).

    Works for any input size (the pooling is global); 32x32 is what it was designed for.
    """

    def __init__(
        self,
        depth: int = 32,
        num_classes: int = 10,
        in_channels: int = 3,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.feature_dim = STAGE_WIDTHS[-1]
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        in_planes = STAGE_WIDTHS[0]
        stages = []
        for stage_index, planes in enumerate(STAGE_WIDTHS):
            first_stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, first_stride if block_index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.head = head if head is not None else LinearHead(self.feature_dim, num_classes)
        # Only the backbone and a plain linear head get kaiming init (as in LDAM-DRW, where the
        # cosine NormedLinear keeps its own unit-norm init).
        self.apply(kaiming_init_)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet20(num_classes: int = 10, in_channels: int = 3, head: nn.Module | None = None) -> ResNetCifar:
    return ResNetCifar(20, num_classes, in_channels, head)


def resnet32(num_classes: int = 10, in_channels: int = 3, head: nn.Module | None = None) -> ResNetCifar:
    return ResNetCifar(32, num_classes, in_channels, head)


def resnet44(num_classes: int = 10, in_channels: int = 3, head: nn.Module | None = None) -> ResNetCifar:
    return ResNetCifar(44, num_classes, in_channels, head)


def resnet56(num_classes: int = 10, in_channels: int = 3, head: nn.Module | None = None) -> ResNetCifar:
    return ResNetCifar(56, num_classes, in_channels, head)
