"""resnet_det.modeling: the ResNets (backbone/), Faster R-CNN (detector/) and the speed switches of a
built model (fusion.py, speed.py). The names below are the nets and backbone pieces users import from
here (README "Models"); everything else is imported from its module."""
from .backbone import (ARCHS, BACKBONE_REGISTRY, STAGE_NAMES, Backbone, CifarResNet, ResNet, ResNetBackbone,
                       ShapeSpec, build_backbone, build_resnet, cifar_plain, cifar_resnet, freeze_at_from,
                       plain18, plain34, plain_net, resnet18, resnet34, resnet50, resnet101, resnet152)

__all__ = ["ARCHS", "STAGE_NAMES", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "plain18", "plain34", "plain_net", "CifarResNet", "cifar_resnet", "cifar_plain", "freeze_at_from",
           "Backbone", "ShapeSpec", "BACKBONE_REGISTRY", "build_backbone", "ResNetBackbone", "build_resnet"]
