"""--resume restores the input convention (INPUT.FORMAT, PIXEL_MEAN/STD, STRIDE_IN_1X1) the interrupted
run trained with, or refuses a command line that contradicts it; shipped configs need no adoption."""
import argparse
import glob
import json
import logging
import os
import re
import shutil

import pytest
import torch
import torchvision
import yaml

from resnet_det.checkpoint import Checkpointer, default_meta
from resnet_det.classification import ClassificationTrainer
from resnet_det.classification.trainer import mean_image_meta
from resnet_det.config import get_cfg
from resnet_det.engine import setup_cfg

from engine_utils import DEMO_CONFIG, REPO, TINY_OPTS, make_tiny_shapes, run_train_net

KEYS = {"INPUT.FORMAT": "input_format", "MODEL.PIXEL_MEAN": "pixel_mean", "MODEL.PIXEL_STD": "pixel_std",
        "MODEL.RESNETS.STRIDE_IN_1X1": "stride_in_1x1"}
# The demo config is BGR with torchvision's std in BGR order; the weights below are torchvision's
# (RGB, RGB-ordered mean/std): a fresh start adopts theirs, and a resume must keep it.
RUN = ["--config-file", DEMO_CONFIG, *TINY_OPTS, "DATASETS.TEST", "()", "VIS.NUM_IMAGES", "0", "SEED", "3",
       "SOLVER.CHECKPOINT_PERIOD", "1000"]


def conventions(config_yaml: str) -> dict:
    with open(config_yaml, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    out = {}
    for key in KEYS:
        node = cfg
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def cfg_conventions(cfg) -> dict:
    return {"INPUT.FORMAT": cfg.INPUT.FORMAT, "MODEL.PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN),
            "MODEL.PIXEL_STD": list(cfg.MODEL.PIXEL_STD), "MODEL.RESNETS.STRIDE_IN_1X1": cfg.MODEL.RESNETS.STRIDE_IN_1X1}


def torchvision_conventions() -> dict:
    tv = default_meta("torchvision")
    return {key: tv[name] for key, name in KEYS.items()}


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("w") / "resnet18_tv.pth")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)  # no meta: torchvision's convention
    return path


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tv_weights):
    """A run stopped at MAX_ITER 2 (model_final at iteration 1) and the uninterrupted 4-iteration run."""
    root = make_tiny_shapes(str(tmp_path_factory.mktemp("datasets")))
    base = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, max_iter in (("part", 2), ("full", 4)):
        out = str(base / name)
        res = run_train_net([*RUN, "MODEL.WEIGHTS", tv_weights, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", str(max_iter)],
                            root)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        runs[name] = out
    return {"root": root, **runs}


def _copy(run_dir: str, dest) -> str:
    return shutil.copytree(run_dir, str(dest))


def test_resume_with_other_convention_weights_equals_uninterrupted(interrupted, tv_weights, tmp_path):
    part = _copy(interrupted["part"], tmp_path / "part")
    first = conventions(os.path.join(part, "config.yaml"))
    assert first == torchvision_conventions()  # the fresh start adopted the weights' convention
    res = run_train_net(["--resume", *RUN, "MODEL.WEIGHTS", tv_weights, "OUTPUT_DIR", part, "SOLVER.MAX_ITER", "4"],
                        interrupted["root"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Resumed from" in res.stdout and "at iteration 1" in res.stdout
    a = torch.load(os.path.join(interrupted["full"], "model_final.pth"), weights_only=True)["model"]
    b = torch.load(os.path.join(part, "model_final.pth"), weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def losses(run_dir):
        lines = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.json"))]
        return {x["iteration"]: x["total_loss"] for x in lines if "total_loss" in x}

    full, resumed = losses(interrupted["full"]), losses(part)
    assert sorted(resumed) == [0, 1, 2, 3] and all(full[i] == resumed[i] for i in (2, 3)), (full, resumed)
    # config.yaml after the resume says what the first run used, for these keys.
    assert conventions(os.path.join(part, "config.yaml")) == first


def test_resume_refuses_an_override_that_contradicts_the_checkpoint(interrupted, tv_weights, tmp_path):
    part = _copy(interrupted["part"], tmp_path / "part")
    before = open(os.path.join(part, "config.yaml")).read()
    res = run_train_net(["--resume", *RUN, "MODEL.WEIGHTS", tv_weights, "OUTPUT_DIR", part, "SOLVER.MAX_ITER", "4",
                         "INPUT.FORMAT", "BGR"], interrupted["root"])
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    message = res.stderr[res.stderr.rindex("error: "):].strip()
    assert "\n" not in message, message  # one paragraph
    for needle in ("INPUT.FORMAT", "model_final.pth", "RGB", "BGR", "drop the override", "OUTPUT_DIR"):
        assert needle in message, (needle, message)
    assert open(os.path.join(part, "config.yaml")).read() == before  # nothing was written
    assert "Resumed from" not in res.stdout


def _args(config_file, *opts, resume=True):
    return argparse.Namespace(config_file=config_file, opts=[str(o) for o in opts], resume=resume, eval_only=False)


def _save_checkpoint(out_dir, meta):
    Checkpointer(torch.nn.Linear(1, 1), str(out_dir), meta=meta).save("model_0000004", iteration=4)


def test_pretraining_resume_restores_the_runs_config_not_the_mean_image_average(tv_weights, tmp_path):
    """tools/pretrain_net.py shares setup_cfg; its checkpoints' pixel_mean is the mean image's average
    (for the detector hand-off), yet a resume must restore the config the run used."""
    config = os.path.join(REPO, "configs", "imagenet", "R-18.yaml")
    opts = ["OUTPUT_DIR", tmp_path, "MODEL.WEIGHTS", tv_weights]
    first = setup_cfg(_args(config, *opts, resume=False))
    assert first.INPUT.FORMAT == "RGB"  # adopted from the torchvision weights (R-18.yaml says BGR)
    meta = {**ClassificationTrainer.weights_meta(first), **mean_image_meta(torch.full((3, 4, 4), 50.0))}
    _save_checkpoint(tmp_path, meta)
    resumed = setup_cfg(_args(config, *opts))
    assert cfg_conventions(resumed) == cfg_conventions(first) == torchvision_conventions()


def test_resume_from_a_checkpoint_without_meta_adopts_like_a_fresh_start(tv_weights, tmp_path, caplog):
    _save_checkpoint(tmp_path, None)
    with caplog.at_level(logging.WARNING, logger="resnet_det"):
        cfg = setup_cfg(_args(DEMO_CONFIG, "OUTPUT_DIR", tmp_path, "MODEL.WEIGHTS", tv_weights))
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_STD) == default_meta("torchvision")["pixel_std"]
    assert "records no input convention" in caplog.text
    # ... and without the initial weights either, the config's own values, said so.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnet_det"):
        cfg = setup_cfg(_args(DEMO_CONFIG, "OUTPUT_DIR", tmp_path, "MODEL.WEIGHTS", tmp_path / "gone.pth"))
    assert cfg.INPUT.FORMAT == "BGR" and "records no input convention" in caplog.text


def test_resume_without_a_checkpoint_adopts_the_weights_convention(tv_weights, tmp_path):
    """`--resume` in a fresh OUTPUT_DIR is a fresh start: MODEL.WEIGHTS' convention is adopted."""
    cfg = setup_cfg(_args(DEMO_CONFIG, "OUTPUT_DIR", tmp_path / "empty", "MODEL.WEIGHTS", tv_weights))
    assert cfg.INPUT.FORMAT == "RGB"


def _shipped_configs_with_weights():
    paths = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                   if os.sep + "detectron2" + os.sep not in p)
    found = []
    for p in paths:
        cfg = get_cfg()
        cfg.merge_from_file(p)
        if cfg.MODEL.WEIGHTS:
            found.append(os.path.relpath(p, REPO))
    return found


# The two kinds of default MODEL.WEIGHTS the shipped configs name: torchvision ImageNet state dicts
# (README "Weights": saved from torchvision.models.resnetN(weights="IMAGENET1K_V1")), and checkpoints
# of our own pretraining configs.
TORCHVISION_FILE = re.compile(r"(^|/)weights/resnet(18|34|50|101|152)-imagenet\.pth$")
PRETRAINED_BY = {"./output/imagenet_R-101/model_final.pth": "configs/imagenet/R-101.yaml"}


@pytest.mark.parametrize("path", _shipped_configs_with_weights())
def test_shipped_config_is_in_the_convention_of_its_default_weights(path):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, path))
    got = cfg_conventions(cfg)
    if TORCHVISION_FILE.search(cfg.MODEL.WEIGHTS):
        assert got == torchvision_conventions(), f"{path}: nothing may need adopting from {cfg.MODEL.WEIGHTS}"
    elif cfg.MODEL.WEIGHTS in PRETRAINED_BY:
        producer = get_cfg()
        producer.merge_from_file(os.path.join(REPO, PRETRAINED_BY[cfg.MODEL.WEIGHTS]))
        # The mean is the producer's per-pixel mean image, recorded in its checkpoint and adopted.
        assert producer.INPUT.MEAN_MODE == "per_pixel"
        assert got["INPUT.FORMAT"] == producer.INPUT.FORMAT
        assert got["MODEL.PIXEL_STD"] == list(producer.MODEL.PIXEL_STD)
        assert got["MODEL.RESNETS.STRIDE_IN_1X1"] == producer.MODEL.RESNETS.STRIDE_IN_1X1
    else:
        pytest.fail(f"{path}: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} is of no kind this test knows; add it here")


def test_the_c4_paper_configs_are_among_the_checked():
    checked = set(_shipped_configs_with_weights())
    assert {"configs/frcnn_r50_c4_coco.yaml", "configs/frcnn_r101_coco.yaml",
            "configs/frcnn_r101_voc0712.yaml"} <= checked


@pytest.mark.parametrize("weights_now", ["changed", "gone"])
def test_resume_restores_the_checkpoints_convention_not_model_weights_now(tv_weights, tmp_path, weights_now):
    """The record in OUTPUT_DIR decides, not MODEL.WEIGHTS read again at resume time: the other tests
    resume with the same MODEL.WEIGHTS as the first run, so re-adopting it would pass them too. Here the
    file at that path now holds another convention's weights (detectron2 names: MSRA's BGR, mean only),
    or is gone."""
    from resnet_det.checkpoint import convert_state_dict
    from resnet_det.engine import Trainer

    weights = tmp_path / "init.pth"
    shutil.copy(tv_weights, weights)
    out = tmp_path / "run"
    first = setup_cfg(_args(DEMO_CONFIG, "OUTPUT_DIR", out, "MODEL.WEIGHTS", weights, resume=False))
    assert cfg_conventions(first) == torchvision_conventions()  # adopted from the torchvision file
    _save_checkpoint(out, Trainer.weights_meta(first))
    if weights_now == "changed":
        d2, _ = convert_state_dict(torch.load(tv_weights, weights_only=True), "torchvision", "detectron2", log=False)
        torch.save({"model": d2}, weights)  # detectron2's .pth layout
        fresh = setup_cfg(_args(DEMO_CONFIG, "OUTPUT_DIR", tmp_path / "other", "MODEL.WEIGHTS", weights,
                                resume=False))
        assert cfg_conventions(fresh) != torchvision_conventions()  # the file now implies another convention
    else:
        os.remove(weights)
    resumed = setup_cfg(_args(DEMO_CONFIG, "OUTPUT_DIR", out, "MODEL.WEIGHTS", weights))
    assert cfg_conventions(resumed) == cfg_conventions(first)
