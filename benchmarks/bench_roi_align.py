#!/usr/bin/env python
"""RoIAlign alone: torchvision's MultiScaleRoIAlign vs our FastMultiScaleRoIAlign (the gather RoIAlign),
forward (inference mode) and forward+backward, on the --quick detector sizes of tools/benchmark.py
(P2..P5 of a 384x512 batch, 256 channels, RPN-like boxes), fixed (FPN) and adaptive (C4) sampling,
NCHW and channels_last maps. Prints a Markdown table of medians and the largest relative difference.

    python benchmarks/bench_roi_align.py [--threads 2] [--rois 1000] [--iters 5]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402

from resnet_det.modeling.detector.pooling import FastMultiScaleRoIAlign  # noqa: E402


def inputs(rois: int, images: int = 2, channels: int = 256, hw=(384, 512), seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {f"p{k}": torch.randn(images, channels, hw[0] >> k, hw[1] >> k, generator=g) for k in range(2, 6)}
    boxes = []
    for _ in range(images):  # RPN-like: anywhere, 4 to ~300 px, a few crossing the border
        xy = torch.rand(rois // images, 2, generator=g) * torch.tensor([hw[1], hw[0]]) - 20
        wh = torch.rand(rois // images, 2, generator=g) ** 2 * 300 + 4
        boxes.append(torch.cat([xy, xy + wh], 1))
    return feats, boxes, [hw] * images


def median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rois", type=int, default=1000)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    feats, boxes, shapes = inputs(args.rois)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rois} RoIs on P2-P5 of 2 x 384x512, 256 channels\n")
    print("| sampling | layout | pass | torchvision ms | ours ms | speed-up | max rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for sampling, name in ((2, "fixed 2 (FPN configs)"), (0, "adaptive 0 (C4 configs)")):
        for layout in ("NCHW", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            maps = {k: v.contiguous(memory_format=fmt) for k, v in feats.items()}
            poolers = {"tv": MultiScaleRoIAlign(list(maps), 7, sampling),
                       "ours": FastMultiScaleRoIAlign(list(maps), 7, sampling)}
            grad_out = torch.randn(args.rois, 256, 7, 7)
            results = {}
            for key, pool in poolers.items():
                with torch.inference_mode():
                    fwd = median_ms(lambda: pool(maps, boxes, shapes), args.iters)
                leaves = {k: v.clone().requires_grad_() for k, v in maps.items()}

                def fwd_bwd():
                    for v in leaves.values():
                        v.grad = None
                    pool(leaves, boxes, shapes).backward(grad_out)

                both = median_ms(fwd_bwd, args.iters)
                out = pool(maps, boxes, shapes).detach()
                results[key] = (fwd, both, out, {k: v.grad.clone() for k, v in leaves.items()})
            (tf, tb, to, tg), (of, ob, oo, og) = results["tv"], results["ours"]
            diff_f = ((oo - to).norm() / to.norm()).item()
            diff_b = max(((og[k] - tg[k]).norm() / tg[k].norm()).item() for k in tg)
            print(f"| {name} | {layout} | forward | {tf:.1f} | {of:.1f} | {tf / of:.2f}x | {diff_f:.1e} |")
            print(f"| {name} | {layout} | forward+backward | {tb:.1f} | {ob:.1f} | {tb / ob:.2f}x | {diff_b:.1e} |")


if __name__ == "__main__":
    main()
