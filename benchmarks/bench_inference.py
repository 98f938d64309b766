#!/usr/bin/env python
"""Evaluation-loop throughput vs TEST.IMS_PER_BATCH: images/s of inference_on_dataset over the real
test loader (JPEG decoding in DATALOADER.NUM_WORKERS workers, overlapping the model) at batch 1, 2, 4.

Models (random weights, FrozenBN statistics made non-trivial, three class biases raised so that
detections exist, as tools/benchmark.py does): R50-FPN (configs/Base-RCNN-FPN.yaml, 80 classes) at
480x640, i.e. INPUT.MIN_SIZE_TEST 480 / MAX_SIZE_TEST 640 on 640x480 images, no resize; and the demo
detector (configs/demo/frcnn_r18_fpn_shapes.yaml, its own test size 224/400). The images are
COCO-like 640x480 JPEGs (data/demo.py make_loader_benchmark_set). The batch sizes run interleaved
(1 2 4, 4 2 1, ...) and we report the median images/s per batch size, plus the largest box difference
between a batch's detections and batch 1's (all images have one size, so batching pads nothing).

    python benchmarks/bench_inference.py [--images 24] [--repeats 2] [--threads 2] [--workers 2] [--models r50_fpn demo]
"""
import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from resnet_det.config import get_cfg  # noqa: E402
from resnet_det.data import build_detection_test_loader, register_coco_instances  # noqa: E402
from resnet_det.data.catalog import unregister  # noqa: E402
from resnet_det.data.demo import make_loader_benchmark_set  # noqa: E402
from resnet_det.evaluation import DatasetEvaluator, inference_on_dataset  # noqa: E402
from resnet_det.modeling.detector import build_model  # noqa: E402
from resnet_det.utils.benchmark import machine_info, markdown_table, pretrained_like_norms  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "bench_inference_set"
MODELS = {
    "r50_fpn": ("R50-FPN 480x640", "Base-RCNN-FPN.yaml", ["MODEL.RESNETS.DEPTH", 50, "MODEL.ROI_HEADS.NUM_CLASSES", 80,
                                                           "INPUT.MIN_SIZE_TEST", 480, "INPUT.MAX_SIZE_TEST", 640]),
    "demo": ("demo R18-FPN (224/400)", os.path.join("demo", "frcnn_r18_fpn_shapes.yaml"), []),
}


class _Keep(DatasetEvaluator):
    """Keeps every image's boxes (to compare batch sizes)."""

    def reset(self):
        self.boxes = {}

    def process(self, inputs, outputs):
        for x, y in zip(inputs, outputs):
            self.boxes[int(x["image_id"])] = y["instances"]["boxes"].clone()


def build(key: str, workers: int):
    _, base, opts = MODELS[key]
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", base))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DATASETS.TEST", (NAME,),
                         "DATALOADER.NUM_WORKERS", workers, *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    pretrained_like_norms(model)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1:4] += 6.0
    return cfg, model.eval()


def run(cfg, model, batch: int):
    cfg.defrost()
    cfg.TEST.IMS_PER_BATCH = batch
    keep = _Keep()
    loader = build_detection_test_loader(cfg, NAME)
    t0 = time.perf_counter()
    inference_on_dataset(model, loader, keep, log_every=10**9)
    return time.perf_counter() - t0, keep.boxes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_loader_benchmark_set(os.path.join(tmp, "set"), num_images=args.images)
        register_coco_instances(NAME, {}, os.path.join(root, "instances.json"), os.path.join(root, "images"))
        try:
            for key in args.models:
                cfg, model = build(key, args.workers)
                run(cfg, model, 1)  # warm-up pass (allocator, oneDNN kernels, page cache)
                times = {b: [] for b in args.batches}
                boxes = {}
                for r in range(args.repeats):
                    for b in args.batches if r % 2 == 0 else list(reversed(args.batches)):
                        seconds, boxes[b] = run(cfg, model, b)
                        times[b].append(seconds)
                        print(key, b, f"{args.images / seconds:.2f} img/s", flush=True)
                ref = boxes[args.batches[0]]
                for b in args.batches:
                    diff = max(((boxes[b][i] - ref[i]).abs().max().item() if len(ref[i]) and boxes[b][i].shape ==
                                ref[i].shape else (0.0 if boxes[b][i].shape == ref[i].shape else float("inf")))
                               for i in ref)
                    med = statistics.median(times[b])
                    rows.append({"model": MODELS[key][0], "batch": b, "ips": args.images / med,
                                 "runs": " ".join(f"{args.images / t:.2f}" for t in times[b]),
                                 "dets": sum(len(v) for v in boxes[b].values()) / len(boxes[b]), "diff": diff})
        finally:
            unregister(NAME)
    info = machine_info(torch.device("cpu"))
    print(f"\n{info['cpu']}, {info['cpu_count']} cores, torch threads {args.threads}, {args.workers} loader workers, "
          f"load average {info.get('load_average')}; {args.images} images 640x480, {args.repeats} interleaved runs\n")
    print(markdown_table(rows, [("model", "model"), ("batch", "TEST.IMS_PER_BATCH"), ("ips", "images/s (median)"),
                                ("runs", "images/s per run"), ("dets", "detections/image"),
                                ("diff", f"max box diff vs batch {args.batches[0]} (px)")]))


if __name__ == "__main__":
    main()
