"""The ResNets of the paper and their detection-backbone view (docs/CONTRACTS.md, "Backbone")."""
from .backbone import BACKBONE_REGISTRY, Backbone, ShapeSpec, build_backbone
from .blocks import BasicBlock, Bottleneck, ZeroPadShortcut, make_stage
from .build import build_resnet, build_resnet_backbone, build_resnet_fpn_backbone, resnet_kwargs_from_cfg
from .cifar import CifarResNet, cifar_plain, cifar_resnet
from .fpn import ResNetFPN
from .resnet import (ARCHS, STAGE_NAMES, STAGE_WIDTHS, ResNet, ResNetBackbone, convert_to_frozen_bn,
                     freeze_at_from, plain18, plain34, plain_net, resnet18, resnet34, resnet50,
                     resnet101, resnet152)

__all__ = [
    # Table 1 / Sec. 4.1 / Sec. 4.2 nets and their parts
    "ARCHS", "STAGE_NAMES", "STAGE_WIDTHS", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101",
    "resnet152", "plain18", "plain34", "plain_net", "CifarResNet", "cifar_resnet", "cifar_plain",
    "BasicBlock", "Bottleneck", "ZeroPadShortcut", "make_stage", "convert_to_frozen_bn", "freeze_at_from",
    # the backbone contract and registry
    "Backbone", "ShapeSpec", "BACKBONE_REGISTRY", "build_backbone", "ResNetBackbone", "ResNetFPN",
    # config -> ResNet (one translation) and the registered builders
    "resnet_kwargs_from_cfg", "build_resnet", "build_resnet_backbone", "build_resnet_fpn_backbone",
]
