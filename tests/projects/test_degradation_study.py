"""The degradation study (projects/degradation) at toy size: Fig. 7 hooks vs a hand-run forward, curves,
files, and its entry script."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from resnet_det.classification import Classifier
from resnet_det.modeling.backbone import CifarResNet

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "projects", "degradation")
sys.path.insert(0, PROJECT)  # as for its entry script, which runs from this folder

from degradation import (StudySettings, findings, prepare_study_data, response_layers,  # noqa: E402
                         response_stds, run_study, study_cfg)


@pytest.mark.parametrize("plain", [False, True])
def test_response_std_hooks_measure_bn_outputs_before_the_addition(plain):
    torch.manual_seed(0)
    net = CifarResNet(8, plain=plain)  # n=1: stem + 3 blocks x 2 layers = 7 3x3 layers
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 2.0)
                m.running_var.uniform_(0.5, 2.0)
    model = Classifier(net, [0, 0, 0], [1, 1, 1]).eval()
    layers = response_layers(model)
    assert [n for n, _ in layers] == ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2",
                                      "layer3.0.bn1", "layer3.0.bn2"]
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    stds = response_stds(model, x)
    # Oracle: the same forward written out by hand, reading each BN output before ReLU / addition.
    with torch.no_grad():
        h = net.bn1(net.conv1(x.float()))
        expected = [h.std()]
        h = torch.relu(h)
        for stage in (net.layer1, net.layer2, net.layer3):
            b = stage[0]
            r1 = b.bn1(b.conv1(h))
            r2 = b.bn2(b.conv2(torch.relu(r1)))
            expected += [r1.std(), r2.std()]
            h = torch.relu(r2 if plain else r2 + b.downsample(h))
    np.testing.assert_allclose(stds, [float(e) for e in expected], rtol=1e-5)


def test_findings_compare_depths():
    def r(plain, depth, err, std):
        return {"plain": plain, "depth": depth, "final_train_err_running": err, "final_train_err_eval": err,
                "final_val_err": err, "response_std": [std] * 3}

    f = findings([r(True, 20, 10, 2.0), r(True, 56, 15, 2.5), r(False, 20, 9, 1.0), r(False, 56, 7, 0.8)])
    assert f["deeper_plain_trains_worse"] and f["deeper_resnet_trains_better"] and f["resnet_smaller_responses"]
    assert f["plain_56_minus_plain_20_final_train_err_running"] == 5
    f = findings([r(True, 20, 15, 2.0), r(True, 56, 10, 2.5), r(False, 20, 7, 1.0), r(False, 56, 9, 3.0)])
    assert not (f["deeper_plain_trains_worse"] or f["deeper_resnet_trains_better"] or f["resnet_smaller_responses"])


def test_tiny_study_writes_curves_figures_and_summary(datasets_root, tmp_path):
    settings = StudySettings(depths=(8, 14), iterations=4, batch_size=8, eval_period=2, val_images=20)
    data = prepare_study_data("demo", train_per_class=3)
    assert len(data[1]) == 30 and len(data[2]) == 1000  # 10 classes: 3 train / 100 val per class
    summary = run_study(settings, data, str(tmp_path))
    names = [m["name"] for m in summary["models"]]
    assert names == ["plain-8", "plain-14", "resnet-8", "resnet-14"]
    for m in summary["models"]:
        assert m["curve"]["iteration"] == [2, 4]
        assert all(0 <= e <= 100 for e in m["curve"]["train_err"] + m["curve"]["val_err"])
        assert len(m["response_std"]) == m["depth"] - 1  # 6n+1 3x3 layers in a 6n+2 net
    for f in ("curves.png", "response_std.png", "summary.md"):
        assert (tmp_path / f).stat().st_size > 1000 if f.endswith(".png") else (tmp_path / f).is_file()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(saved["findings"]) >= {"deeper_plain_trains_worse", "deeper_resnet_trains_better"}
    text = (tmp_path / "summary.md").read_text()
    assert "| resnet-14 |" in text and "warm-up 100 iterations from x0.1" in text


def test_study_cfg_is_the_cifar_recipe_with_the_study_warmup(tmp_path):
    cfg = study_cfg(StudySettings(), str(tmp_path), 56, plain=True)
    assert cfg.MODEL.CLASSIFIER.CIFAR_DEPTH == 56 and cfg.MODEL.RESNETS.PLAIN and cfg.MODEL.RESNETS.SHORTCUT == "A"
    assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.BASE_LR) == (100, 0.1, 0.1)
    assert tuple(cfg.SOLVER.STEPS) == (360, 510)
    off = study_cfg(StudySettings(warmup_iters=0, extra={"SOLVER.WEIGHT_DECAY": 5e-4}), str(tmp_path), 20, False)
    assert off.SOLVER.WARMUP_ITERS == 0 and off.SOLVER.WEIGHT_DECAY == 5e-4


def test_entry_script_starts():
    res = subprocess.run([sys.executable, os.path.join(PROJECT, "degradation_study.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--depths" in res.stdout, res.stderr[-2000:]
