"""ResNet-18 for 32x32 images (the CIFAR variant: a 3x3 stem, no max-pool).

Shapes, with ``w = round(64 * width)``::

    x [B, 3, 32, 32] -> conv3x3 + BN + ReLU          -> [B, w, 32, 32]
    stage 1..4 (2 BasicBlocks each, strides 1,2,2,2) -> [B, 8w, 4, 4]
    global average pool, fc                          -> logits [B, num_classes]
"""

from __future__ import annotations

import torch
from torch import nn

from pyfast._checks import check_int, check_int_sequence, check_positive
from pyfast.registry import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1 conv + BN) shortcut: ``[B, cin, H, W] -> [B, cout, H/s, W/s]``."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of :class:`BasicBlock` stages. ``blocks``: blocks per stage (4 integers >= 1); ``width``:
    channel multiplier (a finite number > 0; every stage keeps at least one channel)."""

    def __init__(self, num_classes: int, blocks=(2, 2, 2, 2), in_channels: int = 3, width: float = 1.0):
        super().__init__()
        check_int("ResNet", "num_classes", num_classes)
        check_int("ResNet", "in_channels", in_channels)
        check_int_sequence("ResNet", "blocks", blocks, length=4)
        check_positive("ResNet", "width", width)
        chans = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, chans[0], 3, 1, 1, bias=False), nn.BatchNorm2d(chans[0]),
                                  nn.ReLU(inplace=True))
        layers, cin = [], chans[0]
        for i, (n, cout) in enumerate(zip(blocks, chans)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


@MODELS.register("resnet18", "ResNet-18, CIFAR variant (3x3 stem, no max-pool; 11.2M parameters at width 1)")
def resnet18(num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> ResNet:
    check_int("resnet18", "image_size", image_size)  # checked, not used: global pooling takes any size
    return ResNet(num_classes, (2, 2, 2, 2), in_channels, width)
