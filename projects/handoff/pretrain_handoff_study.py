#!/usr/bin/env python
"""Fine-tune the demo detector from a backbone pretrained on the generated classification set and
from random init (identical settings), and report box AP of both (handoff.md / handoff.json).

    python projects/handoff/pretrain_handoff_study.py [--pretrain-iters 600] [--det-iters 300] [--output DIR]

Everything is generated (cls_demo, shapes); on 2 CPU cores the defaults take about 8 minutes.
Measured results: benchmarks/HANDOFF.md.
"""
import argparse
import logging
import os
import sys

# The repository root, for resnet_det without an install; this folder (the study module) is on the path already.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from handoff import run_handoff_study  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-iters", type=int, default=600)
    p.add_argument("--det-iters", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="output/pretrain_handoff_study")
    p.add_argument("--pretrain-opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="overrides of configs/demo/cls_r18_pretrain_demo.yaml")
    p.add_argument("--det-opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="overrides of configs/demo/frcnn_r18_fpn_shapes.yaml")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    summary = run_handoff_study(args.output, args.pretrain_iters, args.det_iters, args.seed,
                                args.pretrain_opts, args.det_opts)
    print(open(os.path.join(args.output, "handoff.md"), encoding="utf-8").read())
    return summary


if __name__ == "__main__":
    main()
