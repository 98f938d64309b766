"""COCOEvaluator against pycocotools run directly on the same ground-truth and result json."""
import json
import logging
import math

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_det.evaluation import COCOEvaluator
from resnet_det.evaluation.coco_evaluation import COCO_METRICS

# Category ids are not contiguous on purpose (1, 3, 7 -> 0, 1, 2); "bird" has no ground truth.
CATS = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}]
CLASSES = ["cat", "dog", "bird"]
TO_CONTIG = {1: 0, 3: 1, 7: 2}
# (image_id, category_id, xywh, iscrowd): small (<32^2), medium and large (>96^2) boxes on 100x100 images.
GT = [
    (1, 1, [10, 10, 20, 20], 0), (1, 3, [40, 30, 50, 40], 0), (1, 1, [60, 5, 25, 25], 0),
    (2, 1, [1, 1, 98, 98], 0), (2, 3, [5, 60, 30, 30], 0), (2, 3, [50, 50, 40, 40], 1),
    (3, 1, [0, 0, 60, 60], 1),  # image 3: only a crowd box
    (4, 3, [20, 20, 15, 15], 0), (4, 3, [50, 50, 45, 45], 0),
]


def write_gt(path):
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in (1, 2, 3, 4)]
    anns = [{"id": k + 1, "image_id": img, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": cr}
            for k, (img, c, b, cr) in enumerate(GT)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return str(path)


def batch(preds):
    """preds: {image_id: [(category_id, xyxy, score)]} -> (inputs, outputs) per the contract."""
    inputs, outputs = [], []
    for img, dets in preds.items():
        inputs.append({"image_id": img, "height": 100, "width": 100})
        boxes = torch.tensor([d[1] for d in dets], dtype=torch.float32).reshape(-1, 4)
        outputs.append({"instances": {"boxes": boxes, "scores": torch.tensor([d[2] for d in dets]),
                                      "pred_classes": torch.tensor([TO_CONTIG[d[0]] for d in dets],
                                                                   dtype=torch.int64)}})
    return inputs, outputs


def xyxy(b, dx=0.0):
    return [b[0] + dx, b[1], b[0] + b[2] + dx, b[1] + b[3]]


def perfect(dx=0.0):
    preds = {i: [] for i in (1, 2, 3, 4)}
    for img, c, b, crowd in GT:
        if not crowd:
            preds[img].append((c, xyxy(b, dx), 0.9))
    return preds


def run(gt_file, preds, out_dir=None, **kw):
    ev = COCOEvaluator(gt_file, output_dir=out_dir, **kw)
    ev.reset()
    ev.process(*batch(preds))
    return ev.evaluate()["bbox"]


def direct(gt_file, res_file, cat_ids=None):
    gt = COCO(gt_file)
    ev = COCOeval(gt, gt.loadRes(res_file), "bbox")
    if cat_ids is not None:
        ev.params.catIds = cat_ids
    ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


def test_matches_pycocotools(tmp_path):
    gt_file = write_gt(tmp_path / "gt.json")
    g = torch.Generator().manual_seed(0)
    preds = {}
    for img, c, b, crowd in GT:  # jittered true boxes, a wrong-class copy, a box on the crowd region
        jit = (torch.rand(4, generator=g) * 8 - 4).tolist()
        preds.setdefault(img, []).append((c, [v + j for v, j in zip(xyxy(b), jit)], float(torch.rand(1, generator=g))))
        preds[img].append((3 if c == 1 else 1, xyxy(b, 3), 0.3))
    preds[1].append((7, [0, 0, 30, 30], 0.8))  # bird: no ground truth anywhere -> only hurts nothing
    preds[3].append((1, [2, 2, 50, 50], 0.95))  # on the crowd box: ignored by COCOeval
    res = run(gt_file, preds, str(tmp_path))

    res_file = tmp_path / "inference" / "coco_instances_results.json"
    written = json.loads(res_file.read_text())
    assert {r["category_id"] for r in written} == {1, 3, 7}  # original ids, not contiguous
    r0 = next(r for r in written if r["image_id"] == 3 and r["score"] == pytest.approx(0.95))
    assert r0["bbox"] == pytest.approx([2, 2, 48, 48])  # xywh

    stats = direct(gt_file, str(res_file))
    for name, s in zip(COCO_METRICS, stats):
        assert same(res[name], s * 100 if s >= 0 else math.nan), name
    for cat in CATS:  # per-category AP = COCOeval restricted to that one category
        s = direct(gt_file, str(res_file), [cat["id"]])[0]
        assert same(res[f"AP-{cat['name']}"], s * 100 if s >= 0 else math.nan), cat
    assert math.isnan(res["AP-bird"])
    assert 0 < res["AP"] < 100


def test_perfect_predictions_and_crowd(tmp_path):
    gt_file = write_gt(tmp_path / "gt.json")
    preds = perfect()
    preds[3].append((1, [0, 0, 60, 60], 0.99))  # exactly the crowd box: neither TP nor FP
    res = run(gt_file, preds)
    for name in COCO_METRICS + ("AP-cat", "AP-dog"):
        assert res[name] == pytest.approx(100.0), name
    assert math.isnan(res["AP-bird"])


def test_shift_lowers_ap_monotonically(tmp_path):
    gt_file = write_gt(tmp_path / "gt.json")
    aps = [run(gt_file, perfect(dx))["AP"] for dx in (0, 1, 2, 4, 8, 16, 100)]
    assert aps[0] == pytest.approx(100.0)
    assert all(a > b for a, b in zip(aps, aps[1:-1])), aps
    assert aps[-1] == 0.0  # shifted off every box


def test_zero_detections_warns(tmp_path, caplog):
    gt_file = write_gt(tmp_path / "gt.json")
    with caplog.at_level(logging.WARNING):
        res = run(gt_file, {i: [] for i in (1, 2, 3, 4)})
    assert "no detections" in caplog.text
    for name in COCO_METRICS + ("AP-cat", "AP-dog"):
        assert res[name] == 0.0, name
    assert math.isnan(res["AP-bird"])


def test_unknown_image_ids_dropped_with_warning(tmp_path, caplog):
    gt_file = write_gt(tmp_path / "gt.json")
    base = run(gt_file, perfect(2))
    preds = perfect(2) | {999: [(1, [0, 0, 10, 10], 0.99)], 1234: [(3, [0, 0, 5, 5], 0.5)]}
    with caplog.at_level(logging.WARNING):
        res = run(gt_file, preds)
    assert "[999, 1234]" in caplog.text
    assert res == pytest.approx(base, nan_ok=True)


def test_image_processed_twice_counts_once(tmp_path, caplog):
    gt_file = write_gt(tmp_path / "gt.json")
    base = run(gt_file, perfect(2))
    ev = COCOEvaluator(gt_file)
    ev.process(*batch(perfect(2)))
    ev.process(*batch({1: perfect(2)[1]}))  # image 1 again: its detections would double as FPs
    with caplog.at_level(logging.WARNING):
        assert ev.evaluate()["bbox"] == pytest.approx(base, nan_ok=True)
    assert "more than once" in caplog.text


def test_only_processed_images_are_evaluated(tmp_path):
    gt_file = write_gt(tmp_path / "gt.json")
    res = run(gt_file, {1: perfect()[1]})  # images 2-4 not seen: their boxes are not misses
    assert res["AP"] == pytest.approx(100.0)


def test_dataset_dicts_ground_truth(tmp_path):
    """Dicts (contiguous ids, XYXY) give the same numbers as the json they came from."""
    gt_file = write_gt(tmp_path / "gt.json")
    dicts = [{"file_name": f"/x/{i}.jpg", "image_id": i, "height": 100, "width": 100,
              "annotations": [{"bbox": xyxy(b), "category_id": TO_CONTIG[c], "iscrowd": cr}
                              for img, c, b, cr in GT if img == i]} for i in (1, 2, 3, 4)]
    preds = perfect(3)
    preds[2].append((3, [0, 0, 40, 40], 0.95))
    from_json = run(gt_file, preds)
    from_dicts = run(dicts, preds, str(tmp_path / "out"), thing_classes=CLASSES)
    assert from_dicts == pytest.approx(from_json, nan_ok=True)
    assert (tmp_path / "out" / "inference" / "gt_coco_format.json").is_file()


def test_bad_inputs_have_clear_errors(tmp_path):
    gt_file = write_gt(tmp_path / "gt.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        COCOEvaluator(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match=r"category ids \[5\]"):
        COCOEvaluator(gt_file, CLASSES, {1: 0, 3: 1, 5: 2})
    ev = COCOEvaluator(gt_file)
    inputs, outputs = batch({1: [(1, [0, 0, 5, 5], 0.5)]})
    outputs[0]["instances"]["pred_classes"][0] = 3
    with pytest.raises(ValueError, match="predicted class 3"):
        ev.process(inputs, outputs)
    with pytest.raises(KeyError, match="no 'instances'"):
        ev.process(inputs, [{"boxes": None}])
