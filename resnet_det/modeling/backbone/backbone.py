"""The backbone contract shared by every feature extractor (detectron2's, kept minimal)."""
from __future__ import annotations

from dataclasses import dataclass

from fvcore.common.registry import Registry
from torch import nn

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Backbone builders: ``fn(cfg, input_shape: ShapeSpec) -> Backbone``. Register your own with
``@BACKBONE_REGISTRY.register()`` and select it with ``MODEL.BACKBONE.NAME``.
"""


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (w.r.t. the input image) of one feature map."""

    channels: int
    stride: int = 1


class Backbone(nn.Module):
    """forward(images: NCHW) -> {name: NCHW tensor}; the names are the keys of output_shape()."""

    def output_shape(self) -> dict[str, ShapeSpec]:
        raise NotImplementedError

    @property
    def size_divisibility(self) -> int:
        """Pad inputs to a multiple of this (FPN: 32, so every level aligns); 0 = no constraint."""
        return 0

    @property
    def out_channels(self) -> int:
        """What torchvision's detection heads read: the (common) channel count of all outputs."""
        channels = {s.channels for s in self.output_shape().values()}
        if len(channels) != 1:
            raise ValueError(f"outputs have different channel counts {sorted(channels)}; "
                             "torchvision's heads need one (use an FPN or a single output)")
        return channels.pop()


def build_backbone(cfg, input_shape: ShapeSpec | None = None) -> Backbone:
    """Build the backbone named by ``cfg.MODEL.BACKBONE.NAME`` from the registry."""
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    try:
        builder = BACKBONE_REGISTRY.get(name)
    except KeyError:
        known = ", ".join(sorted(k for k, _ in BACKBONE_REGISTRY))
        raise KeyError(f"MODEL.BACKBONE.NAME={name!r} is not registered; registered backbones: "
                       f"{known}. Register yours with @BACKBONE_REGISTRY.register().") from None
    backbone = builder(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone builder {name!r} returned {type(backbone).__name__}, "
                        "expected a resnet_det Backbone")
    return backbone
