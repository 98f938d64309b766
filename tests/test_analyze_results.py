"""tools/analyze_results.py on a hand-made ground truth whose PR curves, error breakdown, confusion
matrix and worst images are worked out by hand below (pycocotools' 101-point interpolated precision)."""
import json
import os

import cv2
import numpy as np
import pytest

from engine_utils import run_tool
from resnet_det.evaluation.analysis import (FP_COLOR, MISS_COLOR, TP_COLOR, confusion_matrix, error_breakdown,
                                            image_errors, load_gt_and_results, pr_curves)

BOX = [10, 10, 40, 40]  # xywh
# Seven 100x100 images: cat GTs on 1-4, a dog on 5, a car on 6, nothing on 7. cat and dog share a supercategory.
GT = {"images": [{"id": i, "file_name": f"img{i}.png", "height": 100, "width": 100} for i in range(1, 8)],
      "categories": [{"id": 1, "name": "cat", "supercategory": "animal"},
                     {"id": 2, "name": "dog", "supercategory": "animal"},
                     {"id": 3, "name": "car", "supercategory": "vehicle"}],
      "annotations": [{"id": n, "image_id": img, "category_id": c, "bbox": BOX, "area": 1600, "iscrowd": 0}
                      for n, (img, c) in enumerate([(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 3)], 1)]}
# Every detection says "cat". Highest scores first: background (img7), on the car, on the dog, a poor
# localisation (IoU 0.3 on img3), IoU 0.6 (img2), IoU 1 (img1). The cat on img4 is never found.
RESULTS = [{"image_id": 7, "category_id": 1, "bbox": BOX, "score": 0.95},
           {"image_id": 6, "category_id": 1, "bbox": BOX, "score": 0.94},
           {"image_id": 5, "category_id": 1, "bbox": BOX, "score": 0.93},
           {"image_id": 3, "category_id": 1, "bbox": [10, 10, 40, 12], "score": 0.92},  # IoU 480/1600
           {"image_id": 2, "category_id": 1, "bbox": [10, 10, 40, 24], "score": 0.91},  # IoU 960/1600
           {"image_id": 1, "category_id": 1, "bbox": BOX, "score": 0.90}]


def _area(recall_reached, precision):
    """AP of a curve that holds `precision` up to `recall_reached` (pycocotools' 101 thresholds)."""
    return round(recall_reached * 100 + 1) / 101 * precision


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "res.json").write_text(json.dumps(RESULTS))
    for i in range(1, 8):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((100, 100, 3), 255, np.uint8))
    return tmp_path


def test_pr_curves_and_error_breakdown_by_hand(files):
    gt, dt, _ = load_gt_and_results(str(files / "gt.json"), str(files / "res.json"))
    pr = pr_curves(gt, dt)
    cat = pr["classes"].index("cat")
    r = pr["recall"]
    # IoU .5: TPs at ranks 5 and 6 -> precision 2/6 up to recall 2/4; IoU .75: 1/6 up to 1/4.
    np.testing.assert_allclose(pr["precision"][0.5][cat], np.where(r <= 0.5 + 1e-9, 1 / 3, 0))
    np.testing.assert_allclose(pr["precision"][0.75][cat], np.where(r <= 0.25 + 1e-9, 1 / 6, 0))
    np.testing.assert_allclose(pr["precision"][0.5][pr["classes"].index("dog")], 0)  # ground truth, no detections

    br = error_breakdown(gt, dt)
    expected = {  # type: AP of "cat"
        "C75": _area(0.25, 1 / 6),
        "C50": _area(0.50, 2 / 6),
        "Loc": _area(0.75, 3 / 6),   # IoU .1: the IoU-0.3 box also counts
        "Sim": _area(0.75, 3 / 5),   # the detection on the dog (same supercategory) ignored
        "Oth": _area(0.75, 3 / 4),   # ... and the one on the car
        "BG": _area(0.75, 1.0),      # no false positives left
        "FN": 1.0,
    }
    got = dict(zip(("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"), br["ap"][:, cat]))
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), (key, got)
    # dog and car: ground truth but no detections of theirs -> 0 up to BG, 1 for FN; overall = the mean
    np.testing.assert_allclose(br["ap"][:6, pr["classes"].index("car")], 0)
    np.testing.assert_allclose(br["overall_ap"], [v / 3 for v in list(expected.values())[:6]] + [1.0])


def test_confusion_matrix_and_worst_images_by_hand(files):
    gt, dt, _ = load_gt_and_results(str(files / "gt.json"), str(files / "res.json"))
    cm = confusion_matrix(gt, dt, iou=0.5, score_thresh=0.0)
    assert cm["classes"] == ["cat", "dog", "car", "background"]
    np.testing.assert_array_equal(cm["matrix"], [[2, 0, 0, 2],    # img1, img2 found; img3 (IoU .3), img4 missed
                                                 [1, 0, 0, 0],    # the dog called a cat
                                                 [1, 0, 0, 0],    # the car called a cat
                                                 [2, 0, 0, 0]])   # img7, and the IoU-.3 box
    high = confusion_matrix(gt, dt, iou=0.5, score_thresh=0.925)  # only the three top detections
    np.testing.assert_array_equal(high["matrix"], [[0, 0, 0, 4], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    loose = confusion_matrix(gt, dt, iou=0.25, score_thresh=0.0)  # the IoU-.3 box is a match now
    assert loose["matrix"][0].tolist() == [3, 0, 0, 1] and loose["matrix"][3].tolist() == [1, 0, 0, 0]

    errs = image_errors(gt, dt, iou=0.5, score_thresh=0.0)
    assert [e.image_id for e in errs] == [3, 5, 6, 4, 7, 1, 2]
    assert [(len(e.tp), len(e.fp), len(e.missed)) for e in errs] == [
        (0, 1, 1), (0, 1, 1), (0, 1, 1), (0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 0, 0)]


def test_tool_writes_pictures_tables_and_coloured_worst_images(files, capsys):
    out = files / "analysis"
    code, stdout, stderr = run_tool("analyze_results", ["--gt", str(files / "gt.json"), "--results", str(files / "res.json"),
                                  "--output", str(out), "--score-thresh", "0", "--num-worst", "3"], capsys)
    assert code == 0, stderr[-3000:]
    for name in ("pr_curves.png", "errors.png", "confusion.png", "worst.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and min(img.shape[:2]) > 200, name
    rows = (out / "confusion.csv").read_text().splitlines()
    assert rows[0] == "true \\ predicted,cat,dog,car,background" and rows[1] == "cat,2,0,0,2"
    table = (out / "errors.csv").read_text().splitlines()
    assert table[0] == "class,C75,C50,Loc,Sim,Oth,BG,FN"
    assert table[2].startswith("cat,")
    assert float(table[2].split(",")[4]) == pytest.approx(100 * _area(.75, .6), abs=1e-3)  # Sim
    assert "C75" in stdout and "background" in stdout
    worst = sorted(os.listdir(out / "worst"))
    assert worst == ["00_img3.png", "01_img5.png", "02_img6.png"]
    drawn = cv2.imread(str(out / "worst" / "00_img3.png"))  # a false positive and a miss on a white image
    colors = {tuple(c) for c in drawn.reshape(-1, 3).tolist()}
    assert tuple(FP_COLOR) in colors and tuple(MISS_COLOR) in colors and tuple(TP_COLOR) not in colors


@pytest.mark.parametrize("case", ["other_gt", "empty", "missing", "bad_category"])
def test_bad_inputs_exit_2(files, capsys, case):
    res = files / "bad.json"
    results, needles = {
        "other_gt": ([{**RESULTS[0], "image_id": 999}], ["999", "another ground truth"]),
        "empty": ([], ["no detections"]),
        "missing": (None, ["bad.json", "does not exist"]),
        "bad_category": ([{**RESULTS[0], "category_id": 42}], ["[42]", "another ground truth"]),
    }[case]
    if results is not None:
        res.write_text(json.dumps(results))
    code, _, stderr = run_tool("analyze_results", ["--gt", str(files / "gt.json"), "--results", str(res), "--output", str(files / "o")],
                            capsys)
    assert code == 2 and "Traceback" not in stderr
    message = stderr[stderr.rindex("error: "):].strip()
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
