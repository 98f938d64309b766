"""resnet_det.modeling.analysis and tools/analyze_model.py: the Table 1-style per-stage table."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch

from resnet_det.modeling import resnet50
from resnet_det.modeling.analysis import (PAPER, build_named_model, cifar_comparison, count_macs,
                                          count_params, imagenet_comparison, stage_table)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_stage_table_resnet50_matches_table1_layout():
    net = resnet50(stride_in_1x1=True)
    rows = stage_table(net, 64)  # layout only; the 224 totals are checked in test_resnet.py
    assert [r.stage for r in rows] == ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "fc"]
    assert [r.output_size for r in rows] == ["32x32", "16x16", "8x8", "4x4", "2x2", "1x1"]
    assert [r.channels for r in rows] == [64, 256, 512, 1024, 2048, 1000]
    assert rows[1].layers == "3x3 max pool, stride 2, [1x1,64; 3x3,64; 1x1,256] x3"
    assert rows[4].layers == "[1x1,512; 3x3,512; 1x1,2048] x3"
    # conv1 by hand: 7x7x3x64 weights + BN (gamma, beta); 32x32 outputs of 7*7*3*64 MACs each.
    assert rows[0].params == 7 * 7 * 3 * 64 + 2 * 64
    assert rows[0].macs == 32 * 32 * 7 * 7 * 3 * 64
    assert rows[-1].params == 2048 * 1000 + 1000 and rows[-1].macs == 2048 * 1000
    assert sum(r.params for r in rows) == count_params(net) == 25_557_032
    assert sum(r.macs for r in rows) == count_macs(net, 64)[""]


def test_stage_table_cifar():
    rows = stage_table(build_named_model("cifar_resnet20"), 32)
    assert [(r.stage, r.output_size, r.channels) for r in rows] == [
        ("conv1", "32x32", 16), ("layer1", "32x32", 16), ("layer2", "16x16", 32),
        ("layer3", "8x8", 64), ("fc", "1x1", 10)]
    assert rows[2].layers == "[3x3,32; 3x3,32] x3"


def test_build_named_model():
    assert build_named_model("plain34").layer1[0].plain
    assert build_named_model("resnet50", stride_in_1x1=True).layer2[0].conv1.stride == (2, 2)
    assert build_named_model("cifar_plain56").layer1[0].plain
    assert isinstance(build_named_model("resnet18", shortcut="C").layer1[0].downsample, torch.nn.Sequential)
    with pytest.raises(ValueError, match="'vgg19'.*resnet<D>"):
        build_named_model("vgg19")
    with pytest.raises(ValueError, match="42"):
        build_named_model("resnet42")


def test_cifar_comparison_rows_match_the_paper():
    rows = cifar_comparison(depths=(20, 110))
    assert [r["model"] for r in rows] == ["cifar_resnet20", "cifar_resnet110"]
    for r in rows:
        assert r["paper_mparams"] == PAPER[r["model"]]["mparams"]
        assert abs(r["mparams"] - r["paper_mparams"]) < 0.05


def _run_tool(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "analyze_model.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_tool_prints_resnet18_table():
    proc = _run_tool("--model", "resnet18", "--input", "224")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert "11,689,512" in total  # torchvision's resnet18 parameter count
    assert re.search(r"\b1\.81\d\b", total)  # GFLOPs, Table 1 says 1.8
    for stage, size in [("conv1", "112x112"), ("conv2_x", "56x56"), ("conv3_x", "28x28"),
                        ("conv4_x", "14x14"), ("conv5_x", "7x7")]:
        assert re.search(rf"^{stage}\s+{size}\s", out, re.M), stage
    assert "[3x3,128; 3x3,128] x2" in out
    assert "Warning" not in proc.stderr  # fvcore's deprecation noise is silenced


def test_tool_rejects_unknown_model():
    # In-process (the subprocess test above already covers the script's start-up).
    path = os.path.join(ROOT, "tools", "analyze_model.py")
    spec = importlib.util.spec_from_file_location("analyze_model", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit) as err:
        tool.main(["--model", "resnet42"])
    assert "depth=42" in str(err.value.code) and "18, 34, 50, 101, 152" in str(err.value.code)


def test_imagenet_comparison_rows():
    """The --all table: every depth, our params equal torchvision's, both stride placements.
    At 32x32 to stay fast; the 224x224 figures against Table 1 are in test_resnet.py."""
    rows = imagenet_comparison(32)
    assert [r["model"] for r in rows] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    for r in rows:
        assert r["params"] == r["torchvision_params"]
        assert r["paper_gflops"] == PAPER[r["model"]]["gflops"]
        basic = r["model"] in ("resnet18", "resnet34")  # stride placement only exists in bottlenecks
        assert (r["gflops_3x3"] == r["gflops_1x1"]) == basic and r["gflops_3x3"] >= r["gflops_1x1"]
