"""The degradation study (Sec. 4.1-4.2, Figs. 4, 6, 7): plain and residual CIFAR-style nets of two
depths trained on the same data with the same recipe; training/validation error curves and the
per-layer response std.

Training error is that of the augmented mini-batches in train mode (the thin curves of Fig. 6),
averaged over each evaluation period; at the end the whole training set is also scored in eval
mode without augmentation. Validation error is the single-view error (Sec. 4.2).
Response std (Fig. 7): "the outputs of each 3x3 layer, after BN and before other nonlinearity" -
forward hooks on the BN after every 3x3 conv (the stem's bn1, and bn1/bn2 of every block; bn2's
output is before the addition), the std of all its elements over a fixed validation batch.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from resnet_det.classification import (Classifier, TestTransform, build_classification_train_loader,
                                       build_classifier, compute_mean_image, load_cifar_dicts, load_image,
                                       load_image_folder)
from resnet_det.config import get_cfg
from resnet_det.data import datasets_root, make_classification_set
from resnet_det.engine.solver import build_lr_scheduler, build_optimizer
from resnet_det.modeling.backbone import BasicBlock

logger = logging.getLogger(__name__)


@dataclass
class StudySettings:
    """What the study trains. The defaults take about 15-20 minutes on 2 CPU cores."""
    depths: tuple = (20, 56)          # 6n+2 (Fig. 6 uses 20-56; 20 vs 56 shows the effect most clearly)
    iterations: int = 600
    batch_size: int = 64
    base_lr: float = 0.1
    lr_steps: tuple = (0.6, 0.85)     # fractions of `iterations` where lr is divided by 10 (32k/48k of 64k)
    # Linear warm-up from base_lr * warmup_factor (the paper warms ResNet-110 up at 0.01). Without it,
    # 600 iterations at lr 0.1 never start the 56-layer nets, residual or plain (benchmarks/DEGRADATION.md).
    warmup_iters: int = 100
    warmup_factor: float = 0.1
    eval_period: int = 50
    weight_decay: float = 1e-4
    val_images: int = 500             # validation images scored at each evaluation (and for Fig. 7)
    seed: int = 0
    kinds: tuple = ("plain", "resnet")
    extra: dict = field(default_factory=dict)  # config overrides for every net, "KEY": value


def study_cfg(settings: StudySettings, output_dir: str, depth: int, plain: bool):
    """The CIFAR recipe (configs/cifar10) at the study's batch and schedule."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "cifar10",
                                     "Base-CIFAR10.yaml"))
    s = settings
    opts = ["MODEL.CLASSIFIER.CIFAR_DEPTH", depth, "MODEL.RESNETS.PLAIN", plain, "MODEL.DEVICE", "cpu",
            "SOLVER.IMS_PER_BATCH", s.batch_size, "SOLVER.REFERENCE_BATCH", s.batch_size,
            "SOLVER.BASE_LR", s.base_lr, "SOLVER.MAX_ITER", s.iterations, "SOLVER.WEIGHT_DECAY", s.weight_decay,
            "SOLVER.WEIGHT_DECAY_NORM", s.weight_decay,
            "SOLVER.STEPS", tuple(int(f * s.iterations) for f in s.lr_steps), "SEED", s.seed,
            "SOLVER.WARMUP_ITERS", s.warmup_iters, "SOLVER.WARMUP_FACTOR", s.warmup_factor,
            "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", output_dir]
    for k, v in s.extra.items():
        opts += [k, v]
    cfg.merge_from_list(opts)
    return cfg


def response_layers(model: Classifier) -> list[tuple[str, torch.nn.Module]]:
    """(name, BN module) after every 3x3 conv, in forward order: stem, then bn1/bn2 of each block."""
    net = model.net
    layers = [("bn1", net.bn1)]
    for name, m in net.named_modules():
        if isinstance(m, BasicBlock):
            layers += [(f"{name}.bn1", m.bn1), (f"{name}.bn2", m.bn2)]
    return layers


@torch.no_grad()
def response_stds(model: Classifier, images: torch.Tensor) -> list[float]:
    """Std of each 3x3 layer's response (after BN, before addition/ReLU) on `images`, eval mode."""
    stds: list[float] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: stds.append(float(out.float().std())))
             for _, m in response_layers(model)]
    was_training = model.training
    model.eval()
    try:
        model.net(model.normalize(images))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stds


@torch.no_grad()
def error_rate(model: Classifier, images: torch.Tensor, labels: torch.Tensor, chunk: int = 250) -> float:
    was_training = model.training
    model.eval()
    wrong = 0
    for i in range(0, len(images), chunk):
        wrong += int((model.net(model.normalize(images[i:i + chunk])).argmax(1) != labels[i:i + chunk]).sum())
    model.train(was_training)
    return 100.0 * wrong / max(len(images), 1)


def _as_tensors(dicts, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    tf = TestTransform(cfg, "center")
    images = torch.stack([tf(load_image(d, cfg.INPUT.FORMAT)) for d in dicts])
    return images, torch.tensor([d["label"] for d in dicts])


def prepare_study_data(data: str, train_per_class: int = 300) -> tuple[str, list[dict], list[dict]]:
    """(description, train dicts, val dicts) of "demo" (the generated 10-class shapes set at 32x32,
    drawn once under $RESNET_DET_DATASETS), "cifar10" (the 45k/5k split) or an image folder root."""
    if data == "cifar10":
        cifar = os.path.join(datasets_root(), "cifar-10-batches-py")
        return (cifar, load_cifar_dicts(cifar, "train", "cifar10_train"),
                load_cifar_dicts(cifar, "val", "cifar10_val"))
    if data == "demo":
        data = make_classification_set(os.path.join(datasets_root(), f"cls_study_{train_per_class}"),
                                       num_classes=10, train_per_class=train_per_class, val_per_class=100,
                                       image_size=32, seed=1)
    return (data, load_image_folder(os.path.join(data, "train"), "study train")[0],
            load_image_folder(os.path.join(data, "val"), "study val")[0])


def train_one(settings: StudySettings, train_dicts: list[dict], val_dicts: list[dict], output_dir: str,
              depth: int, plain: bool) -> dict:
    """Train one net; returns its curves, final errors and response stds."""
    cfg = study_cfg(settings, output_dir, depth, plain)
    torch.manual_seed(settings.seed)
    model = build_classifier(cfg, compute_mean_image(cfg, train_dicts))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    pick = np.linspace(0, len(val_dicts) - 1, min(settings.val_images, len(val_dicts))).round().astype(int)
    val_x, val_y = _as_tensors([val_dicts[i] for i in pick], cfg)
    loader = iter(build_classification_train_loader(cfg, dicts=train_dicts))
    curve = {"iteration": [], "train_err": [], "val_err": [], "loss": []}
    wrong = seen = 0
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    for it in range(settings.iterations):
        images, labels = next(loader)
        logits = model.net(model.normalize(images))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        wrong += int((logits.argmax(1) != labels).sum())
        seen += len(labels)
        losses.append(float(loss.detach()))
        if (it + 1) % settings.eval_period == 0 or it + 1 == settings.iterations:
            curve["iteration"].append(it + 1)
            curve["train_err"].append(100.0 * wrong / seen)
            curve["loss"].append(float(np.mean(losses)))
            curve["val_err"].append(error_rate(model, val_x, val_y))
            wrong = seen = 0
            losses.clear()
            logger.info("%s-%d it %d/%d: train err %.1f%%, val err %.1f%%, loss %.3f (%.0f s)",
                        "plain" if plain else "resnet", depth, it + 1, settings.iterations,
                        curve["train_err"][-1], curve["val_err"][-1], curve["loss"][-1], time.perf_counter() - t0)
    train_x, train_y = _as_tensors(train_dicts, cfg)
    return {"name": f"{'plain' if plain else 'resnet'}-{depth}", "depth": depth, "plain": plain,
            "curve": curve, "final_train_err_running": curve["train_err"][-1],
            "final_train_err_eval": error_rate(model, train_x, train_y), "final_val_err": curve["val_err"][-1],
            "response_std": response_stds(model, val_x), "seconds": time.perf_counter() - t0}


def run_study(settings: StudySettings, data: tuple[str, list[dict], list[dict]], output_dir: str) -> dict:
    """Train every (kind, depth) on ``data`` (from prepare_study_data), write curves.png,
    response_std.png, summary.json and summary.md into ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    name, train_dicts, val_dicts = data
    results = [train_one(settings, train_dicts, val_dicts, os.path.join(output_dir, f"{kind}-{d}"), d,
                         kind == "plain")
               for kind in settings.kinds for d in settings.depths]
    summary = {"settings": asdict(settings), "data_root": name, "models": results,
               "findings": findings(results)}
    with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    from degradation_plots import plot_curves, plot_response_std, summary_markdown

    plot_curves(results, os.path.join(output_dir, "curves.png"))
    plot_response_std(results, os.path.join(output_dir, "response_std.png"))
    with open(os.path.join(output_dir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary_markdown(summary))
    return summary


def findings(results: list[dict]) -> dict:
    """Does the run show the paper's effect? Compared on final training error (running and eval)."""
    by = {(r["plain"], r["depth"]): r for r in results}
    depths = sorted({r["depth"] for r in results})
    out = {}
    if len(depths) >= 2:
        lo, hi = depths[0], depths[-1]
        for plain, kind in ((True, "plain"), (False, "resnet")):
            if (plain, lo) in by and (plain, hi) in by:
                for key in ("final_train_err_running", "final_train_err_eval", "final_val_err"):
                    out[f"{kind}_{hi}_minus_{kind}_{lo}_{key}"] = by[(plain, hi)][key] - by[(plain, lo)][key]
        key = "final_train_err_running"
        if all(k in by for k in ((True, lo), (True, hi), (False, lo), (False, hi))):
            out["deeper_plain_trains_worse"] = by[(True, hi)][key] > by[(True, lo)][key]
            out["deeper_resnet_trains_better"] = by[(False, hi)][key] < by[(False, lo)][key]
            out["resnet_smaller_responses"] = bool(np.mean(by[(False, hi)]["response_std"])
                                                   < np.mean(by[(True, hi)]["response_std"]))
    return out
