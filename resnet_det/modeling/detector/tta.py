"""Test-time augmentation for the Faster R-CNN (C4 and FPN alike), detectron2's TEST.AUG.

Every image is run at each shorter side of TEST.AUG.MIN_SIZES (longer side capped at TEST.AUG.MAX_SIZE)
and, with TEST.AUG.FLIP, also mirrored; each run's boxes come back in original pixels (mirrored ones
flipped back), and all of them are merged per class with ``torchvision.ops.batched_nms`` at
MODEL.ROI_HEADS.NMS_THRESH_TEST, keeping the MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE best -- what
detectron2's GeneralizedRCNNWithTTA does for boxes (its merge_detections runs the same per-class NMS).
Used by ``tools/train_net.py --eval-only`` and ``DefaultPredictor`` when TEST.AUG.ENABLED.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torchvision.ops import batched_nms

__all__ = ["DetectorWithTTA", "merge_detections", "maybe_wrap_tta"]


def merge_detections(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, nms_thresh: float,
                     max_dets: int) -> dict:
    """The union of several runs' detections of one image, NMS'd per class, best ``max_dets`` first."""
    keep = batched_nms(boxes.float(), scores.float(), classes, nms_thresh)[:max_dets]
    return {"boxes": boxes[keep], "scores": scores[keep], "pred_classes": classes[keep]}


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """XYXY boxes of a mirrored image of ``width`` pixels, in the unmirrored image's coordinates."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


class DetectorWithTTA(nn.Module):
    """Wraps a built detector (resnet_det input dicts in, ``{"instances": ...}`` out, docs/CONTRACTS.md)."""

    def __init__(self, cfg, model: nn.Module):
        super().__init__()
        aug = cfg.TEST.AUG
        self.model = model
        self.min_sizes = tuple(int(s) for s in aug.MIN_SIZES)
        self.max_size = int(aug.MAX_SIZE)
        self.flip = bool(aug.FLIP)
        self.nms_thresh = float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST)
        self.max_dets = int(cfg.MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def _test_size(self, min_size: int):
        t = self.model.transform  # ResizeNormalize: eval mode resizes to min_size[-1], capped at max_size
        saved = t.min_size, t.max_size
        t.min_size, t.max_size = (min_size,), self.max_size
        try:
            yield
        finally:
            t.min_size, t.max_size = saved

    def forward(self, batched_inputs: list[dict]):
        if self.training:  # training is the wrapped model's business; TTA is for inference only
            return self.model(batched_inputs)
        runs = [[] for _ in batched_inputs]
        flips = (False, True) if self.flip else (False,)
        for size in self.min_sizes:
            for flip in flips:
                inputs = [{**d, "image": d["image"].flip(-1)} if flip else d for d in batched_inputs]
                with self._test_size(size):
                    outs = self.model(inputs)
                for i, (d, out) in enumerate(zip(batched_inputs, outs)):
                    inst = out["instances"]
                    boxes = inst["boxes"]
                    if flip:
                        # the model maps boxes back to its input tensor's pixels: mirror in that width
                        boxes = flip_boxes(boxes, d["image"].shape[-1])
                    runs[i].append((boxes, inst["scores"], inst["pred_classes"]))
        merged = []
        for per_image in runs:
            boxes, scores, classes = (torch.cat(x) for x in zip(*per_image))
            merged.append({"instances": merge_detections(boxes, scores, classes, self.nms_thresh, self.max_dets)})
        return merged


def maybe_wrap_tta(cfg, model: nn.Module) -> nn.Module:
    """``model`` inside DetectorWithTTA when TEST.AUG.ENABLED, else ``model`` itself."""
    return DetectorWithTTA(cfg, model) if cfg.TEST.AUG.ENABLED else model
