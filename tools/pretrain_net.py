#!/usr/bin/env python
"""Pretrain (or evaluate) an ImageNet / CIFAR-10 classifier; its checkpoint is a detector's MODEL.WEIGHTS.

    python tools/pretrain_net.py --config-file configs/imagenet/R-50.yaml [--eval-only] [--resume]
                                 [--num-gpus N] [KEY VALUE ...]
    python tools/pretrain_net.py --config-file configs/demo/cls_r18_demo.yaml        # no download needed
    python tools/pretrain_net.py --config-file configs/imagenet/R-50.yaml --eval-only \
        MODEL.WEIGHTS output/imagenet_R-50/model_final.pth TEST.CLS_PROTOCOL 10crop
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_det.classification import run_classification  # noqa: E402
from resnet_det.engine import default_argument_parser, default_setup  # noqa: E402
from resnet_det.engine.defaults import launch_tool, setup_cfg_or_exit  # noqa: E402


def main(args):
    cfg = setup_cfg_or_exit(args)
    default_setup(cfg, args)
    return run_classification(cfg, args)


if __name__ == "__main__":
    parser = default_argument_parser("resnet_det classification pretraining")
    parser.epilog = "Example: python tools/pretrain_net.py --config-file configs/cifar10/resnet-110.yaml"
    launch_tool(main, parser.parse_args())
