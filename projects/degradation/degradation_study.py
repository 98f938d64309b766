#!/usr/bin/env python
"""Plain vs residual nets at two depths on the same data (Sec. 4.1-4.2): training/validation error
curves (Fig. 4/6 style), per-layer response std (Fig. 7 style), summary.json and summary.md.

    python projects/degradation/degradation_study.py           # embedded data, ~15-20 min on 2 cores
    python projects/degradation/degradation_study.py --depths 20 56 --iterations 600 --output output/degradation
    python projects/degradation/degradation_study.py --data cifar10   # real CIFAR-10 (45k/5k split), far longer

The embedded data is the generated shapes classification set (10 classes, 32x32), drawn on first use
under $RESNET_DET_DATASETS/cls_study.
"""
import argparse
import logging
import os
import sys

# The repository root, for resnet_det without an install; this folder (the study module) is on the path already.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402
from degradation import StudySettings, prepare_study_data, run_study  # noqa: E402


def main(argv=None):
    d = StudySettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=list(d.depths), help="CIFAR depths 6n+2 (two or more)")
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.base_lr)
    p.add_argument("--warmup-iters", type=int, default=d.warmup_iters, help="linear warm-up; 0 = none")
    p.add_argument("--warmup-factor", type=float, default=d.warmup_factor, help="warm-up starts at lr x this")
    p.add_argument("--eval-period", type=int, default=d.eval_period)
    p.add_argument("--val-images", type=int, default=d.val_images)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data", default="demo", help="'demo' (generated), 'cifar10' ($RESNET_DET_DATASETS/"
                   "cifar-10-batches-py), or a folder with train/<class>/* and val/<class>/*")
    p.add_argument("--train-per-class", type=int, default=300, help="demo data: training images per class")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--output", default="output/degradation_study")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="config overrides for every net, e.g. SOLVER.WEIGHT_DECAY 5e-4 (configs/cifar10 keys)")
    args = p.parse_args(argv)
    if len(args.opts) % 2:
        p.error(f"--opts takes KEY VALUE pairs; got {args.opts}")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    settings = StudySettings(depths=tuple(args.depths), iterations=args.iterations, batch_size=args.batch_size,
                             base_lr=args.lr, warmup_iters=args.warmup_iters, warmup_factor=args.warmup_factor,
                             eval_period=args.eval_period, val_images=args.val_images,
                             seed=args.seed, extra=dict(zip(args.opts[::2], args.opts[1::2])))
    data = prepare_study_data(args.data, train_per_class=args.train_per_class)
    summary = run_study(settings, data, args.output)
    print(open(os.path.join(args.output, "summary.md"), encoding="utf-8").read())
    return summary


if __name__ == "__main__":
    main()
