#!/usr/bin/env python
"""Convert ResNet weights between torchvision/resnet_det, detectron2 and MSRA/Caffe2 names.

    python tools/convert_weights.py --input R-50.pkl --output r50_msra.pth --to resnet_det
    python tools/convert_weights.py --input resnet50-0676ba61.pth --output R-50-tv.pkl --to detectron2
    python tools/convert_weights.py --input r50.pth --output r50_c4.pkl --to detectron2 --detector C4 --plugin
    python tools/convert_weights.py --input output/model_final.pth --output model_final.pkl \
        --to detectron2 --detector FPN        # a detector trained here, for detectron2's mirrored config
    python tools/convert_weights.py --input model_final_280758.pkl --output r50_fpn.pth \
        --to resnet_det --detector FPN        # a detectron2 model-zoo detector, for resnet_det

Targets: resnet_det ({"model": torchvision names, "meta": ...}, torch.save), torchvision (a bare
state dict), detectron2 (its pickle: {"model", "__author__", "matching_heuristics"}) and msra
({"blobs": ...} pickle, BN folded into scale/bias). --detector places the weights at a whole
detector's names (C4: res5 into the box head); --plugin targets resnet_det's detectron2 backbones.
A whole-detector input with --detector converts every part (FPN, RPN head, box head, box predictor:
resnet_det/checkpoint/heads.py); without --detector only its backbone. Every tensor is accounted for
in the printed report; the output is written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_det.checkpoint import (LAYOUTS, block_mismatch, block_structure, convert_detector,  # noqa: E402
                                   convert_state_dict, default_meta, detect_convention, detect_layout, join_detector,
                                   read_checkpoint, save_detectron2_pkl, save_msra_pkl, save_resnet_det,
                                   split_detector)
from resnet_det.utils.errors import WeightsError  # noqa: E402
from resnet_det.utils.io import atomic_save  # noqa: E402
from resnet_det.modeling.backbone.resnet import ARCHS  # noqa: E402

TARGETS = ("resnet_det", "torchvision", "detectron2", "msra")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help=".pth/.pt or .pkl weights")
    p.add_argument("--output", required=True, help="file to write (.pkl for detectron2 and msra)")
    p.add_argument("--to", required=True, choices=TARGETS)
    p.add_argument("--from", dest="src", default="auto", choices=("auto",) + TARGETS,
                   help="naming of the input (auto: detected from its keys)")
    p.add_argument("--depth", type=int, choices=sorted(ARCHS),
                   help="check the weights have Table 1's blocks for this depth")
    p.add_argument("--detector", choices=("C4", "FPN"),
                   help="write a whole detector's names (C4: res5 in the box head) instead of a backbone's")
    p.add_argument("--plugin", action="store_true",
                   help="with --to detectron2 --detector: names of resnet_det's detectron2 backbones")
    p.add_argument("--anchor-grid", type=int, nargs=2, metavar=("SIZES", "RATIOS"),
                   help="anchors per location of the RPN's map (default: 3 aspect ratios; C4: 5 3, FPN: 1 3), "
                        "to reorder its channels between torchvision's and detectron2's anchor order")
    p.add_argument("--bbox-reg", choices=("aware", "agnostic"),
                   help="the box predictor's regression, where its rows cannot tell: detectron2's class-aware "
                        "head for ONE class has 4 rows, like a class-agnostic one (MODEL.ROI_BOX_HEAD."
                        "CLS_AGNOSTIC_BBOX_REG of the config the weights were trained with)")
    p.add_argument("--strict", action="store_true", help="fail (exit 2) when any input key is unmatched")
    p.add_argument("--trusted", action="store_true",
                   help="allow arbitrary pickled objects in the input (only for files you trust)")
    return p.parse_args(argv)


def check_depth(sd: dict, convention: str, depth: int) -> None:
    mismatch = block_mismatch(block_structure(sd, convention), ARCHS[depth], "Table 1")
    if mismatch:
        raise SystemExit(f"--depth {depth}: {mismatch}")


def target_layout(args) -> str | None:
    if args.detector is None:
        if args.plugin:
            raise SystemExit("--plugin needs --detector C4 or FPN (the plugin's names are a detector's)")
        return None
    if args.to == "msra":
        raise SystemExit("--detector: MSRA/Caffe2 files hold ImageNet backbones only; pick another --to")
    if args.plugin and args.to != "detectron2":
        raise SystemExit("--plugin is for --to detectron2 (resnet_det's detectron2 backbones)")
    framework = "d2plugin" if args.plugin else ("detectron2" if args.to == "detectron2" else "resnet_det")
    return f"{framework}-{args.detector}"


def check_same_detector(in_layout: str, out_layout: str) -> None:
    kinds = {lay: "C4" if LAYOUTS[lay].res5_prefix else "FPN" for lay in (in_layout, out_layout)}
    if kinds[in_layout] != kinds[out_layout]:
        raise SystemExit(f"--detector {kinds[out_layout]}: the input is a {kinds[in_layout]} detector "
                         f"({in_layout}); its heads have no {kinds[out_layout]} counterpart")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.to in ("detectron2", "msra") and not args.output.endswith(".pkl"):
        raise SystemExit(f"--output {args.output}: --to {args.to} writes a pickle; name it *.pkl "
                         "(detectron2 picks its reader by that extension)")
    layout = target_layout(args)
    sd, meta = read_checkpoint(args.input, trusted=args.trusted)
    rest, whole = {}, None
    in_layout = detect_layout(sd)
    if in_layout is not None and layout is not None:
        whole = dict(sd)
        check_same_detector(in_layout, layout)
        print(f"input is a whole detector ({in_layout}): converting every part to {layout}")
    if in_layout is not None:
        sd, rest = split_detector(sd, in_layout)
        if whole is None:
            print(f"input is a whole detector ({in_layout}): converting its {len(sd)} backbone tensors")
    src = detect_convention(sd) if args.src == "auto" else args.src.replace("resnet_det", "torchvision")
    if meta is None:
        meta = default_meta(src)
        print(f"input has no meta record; assuming {src}'s: {meta}")
    dst = "torchvision" if args.to == "resnet_det" else args.to
    if whole is not None:
        try:
            out, report = convert_detector(whole, in_layout, layout, anchor_grid=args.anchor_grid,
                                           cls_agnostic=None if args.bbox_reg is None else args.bbox_reg == "agnostic")
        except WeightsError as e:
            raise SystemExit(f"--input {args.input}: {e}") from None
        except ValueError as e:
            raise SystemExit(f"--input {args.input}: {e}; pass --anchor-grid SIZES RATIOS") from None
    elif layout is None:
        out, report = convert_state_dict(sd, src, dst, log=False)
    else:
        out, report = join_detector(sd, src, layout)
    report.unmatched += [k for k in rest if whole is None]
    if args.depth:
        tv_names, _ = convert_state_dict(sd, src, "torchvision", log=False)
        check_depth(tv_names, "torchvision", args.depth)
    print(report.summary())
    if args.strict and report.unmatched:
        print(f"--strict: {len(report.unmatched)} unmatched keys; nothing written", file=sys.stderr)
        return 2

    if args.to == "resnet_det":
        save_resnet_det(args.output, out, meta)
    elif args.to == "torchvision":
        atomic_save(out, args.output)
    elif args.to == "detectron2":
        # A whole detector under detectron2's own names loads as the model zoo's files do, by exact
        # name; backbones (and the plugin's names) rely on its suffix-matching heuristics.
        exact = whole is not None and not args.plugin
        save_detectron2_pkl(args.output, out, meta, matching_heuristics=not exact)
    else:
        save_msra_pkl(args.output, out, meta)
    print(f"wrote {args.output} ({args.to}{', ' + layout if layout else ''}); meta: {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
