#!/usr/bin/env python
"""Train or evaluate the ImageNet localization network (Appendix C: per-class RPN on a ResNet).

    python tools/train_localizer.py --config-file configs/imagenet/loc_R-101.yaml \
        MODEL.WEIGHTS path/to/resnet101_classification.pth [--eval-only] [--resume] [--num-gpus N]
    python tools/train_localizer.py --config-file configs/demo/loc_R-18_demo.yaml   # CPU, ~2 min

Reports top-1 / top-5 localization and classification error and the oracle (true class) error.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_det.engine import default_argument_parser, default_setup  # noqa: E402
from resnet_det.engine.defaults import launch_tool, setup_cfg_or_exit  # noqa: E402
from resnet_det.engine.run import run_detection  # noqa: E402
from resnet_det.localization import LocalizerTrainer  # noqa: E402


def main(args):
    cfg = setup_cfg_or_exit(args)
    default_setup(cfg, args)
    return run_detection(cfg, args, LocalizerTrainer)


if __name__ == "__main__":
    launch_tool(main, default_argument_parser("resnet_det ImageNet localization (Appendix C)").parse_args())
