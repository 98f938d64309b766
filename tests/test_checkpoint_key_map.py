"""The one key table: every tensor of torchvision's ResNets, both ways; MSRA BN folding; detector layouts."""
import logging

import pytest
import torch
import torchvision

from resnet_det.checkpoint import (BN_EPS, block_structure, convert_state_dict, detect_convention,
                                   detect_layout, join_detector, parse_key, split_detector)
from resnet_det.modeling.backbone.resnet import ARCHS, ResNet

DEPTHS = sorted(ARCHS)


def torchvision_state_dict(depth: int) -> dict:
    # On the meta device: names and shapes without allocating ResNet-152's 60M parameters.
    with torch.device("meta"):
        return getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("via", ["detectron2", "msra"])
def test_every_torchvision_tensor_has_a_name_both_ways(depth, via):
    sd = torchvision_state_dict(depth)
    out, report = convert_state_dict(sd, "torchvision", via)
    assert report.unmatched == []
    accounted = set(report.converted) | set(report.dropped)
    assert accounted == set(sd)
    # Only BN statistics lack an MSRA spelling, and only the batch counter is dropped outright.
    assert all(k.endswith("num_batches_tracked") for k in report.dropped)
    assert (len(report.dropped) > 0) == (via == "msra")
    back, report_back = convert_state_dict(out, via, "torchvision")
    assert report_back.unmatched == [] and report_back.dropped == {}
    expected = {k for k in sd if not (via == "msra" and k.endswith("num_batches_tracked"))}
    assert set(back) == expected
    if via == "detectron2":  # pure renaming: the very same tensors come back
        assert all(back[k] is sd[k] for k in sd)
    assert detect_convention(out) == via and detect_convention(sd) == "torchvision"


@pytest.mark.parametrize("tv, d2, msra", [
    # Hand-written from the three projects' published checkpoints.
    ("conv1.weight", "stem.conv1.weight", "conv1_w"),
    ("bn1.weight", "stem.conv1.norm.weight", "res_conv1_bn_s"),
    ("bn1.bias", "stem.conv1.norm.bias", "res_conv1_bn_b"),
    ("layer1.0.conv1.weight", "res2.0.conv1.weight", "res2_0_branch2a_w"),
    ("layer3.22.conv3.weight", "res4.22.conv3.weight", "res4_22_branch2c_w"),
    ("layer2.1.bn2.weight", "res3.1.conv2.norm.weight", "res3_1_branch2b_bn_s"),
    ("layer4.0.downsample.0.weight", "res5.0.shortcut.weight", "res5_0_branch1_w"),
    ("layer4.0.downsample.1.bias", "res5.0.shortcut.norm.bias", "res5_0_branch1_bn_b"),
    ("fc.weight", "linear.weight", "fc1000_w"),
    ("fc.bias", "linear.bias", "fc1000_b"),
])
def test_known_names_agree_across_conventions(tv, d2, msra):
    assert parse_key(tv, "torchvision") == parse_key(d2, "detectron2") == parse_key(msra, "msra")
    assert parse_key(tv, "torchvision") is not None


def test_running_stats_have_detectron2_names_but_no_msra_ones():
    out, _ = convert_state_dict({"layer1.0.bn3.running_var": torch.ones(4)}, "torchvision", "detectron2")
    assert list(out) == ["res2.0.conv3.norm.running_var"]
    assert parse_key("res2_0_branch2c_bn_running_var", "msra") is None


def test_unmatched_keys_are_reported_logged_and_kept_only_on_request(caplog):
    sd = {"conv1.weight": torch.zeros(64, 3, 7, 7), "rpn.head.conv.weight": torch.zeros(1),
          "res2_0_branch2a_w_momentum": torch.zeros(1)}
    with caplog.at_level(logging.WARNING, logger="resnet_det.checkpoint.key_map"):
        out, report = convert_state_dict(sd, "torchvision", "detectron2")
    assert report.unmatched == ["rpn.head.conv.weight", "res2_0_branch2a_w_momentum"]
    assert list(out) == ["stem.conv1.weight"]
    assert "rpn.head.conv.weight" in caplog.text and "res2_0_branch2a_w_momentum" in caplog.text
    kept, _ = convert_state_dict(sd, "torchvision", "detectron2", keep_unmatched=True)
    assert set(kept) == {"stem.conv1.weight", "rpn.head.conv.weight", "res2_0_branch2a_w_momentum"}


def test_fold_matches_hand_computed_values():
    w, b = torch.tensor([2.0, 0.5]), torch.tensor([1.0, -1.0])
    mean, var = torch.tensor([3.0, -2.0]), torch.tensor([4.0, 0.25])
    sd = {"bn1.weight": w, "bn1.bias": b, "bn1.running_mean": mean, "bn1.running_var": var,
          "bn1.num_batches_tracked": torch.tensor(7)}
    out, report = convert_state_dict(sd, "torchvision", "msra", eps=0.0)
    # s = w / sqrt(var) = [1, 1]; b' = b - mean * s = [-2, 1]
    torch.testing.assert_close(out["res_conv1_bn_s"], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(out["res_conv1_bn_b"], torch.tensor([-2.0, 1.0]))
    assert set(out) == {"res_conv1_bn_s", "res_conv1_bn_b"}
    assert "bn1.num_batches_tracked" in report.dropped
    back, report = convert_state_dict(out, "msra", "torchvision")
    assert torch.equal(back["bn1.running_mean"], torch.zeros(2))
    assert torch.equal(back["bn1.running_var"], torch.full((2,), 1 - BN_EPS))
    assert sorted(report.synthesized) == ["bn1.running_mean", "bn1.running_var"]


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) * 2 + 0.1)
        elif name.endswith("running_mean") or name.endswith("bias"):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        elif t.dim() == 1 and name.endswith("weight"):  # BN gamma
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)


@pytest.mark.parametrize("depth", [18, 50])
def test_msra_round_trip_is_the_same_function_under_frozen_bn(depth):
    torch.manual_seed(0)
    net = ResNet(depth, num_classes=10, norm="FrozenBN").eval()
    _randomize_bn(net, seed=depth)
    msra, _ = convert_state_dict(net.state_dict(), "torchvision", "msra")
    assert not any("running" in k for k in msra)  # statistics really were folded away
    back, report = convert_state_dict(msra, "msra", "torchvision")
    assert report.unmatched == []
    rebuilt = ResNet(depth, num_classes=10, norm="FrozenBN").eval()
    rebuilt.load_state_dict(back, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), rtol=1e-4, atol=1e-4)


def test_msra_weights_load_into_batchnorm_nets_too():
    # nn.BatchNorm2d in eval mode computes the same affine map from mean 0 / var 1-eps.
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    _randomize_bn(net, seed=1)
    back, _ = convert_state_dict(convert_state_dict(net.state_dict(), "torchvision", "msra")[0],
                                 "msra", "torchvision")
    rebuilt = torchvision.models.resnet18(weights=None).eval()
    missing, unexpected = rebuilt.load_state_dict(back, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), rtol=1e-4, atol=1e-4)


def test_detect_convention_rejects_foreign_state_dicts():
    with pytest.raises(ValueError, match="no key of this state dict.*first keys: encoder.weight"):
        detect_convention({"encoder.weight": torch.zeros(1)})


@pytest.mark.parametrize("depth", DEPTHS)
def test_block_structure_reads_table_1_off_the_names(depth):
    assert block_structure(torchvision_state_dict(depth), "torchvision") == ARCHS[depth]


@pytest.mark.parametrize("layout, head_key", [
    ("resnet_det-C4", "roi_heads.box_head.res5.1.bn2.running_var"),
    ("detectron2-C4", "roi_heads.res5.1.conv2.norm.running_var"),
    ("d2plugin-C4", "roi_heads.res5.1.conv2.norm.running_var"),
    ("resnet_det-FPN", "backbone.body.layer4.1.bn2.running_var"),
    ("detectron2-FPN", "backbone.bottom_up.res5.1.conv2.norm.running_var"),
    ("d2plugin-FPN", "backbone.bottom_up.body.layer4.1.bn2.running_var"),
])
def test_detector_layouts_round_trip(layout, head_key):
    sd = torchvision.models.resnet18(weights=None).state_dict()
    det, report = join_detector(sd, "torchvision", layout)
    assert det[head_key] is sd["layer4.1.bn2.running_var"]
    assert set(report.dropped) == {"fc.weight", "fc.bias"}  # a detector has no classifier
    assert detect_layout(det) == layout
    backbone, rest = split_detector({**det, "rpn.head.conv.weight": torch.zeros(1)}, layout)
    assert list(rest) == ["rpn.head.conv.weight"]
    tv, _ = convert_state_dict(backbone, detect_convention(det), "torchvision")
    assert set(tv) == set(sd) - {"fc.weight", "fc.bias"}
    assert all(tv[k] is sd[k] for k in tv)


def test_c4_layout_loads_into_resnet_det_detector():
    from resnet_det.config import get_cfg
    from resnet_det.modeling.detector import build_model

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                         "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.ROI_HEADS.NUM_CLASSES", 3])
    model = build_model(cfg)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    det, _ = join_detector(sd, "torchvision", "resnet_det-C4")
    missing, unexpected = model.load_state_dict(det, strict=False)
    assert unexpected == []
    # What the checkpoint cannot provide: the RPN and the box predictor, nothing of the ResNet.
    assert missing and all(k.startswith(("rpn.", "roi_heads.box_predictor.")) for k in missing)
