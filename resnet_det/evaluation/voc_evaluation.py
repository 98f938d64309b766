"""PASCAL VOC detection AP@0.5: the devkit algorithm, with the VOC2007 11-point and the VOC2010+ area metric.

Pixel convention. The devkit stores boxes as 1-based *inclusive* pixel indices, so a box [xmin, xmax]
covers xmax - xmin + 1 pixels, and its IoU adds 1 to every width and height. resnet_det's boxes
(CONTRACTS.md) are continuous 0-based XYXY; a VOC reader maps the devkit's [xmin, ymin, xmax, ymax] to
[xmin - 1, ymin - 1, xmax, ymax] (the detectron2 convention). :func:`to_devkit_boxes` undoes that
shift (x0 + 1, y0 + 1, x1, y1), for ground truth and predictions alike, and :func:`voc_iou` then uses
the devkit's "+1" formula, so the numbers equal the devkit's on the original annotation files.

Matching (VOCevaldet.m): detections of a class, over all images, are sorted by decreasing score (ties
keep their processing order); each is matched to the ground-truth box of that class in its image with
the largest IoU. IoU >= 0.5 with an unmatched non-difficult box: true positive; with a difficult box:
ignored (neither TP nor FP); with an already matched box, or IoU < 0.5: false positive. Difficult
boxes are not counted in the number of positives. (py-faster-rcnn's port tests IoU > 0.5; the devkit,
and this file, test >= 0.5; the two differ only at exactly 0.5.)
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..utils.comm import gather_to_main
from .evaluator import DatasetEvaluator, format_table, unique_images

logger = logging.getLogger(__name__)

__all__ = ["PascalVOCDetectionEvaluator", "voc_ap", "voc_eval_class", "voc_iou", "to_devkit_boxes"]


def to_devkit_boxes(boxes) -> np.ndarray:
    """Continuous 0-based XYXY (CONTRACTS.md) -> the devkit's 1-based inclusive [xmin, ymin, xmax, ymax]."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, :2] += 1.0
    return b


def voc_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one devkit box with each of ``gts`` (M, 4), inclusive pixel indices (+1 on each side)."""
    iw = np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]) + 1.0
    ih = np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]) + 1.0
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
             + (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0) - inter)
    return inter / union


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    """AP from a precision/recall curve (points in decreasing-score order).

    VOC2007 11-point: mean over t in {0, 0.1, ..., 1} of the max precision at recall >= t (0 if none).
    VOC2010+ area: the area under the precision envelope (precision made non-increasing in recall).
    """
    rec, prec = np.asarray(rec, dtype=np.float64), np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        # t = i * 0.1 in floating point, as the devkit's 0:0.1:1 (so 3/10 < t = 0.30000000000000004 there too).
        return float(sum((prec[rec >= t].max() if np.any(rec >= t) else 0.0) for t in np.linspace(0, 1, 11)) / 11)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: max precision at any higher recall
    i = np.where(mrec[1:] != mrec[:-1])[0]  # where recall steps
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_eval_class(detections: list[tuple[int, float, np.ndarray]], ground_truth: dict,
                   iou_thresh: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """Precision/recall of one class (devkit boxes).

    Args:
        detections: (image_id, score, box) in processing order.
        ground_truth: image_id -> (boxes (M, 4), difficult (M,) bool) of this class.
    Returns:
        (recall, precision, npos): one curve point per non-ignored detection; npos = non-difficult boxes.
    """
    npos = int(sum((~diff).sum() for _, diff in ground_truth.values()))
    matched = {img: np.zeros(len(b), dtype=bool) for img, (b, _) in ground_truth.items()}
    order = sorted(range(len(detections)), key=lambda i: -detections[i][1])  # stable: ties keep order
    tp, fp = [], []
    for i in order:
        img, _, box = detections[i]
        gts, diff = ground_truth.get(img, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        if len(gts):
            ious = voc_iou(box, gts)
            j = int(np.argmax(ious))
            ovmax = ious[j]
        else:
            ovmax = -math.inf
        if ovmax >= iou_thresh:
            if diff[j]:
                continue  # a hit on a difficult object: ignored, neither TP nor FP
            hit = not matched[img][j]
            matched[img][j] = True
        else:
            hit = False
        tp.append(float(hit))
        fp.append(float(not hit))
    tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
    rec = tp_c / npos if npos > 0 else np.full(len(tp_c), math.nan)
    prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
    return rec, prec, npos


class PascalVOCDetectionEvaluator(DatasetEvaluator):
    """VOC AP@0.5 per class, with both metrics; see the module docstring for the conventions.

    Args:
        dataset_dicts: ground truth as dataset dicts (CONTRACTS.md): XYXY boxes, contiguous
            ``category_id``, optional ``difficult``. ``iscrowd`` boxes (not used by VOC) count as difficult.
        class_names: names by contiguous id.
        distributed: gather predictions to rank 0 when a process group is initialised.

    Only the images seen by ``process()`` are evaluated (their ground truth alone counts as positives).
    ``evaluate()`` returns ``{"bbox": {"AP50": mean area AP, "AP50_07": mean 11-point AP,
    "AP-<class>": area AP, "AP50_07-<class>": 11-point AP}}`` in percent. A class with no
    non-difficult ground truth gets NaN (recall is undefined) and is left out of the means.
    """

    def __init__(self, dataset_dicts: list[dict], class_names: list[str], distributed: bool = True):
        self._class_names = list(class_names)
        self._distributed = distributed
        # class -> image_id -> (devkit boxes, difficult flags)
        per_class: dict[int, dict] = defaultdict(dict)
        for d in dataset_dicts:
            by_cls = defaultdict(lambda: ([], []))
            for a in d.get("annotations", []):
                c = int(a["category_id"])
                if not 0 <= c < len(class_names):
                    raise ValueError(f"image {d['image_id']}: category_id {c} is outside 0..{len(class_names) - 1} "
                                     f"({len(class_names)} class_names)")
                by_cls[c][0].append(a["bbox"])
                by_cls[c][1].append(bool(a.get("difficult", False)) or bool(a.get("iscrowd", 0)))
            for c, (boxes, diff) in by_cls.items():
                per_class[c][d["image_id"]] = (to_devkit_boxes(boxes), np.asarray(diff, dtype=bool))
        self._gt = per_class
        self._image_ids = {d["image_id"] for d in dataset_dicts}
        self.reset()

    @classmethod
    def from_dataset(cls, dataset_name: str, **kwargs) -> "PascalVOCDetectionEvaluator":
        """Build from a registered VOC data set (its dataset dicts and ``thing_classes``)."""
        return cls(DatasetCatalog.get(dataset_name), MetadataCatalog.get(dataset_name).thing_classes, **kwargs)

    def reset(self) -> None:
        # one (image_id, [(class, score, box), ...]) per processed image, so images without
        # detections are still known to have been evaluated
        self._predictions: list[tuple[int, list]] = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            inst = out["instances"]
            boxes = inst["boxes"].detach().cpu().double().reshape(-1, 4).tolist()
            scores = inst["scores"].detach().cpu().double().tolist()
            classes = inst["pred_classes"].detach().cpu().tolist()
            img = int(inp["image_id"])
            self._predictions.append((img, [(int(c), float(s), b) for b, s, c in zip(boxes, scores, classes)]))

    def evaluate(self) -> dict:
        preds = gather_to_main(self._predictions) if self._distributed else self._predictions
        if preds is None:
            return {}
        if not preds:
            logger.warning("VOC evaluator: process() saw no images; nothing to evaluate")
            return {}
        preds = unique_images(preds, lambda p: p[0], "VOC evaluator")
        seen = {img for img, _ in preds}
        stray = sorted(seen - self._image_ids)
        if stray:
            logger.warning("VOC evaluator: %d image id(s) are not in the ground truth; their detections "
                           "count as false positives: %s", len(stray), stray[:20])
        if len(seen & self._image_ids) < len(self._image_ids):
            logger.info("VOC evaluator: evaluating %d of the %d ground-truth images (those processed)",
                        len(seen & self._image_ids), len(self._image_ids))
        by_cls: dict[int, list] = defaultdict(list)
        for img, c, s, b in ((img, *det) for img, dets in preds for det in dets):
            if not 0 <= c < len(self._class_names):
                raise ValueError(f"image {img}: predicted class {c} is outside 0..{len(self._class_names) - 1}; "
                                 f"does MODEL.ROI_HEADS.NUM_CLASSES match the data set's classes?")
            by_cls[c].append((img, s, to_devkit_boxes(b)[0]))
        ap, ap07 = {}, {}
        for c, name in enumerate(self._class_names):
            gt = {img: v for img, v in self._gt.get(c, {}).items() if img in seen}
            rec, prec, npos = voc_eval_class(by_cls.get(c, []), gt)
            if npos == 0:
                logger.warning("VOC evaluator: class %r has no non-difficult ground truth; its AP is NaN", name)
                ap[name] = ap07[name] = math.nan
                continue
            ap[name] = voc_ap(rec, prec, use_07_metric=False) * 100
            ap07[name] = voc_ap(rec, prec, use_07_metric=True) * 100
        valid = [n for n in self._class_names if not math.isnan(ap[n])]
        res = {"AP50": float(np.mean([ap[n] for n in valid])) if valid else math.nan,
               "AP50_07": float(np.mean([ap07[n] for n in valid])) if valid else math.nan}
        logger.info("PASCAL VOC AP@0.5 (%%):\n%s", format_table(
            [[n, ap[n], ap07[n]] for n in self._class_names] + [["mean", res["AP50"], res["AP50_07"]]],
            ["class", "AP (area, VOC2010+)", "AP (11-point, VOC2007)"]))
        res.update({f"AP-{n}": ap[n] for n in self._class_names})
        res.update({f"AP50_07-{n}": ap07[n] for n in self._class_names})
        return {"bbox": res}
