#!/usr/bin/env python
"""Loader throughput per core: our detection training mapper and ImageNet training transform vs
torchvision's reference pipelines, on the same generated JPEG files, one process, one thread.

Detection (decode + flip + resize), COCO-like 640x480 JPEGs (data/demo.py make_loader_benchmark_set):
- ours: DatasetMapper(is_train=True) (cv2 decode, flip with p 0.5) and then the training resize our
  model applies (ResizeNormalize: shorter side drawn from Base-RCNN-FPN's MIN_SIZE_TRAIN 640..800,
  longer <= 1333; on GPU machines this resize runs on the GPU, here it is timed on the CPU);
- torchvision: its detection reference (references/detection, policy "hflip"): PIL decode + RGB,
  v2.RandomHorizontalFlip, v2.PILToTensor, v2.ToDtype(float32, scale=True), then the resize of its
  Faster R-CNN's GeneralizedRCNNTransform (min_size 800, max_size 1333);
- ours, loader worker only: DatasetMapper alone, the share of the work our loader workers do.
ImageNet (decode + scale augmentation + crop + flip), 500x375 JPEGs (ImageNet's typical size):
- ours: classification load_image (cv2 decode) + TrainTransform of configs/imagenet/Base-ImageNet.yaml
  (shorter side in [256, 480], random 224 crop, flip, PCA lighting; uint8 out, the model normalises);
- torchvision: references/classification ClassificationPresetTrain's defaults: PIL decode,
  v2.RandomResizedCrop(224), v2.RandomHorizontalFlip, v2.PILToTensor, v2.ToDtype(float32, scale=True),
  v2.Normalize.
The implementations run interleaved (resnet_det.utils.benchmark.interleaved_times), each call a pass
over all files; we report the median images/s (1 thread = images/s/core).

    python benchmarks/bench_loader.py [--images 64] [--iters 5]
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.v2 as T  # noqa: E402
from PIL import Image  # noqa: E402

from resnet_det.classification.data import load_image  # noqa: E402
from resnet_det.classification.transforms import TrainTransform  # noqa: E402
from resnet_det.config import get_cfg  # noqa: E402
from resnet_det.data import DatasetMapper, load_coco_json  # noqa: E402
from resnet_det.data.demo import make_loader_benchmark_set  # noqa: E402
from resnet_det.modeling.detector.rcnn import ResizeNormalize  # noqa: E402
from resnet_det.utils.benchmark import interleaved_times, machine_info, markdown_table  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def detection_pipelines(dicts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml"))
    mapper = DatasetMapper(cfg, is_train=True)
    resize = ResizeNormalize(cfg, 32).train(True)
    rng = np.random.default_rng(0)

    def ours():
        for d in dicts:
            x = mapper(d, rng)
            resize.resize(x["image"].float(), {"boxes": x["boxes"]})

    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    tv_resize = GeneralizedRCNNTransform(800, 1333, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).train()
    tv_tf = T.Compose([T.RandomHorizontalFlip(0.5), T.PILToTensor(), T.ToDtype(torch.float32, scale=True)])

    def torchvision_ref():
        for d in dicts:
            img = Image.open(d["file_name"]).convert("RGB")
            tv_resize.resize(tv_tf(img), {"boxes": torch.tensor([a["bbox"] for a in d["annotations"]])})

    def ours_worker():  # what a loader worker does; the resize runs in the model (on the GPU there)
        for d in dicts:
            mapper(d, rng)

    return {"ours": ours, "torchvision": torchvision_ref, "ours, loader worker only (decode+flip)": ours_worker}


def imagenet_pipelines(files):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "imagenet", "Base-ImageNet.yaml"))
    transform = TrainTransform(cfg)
    rng = np.random.default_rng(0)
    dicts = [{"file_name": f, "label": 0} for f in files]

    def ours():
        for d in dicts:
            transform(load_image(d, cfg.INPUT.FORMAT), rng)

    tv_tf = T.Compose([T.RandomResizedCrop(224, antialias=True), T.RandomHorizontalFlip(0.5), T.PILToTensor(),
                       T.ToDtype(torch.float32, scale=True), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def torchvision_ref():
        for f in files:
            tv_tf(Image.open(f).convert("RGB"))

    return {"ours": ours, "torchvision": torchvision_ref}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    dev = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        det = make_loader_benchmark_set(os.path.join(tmp, "det"), num_images=args.images)
        dicts = load_coco_json(os.path.join(det, "instances.json"), os.path.join(det, "images"))
        cls = make_loader_benchmark_set(os.path.join(tmp, "cls"), num_images=args.images, height=375, width=500)
        files = sorted(os.path.join(cls, "images", f) for f in os.listdir(os.path.join(cls, "images")))
        for section, fns in (("detection 640x480 (decode+flip+resize)", detection_pipelines(dicts)),
                             ("ImageNet 500x375 (decode+scale+crop+flip)", imagenet_pipelines(files))):
            times = interleaved_times(fns, warmup=1, iters=args.iters, device=dev)
            for name, ts in times.items():
                med = float(np.median(ts))
                rows.append({"section": section, "impl": name, "ips": args.images / med,
                             "runs": " ".join(f"{args.images / t:.0f}" for t in ts)})
                print(rows[-1], flush=True)
    info = machine_info(dev)
    print(f"\n{info['cpu']}, {info['cpu_count']} cores, 1 thread (torch and cv2), load average "
          f"{info.get('load_average')}; {args.images} files, {args.iters} interleaved passes\n")
    print(markdown_table(rows, [("section", "pipeline"), ("impl", "implementation"), ("ips", "images/s/core (median)"),
                                ("runs", "images/s per pass")]))


if __name__ == "__main__":
    main()
