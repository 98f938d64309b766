"""resnet_det's ResNets and data sets in detectron2: `import resnet_det.integrations.detectron2`.

Importing registers resnet_det's data sets (shapes_*, coco_* / voc_* under $RESNET_DET_DATASETS,
user-registered ones) in detectron2's DatasetCatalog / MetadataCatalog (integrations/d2_datasets.py;
`register_resnet_det_datasets(names)` again for data sets registered later), and in detectron2's
BACKBONE_REGISTRY:
  build_resnet_det_backbone      stage outputs MODEL.RESNETS.OUT_FEATURES (C4: ["res4"], under
                                 detectron2's Res5ROIHeads, which builds res5 itself)
  build_resnet_det_fpn_backbone  detectron2's FPN (P2..P6) over our res2..res5
Both read detectron2's cfg plus the keys `add_resnet_det_config(cfg)` adds. Our module names live
under `backbone.body.` (FPN: `backbone.bottom_up.body.`); tools/convert_weights.py writes weights
for exactly these names with `--to detectron2 --detector C4|FPN --plugin`.
"""
from __future__ import annotations

try:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY, Backbone
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
    from detectron2.structures import BoxMode
except ImportError as e:  # detectron2 is optional: say how to get it
    raise ImportError(
        "resnet_det.integrations.detectron2 needs detectron2, which is not importable here "
        f"({e}). No working detectron2 build is on PyPI; install it from source against your "
        "torch: pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
        "(or git clone https://github.com/facebookresearch/detectron2 && pip install --no-build-isolation "
        "-e detectron2; --no-build-isolation lets its setup.py see your torch; needs a C++ compiler, and "
        "nvcc for GPU ops). See resnet_det/integrations/README.md.") from e

from resnet_det.modeling.backbone.resnet import ResNet

from .d2_config import add_resnet_det_config, d2_resnet_kwargs
from .d2_datasets import register_in_detectron2

__all__ = ["ResNetDetBackbone", "add_resnet_det_config", "build_resnet_det_backbone",
           "build_resnet_det_fpn_backbone", "register_resnet_det_datasets"]


class ResNetDetBackbone(Backbone):
    """A resnet_det `ResNet` (held at `.body`) behind detectron2's Backbone interface."""

    def __init__(self, body: ResNet):
        super().__init__()
        if body.num_classes is not None:
            raise ValueError("a backbone's ResNet has no classifier: build it with num_classes=None")
        self.body = body
        shapes = body.output_shape()
        # detectron2's Backbone.output_shape() and its FPN read these three attributes.
        self._out_features = list(shapes)
        self._out_feature_channels = {k: s.channels for k, s in shapes.items()}
        self._out_feature_strides = {k: s.stride for k, s in shapes.items()}

    def forward(self, x):
        return dict(self.body.forward_features(x))

    def output_shape(self):
        return {k: ShapeSpec(channels=self._out_feature_channels[k], stride=self._out_feature_strides[k])
                for k in self._out_features}

    @property
    def size_divisibility(self) -> int:
        # A plain ResNet takes any size (its convs pad); detectron2's FPN sets its own (32).
        return 0


def build_resnet_det_backbone(cfg, input_shape: ShapeSpec) -> ResNetDetBackbone:
    """Our ResNet's MODEL.RESNETS.OUT_FEATURES (C4: res4 at stride 16, Appendix A)."""
    kwargs = d2_resnet_kwargs(cfg)
    kwargs["in_channels"] = input_shape.channels
    return ResNetDetBackbone(ResNet(**kwargs))


def build_resnet_det_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """detectron2's FPN (P2..P6, max-pooled P6) on our res2..res5."""
    return FPN(bottom_up=build_resnet_det_backbone(cfg, input_shape),
               in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


def register_resnet_det_datasets(names=None) -> list[str]:
    """resnet_det's data sets `names` (default: every one registered so far) in detectron2's catalogs,
    unless detectron2 has that name itself; returns the names registered now."""
    return register_in_detectron2(DatasetCatalog, MetadataCatalog, BoxMode.XYXY_ABS, names)


# Register once even if this module is reloaded (the registry refuses duplicate names).
for _builder in (build_resnet_det_backbone, build_resnet_det_fpn_backbone):
    if _builder.__name__ not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(_builder)
register_resnet_det_datasets()
