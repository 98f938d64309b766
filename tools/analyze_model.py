#!/usr/bin/env python
"""Print a ResNet's per-stage table (like Table 1 of the paper): output size, layers, channels,
parameters and GFLOPs (multiply-adds of conv and fc layers, the paper's convention).

    python tools/analyze_model.py --model resnet50 [--stride-in-1x1] [--input 224]
    python tools/analyze_model.py --model plain34 | --model resnet34 --shortcut C
    python tools/analyze_model.py --model cifar_resnet110 --input 32
    python tools/analyze_model.py --all      # every depth, both stride placements, vs the paper
    python tools/analyze_model.py [--tasks parameter flop activation] \\
        --config-file configs/frcnn_r101_fpn_coco.yaml [KEY VALUE ...]   # a whole detector, per module

With --config-file, the detector the config builds is run once (eval mode, no weights needed) on a
random image of its test size (shorter side INPUT.MIN_SIZE_TEST, 4:3, capped at INPUT.MAX_SIZE_TEST):
parameters, multiply-adds (fvcore FlopCountAnalysis, conv + fc as for the backbone table) and output
activations (fvcore ActivationCountAnalysis) per backbone stage, FPN, RPN and RoI-head part.

The paper's bottleneck nets stride the first 1x1 conv (--stride-in-1x1, 3.8 GFLOPs for ResNet-50);
torchvision strides the 3x3 (the default here, as the weights it publishes; ~4.1 GFLOPs).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_det.engine.defaults import exit_on_user_error, setup_cfg_or_exit  # noqa: E402
from resnet_det.modeling.analysis import (DETECTOR_TASKS, build_named_model, cifar_comparison,  # noqa: E402
                                          format_table, imagenet_comparison, model_names, stage_table_text)
from resnet_det.modeling.backbone.blocks import SHORTCUTS  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", metavar="NAME",
                   help=f"one of {', '.join(model_names())} (any 6n+2 CIFAR depth works)")
    p.add_argument("--stride-in-1x1", action="store_true",
                   help="paper/MSRA placement: stride 2 in the bottleneck's first 1x1 (default: in the 3x3)")
    p.add_argument("--input", type=int, default=None, metavar="S",
                   help="square input size (default 224, or 32 for CIFAR nets)")
    p.add_argument("--plain", action="store_true", help="the plain counterpart: no shortcuts (Sec. 4.1)")
    p.add_argument("--shortcut", choices=SHORTCUTS, default=None,
                   help="Table 3 option (default: B for ImageNet nets, A for CIFAR nets)")
    p.add_argument("--all", action="store_true",
                   help="compare all five depths (both stride placements) and the CIFAR nets with the paper")
    p.add_argument("--config-file", metavar="FILE", help="analyse the whole detector this config builds")
    p.add_argument("--tasks", nargs="+", choices=DETECTOR_TASKS, default=list(DETECTOR_TASKS),
                   help="with --config-file: which columns to compute (default: all)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="with --config-file: config overrides, e.g. INPUT.MIN_SIZE_TEST 800")
    args = p.parse_args(argv)
    if args.opts and not args.config_file:
        p.error(f"config overrides {args.opts} need --config-file")
    if args.input is not None and args.input < 32:
        p.error(f"--input={args.input}: expected at least 32 pixels (five stride-2 steps)")
    return args


def print_all() -> None:
    print("ImageNet nets at 224x224 (Table 1). GFLOPs = multiply-adds of conv + fc layers.")
    print(format_table(imagenet_comparison(224), [
        ("model", "model"), ("params", "params"), ("torchvision_params", "torchvision params"),
        ("gflops_1x1", "GFLOPs stride in 1x1 (paper)"), ("gflops_3x3", "GFLOPs stride in 3x3 (torchvision)"),
        ("paper_gflops", "paper Table 1")]))
    print("\nCIFAR-10 nets, option A shortcuts (Sec. 4.2, Table 6).")
    print(format_table(cifar_comparison(), [
        ("model", "model"), ("params", "params"), ("mparams", "M params"), ("paper_mparams", "paper (M)")]))


def analyze_detector(args) -> list:
    from resnet_det.modeling.analysis import detector_analysis, detector_table_text, detector_test_image
    from resnet_det.modeling.detector import build_model

    args.opts = ["MODEL.DEVICE", "cpu", *args.opts]  # counting, not timing: the CPU is enough
    cfg = setup_cfg_or_exit(args, adopt_weights=False)
    model = build_model(cfg)
    image = detector_test_image(cfg)
    rows = detector_analysis(model, image, args.tasks)
    print(f"{os.path.basename(args.config_file)}: {cfg.MODEL.BACKBONE.NAME}, ResNet-{cfg.MODEL.RESNETS.DEPTH}, "
          f"input {image.shape[1]}x{image.shape[2]}, {cfg.MODEL.RPN.POST_NMS_TOPK_TEST} proposals")
    print(detector_table_text(rows))
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.config_file:
        return analyze_detector(args)
    if args.all:
        print_all()
        return
    try:
        model = build_named_model(args.model, stride_in_1x1=args.stride_in_1x1, plain=args.plain,
                                  shortcut=args.shortcut)
    except ValueError as e:
        sys.exit(f"error: {e}")
    size = args.input or (32 if args.model.startswith("cifar") else 224)
    default_shortcut = "A" if args.model.startswith("cifar") else "B"  # Sec. 4.2 / Table 3
    plain = args.plain or "plain" in args.model
    variant = ["no shortcuts" if plain else f"shortcut {args.shortcut or default_shortcut}",
               "stride in 1x1" if args.stride_in_1x1 else ""]
    print(f"{args.model} ({', '.join(v for v in variant if v)}), input {size}x{size}")
    print(stage_table_text(model, size))


if __name__ == "__main__":
    exit_on_user_error(main)  # user mistakes (a bad config): one paragraph, exit status 2
