#!/usr/bin/env python
"""Loader-worker memory at COCO scale: dataset dicts as a Python list vs the serialized store
(resnet_det/data/store.py, what the training and test loaders use).

Synthetic COCO train2017-sized dicts (118,287 images, 860,001 boxes with COCO's fields), a DataLoader
with 2 forked workers over them, and a mapper that only reads the dict (no image decoding), so the
growth measured is the dicts' own. After pass 1 and after pass 2 over the set, each worker reports
its private memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup); the growth per pass is
what the pages the workers touched cost them. Linux only.

It also states the store's size and build time for ImageNet-train-sized classification dicts
(1,281,167 ``{file_name, image_id, label}``; ``--imagenet-images 0`` skips that).

    python benchmarks/bench_dataset_memory.py [--images 118287] [--boxes 860001] [--workers 2] [--imagenet-images N]
"""
import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from resnet_det.data.store import SerializedList  # noqa: E402
from resnet_det.utils.benchmark import machine_info, markdown_table  # noqa: E402


def coco_like_dicts(images: int, boxes: int, seed: int = 0) -> list[dict]:
    """Dataset dicts shaped like load_coco_json's output for COCO train2017 (boxes spread at random)."""
    rng = np.random.default_rng(seed)
    per_image = np.bincount(rng.integers(0, images, boxes), minlength=images)
    dicts = []
    for i, n in enumerate(per_image.tolist()):
        h, w = (480, 640) if i % 3 else (640, 480)
        anns = [{"bbox": [float(x) for x in rng.uniform(0, 300, 4)], "bbox_mode": 1,
                 "category_id": int(rng.integers(0, 80)), "iscrowd": 0,
                 "area": float(rng.uniform(10, 9e4))} for _ in range(n)]
        dicts.append({"file_name": f"/datasets/coco/train2017/{i:012d}.jpg", "image_id": i,
                      "height": h, "width": w, "annotations": anns})
    return dicts


def private_mb(pid: int) -> float:
    """Private_Clean + Private_Dirty of a process, MB (pages it does not share with its parent)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


class _ReadOnly(Dataset):
    """Returns a number computed from the dict, as a mapper that reads every field would touch it."""

    def __init__(self, dicts):
        self.dicts = dicts

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        d = self.dicts[i]
        return len(d["file_name"]) + sum(len(a["bbox"]) for a in d["annotations"])


def measure(dicts, workers: int, passes: int = 2, batch: int = 256) -> list[dict]:
    """Per-worker private MB right after the fork (pass 0) and after each pass over the set in a fresh
    random order (persistent workers, so the same processes live through every pass)."""
    loader = DataLoader(_ReadOnly(dicts), batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=True, collate_fn=sum, multiprocessing_context="fork",
                        generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    pids = [w.pid for w in it._workers]  # the worker processes (DataLoader has no public handle)
    time.sleep(1.0)
    rows = [{"pass": 0, "seconds": 0.0, "per_worker_mb": [private_mb(pid) for pid in pids]}]
    for p in range(1, passes + 1):
        t0 = time.perf_counter()
        for _ in (it if p == 1 else iter(loader)):
            pass
        rows.append({"pass": p, "seconds": time.perf_counter() - t0,
                     "per_worker_mb": [private_mb(pid) for pid in pids]})
    del it, loader
    gc.collect()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=118287)
    ap.add_argument("--boxes", type=int, default=860001)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--imagenet-images", type=int, default=1281167)
    args = ap.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    dicts = coco_like_dicts(args.images, args.boxes)
    print(f"built {len(dicts)} dicts with {sum(len(d['annotations']) for d in dicts)} boxes in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    store = SerializedList(dicts)
    build_s = time.perf_counter() - t0
    print(f"store: {store.nbytes / 2**20:.1f} MiB, built in {build_s:.2f} s", flush=True)

    results = []
    for name, data in (("list", dicts), ("store", store)):
        rows = measure(data, args.workers)
        print(name, rows, flush=True)
        mem = [r["per_worker_mb"] for r in rows]
        results.append({"holder": name, **{f"p{r['pass']}": "/".join(f"{m:.1f}" for m in r["per_worker_mb"])
                                            for r in rows},
                        "growth1": max(b - a for a, b in zip(mem[0], mem[1])),
                        "growth2": max(b - a for a, b in zip(mem[1], mem[2])), "pass_s": rows[2]["seconds"]})

    if args.imagenet_images:
        cls = [{"file_name": f"/datasets/imagenet/train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG", "image_id": i,
                "label": i % 1000} for i in range(args.imagenet_images)]
        t0 = time.perf_counter()
        cls_store = SerializedList(cls)
        print(f"ImageNet-sized store: {len(cls_store)} dicts, {cls_store.nbytes / 2**20:.1f} MiB, built in "
              f"{time.perf_counter() - t0:.2f} s")
        del cls, cls_store
    info = machine_info(torch.device("cpu"))
    print(f"\n{info['cpu']}, {info['cpu_count']} cores, load average {info.get('load_average')}; "
          f"{args.images} images, {args.boxes} boxes, {args.workers} workers; store build {build_s:.2f} s "
          f"({store.nbytes / 2**20:.1f} MiB)\n")
    print(markdown_table(results, [("holder", "dicts held as"), ("p0", "private MB per worker at start"),
                                   ("p1", "after pass 1"), ("p2", "after pass 2"),
                                   ("growth1", "pass 1 growth, MB/worker (max)"),
                                   ("growth2", "pass 2 growth, MB/worker (max)"), ("pass_s", "pass 2 s")]))


if __name__ == "__main__":
    main()
