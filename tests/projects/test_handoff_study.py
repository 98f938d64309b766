"""The pretraining hand-off study (projects/handoff): its claim, opt-in (`make test-slow`), and its entry script."""
import os
import subprocess
import sys

import pytest
import torch

from resnet_det.classification import register_classification_builtins
from resnet_det.config import get_cfg, validate_cfg
from resnet_det.data import register_all_builtins
from resnet_det.engine.solver import scale_schedule

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "projects", "handoff")
sys.path.insert(0, PROJECT)  # as for its entry script, which runs from this folder

import handoff  # noqa: E402
from handoff import run_handoff_study  # noqa: E402


@pytest.mark.skipif(not os.environ.get("RESNET_DET_SLOW"),
                    reason="about 8 minutes on 2 CPU cores: run with `make test-slow` (RESNET_DET_SLOW=1)")
def test_pretrained_backbone_beats_random_init_on_the_demo_detection_set(tmp_path):
    """Issue 6's claim, at the set-up benchmarks/HANDOFF.md measured (seed 0, run D): ResNet-18 pretrained
    on cls_demo for 600 iterations (make demo's pretraining), then the demo detector fine-tuned 300
    iterations from it and from random init with otherwise identical settings. Measured 2026-12-01:
    AP50 60.2 vs 16.6, AP 40.6 vs 8.1."""
    root = str(tmp_path / "datasets")  # both demo sets drawn afresh, as on a new machine
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    register_all_builtins(root)
    register_classification_builtins(root)
    try:
        s = run_handoff_study(str(tmp_path / "study"), pretrain_iters=600, det_iters=300, seed=0)
    finally:
        register_all_builtins()
        register_classification_builtins()
        torch.set_num_threads(threads)
    pre, scratch = s["detector"]["pretrained"]["bbox"], s["detector"]["scratch"]["bbox"]
    assert s["pretrain_val"]["top1_err"] < 80  # it learned something (chance: 90)
    assert pre["AP50"] > 1.5 * scratch["AP50"] and pre["AP"] > scratch["AP"], s["detector"]


def test_entry_script_starts():
    res = subprocess.run([sys.executable, os.path.join(PROJECT, "pretrain_handoff_study.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--pretrain-iters" in res.stdout, res.stderr[-2000:]


@pytest.mark.parametrize("config", [handoff.PRETRAIN_CONFIG, handoff.DETECTOR_CONFIG])
def test_study_configs_are_built_as_the_tools_build_them(config):
    """The study's runs take their config from setup_cfg, as tools/train_net.py and tools/pretrain_net.py:
    file, overrides, scaling to the batch, checks; frozen."""
    opts = handoff._schedule(300) + ["SEED", 0, "OUTPUT_DIR", "/tmp/unused"]
    cfg = handoff._cfg(config, opts)
    ref = get_cfg()
    ref.merge_from_file(config)
    ref.merge_from_list(opts + ["MODEL.WEIGHTS", ""])
    scale_schedule(ref)
    validate_cfg(ref)
    assert cfg == ref and cfg.is_frozen()

