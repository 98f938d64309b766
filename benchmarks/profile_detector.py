#!/usr/bin/env python
"""Where the time goes: torch.profiler op tables of torchvision's fasterrcnn_resnet50_fpn and our
R50-FPN, at tools/benchmark.py's --quick detector sizes (the CPU profile in benchmarks/RESULTS.md).

    python benchmarks/profile_detector.py [inference|train] [--impls torchvision ours+fast] [--threads 2]

Implementation names as in tools/benchmark_cases.py ("ours+fast", "torchvision+bf16", ...). On a GPU,
`tools/benchmark.py --device cuda --profile` writes the same tables for the GPU target cases.
"""
import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "tools"), REPO]

import torch  # noqa: E402

import benchmark  # noqa: E402  (tools/benchmark.py)
import benchmark_cases  # noqa: E402
from resnet_det.utils.benchmark import profile_step  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="inference", choices=["inference", "train"])
    p.add_argument("--impls", nargs="+", default=["torchvision", "ours+fast"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args(argv)
    for impl in args.impls:
        try:
            benchmark_cases.impl_flags(impl)
        except ValueError as e:
            p.error(str(e))
    torch.set_num_threads(args.threads)
    quick = {**benchmark.SIZES["cpu"], **benchmark.SIZES["quick"]}
    spec = dict(det_hw=quick["det_hw"], det_min=quick["det_min"], det_max=quick["det_max"], device="cpu",
                proposals=quick["proposals"], rois=quick["rois"], arch="R50-FPN", mode=args.mode,
                batch=1 if args.mode == "inference" else quick["train_batches"][0])
    for impl in args.impls:
        step = benchmark_cases.build_detector(dict(spec, impl=impl))
        step(), step()  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(f"== {impl} ({args.mode}): median {sorted(times)[1]:.3f} s/step")
        print(profile_step(step, torch.device("cpu"), warmup=0, steps=1, rows=args.rows))


if __name__ == "__main__":
    main()
