"""Training hooks (detectron2's HookBase shape): behaviour added to the Trainer's loop without
subclassing it. The Trainer's own periodic jobs are hooks too (Trainer.build_hooks):

    EMAHook               updates the weights' moving average after every step (MODEL_EMA)
    PeriodicWriter        metrics.json / TensorBoard / the terminal line every LOG_PERIOD steps
    PeriodicCheckpointer  model_NNNNNNN.pth every SOLVER.CHECKPOINT_PERIOD steps (keeping the newest
                          SOLVER.CHECKPOINT_MAX_TO_KEEP), the interruption checkpoint, model_final.pth
    EvalHook              evaluation every TEST.EVAL_PERIOD steps and at the end (model_best.pth)

A user hook::

    class LogGradNorm(HookBase):
        def after_step(self):
            if self.trainer.iter % 100 == 0 and self.trainer.writer:
                self.trainer.writer.write(self.trainer.iter, {"my_value": ...})

    trainer = Trainer(cfg)
    trainer.register_hooks([LogGradNorm()])
    trainer.train()

Hooks run in registration order (the built-in ones first); in each hook ``self.trainer`` is the
Trainer, ``self.trainer.iter`` the current iteration. A hook that overrides neither before_step nor
after_step costs nothing per step.
"""
from __future__ import annotations

import logging

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..checkpoint import unwrap_model
from ..utils.events import ProgressPrinter

logger = logging.getLogger("resnet_det.train")

__all__ = ["EMAHook", "EvalHook", "HookBase", "PeriodicCheckpointer", "PeriodicWriter", "build_ema"]


class HookBase:
    """Override any of the four methods; ``self.trainer`` is set by ``Trainer.register_hooks``.

    before_train / after_train run once around the loop (after_train also after an interruption or
    an exception: check ``trainer.finished`` / ``trainer.stopped_at``); before_step / after_step
    around every iteration ``trainer.iter``.
    """

    trainer = None

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def overrides(self, method: str) -> bool:
        """Whether this hook's class defines ``method`` itself (the loop calls only those per step)."""
        return getattr(type(self), method) is not getattr(HookBase, method)


# ---- weights EMA ---------------------------------------------------------------------------------
def ema_decay(step: int, decay: float, warm_up_factor: float) -> float:
    """The decay of the ``step``-th average update (step 1 = the first after the copy): ``decay``, or
    with warm-up (factor >= 0, d2go's ModelEMA) min(decay, (1 + step) / (factor + step)), so early
    averages follow the fast-moving weights closely."""
    if warm_up_factor < 0:
        return decay
    return min(decay, (1 + step) / (warm_up_factor + step))


def build_ema(cfg, model) -> AveragedModel | None:
    """MODEL_EMA: an AveragedModel of ``model`` (unwrapped from DDP, on its device), its parameters
    and buffers (BN statistics) averaged with decay MODEL_EMA.DECAY; None when off. Its state_dict
    ("module.*" and the update count "n_averaged") is what checkpoints store under "ema"."""
    if not cfg.MODEL_EMA.ENABLED:
        return None
    decay, warm = float(cfg.MODEL_EMA.DECAY), float(cfg.MODEL_EMA.DECAY_WARM_UP_FACTOR)
    if warm < 0:
        fn = get_ema_multi_avg_fn(decay)
    else:
        def fn(ema, current, n_averaged):  # torch's EMA step with this update's decay
            get_ema_multi_avg_fn(ema_decay(int(n_averaged), decay, warm))(ema, current, n_averaged)
    # n_averaged stays on the CPU (device=None): reading it for the warm-up decay does not sync a GPU.
    ema = AveragedModel(unwrap_model(model), multi_avg_fn=fn, use_buffers=True)
    ema.requires_grad_(False)
    return ema


class EMAHook(HookBase):
    """After every step, move ``trainer.ema`` (build_ema) toward the trained weights."""

    def after_step(self) -> None:
        self.trainer.ema.update_parameters(unwrap_model(self.trainer.model))


# ---- metrics -------------------------------------------------------------------------------------
class PeriodicWriter(HookBase):
    """Every ``period`` steps, at the last one and when interrupted: the step metrics (losses averaged
    since the last write, lr, skip counts) to ``trainer.writer`` (metrics.json, TensorBoard) and the
    terminal progress line."""

    def __init__(self, period: int):
        self.period = period

    def before_train(self) -> None:
        self.printer = ProgressPrinter(self.trainer.max_iter, self.trainer.start_iter)

    def after_step(self) -> None:
        t, it = self.trainer, self.trainer.iter
        if t.writer is None:
            return
        if (it + 1) % self.period == 0 or it == t.max_iter - 1 or t.interrupted:
            metrics = t.meter.averages()
            metrics["lr"] = t.optimizer.param_groups[0]["lr"]
            metrics["nonfinite_skipped"] = t.nonfinite_skipped
            metrics["skipped_images"] = t.skipped_images()
            t.writer.write(it, metrics)
            self.printer.log(it, metrics)


# ---- checkpoints ---------------------------------------------------------------------------------
class PeriodicCheckpointer(HookBase):
    """model_{iter:07d}.pth every ``period`` steps (not at the last: model_final.pth is written then),
    and when training is interrupted; model_final.pth when it completes. With ``max_to_keep`` > 0,
    once a new periodic checkpoint is completely written (atomic rename) the older ones beyond the
    newest ``max_to_keep`` are deleted; model_final.pth and model_best.pth never are."""

    def __init__(self, period: int, max_to_keep: int = 0):
        self.period, self.max_to_keep = period, max_to_keep

    def save_periodic(self, it: int) -> None:
        path = self.trainer.save(f"model_{it:07d}", it)  # raises if the write fails: nothing is deleted
        if path is not None and self.max_to_keep > 0:
            self.trainer.checkpointer.prune(self.max_to_keep, keep=path)

    def after_step(self) -> None:
        t, it = self.trainer, self.trainer.iter
        if (it + 1) % self.period == 0 and it != t.max_iter - 1 and not t.interrupted:
            self.save_periodic(it)

    def after_train(self) -> None:
        t = self.trainer
        if t.stopped_at is not None:
            self.save_periodic(t.stopped_at)
            logger.warning("Interrupted at iteration %d: checkpoint written; continue with --resume", t.stopped_at)
        elif t.finished and t.max_iter > t.start_iter:
            t.save("model_final", t.max_iter - 1)


# ---- evaluation ----------------------------------------------------------------------------------
class EvalHook(HookBase):
    """``trainer.evaluate_and_track`` every ``period`` steps (0 = never during training; not at the
    last step) and once when training completes, if DATASETS.TEST is set; the latest results are in
    ``trainer.results``."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self) -> None:
        t, it = self.trainer, self.trainer.iter
        if self.period > 0 and (it + 1) % self.period == 0 and it != t.max_iter - 1 and not t.interrupted:
            t.results = t.evaluate_and_track(it, t.writer)

    def after_train(self) -> None:
        t = self.trainer
        if t.finished and t.cfg.DATASETS.TEST:
            t.results = t.evaluate_and_track(t.max_iter - 1, t.writer)

