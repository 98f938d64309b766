#!/usr/bin/env python
"""COCO box evaluation at COCO-val scale: pycocotools vs faster-coco-eval, side by side in one run.

A synthetic ground-truth / result pair shaped like COCO val2017 and a detector's output on it: 5,000
images, 80 categories (non-contiguous ids as in COCO), ~7.3 boxes per image (36,781 in val2017) with
COCO's small/medium/large mix and ~1% crowd boxes, and 100 detections per image (500,000): jittered
copies of the ground truth (some with the wrong class) plus background boxes, scores in [0, 1).
Each implementation runs resnet_det.evaluation.coco_evaluation.run_coco_eval (what COCOEvaluator
runs: loadRes, evaluate, accumulate, summarize) in a child process forked from this one, which reports
its wall time and its peak resident memory over what it started with (ru_maxrss - RSS at fork).
The 12 stats of each implementation are compared with pycocotools'.

    python benchmarks/bench_coco_eval.py [--images 5000] [--dets-per-image 100] [--impls pycocotools faster_coco_eval]
"""
import argparse
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

COCO_CAT_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80


def synthetic_coco_pair(images: int = 5000, dets_per_image: int = 100, boxes_per_image: float = 7.3,
                        categories: int = 80, seed: int = 0) -> tuple[dict, list[dict]]:
    """(ground-truth COCO dict, result records) as described in the module docstring."""
    rng = np.random.default_rng(seed)
    cat_ids = COCO_CAT_IDS[:categories] if categories <= 80 else list(range(1, categories + 1))
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"class_{c}"} for c in cat_ids]}
    results = []
    for i in range(1, images + 1):
        w, h = (640, 480) if i % 3 else (480, 640)
        gt["images"].append({"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h})
        n = int(rng.poisson(boxes_per_image))
        # COCO's size mix: ~41% small (< 32^2), ~34% medium, ~24% large (> 96^2)
        side = np.exp(rng.uniform(np.log(6), np.log(min(w, h) * 0.9), n))
        aspect = np.exp(rng.uniform(-0.7, 0.7, n))
        bw, bh = side * np.sqrt(aspect), side / np.sqrt(aspect)
        bw, bh = np.minimum(bw, w - 1), np.minimum(bh, h - 1)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        cats = rng.choice(cat_ids, n)
        for k in range(n):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(cats[k]),
                                      "bbox": [float(x[k]), float(y[k]), float(bw[k]), float(bh[k])],
                                      "area": float(bw[k] * bh[k]), "iscrowd": int(rng.random() < 0.01)})
        m = 0
        for k in range(n):  # 1-4 jittered copies of each box, 15% of them with a wrong class
            for _ in range(int(rng.integers(1, 5))):
                if m == dets_per_image:
                    break
                j = rng.normal(0, 0.08, 4)
                c = int(cats[k]) if rng.random() > 0.15 else int(rng.choice(cat_ids))
                results.append({"image_id": i, "category_id": c, "score": float(rng.random()),
                                "bbox": [float(x[k] + j[0] * bw[k]), float(y[k] + j[1] * bh[k]),
                                         float(bw[k] * np.exp(j[2])), float(bh[k] * np.exp(j[3]))]})
                m += 1
        rest = dets_per_image - m  # background detections fill the image's 100
        if rest > 0:
            s = np.exp(rng.uniform(np.log(8), np.log(300), rest))
            bx, by = rng.uniform(0, w - 8, rest), rng.uniform(0, h - 8, rest)
            sc = rng.random(rest) * 0.6
            cs = rng.choice(cat_ids, rest)
            results.extend({"image_id": i, "category_id": int(cs[k]), "score": float(sc[k]),
                            "bbox": [float(bx[k]), float(by[k]), float(s[k]), float(s[k] * 0.8)]}
                           for k in range(rest))
    return gt, results


def _child(gt, results, impl, conn):
    import contextlib
    import io

    from pycocotools.coco import COCO

    from resnet_det.evaluation.coco_evaluation import run_coco_eval
    from resnet_det.utils.benchmark import peak_rss_mb, rss_mb

    start_mb = rss_mb()
    t0 = time.perf_counter()
    coco_gt = COCO()
    coco_gt.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    ev, _ = run_coco_eval(coco_gt, results, impl=impl)
    seconds = time.perf_counter() - t0
    conn.send({"seconds": seconds, "peak_over_start_mb": peak_rss_mb() - start_mb, "stats": ev.stats.tolist()})
    conn.close()


def evaluate_in_child(gt, results, impl) -> dict:
    """Run one implementation in a forked child (its own ru_maxrss); returns seconds, MB, stats."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(gt, results, impl, child))
    p.start()
    child.close()
    out = parent.recv()
    p.join()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets-per-image", type=int, default=100)
    ap.add_argument("--impls", nargs="+", default=["pycocotools", "faster_coco_eval"])
    args = ap.parse_args()

    import torch

    from resnet_det.utils.benchmark import machine_info, markdown_table

    t0 = time.perf_counter()
    gt, results = synthetic_coco_pair(args.images, args.dets_per_image)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} ground-truth boxes, {len(results)} detections "
          f"(generated in {time.perf_counter() - t0:.1f} s)", flush=True)
    rows, ref = [], None
    for impl in args.impls:
        out = evaluate_in_child(gt, results, impl)
        ref = ref if ref is not None else out["stats"]
        rows.append({"impl": impl, "seconds": out["seconds"], "mb": out["peak_over_start_mb"],
                     "AP": out["stats"][0] * 100, "AP50": out["stats"][1] * 100,
                     "diff": float(np.max(np.abs(np.subtract(out["stats"], ref))))})
        print(impl, out, flush=True)
    info = machine_info(torch.device("cpu"))
    print(f"\n{info['cpu']}, {info['cpu_count']} cores, load average {info.get('load_average')}; "
          f"{len(gt['images'])} images, {len(results)} detections\n")
    print(markdown_table(rows, [("impl", "implementation"), ("seconds", "evaluation s"),
                                ("mb", "peak MB over start"), ("AP", "AP"), ("AP50", "AP50"),
                                ("diff", f"max |stat diff| vs {args.impls[0]} (12 stats)")]))


if __name__ == "__main__":
    main()
