"""tools/analyze_model.py --config-file: a whole detector's parameters and FLOPs per module (fvcore),
checked against torch's own FlopCounterMode (an independent, dispatch-level count) on R50-FPN."""
import os
import runpy

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from engine_utils import REPO
from resnet_det.config import get_cfg
from resnet_det.modeling.analysis import count_params, detector_analysis, detector_test_image
from resnet_det.modeling.detector import build_model

FPN_CONFIG = os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml")


@pytest.fixture(scope="module")
def r50_fpn():
    cfg = get_cfg()
    cfg.merge_from_file(FPN_CONFIG)
    # a small test size keeps the test fast; FlopCounterMode does not see the fused conv-BN-ReLU kernels
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "224", "INPUT.MAX_SIZE_TEST", "400",
                         "MODEL.RESNETS.DEPTH", "50", "MODEL.FUSE_CONV_BN_RELU", "False",
                         "MODEL.BACKBONE.FREEZE_AT", "0"])
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def test_r50_fpn_flops_per_module_match_torch_flop_counter(r50_fpn):
    cfg, model = r50_fpn
    image = detector_test_image(cfg)
    assert tuple(image.shape) == (3, 224, 299)
    rows = {r["module"]: r for r in detector_analysis(model, image, ("parameter", "flop"))}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model([{"image": image}])
    torch_flops = counter.get_flop_counts()  # FLOPs = 2 x multiply-adds, keyed "FasterRCNN.<module>"

    def torch_gmacs(name):
        return sum(torch_flops.get(f"FasterRCNN.{name}", {}).values()) / 2e9

    for name in ("backbone.body.layer1", "backbone.body.layer4", "backbone.fpn", "rpn.head", "roi_heads.box_head",
                 "roi_heads.box_predictor"):
        assert rows[name]["gflops"] == pytest.approx(torch_gmacs(name), rel=1e-3), name
    assert rows["total"]["gflops"] == pytest.approx(sum(torch_flops["Global"].values()) / 2e9, rel=1e-3)
    # the body is torchvision's ResNet-50 (stride in the 3x3) without its fc, on the batched input (224x299
    # padded to a multiple of 32: 224x320)
    body = sum(r["gflops"] for n, r in rows.items() if n.startswith("backbone.body."))
    tv = torchvision.models.resnet50().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tv(torch.zeros(1, 3, 224, 320))
    tv_flops = counter.get_flop_counts()
    tv_conv = sum(tv_flops["Global"].values()) - sum(tv_flops["ResNet.fc"].values())
    assert body == pytest.approx(tv_conv / 2e9, rel=1e-4)
    assert rows["total"]["params"] == count_params(model)
    assert sum(r["params"] for n, r in rows.items() if n != "total") == count_params(model)


def test_tool_prints_the_table(capsys):
    tool = runpy.run_path(os.path.join(REPO, "tools", "analyze_model.py"))
    rows = tool["main"](["--tasks", "parameter", "flop", "activation", "--config-file",
                         os.path.join(REPO, "configs", "demo", "frcnn_r18_fpn_shapes.yaml"),
                         "INPUT.MIN_SIZE_TEST", "128"])
    out = capsys.readouterr().out
    assert "input 128x171" in out and "GFLOPs (mult-adds)" in out and "activations (M)" in out
    names = [r["module"] for r in rows]
    assert names[:2] == ["backbone.body.conv1", "backbone.body.bn1"] and "backbone.fpn" in names
    assert names[-1] == "total" and "roi_heads.box_predictor" in names
    assert rows[-1]["gflops"] > 0 and rows[-1]["mactivations"] > 0
    with pytest.raises(SystemExit) as e:
        tool["exit_on_user_error"](tool["main"], ["--config-file", os.path.join(REPO, "configs", "nope.yaml")])
    assert e.value.code == 2
