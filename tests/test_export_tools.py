"""tools/export_model.py and tools/run_exported.py end to end: weights file in, exported model out,
a non-zero exit when outputs differ, boxes drawn on a generated image."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from engine_utils import load_tool
from resnet_det.config import get_cfg
from resnet_det.export import ExportedModel, build_eager_model, generated_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


TINY = """_BASE_: {root}/configs/Base-RCNN-{kind}.yaml
MODEL:
  BACKBONE: {{FREEZE_AT: 0}}
  RESNETS: {{DEPTH: 18}}
  FPN: {{OUT_CHANNELS: 32}}
  RPN: {{PRE_NMS_TOPK_TEST: 100, POST_NMS_TOPK_TEST: 20}}
  ROI_HEADS: {{NUM_CLASSES: 3}}
  ROI_BOX_HEAD: {{FC_DIM: 64}}
INPUT: {{MIN_SIZE_TEST: 96, MAX_SIZE_TEST: 128}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny C4 config, two weight files (seeds 0 and 1, class 0 boosted so boxes score ~0.9),
    and a generated sample image."""
    d = tmp_path_factory.mktemp("export_tools")
    config = d / "tiny_c4.yaml"
    config.write_text(TINY.format(root=ROOT, kind="C4"))
    cfg = get_cfg()
    cfg.merge_from_file(str(config))
    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_eager_model(cfg)
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
        weights.append(str(d / f"w{seed}.pth"))
        torch.save(model.state_dict(), weights[-1])
    image = d / "sample.png"
    cv2.imwrite(str(image), generated_image(96, 128, seed=7))
    return {"dir": d, "config": str(config), "weights": weights, "image": str(image)}


def test_export_then_verify_other_weights_exits_nonzero(setup, capsys):
    out = setup["dir"] / "onnx_w0"
    rc = load_tool("export_model").main(["--config-file", setup["config"], "--format", "onnx", "--output",
                                         str(out), "--sample-image", setup["image"],
                                         "MODEL.WEIGHTS", setup["weights"][0]])
    assert rc == 0 and "PASSED" in capsys.readouterr().out
    meta = json.load(open(out / "model.onnx.json"))
    assert meta["weights"] == setup["weights"][0] and meta["verification"]["passed"]
    # The same artifact checked against the seed-1 weights: a real mismatch, a loud non-zero exit
    # status from the real command line.
    tool = [sys.executable, os.path.join(ROOT, "tools", "export_model.py"), "--config-file", setup["config"]]
    bad = subprocess.run(tool + ["--verify", str(out / "model.onnx"), "--sample-image", setup["image"],
                                 "MODEL.WEIGHTS", setup["weights"][1]], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "FAILED" in bad.stdout and "does NOT reproduce eager PyTorch" in bad.stderr
    same = load_tool("export_model").main(["--config-file", setup["config"], "--verify", str(out / "model.onnx"),
                                           "MODEL.WEIGHTS", setup["weights"][0]])
    assert same == 0


def test_export_mismatch_exits_nonzero(setup, monkeypatch, capsys):
    """A forced mismatch during export itself (exported scores shifted by 0.01 > 1e-3)."""
    real_call = ExportedModel.__call__
    monkeypatch.setattr(ExportedModel, "__call__",
                        lambda self, a: tuple(x + 0.01 if i == 1 else x for i, x in enumerate(real_call(self, a))))
    out = setup["dir"] / "forced"
    rc = load_tool("export_model").main(["--config-file", setup["config"], "--format", "torchscript",
                                         "--output", str(out), "MODEL.WEIGHTS", setup["weights"][0]])
    assert rc == 1
    err = capsys.readouterr().err
    assert "verification FAILED" in err and "max score diff 0.01" in err
    assert json.load(open(out / "model.ts.json"))["verification"]["passed"] is False


def test_export_requires_format_and_output(setup, capsys):
    with pytest.raises(SystemExit) as e:
        load_tool("export_model").main(["--config-file", setup["config"], "--format", "onnx"])
    assert e.value.code == 2 and "--format and --output are required" in capsys.readouterr().err


def test_run_exported_draws_boxes(setup, capsys):
    out = setup["dir"] / "ts_w0"
    assert load_tool("export_model").main(["--config-file", setup["config"], "--format", "torchscript",
                                           "--output", str(out), "MODEL.WEIGHTS", setup["weights"][0]]) == 0
    image_path = setup["dir"] / "scene.jpg"
    cv2.imwrite(str(image_path), generated_image(110, 90, seed=11))
    drawn_path = setup["dir"] / "drawn" / "out.jpg"
    capsys.readouterr()
    rc = load_tool("run_exported").main(["--model", str(out / "model.ts"), "--input", str(image_path),
                                         "--output", str(drawn_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    expected = ExportedModel(str(out / "model.ts")).predict(cv2.imread(str(image_path)))
    n = int((expected["scores"] >= 0.5).sum())
    assert n > 0 and f"{n} of {len(expected['scores'])} detections score >= 0.5" in printed
    assert printed.count("class0") == n  # every confident box is of the boosted class
    original, drawn = cv2.imread(str(image_path)), cv2.imread(str(drawn_path))
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100  # boxes and labels were drawn
    model = ExportedModel(str(out / "model.ts"))
    with pytest.raises(ValueError, match="CHW"):
        model(np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        model(np.zeros((3, 32, 32), np.float32))


def test_run_exported_missing_metadata(setup, tmp_path):
    lonely = tmp_path / "model.onnx"
    lonely.write_bytes(b"not used")
    with pytest.raises(FileNotFoundError, match="metadata JSON"):
        load_tool("run_exported").main(["--model", str(lonely), "--input", setup["image"]])


def test_user_errors_exit_2_with_message(setup, capsys):
    tool = load_tool("export_model")
    rc = tool.main(["--config-file", setup["config"], "--format", "onnx", "--output", str(setup["dir"] / "x"),
                    "MODEL.WEIGHTS", str(setup["dir"] / "missing.pth")])
    assert rc == 2 and "missing.pth" in capsys.readouterr().err
    rc = tool.main(["--config-file", setup["config"], "--format", "onnx", "--output", str(setup["dir"] / "x"),
                    "MODEL.RESNETS.DEPTH", "42"])
    assert rc == 2 and "MODEL.RESNETS.DEPTH" in capsys.readouterr().err
    rc = tool.main(["--config-file", setup["config"], "--format", "onnx", "--output", str(setup["dir"] / "x"),
                    "--opset", "9"])
    assert rc == 2 and "opset >= 11" in capsys.readouterr().err

