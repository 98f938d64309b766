"""Residual building blocks (Sec. 3.2-3.3, Fig. 2 and Fig. 5) and shortcut options (Table 3)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = ("BN", "FrozenBN", "GN", "SyncBN")
SHORTCUTS = ("A", "B", "C")


def get_norm(norm: str, channels: int) -> nn.Module:
    """BN after every conv, before the activation (Sec. 3.4); FrozenBN keeps pretrained statistics."""
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"norm={norm!r}: expected one of {', '.join(NORMS)}")


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, padding=dilation, groups=groups, dilation=dilation,
                     bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Table 3, option A: identity with stride-2 subsampling and zero channels; no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.pad, self.stride = out_channels - in_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))


def make_shortcut(in_ch: int, out_ch: int, stride: int, shortcut: str, norm: str) -> nn.Module:
    """The identity of Eq. (1), or the projection W_s of Eq. (2) where the options call for one."""
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut={shortcut!r}: expected one of {', '.join(SHORTCUTS)} (Table 3)")
    reshapes = stride != 1 or in_ch != out_ch
    if shortcut == "C" or (shortcut == "B" and reshapes):
        # `.0` conv, `.1` norm: torchvision's `downsample` names, so its checkpoints load strictly.
        return nn.Sequential(conv1x1(in_ch, out_ch, stride), get_norm(norm, out_ch))
    if reshapes:
        if out_ch < in_ch:
            raise ValueError(f"shortcut 'A' cannot shrink channels ({in_ch} -> {out_ch})")
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return nn.Identity()


class _Block(nn.Module):
    """Shared tail: y = relu(F(x) + shortcut(x)) (Eq. 1/2); a plain net drops the addition."""

    def _init_shortcut(self, in_ch, out_ch, stride, shortcut, norm, plain):
        self.plain = plain
        # Plain nets (Sec. 4.1) are the same stack with no shortcut at all, hence no parameters.
        self.downsample = nn.Identity() if plain else make_shortcut(in_ch, out_ch, stride, shortcut, norm)
        self.relu = nn.ReLU(inplace=True)

    def _merge(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.plain:
            return self.relu(out)
        return self.relu(out + self.downsample(x))

    def last_norm(self) -> nn.Module:
        raise NotImplementedError


class BasicBlock(_Block):
    """Two 3x3 convs (Fig. 5, left); used by ResNet-18/34 and the CIFAR nets."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "BN",
                 shortcut: str = "B", plain: bool = False, dilation: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride, dilation=dilation)
        self.bn1 = get_norm(norm, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, dilation=dilation)
        self.bn2 = get_norm(norm, out_channels)
        self._init_shortcut(in_channels, out_channels, stride, shortcut, norm, plain)
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))  # F(x, {W_i})
        return self._merge(out, x)

    def last_norm(self) -> nn.Module:
        return self.bn2


class Bottleneck(_Block):
    """1x1 reduce -> 3x3 -> 1x1 restore (Fig. 5, right); outputs `out_channels` = 4 x width."""

    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int, stride: int = 1,
                 norm: str = "BN", shortcut: str = "B", plain: bool = False, stride_in_1x1: bool = False,
                 groups: int = 1, dilation: int = 1):
        super().__init__()
        # The paper/MSRA stride the first 1x1; torchvision the 3x3 (0.23 GFLOPs more for R50,
        # 4.09 vs 3.86 G multiply-adds at 224x224: tools/analyze_model.py).
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, bottleneck_channels, stride_1x1)
        self.bn1 = get_norm(norm, bottleneck_channels)
        self.conv2 = conv3x3(bottleneck_channels, bottleneck_channels, stride_3x3, groups, dilation)
        self.bn2 = get_norm(norm, bottleneck_channels)
        self.conv3 = conv1x1(bottleneck_channels, out_channels)
        self.bn3 = get_norm(norm, out_channels)
        self._init_shortcut(in_channels, out_channels, stride, shortcut, norm, plain)
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))  # F(x, {W_i})
        return self._merge(out, x)

    def last_norm(self) -> nn.Module:
        return self.bn3


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_stage(block: str, num_blocks: int, in_channels: int, out_channels: int, first_stride: int,
               **block_kwargs) -> nn.Sequential:
    """One conv{k}_x stage: the first block changes stride/channels, the rest keep them."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(BLOCKS[block](in_channels, out_channels, stride=first_stride if i == 0 else 1,
                                    **block_kwargs))
        in_channels = out_channels
    return nn.Sequential(*blocks)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He (kaiming) init for convs (Sec. 3.4); BN gamma 1, beta 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):  # _BatchNorm: SyncBN too
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        # Each residual branch then starts at zero, so every block begins as the identity.
        for m in model.modules():
            if isinstance(m, _Block) and not m.plain:
                norm = m.last_norm()
                if isinstance(norm, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                    nn.init.zeros_(norm.weight)
