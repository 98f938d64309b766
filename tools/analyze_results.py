#!/usr/bin/env python
"""Where does a detector fail? Pictures and tables from pycocotools' own evaluation of saved results.

    python tools/analyze_results.py --gt GT.json --results RESULTS.json --output DIR \\
        [--dataset NAME] [--image-root DIR] [--iou 0.5] [--score-thresh 0.3] [--num-worst 8]
    # after tools/train_net.py --eval-only on shapes_val:
    python tools/analyze_results.py --dataset shapes_val \\
        --results output/demo/inference/shapes_val/inference/coco_instances_results.json --output analysis/

Writes to DIR: pr_curves.png (per-class precision-recall at IoU .5 and .75), errors.png + errors.txt/.csv
(the COCO error breakdown C75, C50, Loc, Sim, Oth, BG, FN per class and overall, as cocoapi's analyze()
and Detectron draw it), confusion.png + confusion.csv (class-agnostic matching at --iou of detections
scoring >= --score-thresh; background row = false positives, background column = misses), and
worst/*.png + worst.png (the --num-worst images with most false positives + misses: true positives
green, false positives red, misses yellow dashed). --dataset NAME takes the ground truth json
(when --gt is not given) and the image folder from a registered data set.
"""
import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_det.engine.defaults import exit_on_user_error  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", metavar="JSON", help="COCO instances json the results are for (default: --dataset's)")
    p.add_argument("--results", required=True, metavar="JSON", help="COCO results json (list of detections)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures and tables")
    p.add_argument("--dataset", metavar="NAME", help="registered data set: its json (if no --gt) and images")
    p.add_argument("--image-root", metavar="DIR", help="folder the ground truth's file_name entries are in")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of a match for the confusion matrix and worst images")
    p.add_argument("--score-thresh", type=float, default=0.3,
                   help="detections below this score are left out of the confusion matrix and worst images")
    p.add_argument("--num-worst", type=int, default=8, help="how many of the worst images to draw")
    args = p.parse_args(argv)
    if not args.gt and not args.dataset:
        p.error("give the ground truth: --gt GT.json, or --dataset NAME (a registered COCO-style data set)")
    if not 0 < args.iou <= 1:
        p.error(f"--iou={args.iou}: expected a value in (0, 1]")
    if not 0 <= args.score_thresh <= 1:
        p.error(f"--score-thresh={args.score_thresh}: expected a value in [0, 1]")
    return args


def _from_dataset(name: str):
    from resnet_det.data import DatasetCatalog, MetadataCatalog
    from resnet_det.utils.errors import DataError

    meta = MetadataCatalog.get(name)
    DatasetCatalog.get(name)  # a missing data set raises the catalog's error; the shapes set is written here
    json_file = meta.get("json_file", None)
    if not json_file:
        raise DataError(f"--dataset {name}: it has no COCO json (metadata json_file); give --gt GT.json, e.g. "
                        "OUTPUT_DIR/inference/<data set>/inference/gt_coco_format.json written by --eval-only")
    return json_file, meta.get("image_root", None)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from resnet_det.evaluation.analysis import load_gt_and_results, write_report

    gt_path, image_root = args.gt, args.image_root
    if args.dataset:
        json_file, root = _from_dataset(args.dataset)
        gt_path, image_root = gt_path or json_file, image_root or root
    image_root = image_root or os.path.dirname(os.path.abspath(gt_path))
    start = time.perf_counter()
    gt, dt, results = load_gt_and_results(gt_path, args.results)
    out = write_report(gt, dt, args.output, image_root, args.iou, args.score_thresh, args.num_worst)
    print(f"{len(results)} detections on {len(gt.getImgIds())} images, {len(gt.getCatIds())} classes\n")
    print("COCO error breakdown, AP (%) under each curve:\n" + out["errors_table"] + "\n")
    print(f"Confusion matrix (IoU {args.iou:g}, score >= {args.score_thresh:g}):\n" + out["confusion_table"] + "\n")
    print(f"wrote pr_curves.png, errors.png/.txt/.csv, confusion.png/.csv and {out['num_worst']} worst images "
          f"to {os.path.abspath(args.output)} in {time.perf_counter() - start:.1f} s")
    return out


if __name__ == "__main__":
    exit_on_user_error(main)  # user mistakes: one paragraph, exit status 2; bugs: a traceback
