"""Feature Pyramid Network over res2..res5 (P2..P6), from torchvision's FeaturePyramidNetwork.

The module layout (`body` = ResNet, `fpn` = torchvision FPN) equals torchvision's BackboneWithFPN,
so `fasterrcnn_resnet50_fpn`'s backbone weights load by name; only the outputs are named p2..p6.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from .backbone import Backbone, ShapeSpec
from .resnet import ResNet


class ResNetFPN(Backbone):
    def __init__(self, body: ResNet, in_features: list[str], out_channels: int = 256):
        super().__init__()
        shapes = body.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.FPN.IN_FEATURES {missing} are not outputs of the ResNet "
                             f"(MODEL.RESNETS.OUT_FEATURES={list(shapes)})")
        self.body, self.in_features = body, list(in_features)
        # P6 is a stride-2 max pool of the coarsest level (torchvision's LastLevelMaxPool).
        self.fpn = FeaturePyramidNetwork([shapes[f].channels for f in in_features], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        strides = [shapes[f].stride for f in in_features]
        levels = [s.bit_length() - 1 for s in strides]  # stride 4 -> p2
        self._names = [f"p{lvl}" for lvl in levels] + [f"p{levels[-1] + 1}"]
        self._shapes = {n: ShapeSpec(out_channels, 2 ** int(n[1:])) for n in self._names}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    @property
    def size_divisibility(self) -> int:
        # Every level must align when upsampled by 2: pad to the coarsest stride.
        return max(s.stride for s in self._shapes.values()) // 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body.forward_features(x)
        outs = self.fpn(OrderedDict((f, feats[f]) for f in self.in_features))
        return OrderedDict(zip(self._names, outs.values()))
