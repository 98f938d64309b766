#!/usr/bin/env python
"""Print a ResNet's per-stage table (like Table 1 of the paper): output size, layers, channels,
parameters and GFLOPs (multiply-adds of conv and fc layers, the paper's convention).

    python tools/analyze_model.py --model resnet50 [--stride-in-1x1] [--input 224]
    python tools/analyze_model.py --model plain34 | --model resnet34 --shortcut C
    python tools/analyze_model.py --model cifar_resnet110 --input 32
    python tools/analyze_model.py --all      # every depth, both stride placements, vs the paper

The paper's bottleneck nets stride the first 1x1 conv (--stride-in-1x1, 3.8 GFLOPs for ResNet-50);
torchvision strides the 3x3 (the default here, as the weights it publishes; ~4.1 GFLOPs).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_det.modeling.analysis import (build_named_model, cifar_comparison, format_table,  # noqa: E402
                                          imagenet_comparison, model_names, stage_table_text)
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
    args = p.parse_args(argv)
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


def main(argv=None) -> None:
    args = parse_args(argv)
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
    main()
