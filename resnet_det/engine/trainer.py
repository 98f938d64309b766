"""The training loop (detectron2's DefaultTrainer shape): override the build_* classmethods to
train something else (tools/pretrain_net.py trains classifiers with the same loop)."""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
import weakref

import torch
from torch import nn

from ..checkpoint import (META_KEYS, Checkpointer, check_resumed_conventions, load_model_weights,
                          run_conventions)
from ..utils import comm
from ..utils.events import MetricsWriter
from .defaults import configure_backends
from .hooks import EMAHook, EvalHook, HookBase, PeriodicCheckpointer, PeriodicWriter, build_ema
from .meter import DeviceMeter
from .solver import build_lr_scheduler, build_optimizer

logger = logging.getLogger("resnet_det.train")


def resolve_device(cfg) -> torch.device:
    if cfg.MODEL.DEVICE != "auto":
        return torch.device(cfg.MODEL.DEVICE)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def flatten_results(results: dict, prefix: str = "") -> dict:
    """{"bbox": {"AP": 1}} -> {"bbox/AP": 1}."""
    flat = {}
    for k, v in results.items():
        if isinstance(v, dict):
            flat.update(flatten_results(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def higher_is_better(metric: str) -> bool:
    return not any(s in metric.lower() for s in ("err", "loss"))


class Trainer:
    """Builds model, optimizer, schedule and data from the config; trains with checkpoints, logs,
    periodic evaluation, best-model keeping, weights EMA and clean interruption, the periodic jobs
    being hooks (engine/hooks.py: build_hooks; add your own with register_hooks).

    What hooks read: ``iter`` (the current iteration), ``start_iter``, ``max_iter``, ``model``,
    ``optimizer``, ``scheduler``, ``ema`` (None unless MODEL_EMA.ENABLED), ``eval_model``,
    ``writer`` (the MetricsWriter; None on ranks other than 0), ``meter``, ``results`` (the latest
    evaluation), ``finished`` / ``stopped_at`` (in after_train: completed, or interrupted there)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = resolve_device(cfg)
        configure_backends(cfg)  # cudnn.benchmark from CUDNN_BENCHMARK (also for a Trainer built without the tools)
        model = self.build_model(cfg).to(self.device)  # builders apply MODEL.CHANNELS_LAST themselves
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        if comm.get_world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)
        self.model = model
        self.ema = build_ema(cfg, model)
        self.checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, meta=self.weights_meta(cfg),
                                         optimizer=self.optimizer, scheduler=self.scheduler, ema=self.ema)
        self.start_iter, self.max_iter = 0, cfg.SOLVER.MAX_ITER
        self.iter = 0
        self.writer = self.meter = None
        self.results: dict = {}
        self.finished, self.stopped_at = False, None
        self.best: float | None = None
        self.nonfinite_skipped = 0
        self._stop = threading.Event()
        amp = cfg.SOLVER.AMP
        self.amp_dtype = getattr(torch, amp.DTYPE) if amp.ENABLED and self.device.type == "cuda" else None
        if amp.ENABLED and self.amp_dtype is None:
            logger.warning("SOLVER.AMP.ENABLED applies on CUDA only: on %s the model trains in float32",
                           self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self._hooks: list[HookBase] = []
        self.register_hooks(self.build_hooks())

    # ---- what to train: override these -------------------------------------------------------
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        from ..modeling.detector import build_model

        return build_model(cfg)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        from ..data import build_detection_train_loader

        return build_detection_train_loader(cfg, start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        from ..data import build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str):
        import os

        from ..evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name))

    @staticmethod
    def weights_meta(cfg) -> dict:
        """The meta record of every checkpoint (checkpoint/meta.py): what the weights expect (read when
        they are MODEL.WEIGHTS) and, under "config", the config values this run trained with
        (restored by --resume, checkpoint/conventions.py)."""
        used = run_conventions(cfg)
        return {**{field: used[key] for field, key in META_KEYS.items() if key is not None},
                "norm": cfg.MODEL.RESNETS.NORM, "source": "resnet_det", "config": used}

    # ---- state ---------------------------------------------------------------------------------
    def resume_or_load(self, resume: bool = True) -> None:
        """With `resume`, continue from the newest valid checkpoint in OUTPUT_DIR if any;
        otherwise initialise from MODEL.WEIGHTS (if set)."""
        state = self.checkpointer.resume() if resume else None
        if state is not None:
            check_resumed_conventions(self.cfg, state.get("meta"), self.checkpointer.resumed_from)
            self.start_iter = state["iteration"] + 1
            self.best = state.get("best")
            self.nonfinite_skipped = state.get("nonfinite_skipped", 0)
        elif self.cfg.MODEL.WEIGHTS:
            self.load_initial_weights(self.cfg.MODEL.WEIGHTS)

    def load_initial_weights(self, path: str) -> None:
        """MODEL.WEIGHTS for a fresh run (override for models with their own name mapping)."""
        load_model_weights(self.model, path)

    def save(self, name: str, iteration: int) -> str | None:
        """Write OUTPUT_DIR/<name>.pth (rank 0 only; returns its path, else None)."""
        if comm.is_main_process():
            return self.checkpointer.save(name, iteration=iteration, best=self.best,
                                          nonfinite_skipped=self.nonfinite_skipped)
        return None

    # ---- hooks ---------------------------------------------------------------------------------
    def build_hooks(self) -> list[HookBase | None]:
        """The built-in periodic jobs, in the order they run after each step (override to change them)."""
        cfg = self.cfg
        return [EMAHook() if self.ema is not None else None,  # first: checkpoints and evaluation see it
                PeriodicWriter(cfg.LOG_PERIOD),
                PeriodicCheckpointer(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP),
                EvalHook(cfg.TEST.EVAL_PERIOD)]

    def register_hooks(self, hooks) -> None:
        """Append hooks (HookBase instances; None entries are skipped); they run after those already
        registered. Each gets ``hook.trainer`` (a weak proxy: no reference cycle)."""
        for h in hooks:
            if h is None:
                continue
            if not isinstance(h, HookBase):
                raise TypeError(f"register_hooks takes HookBase instances, got {type(h).__name__}")
            h.trainer = weakref.proxy(self)
            self._hooks.append(h)

    @property
    def hooks(self) -> list[HookBase]:
        return list(self._hooks)

    # ---- the loop ------------------------------------------------------------------------------
    def train(self) -> dict:
        """Run iterations start_iter .. max_iter - 1 with the hooks; returns the latest evaluation."""
        cfg = self.cfg
        self.writer = MetricsWriter(cfg.OUTPUT_DIR) if comm.is_main_process() else None
        self.meter = DeviceMeter()  # loss averages stay on the device until a log step: no per-step sync
        self.results, self.finished, self.stopped_at = {}, False, None
        self.iter = self.start_iter
        # Only hooks that define a per-step method are called per step.
        before = [h for h in self._hooks if h.overrides("before_step")]
        after = [h for h in self._hooks if h.overrides("after_step")]
        restore = self._install_signal_handlers()
        logger.info("Starting training from iteration %d to %d", self.start_iter, self.max_iter)
        try:
            for h in self._hooks:
                h.before_train()
            data = iter(self.build_train_loader(cfg, start_iter=self.start_iter))
            self.model.train()
            for self.iter in range(self.start_iter, self.max_iter):
                for h in before:
                    h.before_step()
                self.run_step(self.iter, data, self.meter)
                for h in after:
                    h.after_step()
                if self._stop.is_set():
                    self.stopped_at = self.iter
                    break
            else:
                if self.max_iter > self.start_iter:
                    self.check_ranks_in_sync()
                self.finished = True
        finally:
            try:
                for h in self._hooks:  # also after an exception, as detectron2's (they check `finished`)
                    h.after_train()
            finally:
                restore()
                if self.writer:
                    self.writer.close()
        return self.results

    def run_step(self, it: int, data, meter: DeviceMeter) -> None:
        t0 = time.perf_counter()
        batch = next(data)
        data_time = time.perf_counter() - t0
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            losses = self.model(batch)
        total = sum(losses.values())
        values = {k: v.detach() for k, v in losses.items()}
        # Decided by all ranks together (one all-reduce, one host sync): a rank that skipped backward
        # alone would leave the others waiting in DDP's gradient all-reduce.
        if not comm.all_ranks_true(torch.isfinite(total)):
            self._nonfinite(it, batch, "loss", {k: float(v) for k, v in values.items()})
            return
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        clip = self.cfg.SOLVER.CLIP_GRADIENTS
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        if self.scaler is None and not comm.all_ranks_true(torch.isfinite(grad_norm)):
            self._nonfinite(it, batch, "gradient", {"grad_norm": float(grad_norm)})
            return
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        meter.add({**values, "total_loss": total.detach(), "grad_norm": grad_norm,
                   "time": time.perf_counter() - t0, "data_time": data_time})

    def skipped_images(self) -> int:
        """Bad images skipped so far under DATALOADER.ON_BAD_IMAGE=skip (listed in OUTPUT_DIR)."""
        from ..data import read_skipped_images

        return len(read_skipped_images(self.cfg.OUTPUT_DIR))

    def check_ranks_in_sync(self) -> None:
        """In multi-process runs, verify every rank holds the same weights (DDP's promise)."""
        if comm.get_world_size() == 1:
            return
        with torch.no_grad():
            digest = float(sum(p.double().sum() + p.double().abs().sum() for p in self.model.parameters()))
        digests = comm.all_gather(digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks diverged: weight digests {digests}")
        logger.info("All %d ranks hold identical weights (digest %.6f)", len(digests), digest)

    def _nonfinite(self, it: int, batch, what: str, values: dict) -> None:
        ids = [d.get("image_id") for d in batch] if isinstance(batch, list) else "n/a"
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        where = f": {bad} (all: {values})" if bad else f" on another rank (rank {comm.get_rank()}: {values})"
        msg = (f"non-finite {what} at iteration {it}{where}; image ids in the batch: "
               f"{ids}. Lower SOLVER.BASE_LR, set SOLVER.CLIP_GRADIENTS, check these images' "
               "annotations, or set SOLVER.ON_NONFINITE skip to skip such steps.")
        if self.cfg.SOLVER.ON_NONFINITE == "stop":
            raise FloatingPointError(msg)
        self.nonfinite_skipped += 1
        logger.warning("Skipping step: %s", msg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @property
    def interrupted(self) -> bool:
        """Whether SIGTERM/SIGINT stopped training early (a checkpoint was written; `--resume` continues)."""
        return self._stop.is_set()

    def _install_signal_handlers(self):
        """SIGTERM/SIGINT finish the current step, write a checkpoint and return cleanly."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, frame):
            logger.warning("Received %s: stopping after this iteration", signal.Signals(signum).name)
            self._stop.set()

        for s in previous:
            signal.signal(s, handler)
        return lambda: [signal.signal(s, h) for s, h in previous.items()]

    # ---- evaluation ----------------------------------------------------------------------------
    @classmethod
    def test(cls, cfg, model) -> dict:
        from ..evaluation import inference_on_dataset

        results = {}
        for name in cfg.DATASETS.TEST:
            loader = cls.build_test_loader(cfg, name)
            evaluator = cls.build_evaluator(cfg, name)
            results[name] = inference_on_dataset(model, loader, evaluator)
        if len(results) == 1:
            results = next(iter(results.values()))
        return results

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluated (and drawn): the EMA's when MODEL_EMA.ENABLED, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate_and_track(self, it: int, writer) -> dict:
        if self.ema is not None:
            logger.info("Evaluating the EMA weights (MODEL_EMA.ENABLED, decay %g, %d updates)",
                        self.cfg.MODEL_EMA.DECAY, int(self.ema.n_averaged))
        results = self.test(self.cfg, self.eval_model)
        self.model.train()
        if not comm.is_main_process():
            return results
        flat = flatten_results(results)
        if writer:
            writer.write(it, flat)
        key = self.cfg.TEST.BEST_METRIC
        if key in flat and isinstance(flat[key], (int, float)) and math.isfinite(flat[key]):
            value = flat[key]
            better = self.best is None or (value > self.best if higher_is_better(key) else value < self.best)
            if better:
                self.best = value
                self.save("model_best", it)
                logger.info("New best %s = %.3f at iteration %d (model_best.pth)", key, value, it)
        elif flat:
            logger.warning("TEST.BEST_METRIC %r not among the results %s", key, sorted(flat))
        return results
