"""Training the Localizer: losses fall, LocalizerTrainer runs with the engine (checkpoint, evaluation,
exact resume of the loader), and tools/train_localizer.py works end to end."""
import json
import os
import subprocess
import sys

import pytest
import torch

from resnet_det.config import get_cfg
from resnet_det.data import make_localization_set
from resnet_det.data.catalog import unregister
from resnet_det.localization import LocalizerTrainer, build_localizer, register_ilsvrc_localization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo", "loc_R-18_demo.yaml")
TINY = ["MODEL.DEVICE", "cpu", "INPUT.CROP_SIZE", "48", "INPUT.SCALE_RANGE", "(48, 64)", "INPUT.TEST_RESIZE", "64",
        "MODEL.LOCALIZER.HEAD_CHANNELS", "16", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "1",
        "DATALOADER.NUM_WORKERS", "0", "LOG_PERIOD", "1", "VIS.NUM_IMAGES", "0", "SOLVER.STEPS", "(100,)"]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """A 3-class generated set (4 train / 1 val per class, 64 px) registered as loc_tiny_{train,val}."""
    root = make_localization_set(str(tmp_path_factory.mktemp("loc") / "set"), num_classes=3, train_per_class=4,
                                 val_per_class=1, image_size=64)
    for split in ("train", "val"):
        unregister(f"loc_tiny_{split}")
        register_ilsvrc_localization(f"loc_tiny_{split}", os.path.join(root, split),
                                     synset_file=os.path.join(root, "LOC_synset_mapping.txt"))
    yield root
    for split in ("train", "val"):
        unregister(f"loc_tiny_{split}")


def tiny_cfg(output_dir, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(DEMO)
    cfg.merge_from_list(TINY + ["OUTPUT_DIR", str(output_dir), "DATASETS.TRAIN", "('loc_tiny_train',)",
                                "DATASETS.TEST", "('loc_tiny_val',)", "MODEL.CLASSIFIER.NUM_CLASSES", "3",
                                *map(str, opts)])
    return cfg


def test_a_few_iterations_reduce_the_loss(tiny_set, tmp_path):
    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = build_localizer(cfg)
    batch = next(iter(LocalizerTrainer.build_train_loader(cfg)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(12):
        losses = model(batch)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = totals[0], totals[-1]
    assert sum(last.values()) < 0.7 * sum(first.values()), totals
    assert last["loss_objectness"] < first["loss_objectness"] and last["loss_cls"] < first["loss_cls"]


def test_trainer_trains_evaluates_and_resumes_the_stream(tiny_set, tmp_path):
    cfg = tiny_cfg(tmp_path, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2")
    cfg.freeze()
    trainer = LocalizerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    loc = results["loc"]
    assert set(loc) == {"top1_loc_err", "top5_loc_err", "top1_cls_err", "top5_cls_err", "oracle_loc_err"}
    assert all(0 <= v <= 100 for v in loc.values())
    assert loc["top5_cls_err"] == 0  # 3 classes: all of them are among the top 5
    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    assert [r["iteration"] for r in rows if "loss_box_reg" in r] == [0, 1, 2]
    assert os.path.isfile(tmp_path / "model_final.pth") and os.path.isfile(tmp_path / "model_0000001.pth")
    # Exact resume: a loader started at iteration 2 yields batch 2 of a fresh one, same crops and flips.
    fresh = iter(LocalizerTrainer.build_train_loader(cfg))
    batches = [next(fresh) for _ in range(3)]
    resumed = next(iter(LocalizerTrainer.build_train_loader(cfg, start_iter=2)))
    for a, b in zip(batches[2], resumed):
        assert a["file_name"] == b["file_name"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    # Resuming continues after the last checkpoint (model_final = iteration 2).
    again = LocalizerTrainer(cfg)
    again.resume_or_load(resume=True)
    assert again.start_iter == 3


def test_trainer_initialises_from_classification_weights(tiny_set, tmp_path):
    import torchvision

    tv = torchvision.models.resnet18()  # ImageNet's 1000 classes: the 3-way fc stays fresh
    path = str(tmp_path / "r18.pth")
    torch.save(tv.state_dict(), path)
    cfg = tiny_cfg(tmp_path, "MODEL.WEIGHTS", path)
    trainer = LocalizerTrainer(cfg)
    trainer.resume_or_load(resume=False)
    assert torch.equal(trainer.model.net.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert sorted(r.split()[0] for r in trainer.weights_report["reinitialized"]) == ["net.fc.bias", "net.fc.weight"]
    torch.save({"x.y": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"r18.pth \(backbone weights\) matches none of the model's"):
        LocalizerTrainer(cfg).resume_or_load(resume=False)


def test_num_classes_must_match_the_data(tiny_set, tmp_path):
    cfg = tiny_cfg(tmp_path, "MODEL.CLASSIFIER.NUM_CLASSES", "5")
    with pytest.raises(ValueError, match=r"MODEL.CLASSIFIER.NUM_CLASSES=5 but data set 'loc_tiny_train' has 3"):
        LocalizerTrainer.build_train_loader(cfg)


def test_train_localizer_cli(tmp_path):
    """The demo config through the tool, on the built-in loc_demo set (generated in ~1 s), 2 iterations."""
    env = {**os.environ, "RESNET_DET_DATASETS": str(tmp_path / "ds"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_localizer.py"), "--config-file", DEMO, *TINY,
           "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out), "VIS.NUM_IMAGES", "1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "top1_loc_err" in r.stderr + r.stdout
    # One prediction | ground-truth panel per drawn image, and the grid of all of them (as for detectors).
    assert os.path.isfile(out / "model_final.pth") and len(os.listdir(out / "vis")) == 2
    assert os.path.isfile(out / "vis" / "summary.png")
    # --eval-only on the trained checkpoint gives a metrics line.
    r = subprocess.run(cmd[:4] + ["--eval-only", *TINY, "OUTPUT_DIR", str(out), "MODEL.WEIGHTS",
                                  str(out / "model_final.pth")], env=env, capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    assert rows[-1]["eval_only"] is True and "loc/oracle_loc_err" in rows[-1]
