"""Top-k classification and ILSVRC localization error on hand-made cases."""
import pytest
import torch

from resnet_det.evaluation import (ClassificationEvaluator, LocalizationEvaluator, localization_errors,
                                   oracle_localization_error, topk_errors)

LOGITS = torch.tensor([
    [5., 4, 3, 2, 1, 0],  # label 0: rank 0 -> top-1 hit
    [5., 4, 3, 2, 1, 0],  # label 4: rank 4 -> top-5 hit, top-1 miss
    [0., 1, 2, 3, 4, 5],  # label 0: rank 5 -> misses both
    [1., 9, 2, 8, 3, 7],  # label 3: order 1, 3, 5, ... -> rank 1 -> top-5 hit only
])
LABELS = torch.tensor([0, 4, 0, 3])


def test_topk_errors_by_hand():
    # top-1: 1 of 4 right -> 75 % error; top-5: 3 of 4 -> 25 %; top-2: samples 0 and 3 -> 50 %.
    assert topk_errors(LOGITS, LABELS, ks=(1, 2, 5)) == {1: 75.0, 2: 50.0, 5: 25.0}
    # k >= number of classes: every class is in the top k.
    assert topk_errors(LOGITS[:, :3], torch.tensor([0, 1, 2, 2]), ks=(5,)) == {5: 0.0}


def test_topk_bad_labels():
    with pytest.raises(ValueError, match=r"0\.\.5"):
        topk_errors(LOGITS, torch.tensor([0, 4, 0, 6]))
    with pytest.raises(ValueError, match="labels must be"):
        topk_errors(LOGITS, LABELS[:3])


def test_classification_evaluator_batches_and_crops():
    ev = ClassificationEvaluator()
    ev.reset()
    ev.process((torch.zeros(2, 3, 4, 4), LABELS[:2]), LOGITS[:2])
    ev.process((torch.zeros(2, 3, 4, 4), LABELS[2:]), [{"logits": x} for x in LOGITS[2:]])
    assert ev.evaluate() == {"top1_acc": 25.0, "top1_err": 75.0, "top5_acc": 75.0, "top5_err": 25.0}

    # Multi-crop: softmax scores are averaged over crops, not logits. Crop 1: p ~ (1, 0, 0); crop 2:
    # p ~ (0, 0.88, 0.12). Mean p ~ (0.5, 0.44, 0.06) -> class 0 (the label); mean logits
    # (-45, 1, 0) would say class 1.
    ev.reset()
    crops = torch.tensor([[[10., 0, 0], [-100., 2, 0]]])
    ev.process(torch.tensor([0]), crops)
    assert ev.evaluate()["top1_acc"] == 100.0


A, B = [0, 0, 10, 10], [20, 20, 30, 30]
FAR = [50, 50, 60, 60]
HALF = [0, 0, 10, 20]  # IoU with A exactly 0.5: counts (>= 0.5)
NEAR = [1, 1, 11, 11]  # IoU with A = 81 / 119 = 0.68
GT = [[(3, A)], [(3, A)], [(3, A)], [(3, A)], [(3, A), (3, B)]]
PRED = [
    [(3, FAR)],                                              # right class, wrong box: loc miss
    [(2, A)],                                                # wrong class, right box: loc miss
    [(1, A), (2, A), (4, A), (5, A), (3, NEAR)],             # hit at rank 4: top-5 hit, top-1 miss
    [(3, HALF)],                                             # IoU 0.5: hit
    [(3, B)],                                                # any box of the class counts
]
ORACLE = [{3: FAR}, {3: A}, {3: NEAR}, {3: FAR}, {3: A}]   # the true class's regressor box


def test_localization_by_hand():
    res = localization_errors(PRED, GT, k=(1, 5), oracle_boxes=ORACLE)
    # loc hits: top-1 {3, 4} -> 3/5 wrong; top-5 {2, 3, 4} -> 2/5 wrong.
    # class hits: top-1 {0, 3, 4} -> 2/5 wrong; top-5 {0, 2, 3, 4} -> 1/5 wrong.
    # oracle hits {1, 2, 4} -> 2/5 wrong (image 1's class is found, image 3's box is not).
    assert res == pytest.approx({"top1_loc_err": 60.0, "top5_loc_err": 40.0, "top1_cls_err": 40.0,
                                 "top5_cls_err": 20.0, "oracle_loc_err": 40.0})


def test_right_class_wrong_box_then_right_box():
    # The first right-class guess misses the box; a later one of the same class hits.
    res = localization_errors([[(3, FAR), (3, A)]], [[(3, A)]], k=(1, 2))
    assert res["top1_loc_err"] == 100.0 and res["top2_loc_err"] == 0.0 and res["top1_cls_err"] == 0.0


def test_oracle_errors():
    with pytest.raises(KeyError, match="class 3"):
        oracle_localization_error([{2: A}], [[(3, A)]])
    assert oracle_localization_error([[A, A, A, FAR]], [[(3, A)]]) == 100.0  # (C, 4) rows by class


def test_localization_evaluator_ranks_by_score():
    ev = LocalizationEvaluator()
    ev.reset()
    inputs, outputs = [], []
    for i, (guesses, gt, oracle) in enumerate(zip(PRED, GT, ORACLE)):
        inputs.append({"image_id": i, "boxes": torch.tensor([b for _, b in gt], dtype=torch.float32),
                       "classes": torch.tensor([c for c, _ in gt])})
        n = len(guesses)
        rev = guesses[::-1]  # fed worst first; the scores put them back in order
        class_boxes = torch.tensor([FAR] * 6, dtype=torch.float32)
        class_boxes[3] = torch.tensor(oracle[3], dtype=torch.float32)
        outputs.append({"loc": {"classes": torch.tensor([c for c, _ in rev]),
                                "boxes": torch.tensor([b for _, b in rev], dtype=torch.float32),
                                "scores": torch.arange(1, n + 1, dtype=torch.float32) / n,
                                "class_boxes": class_boxes}})
    ev.process(inputs[:2], outputs[:2])
    ev.process(inputs[2:], outputs[2:])
    assert ev.evaluate() == {"loc": pytest.approx(localization_errors(PRED, GT, oracle_boxes=ORACLE))}
