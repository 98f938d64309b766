"""TEST.COCO_EVAL_IMPL: faster-coco-eval gives pycocotools' numbers (all 12 stats within 1e-4, the same
per-class AP table) on a COCO-like synthetic pair and on the demo (shapes) set; "auto" picks it when
installed and the choice is logged; asking for it without the package is a one-paragraph ConfigError."""
import contextlib
import io
import json
import logging
import math
import os
import sys

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_det.config import get_cfg
from resnet_det.config.validate import validate_cfg
from resnet_det.data.demo import generate_shapes_dataset
from resnet_det.evaluation import COCOEvaluator, coco_evaluation
from resnet_det.evaluation.coco_evaluation import resolve_coco_eval_impl, run_coco_eval
from resnet_det.utils.errors import ConfigError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from bench_coco_eval import synthetic_coco_pair  # noqa: E402

try:
    import faster_coco_eval  # noqa: F401
    HAVE_FAST = True
except ImportError:
    HAVE_FAST = False
needs_fast = pytest.mark.skipif(not HAVE_FAST, reason="faster-coco-eval is not installed "
                                "(pip install -e .[fast-eval]; the dev extras include it)")


def _coco(dataset: dict) -> COCO:
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _official(gt: COCO, results, img_ids=None) -> np.ndarray:
    """pycocotools' COCOeval run directly (the oracle)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return np.asarray(ev.stats), ev.eval["precision"]


@needs_fast
def test_fast_matches_pycocotools_on_coco_like_pair():
    gt_dict, results = synthetic_coco_pair(images=150, dets_per_image=60, categories=20, seed=1)
    gt = _coco(gt_dict)
    img_ids = sorted(gt.getImgIds())[:120]  # a subset, as when only processed images are evaluated
    want, want_precision = _official(gt, results, img_ids)
    assert 0.05 < want[0] < 0.95 and (want >= 0).all()  # a pair with informative, non-degenerate stats
    for impl in ("pycocotools", "faster_coco_eval"):
        ev, summary = run_coco_eval(gt, results, img_ids, impl=impl)
        assert ev.stats.shape == (12,)
        np.testing.assert_allclose(ev.stats, want, atol=1e-4, rtol=0, err_msg=impl)
        np.testing.assert_allclose(ev.eval["precision"], want_precision, atol=1e-4, rtol=0, err_msg=impl)
        assert "Average Precision" in summary
    assert "score" in results[0] and "area" not in results[0]  # the records were not modified


def _shapes_detections(gt: COCO, seed=0) -> list[dict]:
    """Detections a half-trained detector might give: jittered ground truth, some misses, wrong classes
    and background boxes."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(gt.getCatIds())
    out = []
    for ann in gt.dataset["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        j = rng.normal(0, 0.1, 4)
        c = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
        out.append({"image_id": ann["image_id"], "category_id": c, "score": float(rng.random()),
                    "bbox": [x + j[0] * w, y + j[1] * h, w * np.exp(j[2]), h * np.exp(j[3])]})
    for img in gt.dataset["images"]:
        for _ in range(3):
            out.append({"image_id": img["id"], "category_id": int(rng.choice(cat_ids)), "score": float(rng.random() / 2),
                        "bbox": [float(v) for v in rng.uniform(0, 60, 4)]})
    return out


def _evaluate(gt_file, gt, results, impl):
    ev = COCOEvaluator(gt_file, impl=impl)
    ev.reset()
    to_contig = {c: i for i, c in enumerate(sorted(gt.getCatIds()))}
    for img_id in sorted(gt.getImgIds()):
        mine = [r for r in results if r["image_id"] == img_id]
        boxes = torch.tensor([[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]
                              for r in mine], dtype=torch.float64).reshape(-1, 4)
        ev.process([{"image_id": img_id}], [{"instances": {
            "boxes": boxes, "scores": torch.tensor([r["score"] for r in mine], dtype=torch.float64),
            "pred_classes": torch.tensor([to_contig[r["category_id"]] for r in mine], dtype=torch.int64)}}])
    return ev.evaluate()["bbox"]


@needs_fast
def test_fast_matches_pycocotools_on_demo_set(tmp_path, caplog):
    root = generate_shapes_dataset(str(tmp_path / "shapes"), num_train=1, num_val=40, seed=5)
    gt_file = os.path.join(root, "annotations", "instances_val.json")
    gt = _coco(json.load(open(gt_file)))
    results = _shapes_detections(gt)
    want, _ = _official(gt, results)
    with caplog.at_level(logging.INFO, logger="resnet_det.evaluation.coco_evaluation"):
        slow = _evaluate(gt_file, gt, results, "pycocotools")
        fast = _evaluate(gt_file, gt, results, "auto")
    assert "COCOeval from faster_coco_eval (TEST.COCO_EVAL_IMPL=auto)" in caplog.text
    assert slow.keys() == fast.keys() and any(k.startswith("AP-") for k in fast)
    for k in slow:  # the six headline metrics and the per-class table
        assert (math.isnan(slow[k]) and math.isnan(fast[k])) or abs(slow[k] - fast[k]) < 1e-2, k  # percent
    for impl in ("pycocotools", "faster_coco_eval"):
        np.testing.assert_allclose(run_coco_eval(gt, results, impl=impl)[0].stats, want, atol=1e-4, rtol=0)
    assert slow["AP"] == pytest.approx(want[0] * 100, abs=1e-6) and 10 < slow["AP"] < 90


@needs_fast
def test_no_detections_agree():
    gt_dict, _ = synthetic_coco_pair(images=10, dets_per_image=5, categories=5, seed=2)
    gt = _coco(gt_dict)
    slow, fast = (run_coco_eval(gt, [], impl=i)[0].stats for i in ("pycocotools", "faster_coco_eval"))
    np.testing.assert_allclose(fast, slow, atol=1e-4)


def test_auto_choice_and_missing_package(monkeypatch):
    assert resolve_coco_eval_impl("pycocotools") == "pycocotools"
    assert resolve_coco_eval_impl("auto") == ("faster_coco_eval" if HAVE_FAST else "pycocotools")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    assert resolve_coco_eval_impl("auto") == "pycocotools"
    with pytest.raises(ConfigError, match=r"pip install faster-coco-eval .*TEST.COCO_EVAL_IMPL auto"):
        resolve_coco_eval_impl("faster_coco_eval")
    with pytest.raises(ConfigError, match="TEST.COCO_EVAL_IMPL='fast'"):
        resolve_coco_eval_impl("fast")
    cfg = get_cfg()
    assert cfg.TEST.COCO_EVAL_IMPL == "auto"
    cfg.TEST.COCO_EVAL_IMPL = "fast"
    with pytest.raises(ConfigError, match="TEST.COCO_EVAL_IMPL='fast'"):
        validate_cfg(cfg)
    assert coco_evaluation.COCO_EVAL_IMPLS == ("auto", "pycocotools", "faster_coco_eval")
