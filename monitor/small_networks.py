"""Small batch-norm classifiers for 1x28x28 images, used by the OOD evaluation.

Each ends in global average pooling and one ``nn.Linear`` head (the latent vector of the
indicators) after a ReLU, so the latent vector is non-negative as in the paper's networks:

* `monitor.classifiers.DemoResNet`: the ResNet (post-activation basic blocks);
* `SmallDenseNetBC`: a DenseNet-BC (bottleneck layers, compression 0.5, pre-activation);
* `SmallWideResNet`: a pre-activation WideResNet (depth 10, widen factor 2, on half the
  usual base widths so that it trains on two CPU cores in minutes).

All take normalised input, (x - mean) / std, like the demo model.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (4 x growth) - BN-ReLU-Conv3x3 (growth), output concatenated to the input."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class _Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2),
        )


class SmallDenseNetBC(nn.Module):
    """DenseNet-BC for 28x28: a 3x3 stem (2 x growth channels), three dense blocks at 28, 14
    and 7 pixels joined by transitions that halve the channels, a final BN-ReLU, global
    average pooling and the linear head."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, growth: int = 8, layers: Sequence[int] = (4, 4, 4)
    ):
        super().__init__()
        channels = 2 * growth
        parts: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for index, count in enumerate(layers):
            for _ in range(int(count)):
                parts.append(_DenseLayer(channels, growth))
                channels += growth
            if index < len(layers) - 1:
                parts.append(_Transition(channels, channels // 2))
                channels //= 2
        parts += [nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*parts)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class _WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-Conv3x3 (stride) - BN-ReLU-Conv3x3, with a 1x1 projection
    of the pre-activated input when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


class SmallWideResNet(nn.Module):
    """WideResNet-`depth`-`widen` for 28x28 (pre-activation, no dropout): a 3x3 stem, three
    groups of (depth - 4) / 6 blocks at widths base x widen and 28, 14, 7 pixels, a final
    BN-ReLU, global average pooling and the linear head."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        depth: int = 10,
        widen: int = 2,
        base: Sequence[int] = (8, 16, 32),
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, not {depth}")
        blocks = (depth - 4) // 6
        widths = [int(b) * int(widen) for b in base]
        self.stem = nn.Conv2d(in_channels, int(base[0]), 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        channels = int(base[0])
        for group, width in enumerate(widths):
            for index in range(blocks):
                layers.append(_WideBlock(channels, width, stride=2 if group and index == 0 else 1))
                channels = width
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(self.pool(out), 1))
