"""SGD (or AdamW) with per-group weight decay, warmup + step/cosine schedules, and batch-size scaling."""
from __future__ import annotations

import bisect
import logging
import math

import torch
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


def lr_factor(cfg, iteration: int) -> float:
    """Multiplier of BASE_LR at `iteration`: warmup times the step (or cosine) schedule."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME == "WarmupCosineLR":
        factor = 0.5 * (1.0 + math.cos(math.pi * iteration / s.MAX_ITER))
    else:
        factor = s.GAMMA ** bisect.bisect_right(list(s.STEPS), iteration)
    if iteration < s.WARMUP_ITERS:
        if s.WARMUP_METHOD == "constant":
            warm = s.WARMUP_FACTOR
        else:
            alpha = iteration / s.WARMUP_ITERS
            warm = s.WARMUP_FACTOR * (1 - alpha) + alpha
        factor *= warm
    return factor


def build_lr_scheduler(cfg, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it))


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
