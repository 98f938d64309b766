"""tools/convert_weights.py end to end, as a user runs it (subprocess, files in tmp_path)."""
import importlib.util
import os
import pickle
import subprocess
import sys

import pytest
import torch

from resnet_det.checkpoint import default_meta, read_checkpoint
from resnet_det.modeling.backbone.resnet import ResNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_weights.py")


def convert(*args, check=True):
    proc = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = ResNet(18, num_classes=10, norm="FrozenBN").eval()
    g = torch.Generator().manual_seed(1)
    for name, t in model.state_dict().items():  # non-trivial BN statistics, so folding matters
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


def test_torchvision_to_detectron2_to_msra_to_resnet_det(tmp_path, net):
    src = tmp_path / "r18.pth"
    torch.save(net.state_dict(), src)
    proc = convert("--input", src, "--output", tmp_path / "r18_d2.pkl", "--to", "detectron2", "--depth", 18)
    assert f"torchvision -> detectron2: {len(net.state_dict())} tensors converted" in proc.stdout
    with open(tmp_path / "r18_d2.pkl", "rb") as f:
        raw = pickle.load(f)
    assert raw["matching_heuristics"] is True and "stem.conv1.norm.running_var" in raw["model"]
    assert raw["meta"] == default_meta("torchvision")  # the weights still expect RGB input

    convert("--input", tmp_path / "r18_d2.pkl", "--output", tmp_path / "r18_msra.pkl", "--to", "msra")
    with open(tmp_path / "r18_msra.pkl", "rb") as f:
        assert "res2_1_branch2b_bn_s" in pickle.load(f)["blobs"]
    proc = convert("--input", tmp_path / "r18_msra.pkl", "--output", tmp_path / "out" / "r18.pth",
                   "--to", "resnet_det")
    assert "msra -> torchvision" in proc.stdout and "unmatched:" not in proc.stdout

    sd, meta = read_checkpoint(tmp_path / "out" / "r18.pth")
    assert meta == default_meta("torchvision")
    rebuilt = ResNet(18, num_classes=10, norm="FrozenBN").eval()
    rebuilt.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x), rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r18.pth"]  # written atomically


def test_detector_layout_for_the_detectron2_plugin(tmp_path, net, capsys):
    torch.save({"model": net.state_dict()}, tmp_path / "r18.pth")
    proc = convert("--input", tmp_path / "r18.pth", "--output", tmp_path / "c4.pkl", "--to", "detectron2",
                   "--detector", "C4", "--plugin")
    assert "dropped (a detector has no ImageNet classifier): fc.weight, fc.bias" in proc.stdout
    with open(tmp_path / "c4.pkl", "rb") as f:
        model = pickle.load(f)["model"]
    assert "backbone.body.layer3.1.bn2.weight" in model and "roi_heads.res5.1.conv2.norm.weight" in model
    assert not any(k.startswith("backbone.body.layer4") for k in model)
    # And back: a whole-detector file gives its backbone, res5 included.
    code, out, _ = run_in_process(capsys, "--input", tmp_path / "c4.pkl", "--output", tmp_path / "back.pth",
                                  "--to", "torchvision")
    assert code == 0 and "input is a whole detector (d2plugin-C4)" in out
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    ref = net.state_dict()
    assert set(back) == set(ref) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(back[k], ref[k]) for k in back)


def run_in_process(capsys, *args):
    """The tool's main() in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("convert_weights", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        code = tool.main([str(a) for a in args])
    except SystemExit as e:  # user errors exit with their message, as the interpreter would print it
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_user_errors_are_explained(tmp_path, net, capsys):
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    code, _, err = run_in_process(capsys, "--input", tmp_path / "r18.pth", "--output", tmp_path / "x.pkl",
                                  "--to", "msra", "--depth", 50)
    assert code != 0
    assert "Table 1 has bottleneck blocks (3, 4, 6, 3), but the weights have basic blocks (2, 2, 2, 2)" in err
    code, _, err = run_in_process(capsys, "--input", tmp_path / "r18.pth", "--output", tmp_path / "x.pth",
                                  "--to", "detectron2")
    assert code != 0 and "name it *.pkl" in err
    code, _, err = run_in_process(capsys, "--input", tmp_path / "r18.pth", "--output", tmp_path / "x.pkl",
                                  "--to", "detectron2", "--plugin")
    assert code != 0 and "--plugin needs --detector" in err
    with pytest.raises(FileNotFoundError, match="missing.pth' does not exist"):
        run_in_process(capsys, "--input", tmp_path / "missing.pth", "--output", tmp_path / "x.pth",
                       "--to", "resnet_det")
    assert not any(p.name.startswith("x.") for p in tmp_path.iterdir())


def test_strict_refuses_unmatched_keys(tmp_path, net, capsys):
    torch.save({**net.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "r18.pth")
    args = ("--input", tmp_path / "r18.pth", "--output", tmp_path / "x.pth", "--to", "resnet_det")
    code, out, _ = run_in_process(capsys, *args, "--strict")
    assert code == 2 and "unmatched: extra.weight" in out
    assert not (tmp_path / "x.pth").exists()
    code, out, _ = run_in_process(capsys, *args)
    assert code == 0 and "unmatched: extra.weight" in out and (tmp_path / "x.pth").exists()


def test_whole_detector_of_another_architecture_is_refused(tmp_path, capsys):
    from resnet_det.config import get_cfg
    from resnet_det.modeling.detector import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-C4.yaml"))
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.ROI_HEADS.NUM_CLASSES", 3])
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "c4.pth")
    code, _, err = run_in_process(capsys, "--input", tmp_path / "c4.pth", "--output", tmp_path / "x.pkl",
                                  "--to", "detectron2", "--detector", "FPN")
    assert code != 0 and "--detector FPN: the input is a C4 detector (resnet_det-C4)" in err
    assert not (tmp_path / "x.pkl").exists()
