#!/usr/bin/env python
"""One demo detector run (stage 2 of `make demo`) that also measures weights-EMA decays for free.

Trains configs/demo/frcnn_r18_fpn_shapes_pretrained.yaml exactly as tools/demo.py does (same arguments,
setup, seed, MODEL.WEIGHTS hand-off), with the overrides given, and keeps one extra weights EMA per
--ema-decays value through a hook (engine/hooks.py's build_ema, the one MODEL_EMA.ENABLED uses). The EMAs
only read the weights, so the training itself (and the trained model's AP) is that of the run without
them; after training each EMA is evaluated on DATASETS.TEST as MODEL_EMA.ENABLED would. Writes
OUTPUT_DIR/levers.json: {"model": bbox metrics, "ema 0.99": ..., ...}. benchmarks/DEMO.md ("Levers of
issue 25") has the numbers.

    python benchmarks/demo_levers.py --weights output/demo/pretrain/model_final.pth --output output/levers/base \\
        [--ema-decays 0.99,0.995,0.998] [KEY VALUE ...]       # e.g. INPUT.AUGMENTATIONS "('RandomFlip','PhotometricDistort')"
    python benchmarks/demo_levers.py --ema-cost   # ms per EMA update of the demo detector (no training)
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_det.engine import Trainer, default_setup  # noqa: E402
from resnet_det.engine.defaults import setup_cfg_or_exit  # noqa: E402
from resnet_det.engine.hooks import HookBase, build_ema  # noqa: E402
from resnet_det.engine.trainer import flatten_results  # noqa: E402
from tools.demo import DETECTOR_CONFIG, _stage_args  # noqa: E402


class ExtraEMAs(HookBase):
    """One AveragedModel per decay (MODEL_EMA's build_ema with MODEL_EMA.DECAY = d), updated after every step."""

    def __init__(self, decays):
        self.decays, self.emas = list(decays), {}

    def before_train(self) -> None:
        t = self.trainer
        for d in self.decays:
            cfg = t.cfg.clone()
            cfg.defrost()
            cfg.MODEL_EMA.ENABLED, cfg.MODEL_EMA.DECAY = True, d
            self.emas[d] = build_ema(cfg, t.model)

    def after_step(self) -> None:
        for ema in self.emas.values():
            ema.update_parameters(self.trainer.model)


def ema_cost(rounds: int = 30) -> None:
    """Time one weights-EMA update (MODEL_EMA's per-step cost) of the demo detector, at torch's thread count."""
    import torch

    from resnet_det.config import get_cfg
    from resnet_det.modeling.detector import build_model

    cfg = get_cfg()
    cfg.merge_from_file(DETECTOR_CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL_EMA.ENABLED", True])
    model = build_model(cfg)
    ema = build_ema(cfg, model)
    ts = []
    for i in range(rounds + 3):  # 3 warm-up updates (the first one copies)
        t = time.perf_counter()
        ema.update_parameters(model)
        if i >= 3:
            ts.append((time.perf_counter() - t) * 1000)
    n = sum(p.numel() for p in model.parameters())
    print(f"EMA update of the demo detector ({n / 1e6:.1f} M parameters, {torch.get_num_threads()} thread(s)): "
          f"median {statistics.median(ts):.1f} ms, min {min(ts):.1f} ms", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ema-cost", action="store_true", help="only time one EMA update and exit")
    p.add_argument("--weights", help="the pretrained backbone (tools/demo.py's stage 1 output)")
    p.add_argument("--output")
    p.add_argument("--ema-decays", default="0.99,0.995,0.998", help="comma-separated EMA decays ('' = none)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    a = p.parse_args()
    if a.ema_cost:
        return ema_cost()
    if a.weights is None or a.output is None:
        p.error("--weights and --output are required for a training run")
    args = _stage_args(DETECTOR_CONFIG, ["OUTPUT_DIR", a.output, "MODEL.WEIGHTS", a.weights, *a.opts])
    cfg = setup_cfg_or_exit(args)
    default_setup(cfg, args)
    trainer = Trainer(cfg)
    extra = ExtraEMAs(float(d) for d in a.ema_decays.split(",") if d)
    trainer.register_hooks([extra])
    trainer.resume_or_load(resume=False)
    results = {f"ema {cfg.MODEL_EMA.DECAY:g}" if cfg.MODEL_EMA.ENABLED else "model": trainer.train()}
    for d, ema in extra.emas.items():
        results[f"ema {d:g}"] = Trainer.test(cfg, ema.module)
    flat = {k: {m: v for m, v in flatten_results(r).items() if m.startswith("bbox/")} for k, r in results.items()}
    with open(os.path.join(cfg.OUTPUT_DIR, "levers.json"), "w") as f:
        json.dump({"opts": a.opts, "max_iter": cfg.SOLVER.MAX_ITER, "results": flat}, f, indent=1)
    for k, r in flat.items():
        print(f"{k}: AP50 {r.get('bbox/AP50', float('nan')):.1f} AP {r.get('bbox/AP', float('nan')):.1f}", flush=True)


if __name__ == "__main__":
    main()
