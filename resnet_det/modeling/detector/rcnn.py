"""Faster R-CNN on ResNet stage outputs, assembled from torchvision.models.detection parts.

C4 (Appendix A): res4 (stride 16) feeds the RPN and RoI pooling; res5 + average pooling is the
per-region head. FPN: P2..P6 feed the RPN, P2..P5 the RoIAlign + 2-fc head. The module names
(`backbone`, `rpn`, `roi_heads`, `transform`) are torchvision's FasterRCNN's, so its weights load.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from ..backbone import build_backbone, resnet_kwargs_from_cfg
from ..backbone.build import warn_frozen_random_init
from ..speed import apply_fast_path
from .detectron2_style import (BoxRegressionLoss, Detectron2RoIHeads, Detectron2RPN, RoIHeadsWithLoss,
                               RPNWithLoss, StridedAnchorGenerator, detectron2_resized_size,
                               drop_empty_in_original)
from .heads import FastRCNNPredictor, build_box_head, build_box_pooler

logger = logging.getLogger(__name__)


class ResizeNormalize(GeneralizedRCNNTransform):
    """torchvision's resize/normalize/batch, with detectron2's separate train and test sizes.

    Images arrive as 0-255 floats in INPUT.FORMAT order; mean/std are in that range, so the
    normalisation equals torchvision's (x/255 - m/255) / (s/255). INPUT.RESIZE_ROUNDING "round" sizes
    the resized image as detectron2 does (int(x + 0.5)); torchvision's interpolate floors.
    """

    def __init__(self, cfg, size_divisible: int):
        i = cfg.INPUT
        self._sizes = {True: (tuple(i.MIN_SIZE_TRAIN), i.MAX_SIZE_TRAIN),
                       False: ((i.MIN_SIZE_TEST,), i.MAX_SIZE_TEST)}
        # Large-scale jitter hands over fixed-size training images (data/augment.py): no second resize.
        super().__init__(i.MIN_SIZE_TEST, i.MAX_SIZE_TEST, list(cfg.MODEL.PIXEL_MEAN),
                         list(cfg.MODEL.PIXEL_STD), size_divisible=max(1, size_divisible),
                         _skip_resize="LargeScaleJitter" in i.AUGMENTATIONS)
        self.round_size = i.RESIZE_ROUNDING == "round"
        self.size_range = i.MIN_SIZE_TRAIN_SAMPLING == "range"
        self.train(False)

    def torch_choice(self, k):
        """The training short side: one of MIN_SIZE_TRAIN (torchvision's torch_choice, detectron2's
        "choice"), or with MIN_SIZE_TRAIN_SAMPLING "range" any integer in [min, max] (detectron2's
        np.random.randint(min, max + 1)); drawn from torch's generator either way."""
        if self.training and self.size_range:
            return int(torch.randint(int(k[0]), int(k[-1]) + 1, (1,)).item())
        return super().torch_choice(k)

    def resize(self, image: torch.Tensor, target=None):
        if not self.round_size or torch.jit.is_tracing() or (self.training and self._skip_resize):
            return super().resize(image, target)
        h, w = image.shape[-2:]
        short = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        size = detectron2_resized_size(h, w, short, self.max_size)
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is not None and "boxes" in target:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), size)
        return image, target

    def train(self, mode: bool = True):
        # Multi-scale training draws one of MIN_SIZE_TRAIN per image (torchvision's torch_choice).
        self.min_size, self.max_size = self._sizes[bool(mode)]
        return super().train(mode)


def _anchor_generator(cfg, strides: list[int]) -> AnchorGenerator:
    a = cfg.MODEL.ANCHOR_GENERATOR
    sizes = [tuple(s) for s in a.SIZES]
    ratios = [tuple(r) for r in a.ASPECT_RATIOS]
    if len(ratios) == 1:
        ratios = ratios * len(sizes)
    if len(sizes) != len(strides) or len(ratios) != len(strides):
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.SIZES has {len(sizes)} lists and ASPECT_RATIOS "
                         f"{len(ratios)}, but MODEL.RPN.IN_FEATURES names {len(strides)} feature maps; "
                         "give one list per map (C4: one map, e.g. [[32, 64, 128, 256, 512]])")
    if a.STYLE == "detectron2":
        return StridedAnchorGenerator(tuple(sizes), tuple(ratios), strides, a.OFFSET)
    if a.OFFSET != 0.0:
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET={a.OFFSET}: torchvision's anchors (STYLE "
                         "torchvision) start at 0; set MODEL.ANCHOR_GENERATOR.STYLE detectron2 for an offset")
    return AnchorGenerator(tuple(sizes), tuple(ratios))


def inputs_to_device(batched_inputs: list[dict], device: torch.device, with_targets: bool):
    """Images (as float, 0-255) and, for training, targets (1-based labels) on `device`.

    Copies are non_blocking: from the pinned batches the training loader yields on GPU machines
    (DATALOADER.PIN_MEMORY) they overlap with the host's work; from pageable memory they are
    ordinary copies. The first kernel that reads a tensor waits for its copy (same stream).
    """
    images = [d["image"].to(device, non_blocking=True).float() for d in batched_inputs]
    targets = None
    if with_targets:
        targets = [{"boxes": d["boxes"].to(device, non_blocking=True).float(),
                    "labels": d["classes"].to(device, non_blocking=True).long() + 1} for d in batched_inputs]
    return images, targets


def output_size(batched_input: dict, image_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) the detections of one input dict are returned in: its "height" / "width" where
    given (detectron2's input contract: the original image's size when the image was resized before the
    model), else the size of its image."""
    if "height" not in batched_input and "width" not in batched_input:
        return image_size  # as it is: traced / exported sizes stay symbolic
    h, w = int(batched_input.get("height", image_size[0])), int(batched_input.get("width", image_size[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"input dict with height={h}, width={w}: the output resolution must be positive")
    return h, w


class FasterRCNN(GeneralizedRCNN):
    """Faster R-CNN whose `forward` takes resnet_det's input dicts (docs/CONTRACTS.md).

    Contiguous class ids 0..K-1 outside; torchvision's 1..K (0 = background) inside.
    """

    def __init__(self, backbone, rpn, roi_heads, transform, rpn_features, roi_features, drop_empty: bool = False):
        super().__init__(backbone, rpn, roi_heads, transform)
        self.rpn_features, self.roi_features = list(rpn_features), list(roi_features)
        self.drop_empty = drop_empty  # MODEL.ROI_HEADS.POSTPROCESS detectron2

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, batched_inputs: list[dict]):
        return inputs_to_device(batched_inputs, self.device, with_targets=self.training)

    def forward(self, batched_inputs: list[dict]):
        images, targets = self.preprocess(batched_inputs)
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        images, targets = self.transform(images, targets)
        features = self.backbone(images.tensors)
        rpn_in = {k: features[k] for k in self.rpn_features}
        proposals, proposal_losses = self.rpn(images, rpn_in, targets)
        roi_in = {k: features[k] for k in self.roi_features}
        detections, detector_losses = self.roi_heads(roi_in, proposals, images.image_sizes, targets)
        if self.training:
            return {**detector_losses, **proposal_losses}
        # detectron2's contract: "height" / "width" are the resolution the outputs are wanted in (its data
        # mapper resizes before the model). Boxes go from the resized frame straight to it, x and y scaled
        # separately, then clipped and emptied ones dropped as detector_postprocess does.
        output_sizes = [output_size(d, s) for d, s in zip(batched_inputs, original_sizes)]
        detections = self.transform.postprocess(detections, images.image_sizes, output_sizes)
        if self.drop_empty or output_sizes != original_sizes:
            detections = drop_empty_in_original(detections, output_sizes)
        return [{"instances": {"boxes": d["boxes"], "scores": d["scores"],
                               "pred_classes": d["labels"] - 1}} for d in detections]


def build_model(cfg) -> FasterRCNN:
    """Faster R-CNN (C4 or FPN, by MODEL.BACKBONE.NAME and MODEL.ROI_BOX_HEAD.NAME) from the config."""
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise ValueError(f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}: build_model builds "
                         "'GeneralizedRCNN'; classifiers come from resnet_det.classification.build_classifier, "
                         "localizers from resnet_det.localization.build_localizer")
    warn_frozen_random_init(cfg)
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    rpn_names = list(cfg.MODEL.RPN.IN_FEATURES)
    missing = [n for n in rpn_names if n not in shapes]
    if missing:
        raise ValueError(f"MODEL.RPN.IN_FEATURES={rpn_names}: {missing} not produced by backbone "
                         f"{cfg.MODEL.BACKBONE.NAME} (outputs: {list(shapes)})")
    channels = {shapes[n].channels for n in rpn_names}
    if len(channels) != 1:
        raise ValueError(f"MODEL.RPN.IN_FEATURES={rpn_names} have different channels {channels}")
    anchors = _anchor_generator(cfg, [shapes[n].stride for n in rpn_names])
    r = cfg.MODEL.RPN
    rpn_cls = Detectron2RPN if r.POSTPROCESS == "detectron2" else RPNWithLoss
    rpn = rpn_cls(
        anchors, RPNHead(channels.pop(), anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=r.IOU_THRESHOLDS[1], bg_iou_thresh=r.IOU_THRESHOLDS[0],
        batch_size_per_image=r.BATCH_SIZE_PER_IMAGE, positive_fraction=r.POSITIVE_FRACTION,
        pre_nms_top_n=dict(training=r.PRE_NMS_TOPK_TRAIN, testing=r.PRE_NMS_TOPK_TEST),
        post_nms_top_n=dict(training=r.POST_NMS_TOPK_TRAIN, testing=r.POST_NMS_TOPK_TEST),
        nms_thresh=r.NMS_THRESH, score_thresh=r.SCORE_THRESH,
        box_loss=BoxRegressionLoss(r.BBOX_REG_LOSS_TYPE, r.SMOOTH_L1_BETA), normalizer=r.LOSS_NORMALIZER,
        loss_weight=r.LOSS_WEIGHT, bbox_reg_loss_weight=r.BBOX_REG_LOSS_WEIGHT)
    rpn.min_size = r.MIN_SIZE

    h, b = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
    box_head = build_box_head(cfg, shapes, resnet_kwargs_from_cfg(cfg))
    predictor = FastRCNNPredictor(box_head.out_channels, h.NUM_CLASSES + 1, b.CLS_AGNOSTIC_BBOX_REG)
    d2_boxes = h.POSTPROCESS == "detectron2"
    roi_heads = (Detectron2RoIHeads if d2_boxes else RoIHeadsWithLoss)(
        build_box_pooler(cfg, shapes), box_head, predictor,
        fg_iou_thresh=h.IOU_THRESHOLD, bg_iou_thresh=h.IOU_THRESHOLD,
        batch_size_per_image=h.BATCH_SIZE_PER_IMAGE, positive_fraction=h.POSITIVE_FRACTION,
        bbox_reg_weights=tuple(b.BBOX_REG_WEIGHTS), score_thresh=h.SCORE_THRESH_TEST,
        nms_thresh=h.NMS_THRESH_TEST, detections_per_img=h.DETECTIONS_PER_IMAGE,
        box_loss=BoxRegressionLoss(b.BBOX_REG_LOSS_TYPE, b.SMOOTH_L1_BETA), bbox_reg_loss_weight=b.BBOX_REG_LOSS_WEIGHT)
    model = FasterRCNN(backbone, rpn, roi_heads, ResizeNormalize(cfg, backbone.size_divisibility),
                       rpn_names, h.IN_FEATURES, drop_empty=d2_boxes)
    logger.info("Parameters per stage (trainable / frozen):\n%s", parameter_table(model))
    # MODEL.FUSE_CONV_BN_RELU / CHANNELS_LAST / COMPILE: same outputs within float tolerance, faster.
    return apply_fast_path(model, cfg)


def parameter_table(model: nn.Module) -> str:
    """Trainable vs frozen parameter counts per backbone stage and per head."""
    groups: dict[str, list[int]] = {}
    stage_of = {"conv1": "stem", "bn1": "stem", "layer1": "res2", "layer2": "res3", "layer3": "res4",
                "layer4": "res5"}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if parts[:2] == ["backbone", "body"]:
            key = "backbone." + stage_of.get(parts[2], parts[2])
        elif parts[0] == "roi_heads":
            key = "roi_heads." + parts[1]
        else:
            key = ".".join(parts[:2]) if parts[0] == "backbone" else parts[0]
        counts = groups.setdefault(key, [0, 0])
        counts[0 if p.requires_grad else 1] += p.numel()
    width = max(map(len, groups)) + 2
    lines = [f"{'module':<{width}}{'trainable':>12}{'frozen':>12}"]
    lines += [f"{k:<{width}}{t:>12,}{f:>12,}" for k, (t, f) in groups.items()]
    return "\n".join(lines)
