"""Config -> ResNet keyword arguments (one place), and the registered backbone builders."""
from __future__ import annotations

import logging

from .backbone import BACKBONE_REGISTRY, ShapeSpec
from .fpn import ResNetFPN
from .resnet import ResNet, ResNetBackbone

logger = logging.getLogger(__name__)


def resnet_kwargs_from_cfg(cfg) -> dict:
    """The ResNet constructor arguments that MODEL.RESNETS / MODEL.BACKBONE describe."""
    r = cfg.MODEL.RESNETS
    return dict(depth=r.DEPTH, norm=r.NORM, stride_in_1x1=r.STRIDE_IN_1X1, shortcut=r.SHORTCUT,
                plain=r.PLAIN, zero_init_residual=r.ZERO_INIT_RESIDUAL,
                freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, num_groups=r.NUM_GROUPS,
                width_per_group=r.WIDTH_PER_GROUP, res5_dilation=r.RES5_DILATION,
                stem_out_channels=r.STEM_OUT_CHANNELS, res2_out_channels=r.RES2_OUT_CHANNELS)


def warn_frozen_random_init(cfg) -> None:
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0 and not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.BACKBONE.FREEZE_AT=%d with no MODEL.WEIGHTS freezes randomly initialised "
                       "stages; set FREEZE_AT 0 to train from scratch or give pretrained weights",
                       cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNetBackbone:
    """ResNet stage outputs MODEL.RESNETS.OUT_FEATURES (C4: res4, stride 16; Appendix A)."""
    body = ResNet(num_classes=None, out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
                  in_channels=input_shape.channels, **resnet_kwargs_from_cfg(cfg))
    return ResNetBackbone(body)


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> ResNetFPN:
    """P2..P6 over MODEL.FPN.IN_FEATURES (res2..res5)."""
    body = ResNet(num_classes=None, out_features=cfg.MODEL.FPN.IN_FEATURES,
                  in_channels=input_shape.channels, **resnet_kwargs_from_cfg(cfg))
    return ResNetFPN(body, cfg.MODEL.FPN.IN_FEATURES, cfg.MODEL.FPN.OUT_CHANNELS)
