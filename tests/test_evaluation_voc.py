"""PASCAL VOC AP on hand-computed cases (devkit algorithm, both metrics, difficult boxes)."""
import logging
import math

import numpy as np
import pytest
import torch

from resnet_det.evaluation import PascalVOCDetectionEvaluator
from resnet_det.evaluation.voc_evaluation import to_devkit_boxes, voc_ap, voc_iou


def gt_dict(image_id, anns):
    """anns: [(class, xyxy, difficult)] in the contract's 0-based continuous frame."""
    return {"file_name": f"/x/{image_id}.jpg", "image_id": image_id, "height": 100, "width": 100,
            "annotations": [{"bbox": b, "category_id": c, "iscrowd": 0, "difficult": d} for c, b, d in anns]}


def evaluate(dicts, preds, classes=("a", "b")):
    """preds: {image_id: [(class, xyxy, score)]}."""
    ev = PascalVOCDetectionEvaluator(dicts, list(classes))
    inputs = [{"image_id": i} for i in preds]
    outputs = [{"instances": {"boxes": torch.tensor([p[1] for p in ps], dtype=torch.float32).reshape(-1, 4),
                              "scores": torch.tensor([p[2] for p in ps]),
                              "pred_classes": torch.tensor([p[0] for p in ps], dtype=torch.int64)}}
               for ps in preds.values()]
    ev.process(inputs, outputs)
    return ev.evaluate()["bbox"]


A, B, FAR = [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]


def test_iou_uses_devkit_plus_one():
    # Devkit boxes are inclusive pixel indices: [1,1,2,2] and [2,2,3,3] are 2x2 = 4 pixels each,
    # sharing pixel (2,2): IoU = 1 / (4 + 4 - 1) = 1/7 (a continuous IoU would say 0).
    assert voc_iou(np.array([1, 1, 2, 2.]), np.array([[2, 2, 3, 3.]]))[0] == pytest.approx(1 / 7)
    # Contract boxes shifted to the devkit frame give the continuous IoU: [0,0,10,10] vs [5,0,15,10]
    # overlap 5x10 = 50 of 150.
    a, b = to_devkit_boxes([[0, 0, 10, 10], [5, 0, 15, 10]])
    assert voc_iou(a, b[None])[0] == pytest.approx(1 / 3)


def test_07_and_area_metrics_differ_by_hand():
    # Two gt boxes of class a. Detections by score: 0.9 on A (TP), 0.8 far away (FP), 0.7 on B (TP).
    # recall    = 1/2, 1/2, 2/2;   precision = 1/1, 1/2, 2/3.
    # area (VOC2010+): envelope precision is 1 on recall (0, 0.5], 2/3 on (0.5, 1]
    #   -> 0.5 * 1 + 0.5 * 2/3 = 5/6 = 83.33 %.
    # 11-point (VOC2007): t = 0, .1, .., .5 -> max prec at rec >= t is 1 (6 points);
    #   t = .6, .., 1.0 -> 2/3 (5 points)  -> (6 + 5 * 2/3) / 11 = 28/33 = 84.85 %.
    dicts = [gt_dict(1, [(0, A, False), (0, B, False)]), gt_dict(2, [(1, A, False)])]
    res = evaluate(dicts, {1: [(0, A, 0.9), (0, FAR, 0.8), (0, B, 0.7)], 2: [(1, A, 0.5)]})
    assert res["AP-a"] == pytest.approx(100 * 5 / 6)
    assert res["AP50_07-a"] == pytest.approx(100 * 28 / 33)
    assert res["AP-b"] == res["AP50_07-b"] == pytest.approx(100.0)
    assert res["AP50"] == pytest.approx((100 * 5 / 6 + 100) / 2)
    assert res["AP50_07"] == pytest.approx((100 * 28 / 33 + 100) / 2)


def test_difficult_is_neither_tp_nor_fp():
    # Same as above plus a difficult box D hit by the highest-scoring detection (ignored: not an FP),
    # and a difficult box nobody detects (not a miss: it is not counted in the positives).
    D, D2 = [70, 70, 90, 90], [40, 0, 50, 10]
    dicts = [gt_dict(1, [(0, A, False), (0, B, False), (0, D, True), (0, D2, True)])]
    res = evaluate(dicts, {1: [(0, D, 0.99), (0, A, 0.9), (0, FAR, 0.8), (0, B, 0.7)]}, classes=("a",))
    assert res["AP-a"] == pytest.approx(100 * 5 / 6)
    assert res["AP50_07-a"] == pytest.approx(100 * 28 / 33)


def test_duplicates_and_threshold():
    # A second detection of an already matched box is an FP; IoU exactly 0.5 is a hit (devkit: >=).
    # [0,0,10,20] vs A: overlap 100 of 200 -> 0.5 (the +1 frame gives 110 / 220, also 0.5).
    # Detections: A 0.9 TP, A 0.8 duplicate FP, half-overlap of B 0.7 TP -> rec .5,.5,1 prec 1,.5,2/3,
    # the same curve as the 07-vs-area case.
    dicts = [gt_dict(1, [(0, A, False), (0, [0, 30, 10, 40], False)])]
    res = evaluate(dicts, {1: [(0, A, 0.9), (0, A, 0.8), (0, [0, 30, 10, 50], 0.7)]}, classes=("a",))
    assert res["AP-a"] == pytest.approx(100 * 5 / 6)


def test_missed_box_and_wrong_class():
    # Class a: one TP out of two boxes; the detection of class b on a's box is an FP for b.
    # a: rec 0.5, prec 1 -> area 0.5, 11-point 6/11. b: no TP, one FP -> 0 in both.
    dicts = [gt_dict(1, [(0, A, False), (0, B, False), (1, FAR, False)])]
    res = evaluate(dicts, {1: [(0, A, 0.9), (1, B, 0.8)]})
    assert res["AP-a"] == pytest.approx(50.0)
    assert res["AP50_07-a"] == pytest.approx(100 * 6 / 11)
    assert res["AP-b"] == 0.0 and res["AP50_07-b"] == 0.0


def test_class_without_positives_is_nan_and_not_averaged(caplog):
    dicts = [gt_dict(1, [(0, A, False), (1, B, True)])]  # class b has only a difficult box
    with caplog.at_level(logging.WARNING):
        res = evaluate(dicts, {1: [(0, A, 0.9), (1, B, 0.9)]})
    assert math.isnan(res["AP-b"]) and "'b'" in caplog.text
    assert res["AP50"] == pytest.approx(100.0) and res["AP50_07"] == pytest.approx(100.0)


def test_voc_ap_empty_curve():
    assert voc_ap(np.array([]), np.array([]), use_07_metric=True) == 0.0
    assert voc_ap(np.array([]), np.array([]), use_07_metric=False) == 0.0


def test_bad_class_id_is_clear():
    with pytest.raises(ValueError, match="category_id 5"):
        PascalVOCDetectionEvaluator([gt_dict(1, [(5, A, False)])], ["a", "b"])
