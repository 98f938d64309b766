"""Export round trips: TorchScript and ONNX outputs equal eager PyTorch (detectors C4/FPN, classifier).

Oracles: the project's eager predictor (`ModelPredictor`, what DefaultPredictor runs) for the
detectors, torchvision's own resnet18 with the same weights for the classifier, and hand-made
cases for the detection matcher. Tiny models (depth 18, <= 128 px, 20 proposals) keep it fast.
"""
import json
import os

import numpy as np
import pytest
import torch
import torchvision

from resnet_det.config import get_cfg
from resnet_det.engine.predictor import ModelPredictor
from resnet_det.export import (ExportedModel, ExportMismatchError, Tolerance, build_eager_model,
                               compare_detections, export_model, generated_image, make_export_module,
                               metadata_path, preprocess, verify_exported)

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
FORMATS = ["torchscript", "onnx"]


def detector_cfg(kind: str):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, f"Base-RCNN-{kind}.yaml"))
    cfg.merge_from_list([
        "MODEL.RESNETS.DEPTH", 18, "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.FPN.OUT_CHANNELS", 32,
        "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
        "MODEL.ROI_HEADS.NUM_CLASSES", 3, "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128,
        "MODEL.DEVICE", "cpu"])
    if kind == "C4":  # BGR input (ImageNet mean/std in BGR order), so both channel orders reach the metadata
        cfg.merge_from_list(["INPUT.FORMAT", "BGR", "MODEL.PIXEL_MEAN", [103.53, 116.28, 123.675],
                             "MODEL.PIXEL_STD", [57.375, 57.12, 58.395]])
    return cfg


def detector(cfg, seed: int = 0):
    """A random detector that emits boxes: class 0 gets a large logit bias, so most proposals
    score ~0.9 for it (above SCORE_THRESH_TEST 0.05) and the rest fall below the threshold."""
    torch.manual_seed(seed)
    model = build_eager_model(cfg)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
    return model


def assert_same_detections(eager: dict, exported: dict, box_atol: float, score_atol: float):
    """Same count and classes; every eager box has an exported box of its class within box_atol
    and score_atol (order may differ between equal scores)."""
    rb, rs, rc = (eager["instances"][k].numpy() for k in ("boxes", "scores", "pred_classes"))
    ob, os_, oc = exported["boxes"], exported["scores"], exported["classes"]
    assert len(rb) == len(ob) > 0
    assert sorted(rc.tolist()) == sorted(oc.tolist())
    for b, s, c in zip(rb, rs, rc):
        same = np.flatnonzero(oc == c)
        d = np.abs(ob[same] - b).max(1)
        j = same[np.argmin(d)]
        assert d.min() <= box_atol and abs(os_[j] - s) <= score_atol


@pytest.mark.parametrize("kind", ["C4", "FPN"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_detector_round_trip(tmp_path, kind, fmt):
    cfg = detector_cfg(kind)
    model = detector(cfg)
    path, meta = export_model(cfg, fmt, str(tmp_path), sample=generated_image(96, 128, seed=1), model=model)
    assert os.path.basename(path) == ("model.ts" if fmt == "torchscript" else "model.onnx")
    on_disk = json.load(open(metadata_path(path)))
    assert on_disk["verification"]["passed"] is True and on_disk["variant"] == kind
    assert on_disk["input"]["channel_order"] == {"C4": "BGR", "FPN": "RGB"}[kind]
    assert on_disk["size_rules"]["min_size"] == 96 and on_disk["class_names"] == ["class0", "class1", "class2"]
    assert on_disk["opset"] == (17 if fmt == "onnx" else None)

    # An image size never seen at export, through the project's eager predictor (which flips BGR
    # to RGB itself for FPN): the metadata's convention must lead to the same boxes.
    image = generated_image(150, 70, seed=2)
    eager = ModelPredictor(model, cfg.INPUT.FORMAT, ["a", "b", "c"])(image)
    exported = ExportedModel(path).predict(image)
    # TorchScript runs the same kernels except RoIAlign: eager pools with the gather RoIAlign
    # (MODEL.ROI_BOX_HEAD.POOLER_IMPL "gather"), the trace records torchvision's op; they agree to float rounding.
    tight = fmt == "torchscript"
    assert_same_detections(eager, exported, 1e-3 if tight else 1e-2, 1e-6 if tight else 1e-4)
    assert exported["boxes"].dtype == np.float32 and exported["classes"].dtype == np.int64


@pytest.mark.parametrize("fmt", FORMATS)
def test_detector_without_detections(tmp_path, fmt):
    """Background wins everywhere: the exported model returns empty (0, 4) / (0,) arrays."""
    cfg = detector_cfg("C4")
    model = detector(cfg)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] = 30.0
    path, meta = export_model(cfg, fmt, str(tmp_path), sample=generated_image(96, 128), model=model)
    assert [r["num_exported"] for r in meta["verification"]["images"]] == [0, 0]
    out = ExportedModel(path).predict(generated_image(80, 100, seed=5))
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["classes"].shape == (0,)


@pytest.mark.parametrize("fmt", FORMATS)
def test_classifier_round_trip_against_torchvision(tmp_path, fmt):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "Classifier", "MODEL.RESNETS.DEPTH", 18,
                         "MODEL.RESNETS.NORM", "BN", "MODEL.CLASSIFIER.NUM_CLASSES", 7,
                         "INPUT.CROP_SIZE", 64, "INPUT.TEST_RESIZE", 72, "INPUT.FORMAT", "RGB"])
    torch.manual_seed(0)
    model = build_eager_model(cfg)
    with torch.no_grad():  # non-trivial BN statistics, so normalisation errors would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    path, meta = export_model(cfg, fmt, str(tmp_path), model=model)
    assert meta["verification"]["passed"] and meta["size_rules"]["crop_size"] == 64
    assert (meta["depth"], meta["variant"], meta["num_classes"], meta["mean_mode"]) == (18, "imagenet", 7,
                                                                                        "per_channel")

    tv = torchvision.models.resnet18(num_classes=7).eval()
    tv.load_state_dict(model.net.state_dict())  # same names as torchvision (DESIGN.md)
    image = generated_image(90, 120, seed=3)
    batch = preprocess(image, meta)  # RGB 1x3x64x64 uint8
    assert batch.shape == (1, 3, 64, 64) and batch.dtype == np.uint8
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    for arr in (batch, np.concatenate([batch, batch[:, :, ::-1]]).copy()):
        with torch.no_grad():
            want = tv((torch.from_numpy(arr).float() - mean) / std).numpy()
        got = ExportedModel(path)(arr)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_wrong_convention_in_metadata_is_reported(tmp_path):
    """Metadata that says BGR for an RGB model is a mismatch of its own, before any numbers."""
    cfg = detector_cfg("FPN")
    model = detector(cfg)
    path, _ = export_model(cfg, "torchscript", str(tmp_path), sample=generated_image(96, 128), model=model)
    meta = json.load(open(metadata_path(path)))
    meta["input"]["channel_order"] = "BGR"
    json.dump(meta, open(metadata_path(path), "w"))
    report = verify_exported(cfg, make_export_module(cfg, model), ExportedModel(path), [generated_image()])
    assert not report["passed"] and "RGB" in report["convention_mismatch"][0]


def test_mismatch_raises_and_is_recorded(tmp_path, monkeypatch):
    """Exported outputs nudged by 0.5 px: export_model raises and the metadata says passed=false."""
    cfg = detector_cfg("C4")
    real_call = ExportedModel.__call__

    def nudged(self, array):
        boxes, scores, classes = real_call(self, array)
        return boxes + 0.5, scores, classes

    monkeypatch.setattr(ExportedModel, "__call__", nudged)
    with pytest.raises(ExportMismatchError, match="max box diff 0.5"):
        export_model(cfg, "torchscript", str(tmp_path), sample=generated_image(96, 128), model=detector(cfg))
    meta = json.load(open(metadata_path(str(tmp_path / "model.ts"))))
    assert meta["verification"]["passed"] is False
    assert meta["verification"]["max_box_diff"] == pytest.approx(0.5, abs=1e-4)


def test_bad_format_and_opset(tmp_path):
    cfg = detector_cfg("C4")
    with pytest.raises(ValueError, match="--format 'tflite'"):
        export_model(cfg, "tflite", str(tmp_path), sample=generated_image(96, 128), model=detector(cfg))
    with pytest.raises(ValueError, match="opset >= 11"):
        export_model(cfg, "onnx", str(tmp_path), sample=generated_image(96, 128), model=detector(cfg), opset=9)
    bad = get_cfg()
    bad.MODEL.META_ARCHITECTURE = "Localizer"
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE='Localizer'"):
        export_model(bad, "onnx", str(tmp_path))


# ---- the matcher, on hand-made detections --------------------------------------------------
BOXES = np.array([[0, 0, 10, 10], [20, 20, 40, 50], [5, 5, 30, 30]], np.float32)
SCORES = np.array([0.9, 0.8, 0.3], np.float32)
CLASSES = np.array([0, 1, 0])
TOL = Tolerance(box_atol=0.05, score_atol=1e-3)


def test_matcher_accepts_reordering_and_small_noise():
    perm = [2, 0, 1]
    out = (BOXES[perm] + 0.01, SCORES[perm] - 1e-4, CLASSES[perm])
    r = compare_detections((BOXES, SCORES, CLASSES), out, TOL, score_thresh=0.05)
    assert r["passed"] and r["matched"] == 3
    assert r["max_box_diff"] == pytest.approx(0.01, abs=1e-6)
    assert r["max_score_diff"] == pytest.approx(1e-4, abs=1e-6)


@pytest.mark.parametrize("change, passed", [
    ("shift_box", False),          # 0.1 px > 0.05 px
    ("relabel", False),            # same box, another class
    ("drop_confident", False),     # a 0.9 detection missing
    ("drop_at_threshold", True),   # a detection at the threshold may fall either side of it
    ("extra_confident", False),
])
def test_matcher_rejects_real_differences(change, passed):
    ref = (BOXES, SCORES, CLASSES)
    b, s, c = BOXES.copy(), SCORES.copy(), CLASSES.copy()
    thresh = 0.05
    if change == "shift_box":
        b[1, 2] += 0.1
    elif change == "relabel":
        c[1] = 2
    elif change == "drop_confident":
        b, s, c = b[1:], s[1:], c[1:]
    elif change == "drop_at_threshold":
        thresh = 0.3 - 5e-4
        b, s, c = b[:2], s[:2], c[:2]
    elif change == "extra_confident":
        b, s, c = np.vstack([b, [[50, 50, 60, 60]]]), np.append(s, 0.7), np.append(c, 1)
    assert compare_detections(ref, (b, s, c), TOL, score_thresh=thresh)["passed"] is passed
