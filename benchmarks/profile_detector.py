#!/usr/bin/env python
"""Where the time goes: torch.profiler op tables of torchvision's fasterrcnn_resnet50_fpn and our
R50-FPN fast path, at tools/benchmark.py's --quick detector sizes (the profile in benchmarks/RESULTS.md).

    python benchmarks/profile_detector.py [inference|train] [--impls torchvision ours ours+fast] [--threads 2]

The kernels our thread pool runs (parallel RoIAlign) show in the table only for the calling thread.
"""
import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "tools"), REPO]

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import benchmark  # noqa: E402  (tools/benchmark.py)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="inference", choices=["inference", "train"])
    p.add_argument("--impls", nargs="+", default=["torchvision", "ours+fast"], choices=sorted(benchmark.IMPLS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = {**benchmark.SIZES["cpu"], **benchmark.SIZES["quick"]}
    spec = dict(det_hw=quick["det_hw"], det_min=quick["det_min"], det_max=quick["det_max"], device="cpu",
                proposals=quick["proposals"], rois=quick["rois"], arch="R50-FPN", mode=args.mode,
                batch=1 if args.mode == "inference" else quick["train_batch"])
    for impl in args.impls:
        step = benchmark.build_detector(dict(spec, impl=impl))
        step(), step()  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"== {impl} ({args.mode}): median {sorted(times)[1]:.3f} s/step")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
