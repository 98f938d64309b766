"""Does pretraining help the detector? Pretrain ResNet-18 on the generated classification set, then
fine-tune the demo detector (configs/demo/frcnn_r18_fpn_shapes.yaml) twice with identical settings,
once from that checkpoint and once from random initialisation, and compare box AP on shapes_val."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

from resnet_det.classification import ClassificationTrainer
from resnet_det.engine import Trainer, setup_cfg
from resnet_det.engine.defaults import seed_all

logger = logging.getLogger(__name__)
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PRETRAIN_CONFIG = os.path.join(REPO, "configs", "demo", "cls_r18_pretrain_demo.yaml")  # make demo's stage 1
DETECTOR_CONFIG = os.path.join(REPO, "configs", "demo", "frcnn_r18_fpn_shapes.yaml")


def _schedule(iters: int) -> list:
    return ["SOLVER.MAX_ITER", iters, "SOLVER.STEPS", (int(0.7 * iters), int(0.9 * iters)),
            "SOLVER.WARMUP_ITERS", max(1, min(100, iters // 8)), "SOLVER.CHECKPOINT_PERIOD", 10 ** 9,
            "TEST.EVAL_PERIOD", 0]


def _cfg(path: str, opts: list, weights: str = ""):
    # As the tools build it: the file, the overrides, the input convention MODEL.WEIGHTS records, scaled.
    return setup_cfg(argparse.Namespace(config_file=path, opts=opts + ["MODEL.WEIGHTS", weights], resume=False))


def pretrain(output_dir: str, iterations: int, seed: int, extra: list = ()) -> tuple[str, dict]:
    cfg = _cfg(PRETRAIN_CONFIG, _schedule(iterations) + ["OUTPUT_DIR", output_dir, "SEED", seed, *extra])
    seed_all(seed)
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    return os.path.join(output_dir, "model_final.pth"), results


def finetune(output_dir: str, weights: str, iterations: int, seed: int, extra: list = ()) -> dict:
    cfg = _cfg(DETECTOR_CONFIG, _schedule(iterations) + ["OUTPUT_DIR", output_dir, "SEED", seed,
                                                         "VIS.NUM_IMAGES", 0, *extra], weights)
    seed_all(seed)  # the same seed: the heads start identical, only the backbone init differs
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer.train()


def run_handoff_study(output_dir: str, pretrain_iters: int = 600, det_iters: int = 300, seed: int = 0,
                      pretrain_opts: list = (), det_opts: list = ()) -> dict:
    """Writes handoff.json and handoff.md in ``output_dir``; returns the summary."""
    t0 = time.perf_counter()
    ckpt, cls_results = pretrain(os.path.join(output_dir, "pretrain"), pretrain_iters, seed, list(pretrain_opts))
    t1 = time.perf_counter()
    runs = {}
    for name, weights in (("scratch", ""), ("pretrained", ckpt)):
        start = time.perf_counter()
        res = finetune(os.path.join(output_dir, f"det_{name}"), weights, det_iters, seed, list(det_opts))
        runs[name] = {"bbox": res.get("bbox", {}), "seconds": time.perf_counter() - start}
    summary = {"pretrain_iters": pretrain_iters, "det_iters": det_iters, "seed": seed,
               "pretrain_val": cls_results, "pretrain_seconds": t1 - t0, "detector": runs,
               "pretrained_beats_scratch_AP50": runs["pretrained"]["bbox"].get("AP50", float("nan"))
               > runs["scratch"]["bbox"].get("AP50", float("nan"))}
    with open(os.path.join(output_dir, "handoff.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(output_dir, "handoff.md"), "w", encoding="utf-8") as f:
        f.write(handoff_markdown(summary))
    return summary


def handoff_markdown(s: dict) -> str:
    top1 = s["pretrain_val"].get("top1_err", float("nan"))
    lines = ["# Pretraining hand-off: detector fine-tuned from pretrained ResNet-18 vs from scratch", "",
             f"Pretraining: {s['pretrain_iters']} iterations of configs/demo/cls_r18_pretrain_demo.yaml "
             f"(cls_demo_val top-1 error {top1:.2f}%, {s['pretrain_seconds']:.0f} s).",
             f"Detection: {s['det_iters']} iterations of configs/demo/frcnn_r18_fpn_shapes.yaml, identical "
             f"settings and seed ({s['seed']}) except MODEL.WEIGHTS; box AP on shapes_val.", "",
             "| init | AP | AP50 | AP75 | time (s) |", "|---|---|---|---|---|"]
    for name, r in s["detector"].items():
        b = r["bbox"]
        lines.append(f"| {name} | {b.get('AP', float('nan')):.2f} | {b.get('AP50', float('nan')):.2f} | "
                     f"{b.get('AP75', float('nan')):.2f} | {r['seconds']:.0f} |")
    lines += ["", f"Pretrained beats scratch on AP50: {s['pretrained_beats_scratch_AP50']}", ""]
    return "\n".join(lines)
