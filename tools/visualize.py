#!/usr/bin/env python
"""Draw a detector's boxes on images and write one drawn image per input.

    python tools/visualize.py --config-file configs/frcnn_r101_coco.yaml --input photos/ \\
        --output vis/ [--confidence-threshold 0.5] MODEL.WEIGHTS output/model_final.pth
    python tools/visualize.py --config-file C --dataset coco_2017_val --output vis/ --show-gt \\
        [--side-by-side] [--num-images 20] MODEL.WEIGHTS W

Predicted boxes are drawn in one colour per class with "name score%" labels; with --show-gt the
data set's ground truth is overlaid as dashed white boxes, with --side-by-side drawn in a second panel.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_det.engine.defaults import exit_on_user_error, setup_cfg_or_exit  # noqa: E402
from resnet_det.utils.visualizer import list_images, visualize_images  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="yacs YAML config (configs/...)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="PATH", help="an image file, or a folder of images")
    src.add_argument("--dataset", metavar="NAME", help="a registered data set (resnet_det.data.DatasetCatalog)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the drawn images")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="hide predictions scoring below this")
    p.add_argument("--show-gt", action="store_true", help="overlay ground truth (needs --dataset)")
    p.add_argument("--side-by-side", action="store_true", help="ground truth in a second panel (needs --dataset)")
    p.add_argument("--num-images", type=int, default=0, help="with --dataset: draw only the first N (0: all)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.WEIGHTS output/model_final.pth")
    args = p.parse_args(argv)
    if (args.show_gt or args.side_by_side) and not args.dataset:
        p.error("--show-gt/--side-by-side need ground truth: use --dataset NAME instead of --input")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        p.error(f"--confidence-threshold={args.confidence_threshold}: expected a value in [0, 1]")
    return args


def main(argv=None) -> list:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Let the model drop low scores before NMS bookkeeping, as detectron2's demo does; an explicit
    # MODEL.ROI_HEADS.SCORE_THRESH_TEST among the user's overrides (merged after it) still wins.
    args.opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(args.confidence_threshold), *args.opts]
    cfg = setup_cfg_or_exit(args)  # checked like the training tools' (and the weights' convention adopted)

    from resnet_det.engine import DefaultPredictor

    predictor = DefaultPredictor(cfg)
    class_names = None
    if args.dataset:
        from resnet_det.data import DatasetCatalog, MetadataCatalog

        inputs = DatasetCatalog.get(args.dataset)
        inputs = inputs[: args.num_images] if args.num_images > 0 else inputs
        class_names = getattr(MetadataCatalog.get(args.dataset), "thing_classes", None)
    else:
        inputs = list_images(args.input)
    written = visualize_images(predictor, inputs, args.output, class_names=class_names,
                               score_thresh=args.confidence_threshold, show_gt=args.show_gt,
                               side_by_side_gt=args.side_by_side)
    print(f"wrote {len(written)} images to {os.path.abspath(args.output)}")
    return written


if __name__ == "__main__":
    exit_on_user_error(main)  # user mistakes: one paragraph, exit status 2; bugs: a traceback
