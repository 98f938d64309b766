"""The localization network of Appendix C: a classification ResNet plus a per-class RPN head.

"Our RPN for localization is designed in a per-class form": after a 3x3 conv, two sibling 1x1 convs
give, for every anchor at every position, K binary objectness logits (one logistic regression per
class, "cls") and K x 4 box deltas ("reg"), against translation-invariant anchors as in Faster R-CNN.
Training sees only the ground-truth class's outputs: its objectness on a few sampled anchors
(Appendix C: 8 per image, positives:negatives 1:1; MODEL.RPN.BATCH_SIZE_PER_IMAGE / POSITIVE_FRACTION)
and its regressor on the positive ones; the other classes' outputs get no loss. The network's own fc
(global average pool over res5, Table 1) is trained with cross-entropy beside it.

At test time the image (shorter side INPUT.TEST_RESIZE) runs fully convolutionally; the fc's top-5
classes are the guesses, and each guess's box comes from that class's regressor at its highest-scoring
anchor (per-class regression, PCR). Every class's box is returned too, for the oracle (true class) error.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.ops import box_iou, clip_boxes_to_image

from ..modeling.backbone import ResNet, build_resnet
from ..modeling.backbone.build import warn_frozen_random_init
from ..modeling.speed import to_channels_last
from ..utils.errors import ConfigError

IN_FEATURES = ("res4", "res5")


class PerClassRPNHead(nn.Module):
    """3x3 conv + ReLU, then per-class sibling 1x1 convs (Appendix C).

    Output channel layout is class-major: objectness channel ``k * A + a`` and delta channels
    ``(k * A + a) * 4 + j`` belong to class k and anchor a, so ``class_rows(k)`` selects one class's
    weights. ``forward`` returns objectness (N, K, H*W*A) and deltas (N, K, H*W*A, 4), the anchor index
    running position-major (``(y * W + x) * A + a``) like ``grid_anchors``.
    """

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int, conv_channels: int = 0):
        super().__init__()
        c = conv_channels or in_channels
        self.num_classes, self.num_anchors = num_classes, num_anchors
        self.conv = nn.Conv2d(in_channels, c, 3, padding=1)
        self.cls_logits = nn.Conv2d(c, num_classes * num_anchors, 1)
        self.bbox_pred = nn.Conv2d(c, num_classes * num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):  # Faster R-CNN's RPN init
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def class_rows(self, k: int, what: str = "bbox_pred") -> slice:
        """Output channels (weight rows) of class k in ``cls_logits`` or ``bbox_pred``."""
        per = self.num_anchors * (4 if what == "bbox_pred" else 1)
        return slice(k * per, (k + 1) * per)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        k, a = self.num_classes, self.num_anchors
        t = F.relu(self.conv(x))
        obj = self.cls_logits(t).view(n, k, a, h, w).permute(0, 1, 3, 4, 2).reshape(n, k, h * w * a)
        deltas = self.bbox_pred(t).view(n, k, a, 4, h, w).permute(0, 1, 4, 5, 2, 3).reshape(n, k, h * w * a, 4)
        return obj, deltas


def cell_anchors(sizes, aspect_ratios) -> torch.Tensor:
    """(A, 4) anchors centred at 0: every size with every ratio (height / width), area size^2."""
    out = []
    for s in sizes:
        for r in aspect_ratios:
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(cell: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """(H*W*A, 4) anchors centred on each feature cell's centre in input pixels, position-major."""
    ys = (torch.arange(height, dtype=cell.dtype, device=cell.device) + 0.5) * stride
    xs = (torch.arange(width, dtype=cell.dtype, device=cell.device) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
    return (shifts + cell[None]).reshape(-1, 4)


class Localizer(nn.Module):
    """Classification ResNet (``net``, torchvision parameter names) + ``PerClassRPNHead`` (``head``).

    forward(list of model-input dicts, docs/CONTRACTS.md, plus ``"label"``):
      train: ``{"loss_cls", "loss_objectness", "loss_box_reg"}``; images must share one size (crops).
      eval: per image ``{"loc": {"classes", "scores", "boxes", "class_boxes"}, "instances": {...}}``,
      what LocalizationEvaluator and the visualizer read; boxes in original pixels.
    """

    def __init__(self, net: ResNet, head: PerClassRPNHead, anchors: torch.Tensor, *, in_feature: str,
                 pixel_mean, pixel_std, iou_thresholds=(0.3, 0.7), batch_size_per_image: int = 8,
                 positive_fraction: float = 0.5, box_loss_weight: float = 1.0, test_size: int = 256,
                 topk: int = 5):
        super().__init__()
        if net.num_classes != head.num_classes or anchors.shape[0] != head.num_anchors:
            raise ValueError(f"net has {net.num_classes} classes and head {head.num_classes}; "
                             f"{anchors.shape[0]} anchors vs head's {head.num_anchors}")
        self.net, self.head, self.in_feature = net, head, in_feature
        self.stride = net._specs[in_feature].stride
        self.register_buffer("cell_anchors", anchors, persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        # An anchor is positive at IoU >= hi with a box of the true class (or being a box's best
        # anchor), negative below lo: Faster R-CNN's RPN rule, which Appendix C builds on.
        self.matcher = Matcher(iou_thresholds[1], iou_thresholds[0], allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.box_loss_weight, self.test_size, self.topk = box_loss_weight, test_size, topk

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def run(self, x: torch.Tensor):
        """Normalised NCHW batch -> (class logits (N, K), objectness, deltas, anchors (H*W*A, 4))."""
        feats = self.net.forward_features(x)
        logits = self.net.fc(torch.flatten(self.net.avgpool(feats["res5"]), 1))
        f = feats[self.in_feature]
        obj, deltas = self.head(f)
        anchors = grid_anchors(self.cell_anchors, f.shape[-2], f.shape[-1], self.stride)
        return logits, obj, deltas, anchors

    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        return [self.predict_one(d) for d in batched_inputs]

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std

    # ---- training -----------------------------------------------------------------------------
    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        sizes = {tuple(d["image"].shape[-2:]) for d in batched_inputs}
        if len(sizes) != 1:
            raise ValueError(f"Localizer training needs equal image sizes (the training mapper's "
                             f"INPUT.CROP_SIZE crops); got {sorted(sizes)}")
        x = torch.stack([self._normalize(d["image"]) for d in batched_inputs])
        logits, obj, deltas, anchors = self.run(x)
        labels = torch.tensor([int(d["label"]) for d in batched_inputs], device=self.device)
        obj_terms, obj_targets, box_terms, box_targets = [], [], [], []
        for i, d in enumerate(batched_inputs):
            boxes = d["boxes"].to(self.device).float().reshape(-1, 4)
            classes = d["classes"].to(self.device).long()
            # The true class(es) of this image; with no box left in the crop, the image class's
            # objectness still learns "no object here" from negatives.
            for c in (classes.unique().tolist() or [int(d["label"])]):
                gt = boxes[classes == c]
                if len(gt):
                    matched = self.matcher(box_iou(gt, anchors))
                    target = (matched >= 0).float()
                    target[matched == Matcher.BETWEEN_THRESHOLDS] = -1.0
                else:
                    matched = torch.full((len(anchors),), -1, dtype=torch.long, device=self.device)
                    target = torch.zeros(len(anchors), device=self.device)
                pos, neg = (m[0] for m in self.sampler([target]))
                sampled = (pos | neg).nonzero().squeeze(1)
                obj_terms.append(obj[i, c, sampled])  # class c's objectness only
                obj_targets.append(target[sampled])
                p = pos.nonzero().squeeze(1)
                box_terms.append(deltas[i, c, p])  # class c's regressor only
                box_targets.append(self.box_coder.encode_single(gt[matched[p]] if len(p) else gt[:0], anchors[p]))
        obj_terms, obj_targets = torch.cat(obj_terms), torch.cat(obj_targets)
        num = max(1, obj_terms.numel())
        loss_box = F.smooth_l1_loss(torch.cat(box_terms), torch.cat(box_targets), beta=1 / 9, reduction="sum")
        return {"loss_cls": F.cross_entropy(logits, labels),
                "loss_objectness": F.binary_cross_entropy_with_logits(obj_terms, obj_targets, reduction="sum") / num,
                "loss_box_reg": self.box_loss_weight * loss_box / num}

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_one(self, d: dict) -> dict:
        """One image (any size) -> the top-k guesses and every class's box, in original pixels."""
        image = self._normalize(d["image"])
        h, w = image.shape[-2:]
        scale = self.test_size / min(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                                  antialias=scale < 1)[0]
        logits, obj, deltas, anchors = self.run(image[None])
        probs = logits[0].softmax(0)
        best = obj[0].argmax(1)  # per class: its highest-scoring anchor (PCR)
        k_idx = torch.arange(len(best), device=best.device)
        boxes = self.box_coder.decode_single(deltas[0, k_idx, best], anchors[best])
        boxes = clip_boxes_to_image(boxes, (nh, nw))
        boxes = boxes * torch.tensor([w / nw, h / nh, w / nw, h / nh], device=boxes.device)
        scores, classes = probs.topk(min(self.topk, len(probs)))
        guesses = {"classes": classes, "scores": scores, "boxes": boxes[classes]}
        return {"loc": {**guesses, "class_boxes": boxes},
                "instances": {"boxes": guesses["boxes"], "scores": scores, "pred_classes": classes}}


def build_localizer(cfg) -> Localizer:
    """The Localizer of MODEL.META_ARCHITECTURE "Localizer" (Appendix C) from the config.

    Example::
        >>> cfg = get_cfg(); cfg.MODEL.META_ARCHITECTURE = "Localizer"; cfg.MODEL.RESNETS.DEPTH = 18
        >>> cfg.MODEL.CLASSIFIER.NUM_CLASSES = 5; cfg.MODEL.RESNETS.NORM = "BN"
        >>> obj, deltas = build_localizer(cfg).head(torch.zeros(1, 512, 3, 3))
        >>> tuple(obj.shape), tuple(deltas.shape)       # 5 classes x (3 x 3 positions x 15 anchors)
        ((1, 5, 135), (1, 5, 135, 4))
    """
    m = cfg.MODEL
    if m.META_ARCHITECTURE != "Localizer":
        raise ConfigError(f"MODEL.META_ARCHITECTURE={m.META_ARCHITECTURE!r}: build_localizer builds 'Localizer'")
    feat = m.LOCALIZER.IN_FEATURE
    if feat not in IN_FEATURES:
        raise ConfigError(f"MODEL.LOCALIZER.IN_FEATURE={feat!r}: expected one of {', '.join(IN_FEATURES)}")
    sizes, ratios = m.ANCHOR_GENERATOR.SIZES, m.ANCHOR_GENERATOR.ASPECT_RATIOS
    if len(sizes) != 1 or len(ratios) != 1:
        raise ConfigError(f"MODEL.ANCHOR_GENERATOR.SIZES={sizes} / ASPECT_RATIOS={ratios}: the Localizer reads "
                          "one feature map, so give one list each, e.g. [[32, 64, 128, 256]] and [[0.5, 1.0, 2.0]]")
    k = m.CLASSIFIER.NUM_CLASSES
    if k < 1:
        raise ConfigError(f"MODEL.CLASSIFIER.NUM_CLASSES={k}: expected at least 1")
    warn_frozen_random_init(cfg)
    net = build_resnet(cfg, num_classes=k, out_features=list(dict.fromkeys([feat, "res5"])))
    anchors = cell_anchors(sizes[0], ratios[0])
    head = PerClassRPNHead(net._specs[feat].channels, k, len(anchors), m.LOCALIZER.HEAD_CHANNELS)
    model = Localizer(net, head, anchors, in_feature=feat, pixel_mean=list(m.PIXEL_MEAN),
                      pixel_std=list(m.PIXEL_STD), iou_thresholds=tuple(m.RPN.IOU_THRESHOLDS),
                      batch_size_per_image=m.RPN.BATCH_SIZE_PER_IMAGE, positive_fraction=m.RPN.POSITIVE_FRACTION,
                      box_loss_weight=m.LOCALIZER.BOX_LOSS_WEIGHT, test_size=cfg.INPUT.TEST_RESIZE)
    return to_channels_last(model) if m.CHANNELS_LAST else model
