"""Exporting a trained CIFAR classifier with its shipped config (issue 15, item 4).

configs/cifar10/resnet-20.yaml trained for 2 iterations on tiny generated CIFAR batches, then
exported with tools/export_model.py's command line (per-pixel mean, no override). Oracle: a
CifarResNet(20) rebuilt here from the checkpoint file alone (strict load, the mean image from its
meta, read with torch.load(weights_only=True)) inside the eager `Classifier`, not export's builder.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from resnet_det.classification import ClassificationTrainer, Classifier, register_classification_builtins
from resnet_det.classification.cifar import CIFAR10_CLASSES, write_cifar_batch, write_cifar_meta
from resnet_det.config import get_cfg
from resnet_det.export import ExportedModel
from resnet_det.modeling.backbone import CifarResNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cifar10", "resnet-20.yaml")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny cifar-10-batches-py (5 x 8 training images) and a ResNet-20 trained 2 iterations on it."""
    d = tmp_path_factory.mktemp("cifar_export")
    batches = d / "datasets" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        write_cifar_batch(batches / f"data_batch_{i}", rng.integers(0, 256, (8, 32, 32, 3), np.uint8),
                          np.arange(8) % 10)
    write_cifar_batch(batches / "test_batch", rng.integers(0, 256, (4, 32, 32, 3), np.uint8), range(4))
    write_cifar_meta(str(batches), CIFAR10_CLASSES)
    register_classification_builtins(str(d / "datasets"))
    try:
        cfg = get_cfg()
        cfg.merge_from_file(CONFIG)
        cfg.merge_from_list(["DATASETS.TRAIN", ("cifar10_trainval",), "DATASETS.TEST", (),
                             "SOLVER.IMS_PER_BATCH", 8, "SOLVER.MAX_ITER", 2, "DATALOADER.NUM_WORKERS", 0,
                             "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(d / "train"), "LOG_PERIOD", 1])
        trainer = ClassificationTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        register_classification_builtins()
    env = {**os.environ, "RESNET_DET_DATASETS": str(d / "datasets"),
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return {"dir": d, "weights": str(d / "train" / "model_final.pth"), "env": env}


def export(trained, *args, config=CONFIG, out="out"):
    """tools/export_model.py as a user runs it (a fresh process: exit status, stderr, no traceback)."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "export_model.py"), "--config-file", config,
           "--format", "torchscript", "--output", str(trained["dir"] / out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=trained["env"], cwd=str(trained["dir"]))


def export_here(trained, capsys, *args, fmt="torchscript", config=CONFIG, out="out"):
    """The same tool's main() in this process (saves a process start per refusal)."""
    spec = importlib.util.spec_from_file_location("export_model", os.path.join(ROOT, "tools", "export_model.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    capsys.readouterr()
    rc = tool.main(["--config-file", config, "--format", fmt, "--output", str(trained["dir"] / out), *args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], rc, captured.out, captured.err)


def oracle(weights: str) -> Classifier:
    """ResNet-20 and the mean image from the checkpoint file alone: every net tensor must load."""
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)  # the mean image needs no pickle
    net = CifarResNet(20, num_classes=10)
    net.load_state_dict({k[len("net."):]: v for k, v in ckpt["model"].items()}, strict=True)
    mean_image = ckpt["meta"]["mean_image"]
    assert mean_image.shape == (3, 32, 32) and ckpt["meta"]["mean_mode"] == "per_pixel"
    return Classifier(net, ckpt["meta"]["pixel_mean"], ckpt["meta"]["pixel_std"], mean_image).eval()


@pytest.mark.parametrize("fmt, atol", [("torchscript", 1e-5), ("onnx", 1e-4)])
def test_trained_cifar_resnet20_exports_with_its_mean_image(trained, capsys, fmt, atol):
    run = export_here(trained, capsys, "MODEL.WEIGHTS", trained["weights"], fmt=fmt, out=fmt)
    assert run.returncode == 0, run.stderr
    assert "PASSED" in run.stdout
    artifact = str(trained["dir"] / fmt / ("model.ts" if fmt == "torchscript" else "model.onnx"))
    meta = json.load(open(artifact + ".json"))
    assert meta["depth"] == 20 and meta["variant"] == "cifar" and meta["num_classes"] == 10
    assert meta["mean_mode"] == "per_pixel" and meta["input"]["mean_image_shape"] == [3, 32, 32]
    assert meta["verification"]["passed"] is True
    assert meta["class_names"] == list(CIFAR10_CLASSES)

    eager, exported = oracle(trained["weights"]), ExportedModel(artifact)
    rng = np.random.default_rng(1)
    # 32x32: the per-pixel mean image; 40x24: its channel average, as the eager Classifier does.
    for shape in [(3, 3, 32, 32), (1, 3, 32, 32), (2, 3, 40, 24)]:
        images = rng.integers(0, 256, shape, np.uint8)  # raw BGR pixels, as metadata says
        with torch.no_grad():
            want = eager(torch.from_numpy(images)).numpy()
        got = exported(images)[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    # The mean image really matters: with the channel average at 32x32 the logits would differ.
    images = rng.integers(0, 256, (2, 3, 32, 32), np.uint8)
    flat = Classifier(eager.net, eager.pixel_mean.flatten().tolist(), [1.0, 1.0, 1.0]).eval()
    with torch.no_grad():
        assert not np.allclose(exported(images)[0], flat(torch.from_numpy(images)).numpy(), atol=1e-3)


def _save_like(trained, net: torch.nn.Module, name: str, **meta_changes) -> str:
    """`net`'s weights under "net." with the trained checkpoint's meta (mean image included)."""
    ckpt = torch.load(trained["weights"], map_location="cpu", weights_only=True)
    path = str(trained["dir"] / name)
    torch.save({"model": {f"net.{k}": v for k, v in net.state_dict().items()},
                "meta": {**ckpt["meta"], **meta_changes}}, path)
    return path


def assert_refused(run, *words):
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "error:" in run.stderr, run.stderr
    err = run.stderr[run.stderr.index("error:"):].strip()  # log lines come before it
    assert "\n" not in err, err  # one paragraph
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("net, words", [
    (lambda: CifarResNet(56, num_classes=10), ["deeper network", "(9, 9, 9, 0)"]),  # extra blocks
    (lambda: torchvision.models.resnet50(num_classes=10), ["deeper network", "bottleneck blocks (3, 4, 6, 3)"]),
    (lambda: torch.nn.Linear(4, 2), ["none of its 2 tensors matches"]),
])
def test_checkpoint_of_another_depth_is_refused(trained, capsys, net, words):
    weights = _save_like(trained, net(), "other_depth.pth")
    run = export_here(trained, capsys, "MODEL.WEIGHTS", weights, out="refused")
    assert_refused(run, "other_depth.pth", *words)
    assert not (trained["dir"] / "refused" / "model.ts").exists()


def test_shallower_checkpoint_leaves_required_tensors_missing(trained, capsys):
    """The trained ResNet-20 checkpoint into the ResNet-56 config: layer1.3.. would stay random."""
    run = export_here(trained, capsys, "MODEL.WEIGHTS", trained["weights"], config=CONFIG.replace("20", "56"),
                      out="r56")
    assert_refused(run, "model_final.pth", "layer1.3.conv1.weight", "missing")
    assert not (trained["dir"] / "r56" / "model.ts").exists()


def test_mean_mode_contradicting_the_checkpoint_is_refused(trained):
    """A per-pixel checkpoint exported as per-channel (the override the bug report needed) would
    subtract another mean than training did at 32x32. A real process: one paragraph, no traceback."""
    run = export(trained, "MODEL.WEIGHTS", trained["weights"], "INPUT.MEAN_MODE", "per_channel", out="pc")
    assert_refused(run, "INPUT.MEAN_MODE", "per_pixel")
