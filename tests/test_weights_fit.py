"""Weights that do not fit the config are refused, not re-initialised or truncated; keys that cannot act
in a mode are refused there (issue 23, item 4). Each case is what a new user would try.

- class-aware vs class-agnostic box regression is decided from the config (CLS_AGNOSTIC_BBOX_REG) and
  the class count, never from the row count alone: detectron2's class-aware one-class bbox_pred has 4
  rows, like a class-agnostic one;
- a whole-detector checkpoint with backbone blocks the model lacks (a deeper ResNet) is an error, as
  tools/convert_weights.py --depth already says for the same check (key_map.block_mismatch);
  what is meant to be dropped (an ImageNet classifier's fc when fine-tuning a detector) stays allowed;
- MODEL.RPN.SCORE_THRESH under RPN.POSTPROCESS detectron2 and RESNETS.RES5_DILATION with the C4 res5
  box head are refused by config validation (detectron2 has no such threshold / ignores the key there).
"""
import importlib.util
import logging
import os
import pickle

import pytest
import torch
import torchvision

from resnet_det.checkpoint import convert_detector, convert_heads, load_model_weights
from resnet_det.config import get_cfg, validate_cfg
from resnet_det.modeling.detector import build_model
from resnet_det.utils.errors import ConfigError, WeightsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_weights.py")


def cfg_of(base: str, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", base))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                         "MODEL.FPN.OUT_CHANNELS", 64, "MODEL.ROI_BOX_HEAD.FC_DIM", 32, *opts])
    return cfg


def tiny(*opts, base="detectron2_zoo/Base-RCNN-FPN.yaml"):
    torch.manual_seed(0)
    return build_model(cfg_of(base, *opts))


def as_detectron2_pkl(model, path, arch="FPN") -> str:
    """The model's weights under detectron2's names, saved as its model zoo ships them."""
    sd, _ = convert_detector(model.state_dict(), f"resnet_det-{arch}", f"detectron2-{arch}")
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    return str(path)


def randomize_predictor(model):
    with torch.no_grad():
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(std=0.05)
        model.roi_heads.box_predictor.bbox_pred.bias.normal_(std=0.5)


@pytest.mark.parametrize("arch", ["FPN", "C4"])
def test_class_aware_one_class_detectron2_checkpoint_loads_as_class_aware(tmp_path, caplog, arch):
    """detectron2's class-aware head for ONE class has 4 box rows (K x 4), as a class-agnostic one has.
    The config says class-aware, so the background's rows are added and every trained value lands: nothing
    is re-initialised, the box regression equals the trained one."""
    base = f"detectron2_zoo/Base-RCNN-{arch}.yaml"
    src = tiny("MODEL.ROI_HEADS.NUM_CLASSES", 1, base=base)
    randomize_predictor(src)
    path = as_detectron2_pkl(src, tmp_path / "one_class.pkl", arch)
    with open(path, "rb") as f:
        assert pickle.load(f)["model"]["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 4
    dst = tiny("MODEL.ROI_HEADS.NUM_CLASSES", 1, base=base)
    with caplog.at_level(logging.WARNING):
        report = load_model_weights(dst, path)
    assert report["reinitialized"] == [] and "NUM_CLASSES" not in caplog.text
    w = "roi_heads.box_predictor.bbox_pred."
    for p in ("weight", "bias"):
        assert torch.equal(dst.state_dict()[w + p][4:], src.state_dict()[w + p][4:])


def test_class_agnostic_checkpoint_under_a_class_aware_config_names_both(tmp_path):
    src = tiny("MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True)
    path = as_detectron2_pkl(src, tmp_path / "agnostic.pkl")
    with pytest.raises(WeightsError, match=r"agnostic.pkl.*3 classes: class-agnostic.*"
                                           r"CLS_AGNOSTIC_BBOX_REG=False"):
        load_model_weights(tiny("MODEL.ROI_HEADS.NUM_CLASSES", 3), path)
    # the same file in resnet_det's own layout
    torch.save({"model": src.state_dict()}, tmp_path / "agnostic.pth")
    with pytest.raises(WeightsError, match=r"class-agnostic.*CLS_AGNOSTIC_BBOX_REG=False"):
        load_model_weights(tiny("MODEL.ROI_HEADS.NUM_CLASSES", 3), str(tmp_path / "agnostic.pth"))


def test_class_aware_checkpoint_under_a_class_agnostic_config_names_both(tmp_path):
    src = tiny("MODEL.ROI_HEADS.NUM_CLASSES", 3)
    path = as_detectron2_pkl(src, tmp_path / "aware.pkl")
    agnostic = ("MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True)
    with pytest.raises(WeightsError, match=r"aware.pkl.*3 classes: class-aware.*CLS_AGNOSTIC_BBOX_REG=True"):
        load_model_weights(tiny(*agnostic), path)
    torch.save({"model": src.state_dict()}, tmp_path / "aware.pth")
    with pytest.raises(WeightsError, match=r"class-aware.*CLS_AGNOSTIC_BBOX_REG=True"):
        load_model_weights(tiny(*agnostic), str(tmp_path / "aware.pth"))


def test_another_num_classes_still_fine_tunes(tmp_path, caplog):
    """Fine-tuning a class-aware detector for another class count keeps working: the class layers start
    from their initialisation, with the warning."""
    path = as_detectron2_pkl(tiny("MODEL.ROI_HEADS.NUM_CLASSES", 3), tmp_path / "three.pkl")
    with caplog.at_level(logging.WARNING):
        report = load_model_weights(tiny("MODEL.ROI_HEADS.NUM_CLASSES", 1), path)
    assert len(report["reinitialized"]) == 4 and "another NUM_CLASSES" in caplog.text


def test_predictor_conversion_needs_to_know_when_rows_cannot_tell():
    """heads.convert_heads: 4 box rows for one class are class-aware or agnostic; the caller says which."""
    g = torch.Generator().manual_seed(0)
    d2 = {"roi_heads.box_predictor.cls_score.weight": torch.randn(2, 8, generator=g),
          "roi_heads.box_predictor.cls_score.bias": torch.randn(2, generator=g),
          "roi_heads.box_predictor.bbox_pred.weight": torch.randn(4, 8, generator=g),
          "roi_heads.box_predictor.bbox_pred.bias": torch.randn(4, generator=g)}
    with pytest.raises(WeightsError, match="--bbox-reg"):
        convert_heads(d2, "detectron2", "resnet_det")
    aware, _ = convert_heads(d2, "detectron2", "resnet_det", cls_agnostic=False)
    agnostic, _ = convert_heads(d2, "detectron2", "resnet_det", cls_agnostic=True)
    w = "roi_heads.box_predictor.bbox_pred.weight"
    assert aware[w].shape[0] == 8 and torch.equal(aware[w][4:], d2[w]) and not aware[w][:4].any()
    assert torch.equal(agnostic[w], d2[w])
    back, _ = convert_heads(aware, "resnet_det", "detectron2")
    assert torch.equal(back[w], d2[w])


def run_tool(*args) -> int:
    spec = importlib.util.spec_from_file_location("convert_weights", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main([str(a) for a in args])


def test_convert_weights_asks_for_bbox_reg_where_it_cannot_tell(tmp_path, capsys):
    src = tiny("MODEL.ROI_HEADS.NUM_CLASSES", 1)
    randomize_predictor(src)
    path = as_detectron2_pkl(src, tmp_path / "one.pkl")
    out = tmp_path / "one.pth"
    with pytest.raises(SystemExit, match="--bbox-reg aware or --bbox-reg agnostic"):
        run_tool("--input", path, "--output", out, "--to", "resnet_det", "--detector", "FPN")
    assert run_tool("--input", path, "--output", out, "--to", "resnet_det", "--detector", "FPN",
                    "--bbox-reg", "aware") == 0
    dst = tiny("MODEL.ROI_HEADS.NUM_CLASSES", 1)
    report = load_model_weights(dst, str(out))
    assert report["reinitialized"] == []
    w = "roi_heads.box_predictor.bbox_pred.weight"
    assert torch.equal(dst.state_dict()[w][4:], src.state_dict()[w][4:])


def deeper_checkpoint(arch="FPN"):
    """A whole detector on ResNet-34 (blocks 3, 4, 6, 3), to load into an R-18 config (2, 2, 2, 2): the
    same mistake as R-101 weights in an R-50 config, on small nets."""
    return tiny("MODEL.RESNETS.DEPTH", 34, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
                base=f"detectron2_zoo/Base-RCNN-{arch}.yaml")


@pytest.mark.parametrize("arch", ["FPN", "C4"])
@pytest.mark.parametrize("layout", ["resnet_det", "detectron2"])
def test_deeper_detector_checkpoint_is_refused(tmp_path, arch, layout):
    src = deeper_checkpoint(arch)
    if layout == "detectron2":
        path = as_detectron2_pkl(src, tmp_path / "r34.pkl", arch)
    else:
        path = str(tmp_path / "r34.pth")
        torch.save({"model": src.state_dict()}, path)
    dst = tiny("MODEL.ROI_HEADS.NUM_CLASSES", 3, base=f"detectron2_zoo/Base-RCNN-{arch}.yaml")
    with pytest.raises(WeightsError, match=r"r34.*builds has basic blocks \(2, 2, 2, 2\), but the weights have "
                                           r"basic blocks \(3, 4, 6, 3\) in conv2_x..conv5_x.*MODEL.RESNETS.DEPTH"):
        load_model_weights(dst, path)


def test_deeper_imagenet_backbone_is_refused_but_its_fc_is_dropped_as_usual(tmp_path, caplog):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    dst = tiny("MODEL.ROI_HEADS.NUM_CLASSES", 3)
    with pytest.raises(WeightsError, match=r"resnet34.pth.*\(2, 2, 2, 2\), but .*\(3, 4, 6, 3\)"):
        load_model_weights(dst, str(path))
    # the depth that fits: the ImageNet classifier's fc has no place in a detector, dropped and logged
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with caplog.at_level(logging.INFO):
        report = load_model_weights(dst, str(tmp_path / "resnet18.pth"))
    assert sorted(report["unused"]) == ["fc.bias", "fc.weight"] and "fc" in caplog.text


def test_convert_weights_depth_check_is_the_same_check(tmp_path, capsys):
    """tools/convert_weights.py --depth and MODEL.WEIGHTS share key_map.block_mismatch: the same words."""
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(SystemExit, match=r"--depth 18: Table 1 has basic blocks \(2, 2, 2, 2\), but the weights "
                                         r"have basic blocks \(3, 4, 6, 3\) in conv2_x..conv5_x"):
        run_tool("--input", path, "--output", tmp_path / "x.pth", "--to", "resnet_det", "--depth", 18)


def test_rpn_score_thresh_is_refused_under_detectron2_postprocess():
    cfg = cfg_of("detectron2_zoo/Base-RCNN-FPN.yaml", "MODEL.RPN.SCORE_THRESH", 0.05)
    with pytest.raises(ConfigError, match=r"MODEL.RPN.SCORE_THRESH=0.05.*MODEL.RPN.POSTPROCESS detectron2"):
        validate_cfg(cfg)
    validate_cfg(cfg_of("Base-RCNN-FPN.yaml", "MODEL.RPN.SCORE_THRESH", 0.05))  # torchvision's: it acts


def test_res5_dilation_is_refused_with_the_c4_res5_head():
    cfg = cfg_of("detectron2_zoo/Base-RCNN-C4.yaml", "MODEL.RESNETS.RES5_DILATION", 2)
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.RES5_DILATION=2.*Res5ROIHead"):
        validate_cfg(cfg)
    validate_cfg(cfg_of("detectron2_zoo/Base-RCNN-FPN.yaml", "MODEL.RESNETS.RES5_DILATION", 2))  # FPN: acts
