"""tools/browse_dataset.py and data/health.py: every planted annotation problem is listed with its image id
and file (from the raw json, which the loader would repair or refuse), the tool never crashes on bad data,
and the drawings / summary / stats files are written, before and after the augmentations."""
import json
import os
import sys

import cv2
import numpy as np
import pytest

from resnet_det.data import DatasetCatalog, register_coco_instances
from resnet_det.data.catalog import unregister
from resnet_det.data.health import (DUPLICATE_IMAGE, EMPTY, LOADER, MALFORMED, MISSING_FILE, OUTSIDE,
                                    UNKNOWN_CATEGORY, check_dataset_dicts, dataset_health)

from engine_utils import DEMO_CONFIG, REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import browse_dataset  # noqa: E402


def _write_set(root, anns, images=None, categories=None):
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    for i in (1, 2, 3):
        img = np.full((60, 80, 3), 40, np.uint8)
        cv2.rectangle(img, (10, 10), (29, 29), (0, 200, 0), -1)
        cv2.imwrite(os.path.join(root, "img", f"im{i}.png"), img)
    images = images or [{"id": i, "file_name": f"im{i}.png", "width": 80, "height": 60} for i in (1, 2, 3)]
    data = {"images": images, "annotations": anns,
            "categories": categories or [{"id": 1, "name": "box"}, {"id": 7, "name": "disc"}]}
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


GOOD = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [5, 5, 30, 10], "iscrowd": 0}]
# (annotation or image change, problem kind, image id it must name)
PLANTED = [
    ({"id": 10, "image_id": 2, "category_id": 1, "bbox": [70, 50, 30, 20]}, OUTSIDE, 2),
    ({"id": 11, "image_id": 3, "category_id": 1, "bbox": [200, 5, 10, 10]}, OUTSIDE, 3),
    ({"id": 12, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]}, EMPTY, 1),
    ({"id": 13, "image_id": 3, "category_id": 7, "bbox": [5, 5, 10, -4]}, EMPTY, 3),
    ({"id": 14, "image_id": 2, "category_id": 99, "bbox": [1, 1, 5, 5]}, UNKNOWN_CATEGORY, 2),
    ({"id": 15, "image_id": 1, "category_id": 1, "bbox": [1, 2, "x", 5]}, MALFORMED, 1),
    ({"id": 16, "image_id": 42, "category_id": 1, "bbox": [1, 2, 3, 5]}, MALFORMED, 42),
]


def _planted_set(root):
    images = [{"id": i, "file_name": f"im{i}.png", "width": 80, "height": 60} for i in (1, 2, 3)]
    images += [{"id": 2, "file_name": "other.png", "width": 80, "height": 60},   # duplicate id
               {"id": 4, "file_name": "gone.png", "width": 80, "height": 60}]    # missing file
    return _write_set(root, GOOD + [a for a, _, _ in PLANTED], images=images)


@pytest.fixture
def planted(tmp_path):
    json_file = _planted_set(str(tmp_path))
    register_coco_instances("tb_planted", {}, json_file, str(tmp_path / "img"))
    yield json_file
    unregister("tb_planted")


def test_health_lists_every_planted_problem_with_image_and_file(planted):
    report = dataset_health("tb_planted")
    found = {(p.kind, p.image_id) for p in report.problems}
    for _ann, kind, iid in PLANTED:
        assert (kind, iid) in found, (kind, iid, report.text())
    assert (DUPLICATE_IMAGE, 2) in found and (MISSING_FILE, 4) in found
    # The registered loader refuses this json (at its first error): that is listed too, not raised.
    assert any(p.kind == LOADER and planted in p.detail for p in report.problems)
    text = report.text()
    for p in report.problems:
        assert p.line() in text
    assert "im2.png" in next(p.line() for p in report.problems if p.kind == UNKNOWN_CATEGORY)
    assert "gone.png" in next(p.line() for p in report.problems if p.kind == MISSING_FILE)
    assert "other.png" in next(p.line() for p in report.problems if p.kind == DUPLICATE_IMAGE)
    # Counts: the good boxes and the usable planted ones (outside-but-non-empty, unknown category).
    assert report.num_images == 4 and report.boxes_per_class["box"] == 3 and report.boxes_per_class["disc"] == 1
    assert report.boxes_per_class["unknown id 99"] == 1


def test_raw_json_is_read_not_the_repaired_dicts(tmp_path):
    """The loader clips a box past the edge and drops an empty one; the report still shows both."""
    json_file = _write_set(str(tmp_path), GOOD + [a for a, k, _ in PLANTED if k in (OUTSIDE, EMPTY)])
    register_coco_instances("tb_repaired", {}, json_file, str(tmp_path / "img"))
    try:
        assert len(DatasetCatalog.get("tb_repaired")) == 3  # the loader accepts (and repairs) it
        kinds = [p.kind for p in dataset_health("tb_repaired").problems]
        assert kinds.count(OUTSIDE) == 2 and kinds.count(EMPTY) == 2 and LOADER not in kinds
    finally:
        unregister("tb_repaired")


def test_dataset_dicts_are_checked_when_there_is_no_json(tmp_path):
    f = str(tmp_path / "a.png")
    cv2.imwrite(f, np.zeros((10, 10, 3), np.uint8))
    dicts = [{"file_name": f, "image_id": 1, "height": 10, "width": 10,
              "annotations": [{"bbox": [0, 0, 12, 5], "category_id": 0}, {"bbox": [3, 3, 3, 8], "category_id": 5},
                              {"bbox": [1, 1, 2], "category_id": 0}]},
             {"file_name": f + ".gone", "image_id": 1, "height": 10, "width": 10, "annotations": []}]
    report = check_dataset_dicts(dicts, ["a", "b"], "mine")
    assert sorted(p.kind for p in report.problems) == sorted(
        [OUTSIDE, UNKNOWN_CATEGORY, EMPTY, MALFORMED, DUPLICATE_IMAGE, MISSING_FILE])


def test_tool_never_crashes_on_bad_data(planted, tmp_path, capsys):
    out = str(tmp_path / "browse")
    res = browse_dataset.main(["--config-file", DEMO_CONFIG, "--dataset", "tb_planted", "--output", out])
    printed = capsys.readouterr().out
    assert "unknown category id: 1" in printed and "missing image file: 1" in printed
    assert res["written"] == [] and res["skipped"]  # the loader refuses the set: nothing drawn, said why
    assert os.path.getsize(os.path.join(out, "stats.png")) > 0
    assert "gone.png" in open(os.path.join(out, "report.txt")).read()


def test_tool_draws_before_and_after_augmentation(tmp_path):
    json_file = _write_set(str(tmp_path), GOOD)
    register_coco_instances("tb_good", {}, json_file, str(tmp_path / "img"))
    try:
        out = str(tmp_path / "browse")
        res = browse_dataset.main(["--config-file", DEMO_CONFIG, "--dataset", "tb_good", "--augment", "--num", "2",
                                   "--output", out, "INPUT.AUGMENTATIONS", "('RandomCrop', 'RandomFlip')",
                                   "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "(40, 50)"])
        assert len(res["written"]) == 2 and res["report"].problems == []
        panel = cv2.imread(res["written"][0])
        # original (80 px) | 4 px gap | augmented (a 50 px wide crop), under a title strip
        assert panel.shape[1] == 80 + 4 + 50
        summary = cv2.imread(res["summary"])
        assert summary is not None and summary.shape[0] > 256
        # The ground-truth box (class colour) is drawn on the original: its outline at x = 10.
        assert (panel[-60:, 10] != panel[-60:, 5]).any()
    finally:
        unregister("tb_good")


def test_unknown_dataset_is_one_paragraph(tmp_path):
    with pytest.raises(SystemExit) as e:
        from resnet_det.engine.defaults import exit_on_user_error

        exit_on_user_error(browse_dataset.main, ["--config-file", DEMO_CONFIG, "--dataset", "no_such_set",
                                                 "--output", str(tmp_path)])
    assert e.value.code == 2
