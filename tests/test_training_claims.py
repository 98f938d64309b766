"""README claims about training, each against an oracle: mixed precision (autocast) outputs near
float32, the cosine and step schedules with warmup equal torch's own schedulers, and the per-stage
parameter table equals torchvision's ResNet stage sizes with the FREEZE_AT split."""
import json
import logging
import os

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from resnet_det.engine import Trainer
from resnet_det.engine.solver import build_lr_scheduler
from resnet_det.modeling.detector import build_model
from resnet_det.modeling.detector.rcnn import parameter_table

from engine_utils import REPO, tiny_cfg


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


# ---- SOLVER.AMP ----------------------------------------------------------------------------------
def tiny_batch():
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8, generator=g),
             "boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "classes": torch.tensor([2])}]


def test_autocast_bfloat16_outputs_near_float32(tmp_path):
    """The detector under the autocast the trainer uses: features and losses within bfloat16 precision
    of float32 (8-bit mantissa, ~0.4% per rounding), and autocast really reached the convs."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(str(tmp_path)))
    seen = []
    model.backbone.body.layer2.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    image = tiny_batch()[0]["image"].float()[None]
    with torch.no_grad():
        model.eval()
        ref = model.backbone(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model.backbone(image)
    assert seen == [torch.float32, torch.bfloat16]
    for k in ref:
        assert amp[k].dtype == torch.bfloat16 and rel_err(amp[k], ref[k]) < 3e-2, k
    losses = {}
    for name, enabled in (("fp32", False), ("bf16", True)):
        torch.manual_seed(3)  # the same RPN / RoI sampling
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            losses[name] = model.train()(tiny_batch())
    for k, v in losses["fp32"].items():
        assert losses["bf16"][k].item() == pytest.approx(v.item(), rel=5e-2, abs=1e-3), k


def test_amp_training_step(shapes_root, tmp_path, caplog):
    """SOLVER.AMP.ENABLED is applied on CUDA only; on a CPU it says so. The step code it enables (autocast
    around the forward, float32 master weights) is run here with bfloat16, as the trainer sets it on CUDA,
    and its first step's RPN losses match a float32 run's within bfloat16 precision. (float16 with its
    GradScaler needs a GPU.)"""
    opts = ["SOLVER.MAX_ITER", 2, "DATASETS.TEST", "()", "SEED", 3, "SOLVER.AMP.ENABLED", True]
    runs = {}
    for name in ("fp32", "bf16"):
        torch.manual_seed(3)
        out = str(tmp_path / name)
        with caplog.at_level(logging.WARNING):
            t = Trainer(tiny_cfg(out, *opts))
        assert t.amp_dtype is None and t.scaler is None
        assert "SOLVER.AMP.ENABLED applies on CUDA only" in caplog.text
        if name == "bf16":
            t.amp_dtype = torch.bfloat16  # what __init__ sets for a CUDA device
        dtypes = []
        t.model.backbone.body.layer1.register_forward_hook(lambda m, a, o: dtypes.append(o.dtype))
        before = [p.detach().clone() for p in t.model.parameters()]
        t.train()
        assert dtypes == [torch.bfloat16 if name == "bf16" else torch.float32] * 2
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in t.model.parameters())
        assert any(not torch.equal(p, q) for p, q in zip(t.model.parameters(), before))
        runs[name] = [json.loads(x) for x in open(os.path.join(out, "metrics.json"))][0]
    # The RPN's losses are taken on anchors; the RoI head's on proposals, which bfloat16 may reorder.
    for k in ("loss_objectness", "loss_rpn_box_reg"):
        assert runs["bf16"][k] == pytest.approx(runs["fp32"][k], rel=5e-2, abs=1e-3), k


# ---- schedules -----------------------------------------------------------------------------------
def schedule_cfg(name, method="linear"):
    from resnet_det.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.LR_SCHEDULER_NAME", name, "SOLVER.MAX_ITER", 40, "SOLVER.STEPS", (25, 35),
                         "SOLVER.WARMUP_ITERS", 10, "SOLVER.WARMUP_FACTOR", 0.01, "SOLVER.WARMUP_METHOD", method,
                         "SOLVER.BASE_LR", 0.02])
    return cfg


@pytest.mark.parametrize("name,method", [("WarmupCosineLR", "linear"), ("WarmupCosineLR", "constant"),
                                         ("WarmupMultiStepLR", "linear")])
def test_schedules_equal_torch_schedulers(name, method):
    """Our LambdaLR against torch's own schedulers chained (warmup factor times schedule), iteration by
    iteration over the whole run, stepped once per iteration as the trainer does."""
    from torch.optim import lr_scheduler as L

    cfg = schedule_cfg(name, method)
    s = cfg.SOLVER
    opts = [torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=s.BASE_LR) for _ in range(2)]
    ours = build_lr_scheduler(cfg, opts[0])
    warm = (L.LinearLR(opts[1], start_factor=s.WARMUP_FACTOR, total_iters=s.WARMUP_ITERS) if method == "linear"
            else L.ConstantLR(opts[1], factor=s.WARMUP_FACTOR, total_iters=s.WARMUP_ITERS))
    main = (L.CosineAnnealingLR(opts[1], T_max=s.MAX_ITER) if name == "WarmupCosineLR"
            else L.MultiStepLR(opts[1], milestones=list(s.STEPS), gamma=s.GAMMA))
    oracle = L.ChainedScheduler([warm, main])
    got, want = [], []
    for _ in range(s.MAX_ITER):
        got.append(opts[0].param_groups[0]["lr"])
        want.append(opts[1].param_groups[0]["lr"])
        for opt, sched in zip(opts, (ours, oracle)):
            opt.step()
            sched.step()
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)
    assert got[0] == pytest.approx(s.BASE_LR * s.WARMUP_FACTOR)  # the first iteration is warm
    if name == "WarmupCosineLR":
        assert got[20] == pytest.approx(s.BASE_LR * 0.5) and got[-1] < s.BASE_LR * 0.01  # half way, near 0


def test_schedule_decides_on_the_iteration_beyond_a_million_iterations():
    """frcnn_r101_coco.yaml at 2 images per batch: 1.28M iterations, the lr drops at iteration 960000
    exactly and the warmup's last iteration is still warm. (fvcore's MultiStep/Composite param schedulers
    compare progress fractions with a tolerance of 1e-6 of the run, which moves both one iteration early.)"""
    from resnet_det.config import get_cfg
    from resnet_det.engine.solver import lr_schedule, scale_schedule

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "frcnn_r101_coco.yaml"))
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", 2, "SOLVER.WARMUP_ITERS", 100])
    scale_schedule(cfg)
    s = cfg.SOLVER
    assert (s.MAX_ITER, tuple(s.STEPS), s.WARMUP_ITERS) == (1280000, (960000,), 400)
    factor = lr_schedule(cfg)
    assert factor(399) == pytest.approx(s.WARMUP_FACTOR / 400 + 399 / 400) and factor(399) < 1 and factor(400) == 1
    assert (factor(959999), factor(960000), factor(s.MAX_ITER - 1)) == (1, pytest.approx(0.1), pytest.approx(0.1))


# ---- the per-stage parameter table -----------------------------------------------------------------
def parse_table(text):
    rows = {}
    for line in text.splitlines()[1:]:
        name, trainable, frozen = line.split()
        rows[name] = (int(trainable.replace(",", "")), int(frozen.replace(",", "")))
    return rows


def numel(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_table_matches_torchvision_stages(tmp_path):
    """R50-C4 with BN and FREEZE_AT 2: stem and res2 frozen (their BN becomes FrozenBN, whose statistics
    and affine values are buffers), res3/res4 trainable, res5 trainable in the RoI head. Stage sizes
    from torchvision's resnet50 (with FrozenBN for the frozen stages, BN for the others)."""
    from resnet_det.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.NORM", "BN",
                         "MODEL.BACKBONE.FREEZE_AT", 2, "MODEL.ROI_HEADS.NUM_CLASSES", 3])
    model = build_model(cfg)
    rows = parse_table(parameter_table(model))
    tv_bn = torchvision.models.resnet50()
    tv_frozen = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)
    assert rows["backbone.stem"] == (0, numel(tv_frozen.conv1) + numel(tv_frozen.bn1)) == (0, 64 * 3 * 7 * 7)
    assert rows["backbone.res2"] == (0, numel(tv_frozen.layer1))
    assert rows["backbone.res3"] == (numel(tv_bn.layer2), 0)
    assert rows["backbone.res4"] == (numel(tv_bn.layer3), 0)
    assert rows["roi_heads.box_head"] == (numel(tv_bn.layer4), 0)  # C4: res5 is the per-region head
    assert sum(t + f for t, f in rows.values()) == numel(model)
    assert sum(t for t, _ in rows.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
