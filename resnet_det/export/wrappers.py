"""Tensor-in, tensor-out modules that tracing and ONNX export can take.

The eager detector takes and returns lists of dicts (docs/CONTRACTS.md); exporters need tensors.
`DetectorExport` feeds one image through the detector's own `forward` (so an exported model computes
exactly what `DefaultPredictor` does) and returns `(boxes, scores, classes)`. `ClassifierExport`
runs the classifier's own normalisation (per-pixel mean image or per-channel mean, std) inside the
graph, so deployed code feeds raw 0-255 pixels.
"""
from __future__ import annotations

import torch
from torch import nn
from ..utils.errors import ConfigError

MODEL_TYPES = {"GeneralizedRCNN": "detector", "Classifier": "classifier"}


def model_type_of(cfg) -> str:
    """"detector" or "classifier" from MODEL.META_ARCHITECTURE; a clear error for anything else."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in MODEL_TYPES:
        raise ConfigError(f"MODEL.META_ARCHITECTURE={arch!r}: export supports "
                         f"{', '.join(MODEL_TYPES)} (Faster R-CNN C4/FPN and the classification nets)")
    return MODEL_TYPES[arch]


def build_eager_model(cfg) -> nn.Module:
    """The eager model the config describes, on CPU, in eval mode, with MODEL.WEIGHTS loaded.

    Classifiers come from the classification package, the module pretraining trains and evaluates
    (a sibling import: classification never imports export). Their weights must fill the net
    exactly, and a per-pixel mean image comes from the checkpoint's meta.
    """
    if cfg.TEST.PRECISION != "fp32":
        raise ConfigError(f"TEST.PRECISION={cfg.TEST.PRECISION!r}: export writes the float32 model (TorchScript/ONNX "
                          "have no twin of the bf16/int8 CPU kernels here, except TEST.PRECISION int8 with --format onnx, "
                          "which writes model_int8.onnx too); set TEST.PRECISION fp32 and MODEL.WEIGHTS "
                          "the float weights (a calibrated INT8 checkpoint is refused too)")
    if model_type_of(cfg) == "detector":
        from ..checkpoint import load_model_weights
        from ..modeling.detector import build_model

        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            load_model_weights(model, cfg.MODEL.WEIGHTS)
        return model.to("cpu").eval()
    from ..classification.model import build_classifier
    from ..classification.trainer import build_eval_model

    if cfg.MODEL.WEIGHTS:
        return build_eval_model(cfg, cfg.MODEL.WEIGHTS, require_all=True).to("cpu").eval()
    if cfg.INPUT.MEAN_MODE == "per_pixel":
        raise ConfigError("INPUT.MEAN_MODE=per_pixel: export bakes the mean image the net was trained with "
                         "into the graph; set MODEL.WEIGHTS to the pretraining checkpoint that records it")
    return build_classifier(cfg).to("cpu").eval()


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

    The classifier's own `normalize` (mean image or per-channel mean, std) and net, not copies of
    them: deployed code feeds raw pixels and gets eager `Classifier.forward`'s logits. The nets end
    in global average pooling, so any input size works; a per-pixel mean image applies at its own
    size (INPUT.CROP_SIZE) and its channel average at others, in the graph as in eager.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.net(self.classifier.normalize(images))


def make_export_module(cfg, model: nn.Module) -> nn.Module:
    """Wrap an eager model (from `build_eager_model`) for export."""
    if model_type_of(cfg) == "detector":
        return DetectorExport(model).eval()
    from ..classification.model import Classifier

    if not isinstance(model, Classifier):
        raise TypeError(f"export takes the Classifier that resnet_det.classification.build_classifier "
                        f"builds (normalisation + net), got {type(model).__name__}")
    return ClassifierExport(model).eval()
