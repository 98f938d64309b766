#!/usr/bin/env python
"""CPU cost of each training augmentation (INPUT.AUGMENTATIONS, data/augment.py), ms per image.

Times the augmentation call alone (decoded images in memory, the mapper's RGB CHW uint8 input) on the
generated shapes training set (200-320 px images), and the whole DatasetMapper call (decode + augment)
for reference. Rounds interleave the variants; the median over rounds is reported.

    python benchmarks/bench_augment.py [--threads 1] [--images 64] [--rounds 5] [--lsj-size 320]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from resnet_det.config import get_cfg  # noqa: E402
from resnet_det.config.validate import AUGMENTATIONS  # noqa: E402
from resnet_det.data import DatasetCatalog, DatasetMapper  # noqa: E402
from resnet_det.data.augment import Augmentations  # noqa: E402
from resnet_det.data.transforms import read_image  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a loader worker uses 1)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lsj-size", type=int, default=320, help="INPUT.LSJ.IMAGE_SIZE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dicts = DatasetCatalog.get("shapes_train")[: args.images]
    samples = []
    for d in dicts:
        img = read_image(d["file_name"])
        samples.append((torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))),
                        torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32).reshape(-1, 4),
                        torch.tensor([a["category_id"] for a in d["annotations"]], dtype=torch.int64)))
    variants = {}
    for names in [(n,) for n in AUGMENTATIONS] + [("RandomCrop", "RandomIoUCrop", "LargeScaleJitter",
                                                   "PhotometricDistort", "RandomFlip")]:
        cfg = get_cfg()
        cfg.INPUT.AUGMENTATIONS = names
        cfg.INPUT.LSJ.IMAGE_SIZE = args.lsj_size
        variants[" + ".join(names)] = Augmentations(cfg)
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("shapes_train",)
    mapper = DatasetMapper(cfg, is_train=True)

    def run_aug(aug, r):
        for i, (img, boxes, classes) in enumerate(samples):
            aug(img, boxes, classes, np.random.default_rng([r, i]))

    def run_mapper(r):
        for i, d in enumerate(dicts):
            mapper(d, np.random.default_rng([r, i]))

    times = {k: [] for k in [*variants, "DatasetMapper (decode + RandomFlip)"]}
    for r in range(args.rounds + 1):  # round 0 warms up
        order = list(variants.items()) if r % 2 else list(variants.items())[::-1]
        for name, aug in order:
            t = time.perf_counter()
            run_aug(aug, r)
            if r:
                times[name].append((time.perf_counter() - t) * 1000 / len(samples))
        t = time.perf_counter()
        run_mapper(r)
        if r:
            times["DatasetMapper (decode + RandomFlip)"].append((time.perf_counter() - t) * 1000 / len(dicts))
    print(f"| augmentation ({len(samples)} shapes_train images, {args.threads} thread(s), LSJ {args.lsj_size}) "
          "| ms / image (median) | min |")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} |")


if __name__ == "__main__":
    main()
