"""The CIFAR-10 nets of Sec. 4.2: depth 6n+2, three stages of 2n 3x3 layers on 32/16/8 maps."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import NORMS, SHORTCUTS, get_norm, init_weights, make_stage

CIFAR_WIDTHS = (16, 32, 64)  # filters per stage (Sec. 4.2)


def cifar_blocks_per_stage(depth: int) -> int:
    """n for depth = 6n + 2 (20, 32, 44, 56, 110, 1202 in the paper)."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth={depth!r}: CIFAR nets need depth = 6n+2 with n >= 1 "
                         "(e.g. 20, 32, 44, 56, 110, 1202)")
    return (depth - 2) // 6


class CifarResNet(nn.Module):
    """3x3 conv 16 -> 3 stages of n basic blocks -> global average pool -> fc (Sec. 4.2).

    Option A shortcuts by default, as in the paper, so residual and plain nets have exactly the
    same parameters. Names follow the ImageNet nets: conv1, bn1, layer1..3, fc.
    """

    def __init__(self, depth: int = 20, *, num_classes: int = 10, shortcut: str = "A", plain: bool = False,
                 norm: str = "BN", zero_init_residual: bool = False, in_channels: int = 3):
        super().__init__()
        n = cifar_blocks_per_stage(depth)
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}: expected one of {', '.join(NORMS)}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r}: expected one of {', '.join(SHORTCUTS)} (Table 3)")
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, CIFAR_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = get_norm(norm, CIFAR_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch = CIFAR_WIDTHS[0]
        for i, width in enumerate(CIFAR_WIDTHS, start=1):
            # Subsampling by stride-2 convs at the start of stages 2 and 3 (32 -> 16 -> 8 maps).
            stage = make_stage("basic", n, in_ch, width, 1 if i == 1 else 2, norm=norm,
                               shortcut=shortcut, plain=plain)
            self.add_module(f"layer{i}", stage)
            in_ch = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(depth: int, **kwargs) -> CifarResNet:
    """ResNet-(6n+2) for CIFAR-10 (Sec. 4.2), option A shortcuts."""
    return CifarResNet(depth, **kwargs)


def cifar_plain(depth: int, **kwargs) -> CifarResNet:
    """The plain counterpart of `cifar_resnet` (same layers, no shortcuts)."""
    return CifarResNet(depth, plain=True, **kwargs)
