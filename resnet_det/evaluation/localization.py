"""ILSVRC localization error (Appendix C): class right AND box IoU >= 0.5, among the top-k guesses.

An image is correct at top-k when one of its first k guesses has a ground-truth class and a box with
IoU >= 0.5 with some ground-truth box of that class. The paper's "oracle" variant (Table 13/14, "using
ground truth class") is given the true class and checks the box of that class's regressor (per-class
regression, PCR), so it measures localization alone. Classification error is reported alongside: correct
at top-k when one of the first k guessed classes is a ground-truth class.

ILSVRC CLS-LOC images carry one class (possibly several boxes of it), where this is the official
metric. An image with several ground-truth classes counts as correct when any of them is found.
IoU is continuous on 0-based XYXY boxes; it equals the devkit's inclusive-pixel "+1" IoU for boxes read as
[xmin - 1, ymin - 1, xmax, ymax] (see voc_evaluation.py).
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
from torchvision.ops import box_iou

from ..utils.comm import gather_to_main
from .evaluator import DatasetEvaluator, format_table, unique_images

logger = logging.getLogger(__name__)

__all__ = ["localization_errors", "oracle_localization_error", "LocalizationEvaluator"]

Guess = tuple[int, Sequence[float]]  # (class, XYXY box)


def _gt_by_class(gt: Sequence[Guess], idx: int) -> dict[int, torch.Tensor]:
    if len(gt) == 0:
        raise ValueError(f"image #{idx}: no ground truth (class, box); every localization image needs one")
    out: dict[int, list] = {}
    for c, box in gt:
        out.setdefault(int(c), []).append([float(v) for v in box])
    return {c: torch.tensor(b, dtype=torch.float64) for c, b in out.items()}


def _box_hits(box, gt_boxes: torch.Tensor, iou: float) -> bool:
    b = torch.as_tensor([float(v) for v in box], dtype=torch.float64)[None]
    return bool((box_iou(b, gt_boxes) >= iou).any())


def localization_errors(predictions: Sequence[Sequence[Guess]], ground_truth: Sequence[Sequence[Guess]],
                        k: Sequence[int] = (1, 5), iou: float = 0.5,
                        oracle_boxes: Sequence[Mapping[int, Sequence[float]]] | None = None) -> dict[str, float]:
    """Top-k localization and classification errors, in percent.

    Args:
        predictions: per image, a list of (class, box) guesses ranked best first.
        ground_truth: per image, a list of (class, box); boxes XYXY in the same frame as the guesses.
        k: the ranks to report. iou: the overlap a box needs (0.5 in ILSVRC).
        oracle_boxes: optional, per image, class -> box of that class's regressor; adds
            ``oracle_loc_err`` (see :func:`oracle_localization_error`).
    Returns:
        ``{"top{k}_loc_err": .., "top{k}_cls_err": .., ["oracle_loc_err": ..]}``.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} images of predictions but {len(ground_truth)} of ground truth")
    if not ground_truth:
        raise ValueError("localization_errors: no images")
    loc_ok = {kk: 0 for kk in k}
    cls_ok = {kk: 0 for kk in k}
    for idx, (guesses, gt) in enumerate(zip(predictions, ground_truth)):
        by_cls = _gt_by_class(gt, idx)
        # rank of the first guess that is right (class / class and box); inf when none is.
        cls_rank = loc_rank = float("inf")
        for rank, (c, box) in enumerate(guesses):
            if int(c) in by_cls:
                cls_rank = min(cls_rank, rank)
                if _box_hits(box, by_cls[int(c)], iou):
                    loc_rank = rank
                    break
        for kk in k:
            loc_ok[kk] += loc_rank < kk
            cls_ok[kk] += cls_rank < kk
    n = len(ground_truth)
    res = {}
    for kk in k:
        res[f"top{kk}_loc_err"] = 100.0 * (n - loc_ok[kk]) / n
        res[f"top{kk}_cls_err"] = 100.0 * (n - cls_ok[kk]) / n
    if oracle_boxes is not None:
        res["oracle_loc_err"] = oracle_localization_error(oracle_boxes, ground_truth, iou)
    return res


def oracle_localization_error(oracle_boxes: Sequence[Mapping[int, Sequence[float]]],
                              ground_truth: Sequence[Sequence[Guess]], iou: float = 0.5) -> float:
    """Localization error (percent) when the true class is given: per image, the box that the true
    class's regressor predicts (``oracle_boxes[i][c]``) must reach ``iou`` with a box of class c."""
    if len(oracle_boxes) != len(ground_truth):
        raise ValueError(f"{len(oracle_boxes)} images of oracle boxes but {len(ground_truth)} of ground truth")
    if not ground_truth:
        raise ValueError("oracle_localization_error: no images")
    ok = 0
    for idx, (boxes, gt) in enumerate(zip(oracle_boxes, ground_truth)):
        by_cls = _gt_by_class(gt, idx)
        for c, gt_boxes in by_cls.items():
            try:
                box = boxes[c]
            except (KeyError, IndexError):
                raise KeyError(f"image #{idx}: oracle boxes have no box for ground-truth class {c}") from None
            if _box_hits(box, gt_boxes, iou):
                ok += 1
                break
    return 100.0 * (len(ground_truth) - ok) / len(ground_truth)


class LocalizationEvaluator(DatasetEvaluator):
    """ILSVRC-style localization error over a data set (Appendix C).

    ``process(inputs, outputs)``:
      * ``inputs``: detection-style dicts (CONTRACTS.md, "Model input") with ``"boxes"`` (N, 4) XYXY and
        ``"classes"`` (N,) contiguous ids: the ground truth, in the same pixel frame as the outputs.
      * ``outputs``: per image ``{"loc": {"classes": (k,), "boxes": (k, 4), "scores": (k,)}}``, the k
        guesses (ranked here by decreasing score; ties keep their order), and optionally
        ``"class_boxes"``: (num_classes, 4), every class's regressed box, for the oracle error.
    ``evaluate()`` returns ``{"loc": {"top1_loc_err", "top5_loc_err", "top1_cls_err", "top5_cls_err",
    ["oracle_loc_err"]}}`` in percent (the keys follow ``k``); oracle only when every image has class_boxes.
    """

    def __init__(self, k: Sequence[int] = (1, 5), iou: float = 0.5, distributed: bool = True):
        self._k, self._iou, self._distributed = tuple(k), float(iou), distributed
        self.reset()

    def reset(self) -> None:
        self._records: list[dict] = []  # per image: guesses, gt, oracle boxes (plain lists, cheap to gather)

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            if "loc" not in out:
                raise KeyError(f"model output of image {inp.get('image_id')} has no 'loc' (has {sorted(out)}); "
                               "LocalizationEvaluator expects {'loc': {'classes', 'boxes', 'scores'}}")
            loc = out["loc"]
            order = torch.argsort(loc["scores"].detach().cpu(), descending=True, stable=True)
            classes = loc["classes"].detach().cpu()[order].tolist()
            boxes = loc["boxes"].detach().cpu().double()[order].tolist()
            gt = list(zip(inp["classes"].tolist(), inp["boxes"].double().tolist()))
            oracle = loc["class_boxes"].detach().cpu().double().tolist() if "class_boxes" in loc else None
            self._records.append({"image_id": inp.get("image_id"), "guesses": list(zip(classes, boxes)),
                                  "gt": gt, "oracle": oracle})

    def evaluate(self) -> dict:
        records = gather_to_main(self._records) if self._distributed else self._records
        if records is None:
            return {}
        if not records:
            logger.warning("LocalizationEvaluator: process() saw no images; nothing to evaluate")
            return {}
        records = unique_images(records, lambda r: r["image_id"], "LocalizationEvaluator")
        for r in records:
            if not r["gt"]:
                raise ValueError(f"image {r['image_id']}: no ground-truth box; localization needs one per image")
        with_oracle = all(r["oracle"] is not None for r in records)
        res = localization_errors([r["guesses"] for r in records], [r["gt"] for r in records], self._k,
                                  self._iou, [r["oracle"] for r in records] if with_oracle else None)
        logger.info("Localization on %d images, error (%%):\n%s", len(records),
                    format_table([[v for v in res.values()]], list(res), floatfmt=".2f"))
        return {"loc": res}
