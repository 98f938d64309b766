"""The detectron2 plugin. Its detectron2-free half (config keys, cfg -> ResNet arguments, the shipped
configs) is tested always; what needs detectron2 runs only where detectron2 is importable."""
import ast
import glob
import importlib
import importlib.util
import os

import pytest
import torch
from fvcore.common.config import CfgNode as CN

from resnet_det.config import get_cfg
from resnet_det.integrations import RESNET_DET_D2_DEFAULTS, add_resnet_det_config, choose_d2_device, d2_resnet_kwargs
from resnet_det.modeling.backbone.resnet import ARCHS, ResNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D2_CONFIGS = os.path.join(ROOT, "configs", "detectron2")
HAS_D2 = importlib.util.find_spec("detectron2") is not None
D2_REASON = "detectron2 has no build for this stack; see README"


def d2_like_cfg() -> CN:
    """The keys d2_resnet_kwargs reads, at detectron2's defaults (detectron2/config/defaults.py)."""
    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    cfg.MODEL.BACKBONE = CN({"NAME": "build_resnet_backbone", "FREEZE_AT": 2})
    cfg.MODEL.FPN = CN({"IN_FEATURES": [], "OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"})
    cfg.MODEL.RESNETS = CN({
        "DEPTH": 50, "OUT_FEATURES": ["res4"], "NUM_GROUPS": 1, "NORM": "FrozenBN", "WIDTH_PER_GROUP": 64,
        "STRIDE_IN_1X1": True, "RES5_DILATION": 1, "RES2_OUT_CHANNELS": 256, "STEM_OUT_CHANNELS": 64,
        "DEFORM_ON_PER_STAGE": [False, False, False, False], "DEFORM_MODULATED": False,
        "DEFORM_NUM_GROUPS": 1})
    return cfg


def test_added_keys_have_resnet_det_defaults_and_keep_user_values():
    ours = get_cfg()
    cfg = add_resnet_det_config(d2_like_cfg())
    for full_key, value in RESNET_DET_D2_DEFAULTS.items():
        group, leaf = full_key.rsplit(".", 1)
        assert cfg.MODEL.RESNETS[leaf] == value == ours.MODEL.RESNETS[leaf], full_key
    cfg.MODEL.RESNETS.SHORTCUT = "C"
    add_resnet_det_config(cfg)  # idempotent: a second call changes nothing
    assert cfg.MODEL.RESNETS.SHORTCUT == "C"
    cfg.freeze()
    with pytest.raises(RuntimeError, match="frozen.*before merge_from_file"):
        add_resnet_det_config(cfg)


def test_kwargs_build_the_resnet_detectron2_describes():
    cfg = add_resnet_det_config(d2_like_cfg())
    kwargs = d2_resnet_kwargs(cfg)
    assert kwargs["stride_in_1x1"] is True and kwargs["freeze_at"] == 2 and kwargs["in_channels"] == 3
    net = ResNet(**kwargs)
    assert {k: (s.channels, s.stride) for k, s in net.output_shape().items()} == {"res4": (1024, 16)}
    assert not hasattr(net, "layer4")  # C4: detectron2's Res5ROIHeads owns res5
    x = torch.randn(1, 3, 64, 96)
    assert net.forward_features(x)["res4"].shape == (1, 1024, 4, 6)
    # freeze_at=2 means the same in both projects: stem and res2 frozen, res3 trainable.
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())


@pytest.mark.parametrize("key, value, message", [
    ("NORM", "naiveSyncBN", "MODEL.RESNETS.NORM='naiveSyncBN'"),
    ("DEPTH", 42, "MODEL.RESNETS.DEPTH=42"),
    ("DEFORM_ON_PER_STAGE", [False, True, True, True], "no deformable convolutions"),
    ("RES2_OUT_CHANNELS", 64, "RES2_OUT_CHANNELS=64 with DEPTH=50: expected 256"),
])
def test_unsupported_settings_are_named(key, value, message):
    cfg = add_resnet_det_config(d2_like_cfg())
    cfg.MODEL.RESNETS[key] = value
    with pytest.raises(ValueError, match=message):
        d2_resnet_kwargs(cfg)


def test_missing_resnet_det_keys_say_to_add_them():
    with pytest.raises(KeyError, match="MODEL.RESNETS.SHORTCUT is missing.*add_resnet_det_config"):
        d2_resnet_kwargs(d2_like_cfg())


def load_d2_yaml(name: str) -> dict:
    return CN.load_yaml_with_base(os.path.join(D2_CONFIGS, name))


@pytest.mark.parametrize("name, depth, arch", [
    ("faster_rcnn_R_50_C4_coco.yaml", 50, "C4"), ("faster_rcnn_R_101_C4_coco.yaml", 101, "C4"),
    ("faster_rcnn_R_101_FPN_coco.yaml", 101, "FPN"), ("faster_rcnn_R_50_C4_voc.yaml", 50, "C4"),
])
def test_shipped_configs_describe_our_backbones(name, depth, arch):
    loaded = load_d2_yaml(name)
    m = loaded["MODEL"]
    assert m["RESNETS"]["DEPTH"] == depth
    builders = {"C4": "build_resnet_det_backbone", "FPN": "build_resnet_det_fpn_backbone"}
    assert m["BACKBONE"]["NAME"] == builders[arch]
    assert m["WEIGHTS"].endswith(f"_d2plugin_{arch}.pkl")  # the layout convert_weights --plugin writes
    # The conversion command quoted in the file matches the config.
    with open(os.path.join(D2_CONFIGS, name)) as f:
        text = f.read()
    assert f"--detector {arch} --plugin" in text and f"--depth {depth}" in text
    cfg = add_resnet_det_config(d2_like_cfg())
    for group in ("RESNETS", "BACKBONE", "FPN"):
        cfg.MODEL[group].merge_from_other_cfg(CN(m.get(group, {})))
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        cfg.MODEL[key] = m[key]
    with torch.device("meta"):  # shapes only; no need to allocate ResNet-101
        net = ResNet(**d2_resnet_kwargs(cfg))
    shapes = net.output_shape()
    if arch == "C4":
        assert m["ROI_HEADS"]["NAME"] == "Res5ROIHeads" and ARCHS[depth][0] == "bottleneck"
        assert list(shapes) == ["res4"] and shapes["res4"].stride == 16
    else:
        assert set(m["FPN"]["IN_FEATURES"]) <= set(shapes)
        assert [shapes[f].stride for f in m["FPN"]["IN_FEATURES"]] == [4, 8, 16, 32]
    # MSRA weights: the statistics and stride placement MSRA trained with (checkpoint.default_meta).
    from resnet_det.checkpoint import default_meta

    msra = default_meta("msra")
    assert (loaded["INPUT"]["FORMAT"], m["PIXEL_MEAN"], m["PIXEL_STD"], m["RESNETS"]["STRIDE_IN_1X1"]) == \
        (msra["input_format"], msra["pixel_mean"], msra["pixel_std"], msra["stride_in_1x1"])


def test_voc_config_counts_voc_classes():
    from resnet_det.data.voc import VOC_CLASSES

    voc = load_d2_yaml("faster_rcnn_R_50_C4_voc.yaml")
    assert voc["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == len(VOC_CLASSES)


def test_every_shipped_detectron2_config_is_tested():
    tested = {"faster_rcnn_R_50_C4_coco.yaml", "faster_rcnn_R_101_C4_coco.yaml",
              "faster_rcnn_R_101_FPN_coco.yaml", "faster_rcnn_R_50_C4_voc.yaml"}
    shipped = {os.path.basename(p) for p in glob.glob(os.path.join(D2_CONFIGS, "*.yaml"))
               if not os.path.basename(p).startswith("Base-")}
    assert shipped == tested


@pytest.mark.parametrize("has_cuda,opts,expected", [(False, [], "cpu"), (False, ["MODEL.DEVICE", "cuda"], "cuda"),
                                                    (True, [], "cuda")])
def test_d2_device_is_the_cpu_without_cuda_unless_asked(monkeypatch, has_cuda, opts, expected):
    """detectron2's default MODEL.DEVICE "cuda" on a CPU-only machine ("Found no NVIDIA driver")."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    cfg = d2_like_cfg()
    cfg.MODEL.DEVICE = "cuda"  # detectron2/config/defaults.py
    assert choose_d2_device(cfg, opts) == expected and cfg.MODEL.DEVICE == expected


def test_d2_train_net_chooses_the_device_after_merging_before_freezing():
    """tools/d2_train_net.py imports detectron2 at module level, so read its setup() instead of running it."""
    tree = ast.parse(open(os.path.join(ROOT, "tools", "d2_train_net.py")).read())
    setup = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "setup")
    calls = [ast.unparse(n.value.func) for n in setup.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert calls.index("cfg.merge_from_list") < calls.index("choose_d2_device") < calls.index("cfg.freeze"), calls


@pytest.mark.skipif(HAS_D2, reason="detectron2 is installed: the import succeeds")
def test_import_without_detectron2_says_how_to_install():
    with pytest.raises(ImportError) as e:
        importlib.import_module("resnet_det.integrations.detectron2")
    text = str(e.value)
    assert "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'" in text
    assert "README" in text


# ---- with detectron2 -------------------------------------------------------------------------

def d2_cfg(name: str, *overrides):
    pytest.importorskip("detectron2", reason=D2_REASON)
    import resnet_det.integrations.detectron2  # noqa: F401  registers the builders
    from detectron2.config import get_cfg as d2_get_cfg

    cfg = add_resnet_det_config(d2_get_cfg())
    cfg.merge_from_file(os.path.join(D2_CONFIGS, name))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", 64,
                         "INPUT.MAX_SIZE_TEST", 96, *overrides])
    return cfg


def test_c4_backbone_under_detectron2_res5_roi_heads():
    cfg = d2_cfg("faster_rcnn_R_50_C4_coco.yaml", "MODEL.RPN.POST_NMS_TOPK_TEST", 10)
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert type(model.backbone).__name__ == "ResNetDetBackbone"
    shape = model.backbone.output_shape()["res4"]
    assert (shape.channels, shape.stride) == (1024, 16)
    with torch.no_grad():
        image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
        out = model([{"image": image, "height": 64, "width": 96}])
    assert out[0]["instances"].image_size == (64, 96)


def test_fpn_backbone_trains_one_step():
    cfg = d2_cfg("faster_rcnn_R_101_FPN_coco.yaml", "MODEL.RESNETS.DEPTH", 18,
                 "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "INPUT.MIN_SIZE_TRAIN", (64,))
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.backbone.size_divisibility == 32
    inst = Instances((64, 96), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 40.0, 48.0]])),
                     gt_classes=torch.tensor([1]))
    with EventStorage(0):  # detectron2's heads log training statistics there
        losses = model([{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8), "instances": inst,
                         "height": 64, "width": 96}])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_converted_weights_load_through_detectron2_checkpointer(tmp_path):
    cfg = d2_cfg("faster_rcnn_R_50_C4_coco.yaml")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from resnet_det.checkpoint import join_detector, save_detectron2_pkl

    torch.manual_seed(0)
    sd = ResNet(50, num_classes=1000).state_dict()
    det, _ = join_detector(sd, "torchvision", "d2plugin-C4")
    save_detectron2_pkl(tmp_path / "w.pkl", det)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(tmp_path / "w.pkl"))
    assert torch.equal(model.backbone.body.layer3[5].conv2.weight, sd["layer3.5.conv2.weight"])
    assert torch.equal(model.roi_heads.res5[2].conv3.weight, sd["layer4.2.conv3.weight"])
    assert torch.equal(model.roi_heads.res5[0].shortcut.norm.running_var,
                       sd["layer4.0.downsample.1.running_var"])
