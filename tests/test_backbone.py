"""The backbone view of the ResNets: named stage outputs with derived channels/strides, lazy stage
building, freeze_at semantics (and its torchvision/mmdet translation), and the cfg builder."""
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from resnet_det.config import get_cfg
from resnet_det.modeling import (STAGE_NAMES, ResNet, ResNetBackbone, ShapeSpec, build_backbone,
                                 freeze_at_from)

ALL = list(STAGE_NAMES)  # stem, res2, res3, res4, res5


@pytest.mark.parametrize("depth,channels", [(18, (64, 64, 128, 256, 512)),
                                            (50, (64, 256, 512, 1024, 2048))])
def test_all_stages_shapes_and_strides(depth, channels):
    net = ResNet(depth, num_classes=None, out_features=ALL).eval()
    shapes = net.output_shape()
    assert list(shapes) == ALL
    assert [s.stride for s in shapes.values()] == [4, 4, 8, 16, 32]
    assert [s.channels for s in shapes.values()] == list(channels)
    with torch.no_grad():
        feats = ResNetBackbone(net)(torch.zeros(1, 3, 64, 96))
    assert list(feats) == ALL
    for name, f in feats.items():  # the reported spec is what the tensors really are
        assert f.shape == (1, shapes[name].channels, 64 // shapes[name].stride, 96 // shapes[name].stride)


def test_channels_follow_the_blocks_not_a_formula():
    net = ResNet(50, num_classes=None, out_features=["res2", "res5"], res2_out_channels=128,
                 stem_out_channels=32)
    assert net.output_shape() == {"res2": ShapeSpec(128, 4), "res5": ShapeSpec(1024, 32)}
    assert net.layer1[0].conv1.in_channels == 32


@pytest.mark.parametrize("out_features,built", [(["stem"], 0), (["res2", "res4"], 3), (["res3"], 2),
                                                (["res5", "res2"], 4)])
def test_requested_subset_and_later_stages_not_built(out_features, built):
    net = ResNet(18, num_classes=None, out_features=out_features).eval()
    assert set(net.output_shape()) == set(out_features)
    for i in range(1, 5):
        assert hasattr(net, f"layer{i}") == (i <= built)
    assert not hasattr(net, "fc")
    with torch.no_grad():
        assert set(net.forward_features(torch.zeros(1, 3, 64, 64))) == set(out_features)
    # No parameter of an unbuilt stage exists (nothing to load, freeze or optimise).
    assert all(int(k.split(".")[0][5:]) <= built for k in net.state_dict() if k.startswith("layer"))


def test_backbone_rejects_a_classifier_net():
    with pytest.raises(ValueError, match="num_classes=None"):
        ResNetBackbone(ResNet(18))


def _stage_modules(net: ResNet, k: int) -> list[nn.Module]:
    return [getattr(net, a) for _, attrs in net.stage_modules()[:k] for a in attrs]


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at(freeze_at):
    net = ResNet(18, num_classes=None, out_features=ALL, freeze_at=freeze_at)
    frozen = _stage_modules(net, freeze_at)
    live = _stage_modules(net, 5)[len(frozen):]
    for m in frozen:
        assert all(not p.requires_grad for p in m.parameters())
        assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    for m in live:
        assert all(p.requires_grad for p in m.parameters())
        assert not any(isinstance(x, FrozenBatchNorm2d) for x in m.modules())
    # Which norms are frozen, exactly: 1 (stem) + 5 per basic stage with a projection, 4 for res2.
    n_frozen = sum(isinstance(x, FrozenBatchNorm2d) for x in net.modules())
    assert n_frozen == [0, 1, 5, 10, 15, 20][freeze_at]

    # A train-mode forward leaves frozen statistics alone and updates the live ones.
    before = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    net.train().forward_features(torch.randn(2, 3, 64, 64))
    after = net.state_dict()
    frozen_prefixes = tuple(a + "." for _, attrs in net.stage_modules()[:freeze_at] for a in attrs)
    for k, v in before.items():
        assert torch.equal(v, after[k]) == k.startswith(frozen_prefixes), k


def test_freeze_at_zero_means_nothing_frozen():
    net = ResNet(18, freeze_at=0)
    assert all(p.requires_grad for p in net.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("trainable_layers", [0, 1, 2, 3, 4, 5])
def test_freeze_at_from_torchvision_trainable_layers(trainable_layers):
    """Oracle: torchvision's own freezing for the same `trainable_layers`, compared by parameter name."""
    tv = torchvision.models.resnet18(weights=None)
    _resnet_fpn_extractor(tv, trainable_layers)
    tv_trainable = {n for n, p in tv.named_parameters() if p.requires_grad and not n.startswith("fc")}
    ours = ResNet(18, num_classes=None, out_features=["res5"],
                  freeze_at=freeze_at_from(trainable_layers=trainable_layers))
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == tv_trainable


@pytest.mark.parametrize("frozen_stages,freeze_at", [(-1, 0), (0, 1), (1, 2), (4, 5)])
def test_freeze_at_from_mmdet_frozen_stages(frozen_stages, freeze_at):
    # mmdet: -1 freezes nothing, 0 the stem, k the stem and stages 1..k.
    assert freeze_at_from(frozen_stages=frozen_stages) == freeze_at


@pytest.mark.parametrize("kwargs,needle", [({}, "exactly one"), (dict(trainable_layers=1, frozen_stages=1),
                                           "exactly one"), (dict(trainable_layers=6), "trainable_layers=6"),
                                           (dict(frozen_stages=5), "frozen_stages=5")])
def test_freeze_at_from_rejects_bad_input(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        freeze_at_from(**kwargs)


def test_build_backbone_from_cfg():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4"]
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    bb = build_backbone(cfg)
    assert bb.output_shape() == {"res3": ShapeSpec(128, 8), "res4": ShapeSpec(256, 16)}
    assert not hasattr(bb.body, "layer4")
    assert isinstance(bb.body.bn1, FrozenBatchNorm2d) and isinstance(bb.body.layer2[0].bn1, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="different channel counts"):
        bb.out_channels  # two maps of different widths: torchvision's heads need one
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    assert build_backbone(cfg).out_channels == 256
