"""Pretraining -> detection hand-off, exact resume of pretraining, and the shipped configs."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from resnet_det.checkpoint import load_model_weights
from resnet_det.classification import ClassificationTrainer, build_classifier
from resnet_det.classification.data import load_image_folder
from resnet_det.config import get_cfg, validate_cfg
from resnet_det.data import DatasetCatalog, make_classification_set
from resnet_det.engine import Trainer, setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_train(tmp_path_factory):
    root = make_classification_set(str(tmp_path_factory.mktemp("cls") / "set"), num_classes=3,
                                   train_per_class=6, val_per_class=2, image_size=32, seed=0)
    for split in ("train", "val"):
        DatasetCatalog.remove(f"handoff_{split}")
        DatasetCatalog.register(f"handoff_{split}", lambda s=split: load_image_folder(os.path.join(root, s))[0])
    return root


def _pretrain_cfg(out, **kw):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "imagenet", "R-18.yaml"))
    cfg.merge_from_list(["MODEL.CLASSIFIER.NUM_CLASSES", 3, "MODEL.DEVICE", "cpu", "INPUT.CROP_SIZE", 24,
                         "INPUT.SCALE_RANGE", (28, 32), "INPUT.TEST_RESIZE", 28, "DATASETS.TRAIN", ("handoff_train",),
                         "DATASETS.TEST", (), "SOLVER.IMS_PER_BATCH", 4, "SOLVER.REFERENCE_BATCH", 4,
                         "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 100, "DATALOADER.NUM_WORKERS", 0,
                         "OUTPUT_DIR", str(out), "LOG_PERIOD", 1])
    cfg.merge_from_list([x for kv in kw.items() for x in kv])
    return cfg


def test_pretrained_checkpoint_loads_into_the_c4_detector(tiny_train, tmp_path):
    cfg = _pretrain_cfg(tmp_path / "pre")  # the paper's per-pixel mean, recorded for the detector
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    ckpt_path = str(tmp_path / "pre" / "model_final.pth")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    sd = ckpt["model"]
    assert all(k.startswith("net.") for k in sd) and "net.fc.weight" in sd and "net.layer4.1.bn2.running_var" in sd
    mean_image = ckpt["meta"]["mean_image"]
    assert mean_image.shape == (3, 24, 24)
    assert ckpt["meta"]["pixel_mean"] == pytest.approx(mean_image.mean(dim=(1, 2)).tolist())
    assert ckpt["meta"]["input_format"] == "BGR" and ckpt["meta"]["pixel_std"] == [1.0, 1.0, 1.0]

    # The detector side, as tools/train_net.py builds it (setup_cfg adopts the recorded conventions).
    args = argparse.Namespace(config_file=os.path.join(REPO, "configs", "Base-RCNN-C4.yaml"), resume=False,
                              opts=["MODEL.RESNETS.DEPTH", 18, "MODEL.ROI_HEADS.NUM_CLASSES", 5,
                                    "MODEL.WEIGHTS", ckpt_path, "MODEL.DEVICE", "cpu",
                                    "OUTPUT_DIR", str(tmp_path / "det")])
    det_cfg = setup_cfg(args)
    assert list(det_cfg.MODEL.PIXEL_MEAN) == pytest.approx(ckpt["meta"]["pixel_mean"])
    assert list(det_cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
    det = Trainer(det_cfg)
    det.resume_or_load(resume=False)
    target = det.model.state_dict()
    checked = 0
    for key, value in sd.items():
        name = key[len("net."):]
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        where = ("roi_heads.box_head.res5." + name[len("layer4."):] if name.startswith("layer4.")
                 else "backbone.body." + name)
        assert torch.equal(target[where], value), where  # FrozenBN stems/res2 too: same buffers
        checked += 1
    assert checked == 5 + 8 * 10 + 3 * 5  # stem conv+BN(4), 8 blocks x 2 (conv+BN), 3 projections
    assert not any(k.startswith("fc") or ".fc." in k for k in target)
    # The fc is dropped with a note, and nothing of the backbone or res5 is left at random init.
    report = load_model_weights(Trainer.build_model(det_cfg), ckpt_path)
    assert "fc.weight" in report["unused"] and "fc.bias" in report["unused"]
    assert not [k for k in report["missing"] if k.startswith(("backbone.body", "roi_heads.box_head.res5"))]


def test_pretraining_resumes_exactly(tiny_train, tmp_path):
    common = {"MODEL.CLASSIFIER.STYLE": "cifar", "MODEL.CLASSIFIER.CIFAR_DEPTH": 8, "MODEL.RESNETS.SHORTCUT": "A",
              "INPUT.CROP_SIZE": 32, "SOLVER.MAX_ITER": 4, "INPUT.MEAN_MODE": "per_channel"}
    torch.manual_seed(0)  # the same initialisation for both runs (tools seed it from cfg.SEED)
    straight = ClassificationTrainer(_pretrain_cfg(tmp_path / "a", **common))
    straight.train()
    torch.manual_seed(0)
    half = ClassificationTrainer(_pretrain_cfg(tmp_path / "b", **{**common, "SOLVER.MAX_ITER": 2}))
    half.train()
    resumed = ClassificationTrainer(_pretrain_cfg(tmp_path / "b", **common))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = build_classifier(_pretrain_cfg(tmp_path / "c", **common)).state_dict()
    assert not all(torch.equal(a[k], fresh[k]) for k in a)  # it did train


@pytest.mark.parametrize("path,params", [("cifar10/resnet-20.yaml", 0.27e6), ("cifar10/plain-56.yaml", 0.85e6),
                                         ("cifar10/resnet-110.yaml", 1.7e6), ("imagenet/R-34-A.yaml", 21.8e6),
                                         ("imagenet/plain-18.yaml", 11.7e6)])
def test_shipped_configs_build_the_papers_nets(path, params):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", path))
    validate_cfg(cfg)
    cfg.INPUT.MEAN_MODE = "per_channel"  # the mean image needs the data set
    n = sum(p.numel() for p in build_classifier(cfg).parameters())
    assert n == pytest.approx(params, rel=0.03)  # Sec. 4.2 / torchvision's counts


def test_pretrain_net_cli_train_then_10crop_eval(tiny_train, tmp_path):
    out = tmp_path / "cli"
    base = [sys.executable, os.path.join(REPO, "tools", "pretrain_net.py"), "--config-file",
            os.path.join(REPO, "configs", "demo", "cls_cifar_resnet20_demo.yaml")]
    opts = ["MODEL.CLASSIFIER.NUM_CLASSES", "3", "MODEL.CLASSIFIER.CIFAR_DEPTH", "8", "DATASETS.TRAIN",
            "('handoff_train',)", "DATASETS.TEST", "('handoff_val',)", "SOLVER.IMS_PER_BATCH", "4",
            "SOLVER.REFERENCE_BATCH", "4", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu"]
    # The test's data sets live in this process's catalog: register them in the child via sitecustomize.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nfrom resnet_det.data import DatasetCatalog\n"
        "from resnet_det.classification.data import load_image_folder\n"
        f"for s in ('train', 'val'):\n    DatasetCatalog.register('handoff_' + s, lambda s=s: "
        f"load_image_folder(os.path.join({tiny_train!r}, s))[0])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), REPO])}
    r = subprocess.run(base + opts, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model_final.pth").is_file() and (out / "metrics.json").is_file()
    r = subprocess.run(base + ["--eval-only"] + opts + ["MODEL.WEIGHTS", str(out / "model_final.pth"),
                                                        "TEST.CLS_PROTOCOL", "10crop"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "top1_err" in (out / "metrics.json").read_text().splitlines()[-1]
