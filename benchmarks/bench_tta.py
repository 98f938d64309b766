#!/usr/bin/env python
"""COCO AP of a detector with and without test-time augmentation (TEST.AUG), on the first N images of
a test set, with the time each variant took.

    python benchmarks/bench_tta.py --weights output/demo/model_final.pth [--num-images 100] \\
        [--min-sizes 192 224 256] [--max-size 400] [--config-file configs/demo/frcnn_r18_fpn_shapes.yaml]

Variants: plain (INPUT.MIN_SIZE_TEST), flip only (the test size and its mirror), and sizes + flip.
Each runs through the same path as `tools/train_net.py --eval-only` (the test loader,
inference_on_dataset, the config's evaluator; the model from load_for_inference as run.py loads it);
the evaluator scores only the images it saw, so N < all is a subset evaluation, not misses.
"""
import argparse
import itertools
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(ROOT, "configs", "demo", "frcnn_r18_fpn_shapes.yaml"))
    p.add_argument("--weights", required=True)
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--min-sizes", type=int, nargs="+", default=[192, 224, 256])
    p.add_argument("--max-size", type=int, default=400)
    p.add_argument("--output", default=None, help="keep each variant's inference/ folder here")
    args = p.parse_args()

    from resnet_det.config import get_cfg
    from resnet_det.data import build_detection_test_loader
    from resnet_det.engine.inference import load_for_inference
    from resnet_det.evaluation import build_evaluator, inference_on_dataset

    out_root = args.output or tempfile.mkdtemp(prefix="bench_tta_")
    sizes = "(" + ", ".join(map(str, args.min_sizes)) + ",)"
    variants = [("plain", ["TEST.AUG.ENABLED", "False"]),
                ("flip", ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", None, "TEST.AUG.FLIP", "True"]),
                (f"sizes {args.min_sizes} + flip", ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", sizes,
                                                    "TEST.AUG.FLIP", "True"])]
    rows = []
    for name, opts in variants:
        cfg = get_cfg()
        cfg.merge_from_file(args.config_file)
        if None in opts:
            opts = [f"({cfg.INPUT.MIN_SIZE_TEST},)" if o is None else o for o in opts]
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", args.weights, "TEST.AUG.MAX_SIZE",
                             str(args.max_size), *opts])
        model = load_for_inference(cfg)  # as --eval-only: the weights (EMA if any), TTA wrapped when on
        dataset = cfg.DATASETS.TEST[0]
        batches = list(itertools.islice(build_detection_test_loader(cfg, dataset), args.num_images))
        evaluator = build_evaluator(cfg, dataset, os.path.join(out_root, name.split()[0]))
        start = time.perf_counter()
        res = inference_on_dataset(model, batches, evaluator)
        elapsed = time.perf_counter() - start
        box = res["bbox"]
        rows.append((name, box["AP"], box["AP50"], box["AP75"], elapsed))
        print(f"{name}: AP {box['AP']:.2f}  AP50 {box['AP50']:.2f}  AP75 {box['AP75']:.2f}  "
              f"({len(batches)} batches in {elapsed:.0f} s)", flush=True)
    print(f"\n| variant | AP | AP50 | AP75 | time ({args.num_images} images) |\n|---|---|---|---|---|")
    for name, ap, ap50, ap75, t in rows:
        print(f"| {name} | {ap:.1f} | {ap50:.1f} | {ap75:.1f} | {t:.0f} s |")
    return rows


if __name__ == "__main__":
    main()
