"""engine/solver.py: the optimizer choice (SOLVER.OPTIMIZER) and its per-group weight decay."""
import pytest
import torch
from torch import nn

from resnet_det.config import get_cfg, validate_cfg
from resnet_det.engine.solver import build_optimizer


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _groups(opt):
    return {g["weight_decay"]: len(g["params"]) for g in opt.param_groups}


def test_sgd_is_the_default_and_adamw_keeps_the_weight_decay_groups():
    cfg = get_cfg()
    model = _model()
    model(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    sgd = build_optimizer(cfg, model)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == cfg.SOLVER.MOMENTUM
    cfg.merge_from_list(["SOLVER.OPTIMIZER", "AdamW", "SOLVER.BASE_LR", 1e-3, "SOLVER.WEIGHT_DECAY", 0.05,
                         "SOLVER.BETAS", (0.8, 0.99)])
    validate_cfg(cfg)
    adamw = build_optimizer(cfg, model)
    assert type(adamw) is torch.optim.AdamW
    assert adamw.defaults["lr"] == 1e-3 and adamw.defaults["betas"] == (0.8, 0.99)
    # Conv/linear weights and biases decay (WEIGHT_DECAY_BIAS None = WEIGHT_DECAY); BN's do not.
    assert _groups(adamw) == {0.05: 4, 0.0: 2} and _groups(sgd) == {1e-4: 4, 0.0: 2}
    # Decoupled decay: with zero gradients AdamW still shrinks decayed weights by lr * wd, not BN's.
    w, gamma = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    adamw.step()
    assert torch.allclose(model[0].weight, w * (1 - 1e-3 * 0.05)) and torch.equal(model[1].weight, gamma)


def test_unknown_optimizer_names_the_key_and_choices():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.OPTIMIZER", "Adam"])
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER='Adam': expected one of SGD, AdamW"):
        validate_cfg(cfg)
