"""Config -> ResNet arguments (the one translation every builder uses), and the registered backbone builders."""
from __future__ import annotations

import logging

from torch import nn

from ...utils.errors import ConfigError
from .backbone import BACKBONE_REGISTRY, ShapeSpec
from .blocks import NORMS
from .cifar import CifarResNet
from .fpn import ResNetFPN
from .resnet import ARCHS, ResNet, ResNetBackbone

logger = logging.getLogger(__name__)

__all__ = ["build_resnet", "build_resnet_backbone", "build_resnet_fpn_backbone", "resnet_kwargs_from_cfg",
           "warn_frozen_random_init"]


def _read(cfg, full_key: str):
    node = cfg
    for part in full_key.split("."):
        if part not in node:
            raise KeyError(f"config key {full_key} is missing")
        node = node[part]
    return node


def _cifar(cfg, classifier: bool) -> bool:
    if not classifier:
        return False
    style = _read(cfg, "MODEL.CLASSIFIER.STYLE")
    if style not in ("imagenet", "cifar"):
        raise ConfigError(f"MODEL.CLASSIFIER.STYLE={style!r}: expected imagenet or cifar")
    return style == "cifar"


def resnet_kwargs_from_cfg(cfg, *, classifier: bool = False, norm_names: dict[str, str] | None = None) -> dict:
    """The constructor arguments of the ResNet a config describes: every builder reads them here.

    Backbone (default), for `ResNet(num_classes=None, out_features=..., **kwargs)` and the C4 res5 head:
    MODEL.RESNETS.{DEPTH, NORM, STRIDE_IN_1X1, SHORTCUT, PLAIN, ZERO_INIT_RESIDUAL, NUM_GROUPS,
    WIDTH_PER_GROUP, RES5_DILATION, STEM_OUT_CHANNELS, RES2_OUT_CHANNELS} and MODEL.BACKBONE.FREEZE_AT.
    `classifier=True`, the pretraining net (MODEL.CLASSIFIER.STYLE): "imagenet" is the Table 1 ResNet
    of MODEL.RESNETS with MODEL.CLASSIFIER.NUM_CLASSES outputs, without FREEZE_AT and RES5_DILATION
    (detection settings: pretraining learns every stage at stride 32); "cifar" is `CifarResNet`'s
    arguments (Sec. 4.2): depth MODEL.CLASSIFIER.CIFAR_DEPTH (6n+2) with MODEL.RESNETS' NORM, SHORTCUT,
    PLAIN and ZERO_INIT_RESIDUAL. `build_resnet` builds the right class.

    Any yacs config with these key names works, detectron2's included: `norm_names` maps its norm
    names to ours (integrations/d2_config.py passes detectron2's). A key the config lacks is a KeyError
    naming it.
    """
    norm_names = norm_names or {n: n for n in NORMS}
    norm = _read(cfg, "MODEL.RESNETS.NORM")
    if norm not in norm_names:
        raise ConfigError(f"MODEL.RESNETS.NORM={norm!r}: expected one of {', '.join(norm_names)}")
    common = dict(norm=norm_names[norm], shortcut=_read(cfg, "MODEL.RESNETS.SHORTCUT"),
                  plain=bool(_read(cfg, "MODEL.RESNETS.PLAIN")),
                  zero_init_residual=bool(_read(cfg, "MODEL.RESNETS.ZERO_INIT_RESIDUAL")))
    if _cifar(cfg, classifier):
        return dict(depth=_read(cfg, "MODEL.CLASSIFIER.CIFAR_DEPTH"),
                    num_classes=_read(cfg, "MODEL.CLASSIFIER.NUM_CLASSES"), **common)
    depth = _read(cfg, "MODEL.RESNETS.DEPTH")
    if depth not in ARCHS:
        raise ConfigError(f"MODEL.RESNETS.DEPTH={depth!r}: expected one of {', '.join(map(str, ARCHS))} (Table 1)")
    kwargs = dict(depth=depth, stride_in_1x1=bool(_read(cfg, "MODEL.RESNETS.STRIDE_IN_1X1")), **common,
                  num_groups=_read(cfg, "MODEL.RESNETS.NUM_GROUPS"),
                  width_per_group=_read(cfg, "MODEL.RESNETS.WIDTH_PER_GROUP"),
                  stem_out_channels=_read(cfg, "MODEL.RESNETS.STEM_OUT_CHANNELS"),
                  res2_out_channels=_read(cfg, "MODEL.RESNETS.RES2_OUT_CHANNELS"))
    if classifier:
        return dict(kwargs, num_classes=_read(cfg, "MODEL.CLASSIFIER.NUM_CLASSES"))
    return dict(kwargs, res5_dilation=_read(cfg, "MODEL.RESNETS.RES5_DILATION"),
                freeze_at=_read(cfg, "MODEL.BACKBONE.FREEZE_AT"))


def build_resnet(cfg, *, classifier: bool = False, **overrides) -> nn.Module:
    """The net `resnet_kwargs_from_cfg(cfg, classifier=...)` describes: a `CifarResNet` for a "cifar"
    classifier, else a `ResNet`; `overrides` are the arguments the caller decides (num_classes,
    out_features, in_channels).

    Example::
        >>> cfg = get_cfg(); cfg.MODEL.RESNETS.DEPTH = 18
        >>> build_resnet(cfg, num_classes=None, out_features=["res4"]).output_shape()
        {'res4': ShapeSpec(channels=256, stride=16)}
    """
    kwargs = {**resnet_kwargs_from_cfg(cfg, classifier=classifier), **overrides}
    return (CifarResNet if _cifar(cfg, classifier) else ResNet)(**kwargs)


def warn_frozen_random_init(cfg) -> None:
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0 and not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.BACKBONE.FREEZE_AT=%d with no MODEL.WEIGHTS freezes randomly initialised "
                       "stages; set FREEZE_AT 0 to train from scratch or give pretrained weights",
                       cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNetBackbone:
    """ResNet stage outputs MODEL.RESNETS.OUT_FEATURES (C4: res4, stride 16; Appendix A)."""
    return ResNetBackbone(build_resnet(cfg, num_classes=None, out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
                                       in_channels=input_shape.channels))


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> ResNetFPN:
    """P2..P6 over MODEL.FPN.IN_FEATURES (res2..res5)."""
    body = build_resnet(cfg, num_classes=None, out_features=cfg.MODEL.FPN.IN_FEATURES,
                        in_channels=input_shape.channels)
    return ResNetFPN(body, cfg.MODEL.FPN.IN_FEATURES, cfg.MODEL.FPN.OUT_CHANNELS)
