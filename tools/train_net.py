#!/usr/bin/env python
"""Train or evaluate Faster R-CNN on ResNet (C4 or FPN).

    python tools/train_net.py --config-file configs/frcnn_r101_coco.yaml [--eval-only] [--resume]
                              [--num-gpus N] [KEY VALUE ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_det.engine import Trainer, default_argument_parser, default_setup  # noqa: E402
from resnet_det.engine.defaults import launch_tool, setup_cfg_or_exit  # noqa: E402
from resnet_det.engine.run import run_detection  # noqa: E402


def main(args):
    cfg = setup_cfg_or_exit(args)
    default_setup(cfg, args)
    return run_detection(cfg, args, Trainer)


if __name__ == "__main__":
    launch_tool(main, default_argument_parser().parse_args())
