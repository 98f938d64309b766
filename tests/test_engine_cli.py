"""train_net's user-facing errors, eval-only, the 2-process run, and every shipped config."""
import glob
import json
import os

import pytest
from resnet_det.config import get_cfg, validate_cfg
from resnet_det.engine.solver import lr_factor, scale_schedule
from resnet_det.modeling.detector import build_model

from engine_utils import DEMO_CONFIG, REPO, TINY_OPTS, make_tiny_shapes, run_train_net


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return make_tiny_shapes(str(tmp_path_factory.mktemp("datasets")))


def _error_text(res):
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return res.stderr


def test_unknown_key_in_file_names_file_and_suggestion(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("_BASE_: %s\nMODEL:\n  RESNETS:\n    DEPHT: 50\n" % DEMO_CONFIG)
    err = _error_text(run_train_net(["--config-file", str(cfg)], str(tmp_path)))
    assert "bad.yaml" in err and "MODEL.RESNETS.DEPHT" in err and "MODEL.RESNETS.DEPTH" in err


def test_bad_values_and_renamed_keys_are_clear(tmp_path):
    err = _error_text(run_train_net(["--config-file", DEMO_CONFIG, "MODEL.RESNETS.DEPTH", "42"], str(tmp_path)))
    assert "MODEL.RESNETS.DEPTH=42" in err and "18, 34, 50, 101, 152" in err
    err = _error_text(run_train_net(["--config-file", DEMO_CONFIG, "MODEL.RESNETS.STRIDE_IN_1x1", "True"],
                                    str(tmp_path)))
    assert "renamed to 'MODEL.RESNETS.STRIDE_IN_1X1'" in err
    err = _error_text(run_train_net(["--config-file", DEMO_CONFIG, "SOLVER.MAX_ITER", "many"], str(tmp_path)))
    assert "SOLVER.MAX_ITER" in err


def test_missing_dataset_is_one_paragraph(tmp_path):
    res = run_train_net(["--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "o"),
                         "DATASETS.TRAIN", "('coco_2017_train',)"], str(tmp_path / "empty_root"))
    err = _error_text(res)
    assert "coco_2017_train" in err and "instances_train2017.json" in err and "README" in err


def test_missing_weights_is_one_paragraph(tmp_path, shapes_root):
    res = run_train_net(["--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "o"),
                         "MODEL.WEIGHTS", str(tmp_path / "nope.pth")], shapes_root)
    err = _error_text(res)
    assert "nope.pth" in err and "convert_weights" in err


def test_unwritable_output_dir_fails_at_start(tmp_path, shapes_root):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output folder should go
    res = run_train_net(["--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(blocker / "out")], shapes_root)
    assert "not writable" in _error_text(res)


def test_two_process_training_keeps_ranks_identical_and_eval_only(tmp_path, shapes_root):
    out = tmp_path / "ddp"
    res = run_train_net(["--config-file", DEMO_CONFIG, "--num-gpus", "2", *TINY_OPTS, "OUTPUT_DIR", str(out),
                         "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "MODEL.RESNETS.NORM", "FrozenBN",
                         "VIS.NUM_IMAGES", "0"], shapes_root, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # The trainer all-gathers a digest of each rank's final weights and fails if they differ.
    assert "All 2 ranks hold identical weights" in res.stdout
    lines = [json.loads(x) for x in open(out / "metrics.json")]
    assert any("bbox/AP" in x for x in lines)
    # --eval-only on the result prints the same table and records it in metrics.json.
    res = run_train_net(["--config-file", DEMO_CONFIG, "--eval-only", *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "ev"),
                         "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.WEIGHTS", str(out / "model_final.pth")], shapes_root)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Box AP" in res.stdout
    rec = [json.loads(x) for x in open(tmp_path / "ev" / "metrics.json")][-1]
    assert rec["eval_only"] and "bbox/AP" in rec


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                                        if "detectron2" not in p and os.sep + "imagenet" + os.sep not in p
                                        and os.sep + "cifar10" + os.sep not in p
                                        and "cls_" not in os.path.basename(p) and "loc_" not in os.path.basename(p)))
def test_every_detection_config_loads_and_builds(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    validate_cfg(cfg)
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        pytest.skip("not a detector config")
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_batch_scaling_of_lr_and_schedule():
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "frcnn_r101_coco.yaml"))
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", 2])
    scale_schedule(cfg)
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.001 / 4)
    assert cfg.SOLVER.MAX_ITER == 320000 * 4 and tuple(cfg.SOLVER.STEPS) == (240000 * 4,)
    cfg.SOLVER.WARMUP_ITERS = 100
    assert lr_factor(cfg, 0) == pytest.approx(cfg.SOLVER.WARMUP_FACTOR)
    assert lr_factor(cfg, 100) == 1.0 and lr_factor(cfg, 240000 * 4) == pytest.approx(0.1)


def test_runs_under_torchrun(tmp_path, shapes_root):
    import subprocess
    import sys

    out = tmp_path / "trun"
    env = {**os.environ, "RESNET_DET_DATASETS": shapes_root, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          os.path.join(REPO, "tools", "train_net.py"), "--config-file", DEMO_CONFIG, *TINY_OPTS,
                          "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "MODEL.RESNETS.NORM", "FrozenBN",
                          "DATASETS.TEST", "()", "VIS.NUM_IMAGES", "0"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "world size 2" in res.stdout and "All 2 ranks hold identical weights" in res.stdout
