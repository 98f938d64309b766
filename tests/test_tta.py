"""Test-time augmentation (TEST.AUG.*, modeling/detector/tta.py) for the C4 and FPN detectors."""
import numpy as np
import pytest
import torch

from resnet_det.config import get_cfg
from resnet_det.config.validate import validate_cfg
from resnet_det.modeling.detector import DetectorWithTTA, build_model
from resnet_det.modeling.detector.tta import flip_boxes, merge_detections
from resnet_det.utils.errors import ConfigError

TINY = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.RPN.POST_NMS_TOPK_TEST", "16", "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "MODEL.BACKBONE.FREEZE_AT", "0"]


def _cfg(arch, *opts):
    cfg = get_cfg()
    if arch == "FPN":
        cfg.merge_from_file("configs/Base-RCNN-FPN.yaml")
        cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"])
    else:
        cfg.merge_from_file("configs/Base-RCNN-C4.yaml")
    cfg.merge_from_list(TINY + list(map(str, opts)))
    return cfg


@pytest.fixture(scope="module", params=["C4", "FPN"])
def detector(request):
    torch.manual_seed(0)
    cfg = _cfg(request.param)
    model = build_model(cfg).eval()
    with torch.no_grad():  # a random detector scores near-uniformly; spread the class scores out
        model.roi_heads.box_predictor.cls_score.weight.mul_(20)
    return cfg, model


def _image(seed=0, hw=(60, 84)):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, *hw), generator=g, dtype=torch.uint8)
    img[:, 15:40, 20:50] = 230  # something box-like to find
    return img


def _run(model, img):
    with torch.no_grad():
        return model([{"image": img, "height": img.shape[1], "width": img.shape[2]}])[0]["instances"]


def _min_dist(a, b):
    """Distance from each box of `a` to the nearest of `b` (exact: cdist's matmul path is off by ~0.03 px)."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values


def _sorted(inst):
    order = torch.argsort(inst["scores"], descending=True, stable=True)
    return {k: v[order] for k, v in inst.items()}


def test_one_size_without_flip_is_the_plain_model(detector):
    cfg, model = detector
    cfg = cfg.clone()
    cfg.merge_from_list(["TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.MAX_SIZE", "128", "TEST.AUG.FLIP", "False"])
    img = _image()
    plain, tta = _run(model, img), _run(DetectorWithTTA(cfg, model).eval(), img)
    assert len(plain["boxes"]) > 3
    # per-class NMS of already per-class-NMS'd boxes keeps them all: the same detections
    for k in ("boxes", "scores", "pred_classes"):
        torch.testing.assert_close(_sorted(tta)[k], _sorted(plain)[k])


def test_sizes_are_used_and_every_box_comes_from_one_of_them(detector):
    cfg, model = detector
    cfg = cfg.clone()
    cfg.merge_from_list(["TEST.AUG.MIN_SIZES", "(48, 96)", "TEST.AUG.MAX_SIZE", "200", "TEST.AUG.FLIP", "False"])
    img = _image(1)
    tta = _run(DetectorWithTTA(cfg, model).eval(), img)
    singles = []
    for size in (48, 96):
        cfg1 = cfg.clone()
        cfg1.merge_from_list(["TEST.AUG.MIN_SIZES", f"({size},)"])
        singles.append(_run(DetectorWithTTA(cfg1, model).eval(), img))
    assert not torch.equal(singles[0]["scores"], singles[1]["scores"])
    union = torch.cat([s["boxes"] for s in singles])
    assert (_min_dist(tta["boxes"], union) < 1e-4).all()
    from_each = [(_min_dist(tta["boxes"], s["boxes"]) < 1e-4).any() for s in singles]
    assert all(from_each)  # both sizes contribute to the merged result
    assert len(tta["boxes"]) <= cfg.MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE


def test_flip_equivariance(detector):
    """The augmentation set {image, mirror} is closed under mirroring, so TTA(mirror(I)) = mirror(TTA(I))."""
    cfg, model = detector
    cfg = cfg.clone()
    cfg.merge_from_list(["TEST.AUG.MIN_SIZES", "(64,)", "TEST.AUG.MAX_SIZE", "128", "TEST.AUG.FLIP", "True"])
    tta = DetectorWithTTA(cfg, model).eval()
    img = _image(2)
    a, b = _sorted(_run(tta, img)), _sorted(_run(tta, img.flip(-1)))
    assert len(a["boxes"]) > 3
    torch.testing.assert_close(b["scores"], a["scores"])
    torch.testing.assert_close(b["pred_classes"], a["pred_classes"])
    torch.testing.assert_close(flip_boxes(b["boxes"], img.shape[-1]), a["boxes"], atol=1e-3, rtol=0)
    # (A left-right symmetric image need not give a symmetric set: a box and its mirror tie in score, and
    # NMS keeps whichever comes first where they overlap.)


def test_merge_detections_by_hand():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60], [51, 50, 61, 60.]])
    scores = torch.tensor([0.6, 0.9, 0.8, 0.3, 0.2])
    classes = torch.tensor([0, 0, 1, 0, 0])
    out = merge_detections(boxes, scores, classes, nms_thresh=0.5, max_dets=10)
    # class 0: 0.9 suppresses its 0.6 neighbour (IoU 0.82), 0.3 suppresses 0.2; class 1's box survives
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8, 0.3])
    assert out["pred_classes"].tolist() == [0, 1, 0]
    assert merge_detections(boxes, scores, classes, 0.5, max_dets=2)["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert flip_boxes(torch.tensor([[10., 5, 30, 25]]), 100).tolist() == [[70, 5, 90, 25]]


def test_config_validation_and_predictor_uses_tta(tmp_path):
    cfg = _cfg("FPN", "TEST.AUG.MIN_SIZES", "(64, 600)", "TEST.AUG.MAX_SIZE", "500")
    with pytest.raises(ConfigError, match="TEST.AUG.MAX_SIZE"):
        validate_cfg(cfg)
    cfg = _cfg("FPN", "TEST.AUG.MIN_SIZES", "(0,)")
    with pytest.raises(ConfigError, match="TEST.AUG.MIN_SIZES"):
        validate_cfg(cfg)
    from resnet_det.engine import DefaultPredictor

    cfg = _cfg("FPN", "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(48, 64)", "TEST.AUG.MAX_SIZE", "128")
    predictor = DefaultPredictor(cfg)
    assert isinstance(predictor.model, DetectorWithTTA)
    out = predictor(np.zeros((60, 80, 3), np.uint8))["instances"]
    assert set(out) == {"boxes", "scores", "pred_classes"}


def test_eval_only_evaluates_through_the_wrapper(tmp_path):
    """tools/train_net.py --eval-only (engine/run.py) hands Trainer.test the TTA-wrapped model."""
    from types import SimpleNamespace

    from resnet_det.engine.run import run_detection
    from resnet_det.engine.trainer import Trainer

    seen = []

    class Spy(Trainer):
        @classmethod
        def test(cls, cfg, model):
            seen.append(model)
            return {}

    for enabled in (True, False):
        cfg = _cfg("FPN", "TEST.AUG.ENABLED", str(enabled), "TEST.AUG.MIN_SIZES", "(48, 64)",
                   "TEST.AUG.MAX_SIZE", "128", "OUTPUT_DIR", str(tmp_path))
        weights = tmp_path / "w.pth"
        torch.save(build_model(cfg).state_dict(), weights)
        cfg.merge_from_list(["MODEL.WEIGHTS", str(weights)])
        run_detection(cfg, SimpleNamespace(eval_only=True, resume=False), Spy)
    assert isinstance(seen[0], DetectorWithTTA) and seen[0].min_sizes == (48, 64) and seen[0].flip
    assert not isinstance(seen[1], DetectorWithTTA)
