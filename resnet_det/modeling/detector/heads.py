"""Per-region heads: the C4 res5 head (Appendix A), the FPN fc head, pooling, and the predictor."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MultiScaleRoIAlign, roi_pool

from ..backbone.backbone import ShapeSpec
from ..backbone.blocks import init_weights
from ..backbone.resnet import build_stage, check_depth
from ...utils.compat import private_internals_ok
from ...utils.errors import ConfigError
from ..weight_cache import WeightCache, must_recompute
from .pooling import FastMultiScaleRoIAlign


class Res5ROIHead(nn.Module):
    """All of conv5_x (first block stride 2) then global average pooling, per region (Appendix A).

    `res5` is built by the same `build_stage` as the backbone's `layer4` and holds the same names,
    so a classification checkpoint's `layer4.*` loads into `res5.*` unchanged.
    """

    def __init__(self, backbone_kwargs: dict, in_channels: int):
        super().__init__()
        kw = dict(backbone_kwargs)
        block, counts = check_depth(kw.pop("depth"))
        freeze_at = kw.pop("freeze_at", 0)
        kw.pop("zero_init_residual", None)
        self.res5 = build_stage(4, block=block, num_blocks=counts[3], **kw)
        if self.res5[0].conv1.in_channels != in_channels:
            raise ValueError(f"res5 expects {self.res5[0].conv1.in_channels} input channels, the pooled "
                             f"features have {in_channels}")
        init_weights(self.res5, backbone_kwargs.get("zero_init_residual", False))
        if freeze_at >= 5:  # FREEZE_AT 5 freezes every stage, this one included
            for p in self.res5.parameters():
                p.requires_grad_(False)
        self.out_channels = self.res5[-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


class FCHead(nn.Module):
    """Flatten then NUM_FC x (fc + ReLU); names fc6, fc7 as torchvision's TwoMLPHead.

    fc6 reads the pooled (C, h, w) features in NCHW order. Channels_last pooled features (what
    FastMultiScaleRoIAlign returns) are read as they lie, (h, w, C), by fc6's weight with its columns
    permuted the same way: the same function without copying the pooled features (50 MB for 1000 RoIs).
    """

    def __init__(self, in_features: int, fc_dim: int = 1024, num_fc: int = 2):
        super().__init__()
        if num_fc < 1:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.NUM_FC={num_fc}: expected at least 1")
        for i in range(num_fc):
            self.add_module(f"fc{6 + i}", nn.Linear(in_features if i == 0 else fc_dim, fc_dim))
        self.num_fc, self.out_channels = num_fc, fc_dim
        self._nhwc_cache = WeightCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = 0
        if not torch.jit.is_scripting() and _is_nhwc(x):
            x = torch.relu(F.linear(x.permute(0, 2, 3, 1).flatten(1), self._fc6_nhwc_weight(x.shape[1:]),
                                    self.fc6.bias))
            first = 1
        x = x.flatten(start_dim=1)
        for i in range(first, self.num_fc):
            x = torch.relu(getattr(self, f"fc{6 + i}")(x))
        return x

    @torch.jit.unused
    def _fc6_nhwc_weight(self, chw: torch.Size) -> torch.Tensor:
        """fc6's weight with columns in (h, w, C) order; cached (by value, as the folded conv weights
        are) while the weight needs no gradient, else permuted on every call so the gradient flows back."""
        w = self.fc6.weight

        def permuted():
            return w.view(-1, *chw).permute(0, 2, 3, 1).flatten(1)

        return permuted() if must_recompute([w]) else self._nhwc_cache.get([w], permuted, key=chw)


def _is_nhwc(x: torch.Tensor) -> bool:
    """4-D and laid out channels last (and not also NCHW-contiguous, as when C or h*w is 1)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class FastRCNNPredictor(nn.Module):
    """(K+1)-way classifier and box regression: 4 numbers per class (class-aware, Appendix A/C)
    or one box shared by all classes (class-agnostic; repeated so torchvision's loss and decoding
    read the class column as usual)."""

    def __init__(self, in_channels: int, num_classes: int, cls_agnostic: bool = False):
        super().__init__()
        self.num_classes = num_classes  # including background
        self.cls_agnostic = cls_agnostic
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 if cls_agnostic else num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        deltas = self.bbox_pred(x)
        if self.cls_agnostic:
            deltas = deltas.repeat(1, self.num_classes)
        return self.cls_score(x), deltas


class ROIPool(nn.Module):
    """The paper's RoI pooling (max pool over quantised bins) on one feature map; same call
    signature as torchvision's MultiScaleRoIAlign."""

    def __init__(self, feature: str, output_size: int, stride: int):
        super().__init__()
        self.feature, self.output_size, self.scale = feature, output_size, 1.0 / stride

    def forward(self, features: dict, proposals: list, image_shapes: list) -> torch.Tensor:
        return roi_pool(features[self.feature], proposals, self.output_size, self.scale)


def build_box_pooler(cfg, shapes: dict[str, ShapeSpec]) -> nn.Module:
    head = cfg.MODEL.ROI_BOX_HEAD
    names = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES={names}: {missing} not produced by the backbone "
                         f"(outputs: {list(shapes)})")
    if head.POOLER_TYPE == "ROIPool":
        if len(names) != 1:
            raise ValueError("POOLER_TYPE ROIPool reads one feature map; use ROIAlign for FPN levels")
        return ROIPool(names[0], head.POOLER_RESOLUTION, shapes[names[0]].stride)
    aligned = head.POOLER_TYPE == "ROIAlignV2"  # detectron2's name for RoIAlign with aligned=True
    detectron2_levels = head.POOLER_LEVEL_MAPPING == "detectron2"
    gather = head.POOLER_IMPL == "gather" and private_internals_ok()
    if not (gather or aligned or detectron2_levels):
        return MultiScaleRoIAlign(featmap_names=names, output_size=head.POOLER_RESOLUTION,
                                  sampling_ratio=head.POOLER_SAMPLING_RATIO)
    if not private_internals_ok():  # torchvision's MultiScaleRoIAlign has neither switch
        raise ConfigError(f"MODEL.ROI_BOX_HEAD.POOLER_TYPE={head.POOLER_TYPE} / POOLER_LEVEL_MAPPING="
                          f"{head.POOLER_LEVEL_MAPPING} need torchvision's pooler internals, which this "
                          "torch/torchvision version does not offer as checked (see resnet_det/utils/compat.py); "
                          "use POOLER_TYPE ROIAlign and POOLER_LEVEL_MAPPING torchvision, or a supported version")
    return FastMultiScaleRoIAlign(names, head.POOLER_RESOLUTION, head.POOLER_SAMPLING_RATIO, aligned=aligned,
                                  gather=gather,
                                  strides=[shapes[n].stride for n in names] if detectron2_levels else None,
                                  level_mapping=head.POOLER_LEVEL_MAPPING)


def build_box_head(cfg, shapes: dict[str, ShapeSpec], backbone_kwargs: dict) -> nn.Module:
    head = cfg.MODEL.ROI_BOX_HEAD
    in_channels = shapes[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
    if head.NAME == "Res5ROIHead":
        if list(cfg.MODEL.ROI_HEADS.IN_FEATURES) != ["res4"]:
            raise ValueError("Res5ROIHead (C4) pools res4: set MODEL.ROI_HEADS.IN_FEATURES ['res4']")
        return Res5ROIHead(backbone_kwargs, in_channels)
    return FCHead(in_channels * head.POOLER_RESOLUTION ** 2, head.FC_DIM, head.NUM_FC)
