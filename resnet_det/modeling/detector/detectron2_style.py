"""detectron2's semantics where they differ from torchvision's detection parts, selected by config keys.

torchvision's behaviour stays the default (the shipped configs reproduce torchvision's Faster R-CNN,
tests/test_detector.py); the configs in configs/detectron2_zoo/ switch every key below to detectron2's,
so a detectron2 model-zoo checkpoint gives detectron2's boxes (tests/test_detectron2_zoo.py).

    INPUT.RESIZE_ROUNDING                  floor: floor of size x scale
                                           round: int(x + 0.5) (data/transforms/augmentation_impl.py)
    MODEL.ANCHOR_GENERATOR.STYLE           torchvision: cell anchors rounded to integers, a map's stride
                                             = padded image size // map size
                                           detectron2: exact cell anchors, the backbone's strides
                                             (modeling/anchor_generator.py)
    MODEL.RPN.POSTPROCESS                  torchvision: drop sides < MIN_SIZE; NMS on sigmoid scores
                                           detectron2: drop non-finite boxes and sides <= MIN_SIZE; NMS on
                                             logits (modeling/proposal_generator/proposal_utils.py)
    MODEL.ROI_BOX_HEAD.POOLER_LEVEL_MAPPING  torchvision: floor(4 + log2(s / 224) + 1e-6)
                                           detectron2: floor(4 + log2(s / 224 + 1e-8)) (modeling/poolers.py)
    MODEL.ROI_HEADS.POSTPROCESS            torchvision: drop boxes under 1e-2 px before NMS
                                           detectron2: keep them; clip to the original image and drop empty
                                             ones (modeling/roi_heads/fast_rcnn.py, modeling/postprocessing.py)

Training losses (torchvision's by default; detectron2's in configs/detectron2_zoo/, checked against one
detectron2 training step in tests/test_detectron2_training.py):

    MODEL.RPN.LOSS_NORMALIZER              sampled: objectness BCE averaged over the sampled anchors, box
                                             loss summed and divided by their number (torchvision's rpn.py)
                                           batch_size: both summed and divided by RPN.BATCH_SIZE_PER_IMAGE
                                             x images, the config value (modeling/proposal_generator/rpn.py)
    MODEL.RPN / ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE  smooth_l1 (on deltas, SMOOTH_L1_BETA; detectron2's zoo: 0 = L1,
                                           torchvision: 1/9), giou / diou / ciou (on decoded boxes,
                                           torchvision.ops; detectron2's _dense_box_regression_loss)
    MODEL.RPN.LOSS_WEIGHT, RPN.BBOX_REG_LOSS_WEIGHT, ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT   as detectron2's

plus MODEL.ROI_BOX_HEAD.POOLER_TYPE ROIAlignV2 (RoIAlign with aligned=True) and
MODEL.ANCHOR_GENERATOR.OFFSET, which both libraries have. Anchors stay in torchvision's ratio-major
order here; detectron2's size-major RPN channels are permuted when its weights load
(checkpoint/heads.py). The same in both, so no switch: box decoding and its clamp at log(1000 / 16)
(box_regression.py), the per-level pre-NMS top-k on logits, clipping to the image, NMS per level and
per class, zero padding to the size divisibility, FPN's nearest top-down upsampling and max-pooled P6.
Not reproduced: detectron2 resizes uint8 images with PIL before the model, we resize float tensors
inside it; with INPUT.RESIZE_ROUNDING round the sizes agree, resampled pixel values differ slightly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import boxes as box_ops
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

STYLES = ("torchvision", "detectron2")
BOX_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")
RPN_LOSS_NORMALIZERS = ("sampled", "batch_size")
_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}


def detectron2_resized_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge.get_output_shape (data/transforms/augmentation_impl.py)."""
    scale = short * 1.0 / min(h, w)
    newh, neww = (short * 1.0, scale * w) if h < w else (scale * h, short * 1.0)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


class StridedAnchorGenerator(AnchorGenerator):
    """detectron2's DefaultAnchorGenerator (modeling/anchor_generator.py) in torchvision's interface.

    Cell anchors are w = sqrt(size^2 / ratio), h = ratio * w, centred on 0 and not rounded; the grid
    of a map steps by the backbone's stride (torchvision divides the padded image size by the map
    size, 15 instead of 16 for a 600-px side at res4) starting at offset * stride. The anchors of a
    location are listed ratio-major as torchvision's, which our RPN head's channels follow.
    """

    def __init__(self, sizes, aspect_ratios, strides: list[int], offset: float = 0.0):
        super().__init__(sizes, aspect_ratios)
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET={offset}: expected a value in [0, 1)")
        self.strides, self.offset = list(strides), float(offset)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")) -> Tensor:
        anchors = []
        for ratio in aspect_ratios:  # ratio-major; detectron2 loops sizes first
            for size in scales:
                w = math.sqrt(size ** 2.0 / ratio)
                h = ratio * w
                anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        # Python floats rounded once to float32, as detectron2's torch.tensor(anchors).float().
        return torch.tensor(anchors, dtype=torch.float32).to(dtype=dtype, device=device)

    def forward(self, image_list, feature_maps: list[Tensor]) -> list[Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} anchor strides")
        self.set_cell_anchors(feature_maps[0].dtype, feature_maps[0].device)
        per_map = []
        for fmap, stride, base in zip(feature_maps, self.strides, self.cell_anchors):
            gh, gw = fmap.shape[-2:]
            kw = dict(step=stride, dtype=torch.float32, device=base.device)
            xs = torch.arange(self.offset * stride, gw * stride, **kw)
            ys = torch.arange(self.offset * stride, gh * stride, **kw)
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            per_map.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4).to(base.dtype))
        anchors = torch.cat(per_map)
        return [anchors for _ in range(len(image_list.image_sizes))]


class BoxRegressionLoss:
    """A box regression loss summed over the given (foreground) rows, as detectron2's
    _dense_box_regression_loss (modeling/box_regression.py): smooth L1 on the encoded deltas
    (beta 0 = L1), or an IoU loss on the boxes the predicted deltas decode to against the ground truth."""

    def __init__(self, loss_type: str = "smooth_l1", beta: float = 1.0 / 9):
        if loss_type not in BOX_LOSS_TYPES:
            raise ValueError(f"box regression loss {loss_type!r}: expected one of {', '.join(BOX_LOSS_TYPES)}")
        if beta < 0:
            raise ValueError(f"SMOOTH_L1_BETA={beta}: expected a value >= 0")
        self.loss_type, self.beta = loss_type, float(beta)

    def __call__(self, pred_deltas: Tensor, target_deltas: Tensor, reference_boxes: Tensor, gt_boxes: Tensor,
                 box_coder) -> Tensor:
        if self.loss_type == "smooth_l1":
            # torch's smooth_l1_loss with beta 0 is the L1 loss, as detectron2's smooth_l1_loss.
            return F.smooth_l1_loss(pred_deltas, target_deltas, beta=self.beta, reduction="sum")
        pred_boxes = box_coder.decode_single(pred_deltas, reference_boxes)
        return _IOU_LOSSES[self.loss_type](pred_boxes, gt_boxes, reduction="sum")

    def __repr__(self) -> str:
        return f"BoxRegressionLoss({self.loss_type!r}, beta={self.beta})"


class RPNWithLoss(RegionProposalNetwork):
    """torchvision's RegionProposalNetwork (matching, sampling, proposals) whose loss is configurable:
    MODEL.RPN.LOSS_NORMALIZER, BBOX_REG_LOSS_TYPE, SMOOTH_L1_BETA, LOSS_WEIGHT, BBOX_REG_LOSS_WEIGHT.
    The defaults compute exactly torchvision's compute_loss."""

    def __init__(self, *args, box_loss: BoxRegressionLoss | None = None, normalizer: str = "sampled",
                 loss_weight: float = 1.0, bbox_reg_loss_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if normalizer not in RPN_LOSS_NORMALIZERS:
            raise ValueError(f"MODEL.RPN.LOSS_NORMALIZER={normalizer!r}: expected one of "
                             f"{', '.join(RPN_LOSS_NORMALIZERS)}")
        self.box_loss = box_loss or BoxRegressionLoss()
        self.normalizer, self.loss_weight, self.bbox_reg_loss_weight = normalizer, loss_weight, bbox_reg_loss_weight

    def forward(self, images, features: dict[str, Tensor], targets=None):
        if not self.training:
            return super().forward(images, features, targets)
        # torchvision's forward, with the anchors and matched boxes passed on to the loss (IoU losses).
        features = list(features.values())
        objectness, pred_bbox_deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        if targets is None:
            raise ValueError("targets should not be None")
        labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
        regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
        loss_objectness, loss_rpn_box_reg = self.compute_loss(
            objectness, pred_bbox_deltas, labels, regression_targets, anchors, matched_gt_boxes)
        return boxes, {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor], anchors: list[Tensor] | None = None,
                     matched_gt_boxes: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        sampled_pos_inds, sampled_neg_inds = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos_inds, dim=0))[0]
        neg = torch.where(torch.cat(sampled_neg_inds, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        objectness = objectness.flatten()
        num_images = len(labels)
        labels, regression_targets = torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0)
        if self.box_loss.loss_type != "smooth_l1" and anchors is None:
            raise ValueError(f"{self.box_loss}: the RPN loss needs the anchors and matched boxes")
        ref = torch.cat(anchors)[pos] if anchors is not None else None
        gt = torch.cat(matched_gt_boxes)[pos] if matched_gt_boxes is not None else None
        box_loss = self.box_loss(pred_bbox_deltas[pos], regression_targets[pos], ref, gt, self.box_coder)
        if self.normalizer == "sampled":  # torchvision's rpn.py
            box_loss = box_loss / sampled.numel()
            objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        else:  # detectron2's rpn.py: the configured batch size, not the number sampled
            normalizer = self.fg_bg_sampler.batch_size_per_image * num_images
            box_loss = box_loss / normalizer
            objectness_loss = F.binary_cross_entropy_with_logits(
                objectness[sampled], labels[sampled], reduction="sum") / normalizer
        return objectness_loss * self.loss_weight, box_loss * (self.loss_weight * self.bbox_reg_loss_weight)


class RoIHeadsWithLoss(RoIHeads):
    """torchvision's RoIHeads (matching, sampling, classification loss) whose box regression loss is
    configurable: MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE, SMOOTH_L1_BETA, BBOX_REG_LOSS_WEIGHT. The
    defaults compute exactly torchvision's fastrcnn_loss."""

    def __init__(self, *args, box_loss: BoxRegressionLoss | None = None, bbox_reg_loss_weight: float = 1.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.box_loss, self.bbox_reg_loss_weight = box_loss or BoxRegressionLoss(), bbox_reg_loss_weight

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training or self.has_mask() or self.has_keypoint():
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None")
        # torchvision's training path with fastrcnn_loss replaced by self.fastrcnn_loss.
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        gt_boxes = [t["boxes"][m] if t["boxes"].numel() else torch.zeros_like(p)
                    for t, m, p in zip(targets, matched_idxs, proposals)]
        loss_classifier, loss_box_reg = self.fastrcnn_loss(class_logits, box_regression, labels, regression_targets,
                                                           proposals, gt_boxes)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def fastrcnn_loss(self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                      regression_targets: list[Tensor], proposals: list[Tensor], gt_boxes: list[Tensor]
                      ) -> tuple[Tensor, Tensor]:
        labels, regression_targets = torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0)
        classification_loss = F.cross_entropy(class_logits, labels)
        pos = torch.where(labels > 0)[0]
        box_regression = box_regression.reshape(class_logits.shape[0], box_regression.size(-1) // 4, 4)
        box_loss = self.box_loss(box_regression[pos, labels[pos]], regression_targets[pos],
                                 torch.cat(proposals)[pos], torch.cat(gt_boxes)[pos], self.box_coder)
        # Divided by all sampled RoIs (torchvision's labels.numel(), detectron2's gt_classes.numel()).
        return classification_loss, box_loss / labels.numel() * self.bbox_reg_loss_weight


class Detectron2RPN(RPNWithLoss):
    """RegionProposalNetwork whose proposal selection is detectron2's find_top_rpn_proposals
    (modeling/proposal_generator/proposal_utils.py); its losses are RPNWithLoss's."""

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(num_anchors_per_level)])
        levels = levels.reshape(1, -1).expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)  # per level, on logits
        batch_idx = torch.arange(num_images, device=proposals.device)[:, None]
        objectness, levels = objectness[batch_idx, top_n_idx], levels[batch_idx, top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, shape in zip(proposals, objectness, levels, image_shapes):
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if self.training and not valid.all():
                raise FloatingPointError("RPN: predicted boxes or scores are Inf/NaN; training has diverged")
            boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            # Boxes.nonempty(threshold=MIN_SIZE): strictly larger, so 0 drops empty boxes only.
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            keep = (w > self.min_size) & (h > self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            # NMS on logits: sigmoid saturates to 1.0 in float32 and would tie distinct scores.
            keep = box_ops.batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(torch.sigmoid(scores[keep]))
        return final_boxes, final_scores


class Detectron2RoIHeads(RoIHeadsWithLoss):
    """RoIHeads whose test-time selection is detectron2's fast_rcnn_inference_single_image
    (modeling/roi_heads/fast_rcnn.py): no minimum box size, NMS per 0-based class id.

    Our predictor keeps torchvision's layout (background first, a box per class including it);
    detectron2's checkpoints are converted on load (checkpoint/heads.py).
    """

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        per_image = [len(p) for p in proposals]
        all_boxes = self.box_coder.decode(box_regression, proposals).split(per_image, 0)
        all_scores = torch.softmax(class_logits, -1).split(per_image, 0)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, shape in zip(all_boxes, all_scores, image_shapes):
            boxes = boxes[:, 1:]  # the background column's box: detectron2 predicts none
            valid = torch.isfinite(boxes).all(dim=(1, 2)) & torch.isfinite(scores).all(dim=1)
            boxes, scores = boxes[valid], scores[valid][:, 1:]
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            mask = scores > self.score_thresh  # R x K
            inds = mask.nonzero()
            boxes, scores = boxes[mask], scores[mask]
            keep = box_ops.batched_nms(boxes, scores, inds[:, 1], self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(inds[keep, 1] + 1)  # torchvision's labels: 0 is background
        return out_boxes, out_scores, out_labels


def drop_empty_in_original(detections: list[dict], original_sizes: list[tuple[int, int]]) -> list[dict]:
    """detectron2's detector_postprocess (modeling/postprocessing.py): boxes in original pixels are
    clipped to the original image, and boxes left empty are dropped."""
    out = []
    for det, size in zip(detections, original_sizes):
        boxes = box_ops.clip_boxes_to_image(det["boxes"], size)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out.append({**{k: v[keep] for k, v in det.items()}, "boxes": boxes[keep]})
    return out
