"""Tensor-in, tensor-out modules that tracing and ONNX export can take.

The eager detector takes and returns lists of dicts (docs/CONTRACTS.md); exporters need tensors.
`DetectorExport` feeds one image through the detector's own `forward` (so an exported model computes
exactly what `DefaultPredictor` does) and returns `(boxes, scores, classes)`. `ClassifierExport`
puts the mean/std normalisation inside the graph, so deployed code feeds raw 0-255 pixels.
"""
from __future__ import annotations

import torch
from torch import nn

from ..modeling.backbone import cifar_resnet, resnet_kwargs_from_cfg
from ..modeling.backbone.resnet import ResNet

MODEL_TYPES = {"GeneralizedRCNN": "detector", "Classifier": "classifier"}


def model_type_of(cfg) -> str:
    """"detector" or "classifier" from MODEL.META_ARCHITECTURE; a clear error for anything else."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in MODEL_TYPES:
        raise ValueError(f"MODEL.META_ARCHITECTURE={arch!r}: export supports "
                         f"{', '.join(MODEL_TYPES)} (Faster R-CNN C4/FPN and the classification nets)")
    return MODEL_TYPES[arch]


def build_classifier(cfg) -> nn.Module:
    """The classification net MODEL.CLASSIFIER describes (Table 1 ImageNet nets or Sec. 4.2 CIFAR nets).

    Prefers `resnet_det.modeling.build_classifier` when the package provides one, so export builds
    the same module as training; otherwise builds it here from the same config keys.
    """
    from .. import modeling

    builder = getattr(modeling, "build_classifier", None)
    if builder is not None:
        return builder(cfg)
    c, r = cfg.MODEL.CLASSIFIER, cfg.MODEL.RESNETS
    if c.STYLE == "cifar":
        return cifar_resnet(r.DEPTH, num_classes=c.NUM_CLASSES, shortcut=r.SHORTCUT, plain=r.PLAIN,
                            norm=r.NORM)
    kwargs = resnet_kwargs_from_cfg(cfg)
    kwargs["freeze_at"] = 0  # freezing only matters for training; eval outputs are the same
    return ResNet(num_classes=c.NUM_CLASSES, **kwargs)


def build_eager_model(cfg) -> nn.Module:
    """The eager model the config describes, on CPU, in eval mode, with MODEL.WEIGHTS loaded."""
    from ..engine.checkpoint import load_model_weights
    from ..modeling.detector import build_model

    model = build_model(cfg) if model_type_of(cfg) == "detector" else build_classifier(cfg)
    model = model.to("cpu").eval()
    if cfg.MODEL.WEIGHTS:
        load_model_weights(model, cfg.MODEL.WEIGHTS)
    return model


class DetectorExport(nn.Module):
    """One uint8 CHW image in INPUT.FORMAT order, any size -> (boxes (M, 4) XYXY in that image's
    pixels, scores (M,), classes (M,) int64 0..K-1).

    Resizing to INPUT.MIN/MAX_SIZE_TEST and normalisation happen inside, as in the eager model;
    score threshold, NMS and detections per image are fixed at export time.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector.eval()

    def forward(self, image: torch.Tensor):
        # The detector's own forward, not a copy of it: eager and exported cannot drift apart.
        out = self.detector([{"image": image}])[0]["instances"]
        return out["boxes"], out["scores"], out["pred_classes"]


class ClassifierExport(nn.Module):
    """uint8 NCHW images (0-255, INPUT.FORMAT order) -> logits (N, num_classes).

    Mean/std live in the graph (in the 0-255 range, like MODEL.PIXEL_MEAN/STD). The nets end in
    global average pooling, so any input size works; the training crop (INPUT.CROP_SIZE) is the
    size they were trained at, and Table 4's fully convolutional multi-scale test uses others.
    """

    def __init__(self, classifier: nn.Module, pixel_mean, pixel_std):
        super().__init__()
        self.classifier = classifier.eval()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.pixel_mean) / self.pixel_std
        return self.classifier(x)


def make_export_module(cfg, model: nn.Module) -> nn.Module:
    """Wrap an eager model (from `build_eager_model`) for export."""
    if model_type_of(cfg) == "detector":
        return DetectorExport(model).eval()
    if cfg.INPUT.MEAN_MODE != "per_channel":
        raise ValueError(f"INPUT.MEAN_MODE={cfg.INPUT.MEAN_MODE!r}: export bakes MODEL.PIXEL_MEAN/STD into "
                         "the graph and supports 'per_channel' only; the per-pixel mean image is not "
                         "part of the weights")
    return ClassifierExport(model, list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)).eval()
