"""SGD (or AdamW) with per-group weight decay, warmup + step/cosine schedules, and batch-size scaling."""
from __future__ import annotations

import bisect
import logging
from typing import Callable

import torch
from fvcore.common.param_scheduler import ConstantParamScheduler, CosineParamScheduler, LinearParamScheduler
from torch import nn

logger = logging.getLogger(__name__)
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Sec. 3.4: momentum 0.9, weight decay 1e-4) or AdamW (SOLVER.OPTIMIZER); norm and bias
    parameters can get their own decay (SOLVER.WEIGHT_DECAY_NORM / WEIGHT_DECAY_BIAS)."""
    s = cfg.SOLVER
    decay_bias = s.WEIGHT_DECAY if s.WEIGHT_DECAY_BIAS is None else s.WEIGHT_DECAY_BIAS
    groups: dict[float, list] = {}
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, _NORM_TYPES):
                wd = s.WEIGHT_DECAY_NORM
            elif name == "bias":
                wd = decay_bias
            else:
                wd = s.WEIGHT_DECAY
            groups.setdefault(wd, []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters (is MODEL.BACKBONE.FREEZE_AT too high?)")
    param_groups = [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]
    if s.OPTIMIZER == "AdamW":
        return torch.optim.AdamW(param_groups, lr=s.BASE_LR, betas=tuple(s.BETAS))
    return torch.optim.SGD(param_groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)


def lr_schedule(cfg) -> Callable[[int], float]:
    """Multiplier of BASE_LR per iteration: the warmup factor times the step (or cosine) schedule, the
    product torch's chained schedulers compute (LinearLR or ConstantLR times MultiStepLR or CosineAnnealingLR).

    The cosine and warmup shapes are fvcore's param schedulers, at the iteration's fraction of their span.
    Which step applies, and whether an iteration is still warm, is decided on the integer iteration:
    fvcore's MultiStep/Composite schedulers compare fractions with a tolerance of 1e-6 of the run, which
    from 1e6 iterations on (the COCO schedule at 2 images per batch: 1.28M) acts one iteration early."""
    s = cfg.SOLVER
    max_iter, warmup_iters, steps, gamma = s.MAX_ITER, s.WARMUP_ITERS, tuple(s.STEPS), s.GAMMA
    warmup = (ConstantParamScheduler(s.WARMUP_FACTOR) if s.WARMUP_METHOD == "constant"
              else LinearParamScheduler(s.WARMUP_FACTOR, 1.0))
    if s.LR_SCHEDULER_NAME == "WarmupCosineLR":
        cosine = CosineParamScheduler(1.0, 0.0)

        def main(it: int) -> float:
            return cosine(it / max_iter)
    else:
        def main(it: int) -> float:
            return gamma ** bisect.bisect_right(steps, it)

    def factor(it: int) -> float:
        return main(it) * warmup(it / warmup_iters) if it < warmup_iters else main(it)

    return factor


def build_lr_scheduler(cfg, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration. torch's LambdaLR is the LR-multiplier wrapper (fvcore has none; detectron2's
    LRMultiplier is the same): its state is the iteration, and the multiplier is rebuilt from the config, so a
    checkpoint's scheduler state holds plain numbers and resumes exactly."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg))


def scale_schedule(cfg) -> None:
    """Scale LR linearly with the batch and the schedule inversely, from SOLVER.REFERENCE_BATCH to
    SOLVER.IMS_PER_BATCH (Goyal et al.'s rule). cfg must be mutable; a no-op when they agree."""
    s = cfg.SOLVER
    ref, batch = s.REFERENCE_BATCH, s.IMS_PER_BATCH
    if ref <= 0 or ref == batch:
        return
    scale = batch / ref
    old = (s.BASE_LR, s.MAX_ITER, tuple(s.STEPS))
    s.BASE_LR = s.BASE_LR * scale
    s.MAX_ITER = int(round(s.MAX_ITER / scale))
    s.STEPS = tuple(int(round(x / scale)) for x in s.STEPS)
    s.WARMUP_ITERS = int(round(s.WARMUP_ITERS / scale))
    s.CHECKPOINT_PERIOD = max(1, int(round(s.CHECKPOINT_PERIOD / scale)))
    if cfg.TEST.EVAL_PERIOD > 0:
        cfg.TEST.EVAL_PERIOD = max(1, int(round(cfg.TEST.EVAL_PERIOD / scale)))
    s.REFERENCE_BATCH = batch
    logger.info("SOLVER.IMS_PER_BATCH=%d differs from the tuned batch %d: scaled by %.4g: BASE_LR %.4g -> "
                "%.4g, MAX_ITER %d -> %d, STEPS %s -> %s", batch, ref, scale, old[0], s.BASE_LR,
                old[1], s.MAX_ITER, old[2], tuple(s.STEPS))
