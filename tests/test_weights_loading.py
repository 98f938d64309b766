"""MODEL.WEIGHTS loading policy (checkpoint.load_model_weights): what a file is decides what it
must provide, and a load that leaves required tensors missing never passes silently.

- whole-model checkpoints (ours, or a detectron2 detector) must fill every tensor; only the class
  layers of another NUM_CLASSES may keep their initialisation, with a warning naming them;
- backbone weights (ImageNet, any naming) must fill the ResNet; the detector's other parts start from
  their initialisation by design, said in the log;
- anything else (nothing matches, a part missing, another shape outside the class layers) is a
  WeightsError naming the file, what is missing and what the file holds.
"""
import logging
import os
import pickle

import pytest
import torch
import torchvision

from resnet_det.checkpoint import convert_detector, load_model_weights
from resnet_det.config import get_cfg
from resnet_det.engine.defaults import UserInputError
from resnet_det.modeling.detector import build_model
from resnet_det.utils.errors import WeightsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(base: str, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", base))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                         "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.FPN.OUT_CHANNELS", 64, *opts])
    return build_model(cfg)


def save(sd: dict, path) -> str:
    torch.save({"model": sd}, path)
    return str(path)


def test_checkpoint_matching_nothing_is_an_error_for_the_cli(tmp_path):
    path = tmp_path / "foreign.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"encoder.layers.0.weight": torch.zeros(3).numpy()}, "__author__": "x"}, f)
    with pytest.raises(WeightsError, match=r"foreign.pkl .*matches none of the model's") as e:
        load_model_weights(tiny("Base-RCNN-FPN.yaml"), str(path))
    # A user-data error: the tools print it as one paragraph, no traceback (engine.defaults.launch_tool).
    assert isinstance(e.value, UserInputError) and isinstance(e.value, ValueError)


def test_detector_checkpoint_missing_a_part_is_an_error(tmp_path):
    src = tiny("Base-RCNN-FPN.yaml")
    path = save({k: v for k, v in src.state_dict().items() if not k.startswith("rpn.")}, tmp_path / "det.pth")
    with pytest.raises(WeightsError, match=r"det.pth .*6 it should provide are missing.*rpn.head.conv \(2\)"):
        load_model_weights(tiny("Base-RCNN-FPN.yaml"), path)


def test_other_shapes_outside_the_class_layers_are_an_error(tmp_path):
    path = save(tiny("Base-RCNN-FPN.yaml").state_dict(), tmp_path / "fpn64.pth")
    expected = r"Shapes differ outside the class layers: backbone.fpn.inner_blocks.0.0.weight \(64, 64, 1, 1\)"
    with pytest.raises(WeightsError, match=expected + r" -> \(32, 64, 1, 1\)"):
        load_model_weights(tiny("Base-RCNN-FPN.yaml", "MODEL.FPN.OUT_CHANNELS", 32), path)


def test_other_num_classes_reinitialises_only_the_class_layers_with_a_warning(tmp_path, caplog):
    src = tiny("Base-RCNN-FPN.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 5)
    path = save(src.state_dict(), tmp_path / "det5.pth")
    dst = tiny("Base-RCNN-FPN.yaml")
    with caplog.at_level(logging.WARNING):
        report = load_model_weights(dst, path)
    assert sorted(r.split(" ")[0] for r in report["reinitialized"]) == [
        "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight"]
    assert "another NUM_CLASSES" in caplog.text and "cls_score.weight (6, 1024) -> (4, 1024)" in caplog.text
    assert torch.equal(dst.state_dict()["rpn.head.conv.0.0.weight"], src.state_dict()["rpn.head.conv.0.0.weight"])


def test_imagenet_weights_fill_the_backbone_and_leave_the_heads_as_a_logged_gap(tmp_path, caplog):
    tv = torchvision.models.resnet18(weights=None)
    path = save(tv.state_dict(), tmp_path / "r18.pth")
    model = tiny("Base-RCNN-FPN.yaml")
    with caplog.at_level(logging.INFO):
        report = load_model_weights(model, path)
    assert not [k for k in report["missing"] if k.startswith("backbone.body.")]
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in report["missing"]} == {
        "backbone.fpn", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor"}
    assert "holds backbone weights only" in caplog.text and "rpn.head.conv (2)" in caplog.text
    assert sorted(report["unused"]) == ["fc.bias", "fc.weight"]


def test_imagenet_weights_missing_a_stage_are_an_error(tmp_path):
    sd = {k: v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()
          if not k.startswith("layer3.")}
    with pytest.raises(WeightsError, match=r"backbone weights.*missing.*backbone.body.layer3"):
        load_model_weights(tiny("Base-RCNN-FPN.yaml"), save(sd, tmp_path / "r18_no_res4.pth"))


def test_detectron2_c4_checkpoint_into_an_fpn_config_names_the_mistake(tmp_path):
    c4 = tiny("Base-RCNN-C4.yaml")
    d2, _ = convert_detector(c4.state_dict(), "resnet_det-C4", "detectron2-C4")
    path = tmp_path / "model_final_c4.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in d2.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    with pytest.raises(WeightsError, match=r"a detectron2-C4 detector checkpoint.*configs/detectron2_zoo"):
        load_model_weights(tiny("Base-RCNN-FPN.yaml"), str(path))
    # The right architecture loads every tensor, bit for bit (RPN channels and predictor rows converted).
    dst = tiny("Base-RCNN-C4.yaml")
    report = load_model_weights(dst, str(path))
    assert report["missing"] == report["unused"] == report["reinitialized"] == []
    ref = c4.state_dict()
    for k, v in dst.state_dict().items():
        if k.startswith("roi_heads.box_predictor.bbox_pred"):  # detectron2 has no background box
            v, ref_v = v[4:], ref[k][4:]
        else:
            ref_v = ref[k]
        assert torch.equal(v, ref_v), k


def test_detectron2_detector_pickle_brings_its_input_convention(tmp_path):
    """A model-zoo pickle records nothing; its detectron2 names imply MSRA's convention (BGR, mean only,
    stride in the 1x1), which setup_cfg / DefaultPredictor adopt for a config written for torchvision."""
    from resnet_det.checkpoint import adopt_weight_conventions

    d2, _ = convert_detector(tiny("Base-RCNN-FPN.yaml").state_dict(), "resnet_det-FPN", "detectron2-FPN")
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in d2.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
    changed = adopt_weight_conventions(cfg, str(path))
    assert set(changed) == {"INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.RESNETS.STRIDE_IN_1X1"}
    assert (cfg.INPUT.FORMAT, list(cfg.MODEL.PIXEL_STD), cfg.MODEL.RESNETS.STRIDE_IN_1X1) == ("BGR", [1.0] * 3, True)


def test_classifier_weights_go_through_the_same_loader_and_policy(tmp_path):
    """The pretraining classifier loads through load_model_weights too: any naming in the key table
    (detectron2's here), and a file that leaves ResNet tensors missing is refused, not half-loaded."""
    from resnet_det.checkpoint import convert_state_dict
    from resnet_det.classification import Classifier, load_classifier_weights
    from resnet_det.modeling import ResNet

    tv = torchvision.models.resnet18(num_classes=10)
    d2, _ = convert_state_dict(tv.state_dict(), "torchvision", "detectron2")
    model = Classifier(ResNet(18, num_classes=10), [0.0] * 3, [1.0] * 3)
    report = load_classifier_weights(model, save(d2, tmp_path / "r18_d2.pth"))
    assert report["missing"] == report["unused"] == report["reinitialized"] == []
    for k, v in tv.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k
    no_res4 = {k: v for k, v in tv.state_dict().items() if not k.startswith("layer3.")}
    with pytest.raises(WeightsError, match=r"r18_no_res4.pth .*missing.*net.layer3"):
        load_classifier_weights(Classifier(ResNet(18, num_classes=10), [0.0] * 3, [1.0] * 3),
                                save(no_res4, tmp_path / "r18_no_res4.pth"))
