"""tools/train_net.py and the Trainer: exact resume, interruption, checkpoints, metrics, errors."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from resnet_det.engine import Trainer
from resnet_det.engine.defaults import seed_all

from engine_utils import DEMO_CONFIG, REPO, TINY_OPTS, run_train_net, tiny_cfg


def train(cfg, resume=False):
    seed_all(cfg.SEED)  # as default_setup does in the tools
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_resume_equals_uninterrupted(shapes_root, tmp_path):
    opts = ["SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 3, "DATASETS.TEST", "()", "SEED", 3]
    full = train(tiny_cfg(str(tmp_path / "full"), *opts))
    # "Interrupted" run: the same schedule stopped after iteration 2 (checkpoint model_0000002).
    part_dir = str(tmp_path / "part")
    train(tiny_cfg(part_dir, *opts, "SOLVER.MAX_ITER", 6))
    for name in ("model_final.pth", "last_checkpoint", "model_0000005.pth"):
        p = os.path.join(part_dir, name)
        if os.path.exists(p):
            os.remove(p)
    with open(os.path.join(part_dir, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    resumed = train(tiny_cfg(part_dir, *opts), resume=True)
    assert resumed.start_iter == 3
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_metrics_checkpoints_best_and_vis(shapes_root, tmp_path):
    out = str(tmp_path / "run")
    train(tiny_cfg(out, "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2, "TEST.EVAL_PERIOD", 2))
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.json"))]
    steps = [x for x in lines if "total_loss" in x]
    assert [x["iteration"] for x in steps] == [0, 1, 2, 3]
    assert all({"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "lr", "time",
                "data_time"} <= set(x) for x in steps)
    evals = [x for x in lines if "bbox/AP" in x]
    assert [x["iteration"] for x in evals] == [1, 3]  # EVAL_PERIOD and the final evaluation
    assert os.path.isfile(os.path.join(out, "model_best.pth"))
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"
    assert os.path.isfile(os.path.join(out, "model_0000001.pth"))
    assert os.path.isfile(os.path.join(out, "inference", "shapes_val", "inference", "coco_instances_results.json"))
    # A checkpoint loads with weights_only=True (no pickled code) and records its input convention.
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert state["iteration"] == 3 and state["meta"]["input_format"] == "BGR"


def test_resume_skips_corrupt_newest_checkpoint(shapes_root, tmp_path, caplog):
    out = str(tmp_path / "run")
    train(tiny_cfg(out, "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 2, "DATASETS.TEST", "()"))
    final = os.path.join(out, "model_final.pth")
    data = open(final, "rb").read()
    with open(final, "wb") as f:  # a write cut short (e.g. disk full before the atomic rename existed)
        f.write(data[: len(data) // 3])
    trainer = Trainer(tiny_cfg(out, "SOLVER.MAX_ITER", 4, "DATASETS.TEST", "()"))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2  # model_0000001.pth
    assert "Skipping unreadable checkpoint" in caplog.text


def test_atomic_save_never_replaces_good_file_on_failure(tmp_path, monkeypatch):
    from resnet_det.utils import io as ck

    path = str(tmp_path / "model.pth")
    ck.atomic_save({"x": torch.ones(2)}, path)

    def boom(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", boom)
    with pytest.raises(OSError):
        ck.atomic_save({"x": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path)["x"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.pth"]  # no temp file left behind


def test_nonfinite_loss_stops_with_report_or_skips(shapes_root, tmp_path):
    class NaNAtStep2(Trainer):
        calls = 0

        @classmethod
        def build_model(cls, cfg):
            model = super().build_model(cfg)
            forward = model.forward

            def patched(batch):
                out = forward(batch)
                NaNAtStep2.calls += 1
                if model.training and NaNAtStep2.calls == 3:
                    out["loss_box_reg"] = out["loss_box_reg"] * float("nan")
                return out

            model.forward = patched
            return model

    cfg = tiny_cfg(str(tmp_path / "a"), "SOLVER.MAX_ITER", 4, "DATASETS.TEST", "()")
    t = NaNAtStep2(cfg)
    with pytest.raises(FloatingPointError, match=r"iteration 2.*loss_box_reg.*image ids"):
        t.train()
    NaNAtStep2.calls = 0
    cfg = tiny_cfg(str(tmp_path / "b"), "SOLVER.MAX_ITER", 4, "DATASETS.TEST", "()", "SOLVER.ON_NONFINITE", "skip")
    t = NaNAtStep2(cfg)
    t.train()
    assert t.nonfinite_skipped == 1
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    last = [json.loads(x) for x in open(os.path.join(str(tmp_path / "b"), "metrics.json"))][-1]
    assert last["nonfinite_skipped"] == 1


def test_loss_spike_is_clipped_not_fatal(shapes_root, tmp_path):
    class Spike(Trainer):
        @classmethod
        def build_model(cls, cfg):
            model = super().build_model(cfg)
            forward = model.forward

            def patched(batch):
                out = forward(batch)
                return {k: v * 1e4 for k, v in out.items()} if model.training else out

            model.forward = patched
            return model

    t = Spike(tiny_cfg(str(tmp_path), "SOLVER.MAX_ITER", 2, "DATASETS.TEST", "()", "SOLVER.CLIP_GRADIENTS", 1.0))
    applied = []  # the global gradient norm each optimizer step actually uses

    def grad_norm_at_step(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        applied.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    t.optimizer.register_step_pre_hook(grad_norm_at_step)
    t.train()
    raw = [x["grad_norm"] for x in map(json.loads, open(os.path.join(str(tmp_path), "metrics.json")))
           if "grad_norm" in x]  # logged before clipping
    assert len(raw) == len(applied) == 2
    assert all(r > 100 for r in raw)  # the spike is far above SOLVER.CLIP_GRADIENTS
    assert applied == pytest.approx([1.0, 1.0], rel=1e-4)  # and the steps used gradients clipped to it
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_sigterm_writes_checkpoint_and_resume_finishes(shapes_root, tmp_path):
    out = str(tmp_path / "run")
    args = ["--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "200",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "DATASETS.TEST", "()"]
    env = {**os.environ, "RESNET_DET_DATASETS": shapes_root, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    metrics = os.path.join(out, "metrics.json")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "Interrupted at iteration" in output and "Traceback" not in output
    ckpt = open(os.path.join(out, "last_checkpoint")).read()
    it = int(ckpt[len("model_"):-len(".pth")])
    assert 0 <= it < 199
    res = run_train_net(["--config-file", DEMO_CONFIG, "--resume", *TINY_OPTS, "OUTPUT_DIR", out,
                         "SOLVER.MAX_ITER", str(it + 3), "DATASETS.TEST", "()"], shapes_root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Resumed from" in res.stdout and f"at iteration {it}" in res.stdout
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"


def test_cudnn_benchmark_follows_the_config_in_every_tool(tmp_path, monkeypatch):
    """default_setup (what every tool runs, --eval-only included) sets cudnn.benchmark from CUDNN_BENCHMARK,
    as the Trainer does, instead of switching it on wherever CUDA is."""
    import argparse
    import logging

    from resnet_det.config import get_cfg
    from resnet_det.engine.defaults import default_setup

    logger = logging.getLogger("resnet_det")
    saved = list(logger.handlers), logger.propagate, logger.level
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # restored afterwards
    cfg = get_cfg()
    cfg.OUTPUT_DIR, cfg.CUDNN_BENCHMARK = str(tmp_path), False
    try:
        default_setup(cfg, argparse.Namespace())
        assert torch.backends.cudnn.benchmark is False
    finally:  # default_setup configures the resnet_det logger for a tool; give the test session its own back
        for h in logger.handlers:
            h.close()
        logger.handlers[:], logger.propagate, logger.level = saved
