"""A small, CPU-friendly CNN for 28x28 grey images (Fashion-MNIST-LT, MNIST-LT).

The default model of the embedded dataset, sized so that a few epochs over ~15k images train in
about two minutes on two CPU cores. A VGG-style stack (conv3x3-BN-ReLU, max-pool between stages),
the shape airbench / hlb-CIFAR10 use for fast small-image training, with global average pooling
so that any input size and channel count works. ``width=32`` gives 32/64/128 channels and 0.28M
parameters (278,890 with 10 classes); about 1,500 training images/s on two shared CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import LinearHead

__all__ = ["SmallCNN", "small_cnn"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        # No conv bias: the batch-norm that follows has its own shift.
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """conv(w) -> pool -> conv(2w), conv(2w) -> pool -> conv(4w), conv(4w) -> global avg pool -> head.

    Only one (narrow) conv runs at full resolution (28x28), which keeps the cost at ~22M
    multiply-adds per image for ``width=32``; ``.features(x)`` returns (B, 4 * width).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        head: nn.Module | None = None,
        width: int = 32,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"SmallCNN width must be >= 1, got {width}")
        self.feature_dim = 4 * width
        self.backbone = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            *_conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 4 * width),
            *_conv_bn_relu(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.head = head if head is not None else LinearHead(self.feature_dim, num_classes)
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def small_cnn(num_classes: int = 10, in_channels: int = 1, head: nn.Module | None = None, width: int = 32) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, head, width)
