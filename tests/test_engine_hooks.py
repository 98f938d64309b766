"""engine/hooks.py: a user hook without subclassing the Trainer, the built-in jobs as hooks, weights
EMA (the formula, evaluation on it, exact resume, --eval-only), SOLVER.CHECKPOINT_MAX_TO_KEEP."""
import argparse
import itertools
import json
import logging
import os
import shutil
import signal

import pytest
import torch
from torch import nn

from resnet_det.config import get_cfg
from resnet_det.engine import Trainer
from resnet_det.engine.defaults import seed_all
from resnet_det.engine.hooks import EMAHook, EvalHook, HookBase, PeriodicCheckpointer, PeriodicWriter
from resnet_det.engine.run import run_detection

from engine_utils import tiny_cfg


class Tiny(nn.Module):
    """A linear regressor behind a BatchNorm (so the EMA has buffers to average)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 1)

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        return {"loss_mse": nn.functional.mse_loss(self.fc(self.bn(x)).squeeze(1), y)}


class TinyTrainer(Trainer):
    evaluated = []

    @classmethod
    def build_model(cls, cfg):
        torch.manual_seed(0)
        return Tiny()

    @classmethod
    def build_train_loader(cls, cfg, start_iter=0):
        for it in itertools.count(start_iter):  # batch i depends on i only: resumable
            g = torch.Generator().manual_seed(it)
            yield [{"x": torch.randn(4, generator=g), "y": torch.randn((), generator=g)} for _ in range(4)]

    @classmethod
    def test(cls, cfg, model):
        cls.evaluated.append(model)
        return {"score": float(model.fc.weight.sum())}


def tiny_trainer_cfg(out, *opts):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", 6, "SOLVER.WARMUP_ITERS", 0,
                         "SOLVER.BASE_LR", 0.1, "SOLVER.CHECKPOINT_PERIOD", 1000, "LOG_PERIOD", 1,
                         "DATASETS.TEST", "()", "TEST.BEST_METRIC", "score", *opts])
    return cfg


def _periodic(out):
    return sorted(f for f in os.listdir(out) if f.startswith("model_0"))


class Recorder(HookBase):
    def __init__(self):
        self.calls = []

    def before_train(self):
        self.calls.append(("before_train", self.trainer.iter))

    def before_step(self):
        self.calls.append(("before_step", self.trainer.iter))

    def after_step(self):
        it = self.trainer.iter
        logged = [json.loads(x)["iteration"] for x in open(os.path.join(self.trainer.cfg.OUTPUT_DIR, "metrics.json"))]
        self.calls.append(("after_step", it, logged[-1]))  # the built-in writer ran first
        self.trainer.writer.write(it, {"my_metric": it * 10})

    def after_train(self):
        self.calls.append(("after_train", self.trainer.finished, self.trainer.stopped_at))


def test_user_hook_without_subclassing(tmp_path):
    trainer = TinyTrainer(tiny_trainer_cfg(tmp_path, "SOLVER.MAX_ITER", 3))
    assert [type(h) for h in trainer.hooks] == [PeriodicWriter, PeriodicCheckpointer, EvalHook]  # EMA off
    rec = Recorder()
    trainer.register_hooks([rec, None])
    trainer.train()
    assert rec.calls == [("before_train", 0),
                         ("before_step", 0), ("after_step", 0, 0),
                         ("before_step", 1), ("after_step", 1, 1),
                         ("before_step", 2), ("after_step", 2, 2),
                         ("after_train", True, None)]
    mine = [json.loads(x) for x in open(tmp_path / "metrics.json") if "my_metric" in x]
    assert [(x["iteration"], x["my_metric"]) for x in mine] == [(0, 0), (1, 10), (2, 20)]
    assert os.path.isfile(tmp_path / "model_final.pth")
    with pytest.raises(TypeError, match="HookBase"):
        trainer.register_hooks([lambda: None])
    # Per-step calls only for hooks that define them (the loop's cost without hooks is unchanged).
    assert not EvalHook(0).overrides("before_step") and EvalHook(0).overrides("after_step")


def test_exception_and_interruption_reach_after_train(tmp_path):
    class Boom(Recorder):
        def after_step(self):
            if self.trainer.iter == 1:
                raise RuntimeError("boom")

    trainer = TinyTrainer(tiny_trainer_cfg(tmp_path / "a"))
    boom = Boom()
    trainer.register_hooks([boom])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert boom.calls[-1] == ("after_train", False, None)
    assert not os.path.exists(tmp_path / "a" / "model_final.pth")  # a failed run writes no final model

    class SigTerm(HookBase):  # what `kill -TERM` does half-way: checkpoint at that iteration, no final model
        def after_step(self):
            if self.trainer.iter == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    trainer = TinyTrainer(tiny_trainer_cfg(tmp_path / "b", "SOLVER.CHECKPOINT_PERIOD", 1,
                                           "SOLVER.CHECKPOINT_MAX_TO_KEEP", 1))
    rec = Recorder()
    trainer.register_hooks([SigTerm(), rec])
    trainer.train()
    assert trainer.interrupted and rec.calls[-1] == ("after_train", False, 2)
    assert _periodic(tmp_path / "b") == ["model_0000002.pth"]  # the interruption checkpoint counts too
    assert open(tmp_path / "b" / "last_checkpoint").read() == "model_0000002.pth"
    assert not os.path.exists(tmp_path / "b" / "model_final.pth")


def test_ema_follows_the_formula_and_is_evaluated(tmp_path, caplog):
    decay, warm = 0.9, 4.0
    cfg = tiny_trainer_cfg(tmp_path, "MODEL_EMA.ENABLED", True, "MODEL_EMA.DECAY", decay,
                           "MODEL_EMA.DECAY_WARM_UP_FACTOR", warm, "DATASETS.TEST", "('any',)")
    trainer = TinyTrainer(cfg)
    assert isinstance(trainer.hooks[0], EMAHook)

    class Snapshot(HookBase):  # the trained weights after every step
        seen = []

        def after_step(self):
            self.seen.append({k: v.clone() for k, v in self.trainer.model.state_dict().items() if v.is_floating_point()})

    trainer.register_hooks([Snapshot()])
    TinyTrainer.evaluated.clear()
    with caplog.at_level(logging.INFO, logger="resnet_det.train"):
        trainer.train()
    # W_ema = W_0 after the first step, then W_ema = d_n W_ema + (1 - d_n) W_n with
    # d_n = min(DECAY, (1 + n) / (WARM_UP_FACTOR + n)) (d2go's warm-up): parameters and BN statistics.
    seen = Snapshot.seen
    expected = dict(seen[0])
    for n in range(1, len(seen)):
        d = min(decay, (1 + n) / (warm + n))
        expected = {k: d * expected[k] + (1 - d) * seen[n][k] for k in expected}
    ema = trainer.ema.module.state_dict()
    assert int(trainer.ema.n_averaged) == 6 and set(expected) == {"bn.weight", "bn.bias", "bn.running_mean",
                                                                  "bn.running_var", "fc.weight", "fc.bias"}
    for k, v in expected.items():
        assert torch.allclose(ema[k], v, atol=1e-6), k
        assert not torch.allclose(ema[k], seen[-1][k], atol=1e-4), k  # it is not the last weights
    # The final evaluation ran on the EMA weights, said so, and they are the weights drawn afterwards.
    assert TinyTrainer.evaluated == [trainer.ema.module] and trainer.eval_model is trainer.ema.module
    assert "Evaluating the EMA weights" in caplog.text
    state = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert set(state) >= {"model", "ema"}
    assert torch.equal(state["ema"]["module.fc.weight"], ema["fc.weight"])
    assert torch.equal(state["model"]["fc.weight"], trainer.model.state_dict()["fc.weight"])


def _train(cfg, resume=False):
    seed_all(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_ema_resume_is_exact_and_eval_only_uses_it(shapes_root, tmp_path, caplog):
    opts = ["SOLVER.MAX_ITER", 5, "SOLVER.CHECKPOINT_PERIOD", 2, "DATASETS.TEST", "()", "SEED", 3,
            "MODEL_EMA.ENABLED", True, "MODEL_EMA.DECAY", 0.8]
    full = _train(tiny_cfg(str(tmp_path / "full"), *opts))
    # The same run interrupted after iteration 1 (model_0000001.pth), then resumed.
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000001.pth", part)
    (part / "last_checkpoint").write_text("model_0000001.pth")
    resumed = _train(tiny_cfg(str(part), *opts), resume=True)
    assert resumed.start_iter == 2 and int(resumed.ema.n_averaged) == int(full.ema.n_averaged) == 5
    for a, b in ((full.model, resumed.model), (full.ema, resumed.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert any(not torch.equal(v, full.model.state_dict()[k[len("module."):]])
               for k, v in full.ema.state_dict().items() if k.startswith("module.") and v.is_floating_point())

    # --eval-only on a checkpoint with an EMA evaluates the EMA weights (and says so).
    class Capture(Trainer):
        @classmethod
        def test(cls, cfg, model):
            cls.state = {k: v.clone() for k, v in model.state_dict().items()}
            return {}

    cfg = tiny_cfg(str(tmp_path / "eval"), "MODEL.WEIGHTS", str(tmp_path / "full" / "model_final.pth"))
    with caplog.at_level(logging.INFO):
        run_detection(cfg, argparse.Namespace(eval_only=True, resume=False), Capture)
    assert "using its EMA weights" in caplog.text
    ema = full.ema.module.state_dict()
    assert all(torch.equal(Capture.state[k], ema[k]) for k in ema)


def test_checkpoint_max_to_keep(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"x": torch.zeros(1)}, out / "model_best.pth")  # never deleted
    torch.save({"x": torch.zeros(1)}, out / "model_0000000.pth")  # an older run's: deleted in turn
    trainer = TinyTrainer(tiny_trainer_cfg(out, "SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 2,
                                           "SOLVER.CHECKPOINT_MAX_TO_KEEP", 2))
    trainer.train()
    assert _periodic(out) == ["model_0000005.pth", "model_0000007.pth"]
    assert os.path.isfile(out / "model_final.pth") and os.path.isfile(out / "model_best.pth")
    # 0 keeps all
    trainer = TinyTrainer(tiny_trainer_cfg(tmp_path / "all", "SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 2))
    trainer.train()
    assert _periodic(tmp_path / "all") == [f"model_{i:07d}.pth" for i in (1, 3, 5, 7)]

    # A write that fails (disk full) deletes nothing: the older checkpoints are all still there.
    from resnet_det.checkpoint import checkpointer as ck

    def full_disk(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "atomic_save", full_disk)
    hook = next(h for h in trainer.hooks if isinstance(h, PeriodicCheckpointer))
    hook.max_to_keep = 1
    before = sorted(os.listdir(tmp_path / "all"))
    with pytest.raises(OSError, match="No space"):
        hook.save_periodic(11)
    assert sorted(os.listdir(tmp_path / "all")) == before
    assert open(tmp_path / "all" / "last_checkpoint").read() == "model_final.pth"


def test_config_errors():
    from resnet_det.config import validate_cfg

    for key, value, msg in (("SOLVER.CHECKPOINT_MAX_TO_KEEP", -1, "SOLVER.CHECKPOINT_MAX_TO_KEEP=-1"),
                            ("MODEL_EMA.DECAY", 1.5, "MODEL_EMA.DECAY=1.5")):
        cfg = get_cfg()
        cfg.merge_from_list([key, value])
        with pytest.raises(ValueError, match=msg):
            validate_cfg(cfg)
