from .backbone import BACKBONE_REGISTRY, Backbone, ShapeSpec, build_backbone
from .blocks import BasicBlock, Bottleneck, ZeroPadShortcut, make_stage
from .build import build_resnet_backbone, build_resnet_fpn_backbone, resnet_kwargs_from_cfg
from .cifar import CifarResNet, cifar_plain, cifar_resnet
from .fpn import ResNetFPN
from .resnet import (ARCHS, STAGE_NAMES, STAGE_WIDTHS, ResNet, ResNetBackbone, convert_to_frozen_bn,
                     freeze_at_from, plain18, plain34, plain_net, resnet18, resnet34, resnet50,
                     resnet101, resnet152)

__all__ = [k for k in dir() if not k.startswith("_")]
