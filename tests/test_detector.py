"""Faster R-CNN on ResNet: torchvision oracle, C4 training mechanics, weights into the res5 head."""
import logging
import os

import numpy as np
import pytest
import torch
import torchvision

from resnet_det.checkpoint import adopt_weight_conventions, load_model_weights
from resnet_det.config import get_cfg
from resnet_det.engine import DefaultPredictor
from resnet_det.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from resnet_det.modeling.detector import build_model
from resnet_det.utils.benchmark import pretrained_like_norms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_cfg(base: str, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", base))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def tiny_c4(depth=101, *opts):
    return make_cfg("Base-RCNN-C4.yaml", "MODEL.RESNETS.DEPTH", depth, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
                    "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 160, "INPUT.MIN_SIZE_TEST", 96,
                    "INPUT.MAX_SIZE_TEST", 160, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
                    "MODEL.RPN.POST_NMS_TOPK_TEST", 32, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, *opts)


def batch():
    g = torch.Generator().manual_seed(1)
    return [
        {"image": torch.randint(0, 255, (3, 117, 93), dtype=torch.uint8, generator=g), "image_id": 1,
         "boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [5.0, 5.0, 40.0, 30.0]]),
         "classes": torch.tensor([2, 0])},
        # An image with no ground truth trains too (all proposals are background).
        {"image": torch.randint(0, 255, (3, 88, 131), dtype=torch.uint8, generator=g), "image_id": 2,
         "boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.long)},
    ]


def test_reproduces_torchvision_fasterrcnn_resnet50_fpn():
    """Same weights -> same boxes, scores and labels as torchvision's own model."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=160, max_size=256).eval()
    # ImageNet-like FrozenBN statistics: at torchvision's identity init, random-weight RPN scores are
    # near-ties whose order float rounding (the NHWC fast path of the shipped config) can flip.
    pretrained_like_norms(tv)
    with torch.no_grad():  # a random head predicts background only; shift the class bias so boxes appear
        tv.roi_heads.box_predictor.cls_score.bias[1:] += 3.0
    cfg = make_cfg("Base-RCNN-FPN.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 90, "INPUT.MIN_SIZE_TEST", 160,
                   "INPUT.MAX_SIZE_TEST", 256)
    ours = build_model(cfg).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    img = torch.rand(3, 150, 200)
    with torch.no_grad():
        ref = tv([img])[0]
        out = ours([{"image": img * 255}])[0]["instances"]
    assert len(ref["boxes"]) > 10
    assert out["boxes"].shape == ref["boxes"].shape
    # Our input is 0-255 with mean/std in that range: equal up to float rounding.
    torch.testing.assert_close(out["boxes"], ref["boxes"], atol=2e-2, rtol=0)
    torch.testing.assert_close(out["scores"], ref["scores"], atol=1e-4, rtol=0)
    assert torch.equal(out["pred_classes"], ref["labels"] - 1)


def test_c4_r101_training_step_losses_frozen_and_bn():
    cfg = tiny_c4(101)
    model = build_model(cfg).train()
    frozen = {k: v.clone() for k, v in model.named_parameters() if not v.requires_grad}
    buffers = {k: v.clone() for k, v in model.named_buffers() if "running" in k}
    assert any(k.startswith("backbone.body.layer1") for k in frozen)  # FREEZE_AT 2: stem + res2
    assert not any(k.startswith("backbone.body.layer2") for k in frozen)
    losses = model(batch())
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sum(losses.values()).backward()
    head = model.roi_heads.box_head.res5[0].conv1.weight
    assert head.grad is not None and head.grad.abs().sum() > 0  # the res5 head is trained
    before = head.detach().clone()
    opt.step()
    assert not torch.equal(before, head.detach())
    for k, v in model.named_parameters():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    for k, v in model.named_buffers():  # FrozenBN: statistics never move
        if k in buffers:
            assert torch.equal(v, buffers[k]), k


def test_c4_inference_in_original_coordinates_per_class():
    cfg = tiny_c4(18, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.BACKBONE.FREEZE_AT", 0,
                  "MODEL.RESNETS.NORM", "BN")
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1:] += 3.0
        # Odd, non-square input sizes; the model resizes to 96 inside and maps boxes back.
        outs = model([{"image": d["image"]} for d in batch()])
    for d, o in zip(batch(), outs):
        inst = o["instances"]
        h, w = d["image"].shape[1:]
        assert len(inst["boxes"]) > 0
        assert inst["boxes"][:, 2].max() <= w and inst["boxes"][:, 3].max() <= h
        assert inst["boxes"][:, 2].max() > 0.5 * w  # in original pixels, not the 96-px resized frame
        assert set(inst["pred_classes"].tolist()) <= {0, 1, 2}
    # Class-aware regression: 4 numbers per class incl. background.
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 4 * 4


def test_class_agnostic_regression_and_roipool():
    cfg = tiny_c4(18, "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True, "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
                  "ROIPool", "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.NORM", "BN")
    model = build_model(cfg)
    pred = model.roi_heads.box_predictor
    assert pred.bbox_pred.out_features == 4
    cls, deltas = pred(torch.randn(5, pred.cls_score.in_features))
    assert deltas.shape == (5, 4 * 4) and torch.equal(deltas[:, :4], deltas[:, 8:12])
    losses = model.train()(batch())
    sum(losses.values()).backward()
    assert torch.isfinite(sum(losses.values()))


def test_res5_head_is_the_pretrained_res5(tmp_path, caplog):
    tv = torchvision.models.resnet50(weights=None)
    path = tmp_path / "r50.pth"
    torch.save(tv.state_dict(), path)
    cfg = tiny_c4(50, "MODEL.WEIGHTS", str(path), "MODEL.ROI_HEADS.NUM_CLASSES", 7)
    model = build_model(cfg)
    with caplog.at_level(logging.INFO):
        report = load_model_weights(model, str(path))
    sd = model.state_dict()
    for k, v in tv.state_dict().items():
        if "num_batches_tracked" in k:  # FrozenBN keeps no counter
            continue
        if k.startswith("layer4."):
            assert torch.equal(sd["roi_heads.box_head.res5." + k[len("layer4."):]], v), k
        elif k.startswith(("layer1", "layer2", "layer3", "conv1", "bn1")):
            assert torch.equal(sd["backbone.body." + k], v), k
    assert sorted(report["unused"]) == ["fc.bias", "fc.weight"]
    assert any(k.startswith("roi_heads.box_predictor") for k in report["missing"])
    assert not any(k.startswith("backbone.") for k in report["missing"])


def test_detector_checkpoint_with_other_num_classes_reinitialises_predictor(tmp_path):
    src = build_model(tiny_c4(18, "MODEL.ROI_HEADS.NUM_CLASSES", 5))
    path = tmp_path / "det.pth"
    torch.save({"model": src.state_dict()}, path)
    dst = build_model(tiny_c4(18, "MODEL.ROI_HEADS.NUM_CLASSES", 3))
    report = load_model_weights(dst, str(path))
    assert any(r.startswith("roi_heads.box_predictor.cls_score.weight") for r in report["reinitialized"])
    assert torch.equal(dst.state_dict()["backbone.body.layer3.0.conv1.weight"],
                       src.state_dict()["backbone.body.layer3.0.conv1.weight"])


def test_weight_conventions_adopted_with_a_log_line(tmp_path, caplog):
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    cfg = tiny_c4(18, "INPUT.FORMAT", "BGR")  # the C4 configs ship in torchvision's RGB: make it differ
    with caplog.at_level(logging.WARNING):
        changed = adopt_weight_conventions(cfg, str(path))
    assert cfg.INPUT.FORMAT == "RGB" and "INPUT.FORMAT" in changed
    assert np.allclose(cfg.MODEL.PIXEL_MEAN, [123.675, 116.28, 103.53])
    assert "adopting" in caplog.text


def test_missing_weights_file_is_one_clear_error(tmp_path):
    model = build_model(tiny_c4(18))
    with pytest.raises(FileNotFoundError, match="does not exist.*convert_weights"):
        load_model_weights(model, str(tmp_path / "nope.pth"))


class ToyBackbone(Backbone):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 32, 3, stride=16, padding=1)

    def output_shape(self):
        return {"res4": ShapeSpec(32, 16)}

    def forward(self, x):
        return {"res4": torch.relu(self.conv(x))}


def toy_backbone_for_test(cfg, input_shape):
    return ToyBackbone(input_shape.channels)


def test_user_registered_backbone_trains_one_step():
    name = toy_backbone_for_test.__name__
    if name not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(toy_backbone_for_test)
    cfg = tiny_c4(18, "MODEL.BACKBONE.NAME", name, "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
                  "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7, "MODEL.BACKBONE.FREEZE_AT", 0)
    model = build_model(cfg).train()
    losses = model(batch())
    sum(losses.values()).backward()
    assert model.backbone.conv.weight.grad is not None


def test_unknown_backbone_lists_registered():
    with pytest.raises(KeyError, match="build_resnet_fpn_backbone"):
        build_model(tiny_c4(18, "MODEL.BACKBONE.NAME", "no_such_backbone"))


def test_default_predictor_returns_named_classes():
    cfg = tiny_c4(18, "MODEL.ROI_HEADS.NUM_CLASSES", 5, "DATASETS.TEST", ("shapes_val",),
                  "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    predictor = DefaultPredictor(cfg)
    assert predictor.class_names[:2] == ["circle", "square"]
    out = predictor(np.random.default_rng(0).integers(0, 255, (71, 103, 3), dtype=np.uint8))
    inst = out["instances"]
    assert inst["boxes"].shape[1] == 4 and len(inst["scores"]) == len(inst["pred_classes"])
    with pytest.raises(ValueError, match="HxWx3"):
        predictor(np.zeros((10, 10), np.uint8))


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_every_depth_builds_c4_and_fpn_with_matching_res5_head(depth):
    c4 = build_model(tiny_c4(depth))
    body, head = c4.backbone.body, c4.roi_heads.box_head.res5
    assert not hasattr(body, "layer4")  # C4: res5 lives in the box head only
    assert len(head) == {18: 2, 34: 3, 50: 3, 101: 3, 152: 3}[depth]
    assert head[0].conv1.in_channels == body.output_shape()["res4"].channels
    fpn = build_model(make_cfg("Base-RCNN-FPN.yaml", "MODEL.RESNETS.DEPTH", depth, "MODEL.ROI_HEADS.NUM_CLASSES", 3))
    assert set(fpn.backbone.output_shape()) == {"p2", "p3", "p4", "p5", "p6"}


def test_other_architectures_are_pointed_to_builders_that_exist():
    """build_model refuses a classifier/localizer config and names the builders to use: they must exist."""
    import importlib
    import re

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "Classifier"
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE='Classifier'") as info:
        build_model(cfg)
    named = re.findall(r"resnet_det(?:\.\w+)+", str(info.value))
    assert named
    for path in named:
        module, name = path.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name, None)), f"{path} does not exist"
