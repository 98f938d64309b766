"""One config -> ResNet translation (modeling/backbone/build.py) for every builder: the detection
backbones, the C4 res5 head, the localizer, the classifiers (Table 1 and CIFAR 6n+2) and the
detectron2 plugin. A builder with a translation of its own would miss keys the others honour."""
import pytest
import torch
from fvcore.common.config import CfgNode as CN

from resnet_det.classification.model import build_net
from resnet_det.config import get_cfg
from resnet_det.integrations import add_resnet_det_config, d2_resnet_kwargs
from resnet_det.localization.model import build_localizer
from resnet_det.modeling.backbone import CifarResNet, ResNet, ShapeSpec, build_resnet, build_resnet_backbone
from resnet_det.modeling.backbone import build as build_module
from resnet_det.modeling.detector import build_model
from resnet_det.utils.errors import ConfigError

# Every MODEL.RESNETS key a builder could forget, away from its default.
KEYS = {"DEPTH": 18, "NORM": "BN", "SHORTCUT": "C", "PLAIN": False, "ZERO_INIT_RESIDUAL": True,
        "STRIDE_IN_1X1": True, "STEM_OUT_CHANNELS": 32}


def ours(**extra):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.merge_from_other_cfg(CN(KEYS))
    cfg.merge_from_list(["MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.CLASSIFIER.NUM_CLASSES", 5,
                         *(x for kv in extra.items() for x in kv)])
    return cfg


def d2_cfg():
    """detectron2's key names (detectron2/config/defaults.py), with detectron2's norm name for SyncBN."""
    cfg = CN()
    cfg.MODEL = CN({"PIXEL_MEAN": [103.53, 116.28, 123.675], "BACKBONE": CN({"FREEZE_AT": 0})})
    cfg.MODEL.RESNETS = CN({"OUT_FEATURES": ["res5"], "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64, "RES5_DILATION": 1,
                            "RES2_OUT_CHANNELS": 64, "DEFORM_ON_PER_STAGE": [False] * 4})
    add_resnet_det_config(cfg)
    for k, v in KEYS.items():
        cfg.MODEL.RESNETS[k] = v
    cfg.MODEL.RESNETS.NORM = "nnSyncBN"
    return cfg


def layout(module) -> dict:
    """Tensor names and shapes of the stem and res2..res5 (the C4 head's `res5.` read as `layer4.`)."""
    out = {}
    for name, p in module.state_dict().items():
        name = name.replace("res5.", "layer4.")
        if name.startswith(("layer", "conv1", "bn1.weight")) and not name.endswith("num_batches_tracked"):
            out[name] = tuple(p.shape)
    return out


def test_every_builder_gets_the_same_resnet_from_the_same_keys():
    reference = ResNet(18, num_classes=None, norm="BN", shortcut="C", zero_init_residual=True, stride_in_1x1=True,
                       stem_out_channels=32)
    ref = layout(reference)
    assert any(k.startswith("layer1.0.downsample") for k in ref)  # shortcut C: a projection everywhere
    backbone = build_resnet_backbone(ours(**{"MODEL.RESNETS.OUT_FEATURES": ["res5"]}), ShapeSpec(3, 1)).body
    classifier = build_net(ours())
    localizer = build_localizer(ours(**{"MODEL.META_ARCHITECTURE": "Localizer"})).net
    d2 = ResNet(**d2_resnet_kwargs(d2_cfg()))
    c4 = build_model(ours(**{"MODEL.RESNETS.NORM": "FrozenBN", "MODEL.ROI_HEADS.NUM_CLASSES": 3}))
    for name, net in {"backbone": backbone, "classifier": classifier, "localizer": localizer, "detectron2": d2}.items():
        assert layout(net) == ref, name
        assert net.layer1[0].bn2.weight.abs().sum() == 0, f"{name}: ZERO_INIT_RESIDUAL not applied"
        assert net.layer2[0].conv1.stride == (2, 2), f"{name}: STRIDE_IN_1X1 not applied"
    assert classifier.fc.out_features == 5 and isinstance(d2.layer1[0].bn1, torch.nn.SyncBatchNorm)
    res5 = c4.roi_heads.box_head  # the C4 per-region head: conv5_x from the same arguments
    assert layout(res5) == {k: v for k, v in ref.items() if k.startswith("layer4")}
    assert res5.res5[0].conv1.stride == (2, 2)


def test_cifar_classifier_reads_cifar_depth():
    cfg = ours(**{"MODEL.CLASSIFIER.STYLE": "cifar", "MODEL.CLASSIFIER.CIFAR_DEPTH": 8,
                  "MODEL.RESNETS.SHORTCUT": "A", "MODEL.RESNETS.PLAIN": True})
    net = build_net(cfg)
    assert type(net) is CifarResNet and net.depth == 8 and net.fc.out_features == 5
    assert len(net.layer1) == 1 and net.layer1[0].plain  # n = (8 - 2) / 6 blocks per stage, Sec. 4.2
    assert build_module.resnet_kwargs_from_cfg(cfg, classifier=True) == dict(
        depth=8, num_classes=5, norm="BN", shortcut="A", plain=True, zero_init_residual=True)


def test_builders_call_the_one_translator(monkeypatch):
    calls = []
    real = build_module.resnet_kwargs_from_cfg
    monkeypatch.setattr(build_module, "resnet_kwargs_from_cfg", lambda *a, **k: calls.append(k) or real(*a, **k))
    build_net(ours())
    build_net(ours(**{"MODEL.CLASSIFIER.STYLE": "cifar", "MODEL.CLASSIFIER.CIFAR_DEPTH": 8}))
    build_localizer(ours(**{"MODEL.META_ARCHITECTURE": "Localizer"}))
    build_resnet(ours(), num_classes=None)
    d2_resnet_kwargs(d2_cfg())
    assert [c.get("classifier", False) for c in calls] == [True, True, False, False, False]
    assert calls[-1]["norm_names"]["nnSyncBN"] == "SyncBN"  # detectron2's names, mapped by the plugin


@pytest.mark.parametrize("key, value, message", [
    ("MODEL.RESNETS.DEPTH", 42, "MODEL.RESNETS.DEPTH=42: expected one of 18, 34, 50, 101, 152"),
    ("MODEL.RESNETS.NORM", "LN", "MODEL.RESNETS.NORM='LN': expected one of BN, FrozenBN, GN, SyncBN"),
    ("MODEL.CLASSIFIER.STYLE", "mnist", "MODEL.CLASSIFIER.STYLE='mnist': expected imagenet or cifar"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_resnet(ours(**{key: value}), classifier=True)
