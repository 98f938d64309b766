"""train_net's user-facing errors, eval-only, the 2-process run, and every shipped config."""
import glob
import json
import os

import pytest
from resnet_det.config import get_cfg, validate_cfg
from resnet_det.engine.solver import lr_schedule, scale_schedule
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


def test_saved_config_merges_back_into_the_defaults(tmp_path):
    """OUTPUT_DIR/config.yaml (cfg.dump()) is a config file: tuples dump as YAML lists, and merging it into
    fresh defaults gives the same config, every key and value."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "frcnn_r101_coco.yaml"))
    cfg.merge_from_list(["SOLVER.STEPS", (10, 20), "INPUT.MIN_SIZE_TRAIN", (480, 512)])
    text = cfg.dump()
    assert "!!python" not in text and "STEPS:\n  - 10\n  - 20" in text
    (tmp_path / "config.yaml").write_text(text)
    again = get_cfg()
    again.merge_from_file(str(tmp_path / "config.yaml"))
    assert again == cfg and again.dump() == text


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
    factor = lr_schedule(cfg)
    assert factor(0) == pytest.approx(cfg.SOLVER.WARMUP_FACTOR)
    assert factor(100) == 1.0 and factor(240000 * 4) == pytest.approx(0.1)


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


def test_paper_coco_detector_settings_reach_the_model():
    """configs/frcnn_r101_coco.yaml is Appendix A's detector: ResNet-101 C4, 300 test proposals per image
    pooled 14x14 from res4 into a res5 head, (K+1)-way scores and 4 box numbers per class (torchvision
    counts background among the K+1, so 4(K+1)), and the COCO schedule: lr 0.001 for 240k iterations
    then 0.0001 for 80k, 8 images per batch. Checked on the built model with a tiny image."""
    import torch

    from resnet_det.engine.solver import build_lr_scheduler, build_optimizer

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "frcnn_r101_coco.yaml"))
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, tuple(cfg.INPUT.MIN_SIZE_TRAIN)) == (600, 1000, (600,))
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, tuple(s.STEPS), s.MAX_ITER, s.GAMMA) == (8, 0.001, (240000,), 320000, 0.1)
    scale_schedule(cfg)  # no-op at the reference batch of 8
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (0.001, 320000)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", 256,
                         "INPUT.MAX_SIZE_TEST", 320])
    model = build_model(cfg).eval()
    lrs = build_lr_scheduler(cfg, build_optimizer(cfg, model)).lr_lambdas[0]
    for it, lr in ((cfg.SOLVER.WARMUP_ITERS, 0.001), (239999, 0.001), (240000, 0.0001), (319999, 0.0001)):
        assert cfg.SOLVER.BASE_LR * lrs(it) == pytest.approx(lr), it
    # res5 is the per-region head, not part of the shared backbone (stride 16, res4 out).
    body = model.backbone.body
    assert [len(body.layer1), len(body.layer2), len(body.layer3)] == [3, 4, 23] and not hasattr(body, "layer4")
    res5 = model.roi_heads.box_head.res5
    assert len(res5) == 3 and res5[0].stride == 2 and res5[-1].out_channels == 2048
    predictor = model.roi_heads.box_predictor
    assert (predictor.cls_score.out_features, predictor.bbox_pred.out_features) == (81, 4 * 81)

    seen = {}

    class Reached(Exception):
        pass

    def pooler_inputs(module, args):
        seen["proposals"] = [len(p) for p in args[1]]

    def head_input(module, args):  # stop here: res5 on 300 regions of R101 takes ~10 s on one core
        seen["pooled"] = tuple(args[0].shape)
        raise Reached

    with torch.no_grad():  # random R101 features are ~1e5: proposals = the anchors, not degenerate boxes
        model.rpn.head.bbox_pred.weight.zero_()
    model.roi_heads.box_roi_pool.register_forward_pre_hook(pooler_inputs)
    handle = model.roi_heads.box_head.register_forward_pre_hook(head_input)
    image = torch.randint(0, 255, (3, 256, 320), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), pytest.raises(Reached):
        model([{"image": image}])
    assert seen == {"proposals": [300], "pooled": (300, 1024, 14, 14)}
    handle.remove()
    with torch.inference_mode():  # one region through the head: 14x14 -> res5 (stride 2) 7x7 -> pool
        regions = torch.randn(1, 1024, 14, 14)
        assert res5(regions).shape == (1, 2048, 7, 7)
        scores, deltas = predictor(model.roi_heads.box_head(regions))
    assert scores.shape == (1, 81) and deltas.shape == (1, 324)
