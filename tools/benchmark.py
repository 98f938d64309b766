#!/usr/bin/env python
"""Side-by-side speed of resnet_det against torchvision, in one run, on the same inputs and weights.

    python tools/benchmark.py --output benchmarks/results_cpu                   # `make bench` (CPU plan)
    python tools/benchmark.py --device cuda --profile --output OUT              # the GPU table (gpu_check.py)
    python tools/benchmark.py --device cuda --targets-only --output OUT        # only the three GPU targets
    python tools/benchmark.py --quick --tiny --output /tmp/bench                # smoke test (seconds)

Sections: `backbone` (ResNet forward and forward+backward images/s vs torchvision's resnet, same weights,
FrozenBN), `detector` (our R50-FPN vs torchvision's fasterrcnn_resnet50_fpn with its state_dict loaded:
inference and training step), `c4` (our C4 alone), `data` (the demo loader vs the demo model), `loader`
(the training loader on generated 640x480 COCO-like JPEGs with the GPU config's workers, pinned memory
and non_blocking copies, against our R50-FPN training step at the same batch). Implementations are
named by their switches (tools/benchmark_cases.py: "ours+fast+bf16", "torchvision+cl", ...), timed
interleaved (A B C, C B A, ...) after warm-up, device synchronised around every timed call; medians
are reported with each one's peak memory and its output difference from the group's first.

Plans: `cpu` (default on CPU; the tables of benchmarks/RESULTS.md) and `gpu` (default on CUDA): fp32
and bf16, channels_last and cudnn.benchmark on and off, ours and torchvision, the shipped GPU settings
(configs/gpu/), and the issue's three target ratios. `--plan gpu --device cpu --tiny` runs every GPU
code path on a CPU. Writes DIR/results.json after every group, DIR/results.md at the end, and with
`--profile` DIR/profile.txt (torch.profiler top ops and host-device waits of the target cases).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmark_cases import (BUILDERS, bench_data, bench_loader, build_detector, data_cfg, gpu_impl,  # noqa: E402
                             variant)
from resnet_det.utils.benchmark import machine_info, profile_step, ratio, report_markdown, run_group  # noqa: E402

# Random initialisation with frozen stages is expected here: silence that warning (probe processes too).
logging.getLogger("resnet_det").setLevel(logging.ERROR)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (section sizes) per mode; CPU sizes keep a full run around ten minutes on two cores. CUDA: batch 32
# at 224 for backbones; detectors at 800x1066 inputs (min 800 / max 1333, COCO's 640x480 scaled),
# inference batch 1 and 8, training batch 16 and 8, the Base configs' proposals and RoIs.
SIZES = {
    "cpu": dict(bb_batch=4, bb_size=224, det_hw=(480, 640), det_min=512, det_max=853, infer_batches=(1,),
                train_batches=(2,), c4_train_batches=(2,), c4_depth=101, proposals=(2000, 1000), rois=512,
                ablations=True, c4_proposals=100, c4_rois=64, data_batches=20, iters=5, warmup=1,
                depths=(18, 50, 101), loader_images=64, loader_batch=2, loader_batches=10),
    "cuda": dict(bb_batch=32, bb_size=224, det_hw=(800, 1066), det_min=800, det_max=1333, infer_batches=(1, 8),
                 train_batches=(16, 8), c4_train_batches=(8,), c4_depth=101, proposals=(2000, 1000), rois=512,
                 ablations=True, c4_proposals=300, c4_rois=512, data_batches=40, iters=6, warmup=2,
                 depths=(50, 101), loader_images=320, loader_batch=16, loader_batches=20),
    "quick": dict(bb_batch=2, det_hw=(384, 512), det_min=384, det_max=640, data_batches=8, iters=3, warmup=1,
                  loader_images=32, loader_batches=5),
    "quick_cuda": dict(det_hw=(600, 800), det_min=600, det_max=1000, data_batches=20, iters=4, warmup=2),
    "tiny": dict(bb_batch=1, bb_size=64, det_hw=(96, 128), det_min=96, det_max=128, infer_batches=(1,),
                 train_batches=(2,), c4_train_batches=(2,), c4_depth=18, c4_proposals=16, c4_rois=4,
                 data_batches=2, iters=1, warmup=1, depths=(18,), proposals=(64, 32), rois=32, ablations=False,
                 loader_images=8, loader_batch=2, loader_batches=2, loader_workers=1),
}
# The GPU plan's comparisons besides the shipped settings: precision, layout and folding, both sides.
GPU_COMMON = ["torchvision", "torchvision+cl", "torchvision+bf16", "torchvision+cl+bf16", "ours", "ours+fold",
              "ours+fast", "ours+fold+bf16", "ours+fast+bf16"]


def _dedup(names):
    return list(dict.fromkeys(names))


def target_impls() -> dict:
    """Implementations the targets compare: the shipped GPU settings (configs/gpu/Base-RCNN-FPN.yaml),
    torchvision at the same precision and cudnn setting (NCHW, as it ships), and the same settings
    with bf16 and with float32."""
    train, infer = gpu_impl("FPN", training=True), gpu_impl("FPN", training=False)
    return {"train": train, "train_tv": variant(train, base="torchvision", cl=False, compile=False),
            "train_bf16": variant(train, amp="bf16"), "train_fp32": variant(train, amp=None),
            "infer": infer, "infer_tv": variant(infer, base="torchvision", cl=False, compile=False)}


def targets(rows: list[dict], args) -> list[dict]:
    """The issue's ratios (median step time of `ref` over `impl`, same group of one run)."""
    t, group = target_impls(), f"R50-FPN train batch {max(args.train_batches)}"
    out = [dict(name="R50-FPN training step, GPU settings vs torchvision (equal precision)", group=group,
                impl=t["train"], ref=t["train_tv"], target=1.2),
           dict(name="bf16 training vs our fp32", group=group, impl=t["train_bf16"], ref=t["train_fp32"],
                target=1.5)]
    out += [dict(name="R50-FPN inference, GPU settings vs torchvision", group=f"R50-FPN inference batch {b}",
                 impl=t["infer"], ref=t["infer_tv"], target=1.2) for b in args.infer_batches]
    for x in out:
        x["value"] = ratio(rows, x["group"], x["impl"], x["ref"], exact=True)
        x["met"] = None if x["value"] is None else x["value"] >= x["target"]
    return out


def plan(args, device) -> list[tuple[str, str, list[dict], int]]:
    """(group name, section, specs, images per step), most important first."""
    dev, cuda, gpu = str(device), device.type == "cuda", args.plan == "gpu"
    groups = []
    det = dict(det_hw=args.det_hw, det_min=args.det_min, det_max=args.det_max, device=dev,
               proposals=args.proposals, rois=args.rois, c4_depth=args.c4_depth,
               c4_proposals=args.c4_proposals, c4_rois=args.c4_rois)

    def add(name, section, impls, images, **spec):
        groups.append((name, section, [dict(spec, impl=i) for i in _dedup(impls)], images))

    def backbones(impls_for):
        for depth in args.depths:
            for mode in ("forward", "forward_backward"):
                add(f"R{depth} {mode} {args.bb_size}px", "backbone", impls_for(depth), args.bb_batch, depth=depth,
                    mode=mode, batch=args.bb_batch, size=args.bb_size, device=dev)

    if gpu:
        t = target_impls()
        need_train = [t["train_tv"], t["train_fp32"], t["train_bf16"], t["train"]]
        need_infer = [t["infer_tv"], t["infer"]]
        full = _dedup(GPU_COMMON + need_train + need_infer)
        first_train, *other_train = sorted(args.train_batches, reverse=True)
        if "detector" in args.sections:  # the target groups first: a time budget cuts from the end
            add(f"R50-FPN train batch {first_train}", "detector", need_train if args.targets_only else full,
                first_train, **det, arch="R50-FPN", mode="train", batch=first_train)
            for b in args.infer_batches[:1] if args.targets_only else args.infer_batches:
                add(f"R50-FPN inference batch {b}", "detector", need_infer if args.targets_only else full, b,
                    **det, arch="R50-FPN", mode="inference", batch=b)
        if args.targets_only:
            return groups
        if "backbone" in args.sections:
            backbones(lambda depth: GPU_COMMON + [t["train_fp32"], t["train"]])
        if "detector" in args.sections:
            for b in other_train:
                add(f"R50-FPN train batch {b}", "detector", ["torchvision", "ours"] + need_train, b, **det,
                    arch="R50-FPN", mode="train", batch=b)
        c4 = ["ours", "ours+fast", "ours+fast+bf16", gpu_impl("C4", False), gpu_impl("C4", True)]
    else:
        fast = ["ours+fast"] + (["ours+fast+bf16"] if cuda else [])
        if "backbone" in args.sections:
            backbones(lambda depth: ["torchvision", "ours"]
                      + (["ours+fold", "ours+cl"] if depth == 50 and args.ablations else []) + fast)
        if "detector" in args.sections:
            for mode, batches in (("inference", args.infer_batches), ("train", args.train_batches)):
                for b in batches:
                    impls = (["torchvision", "ours"] + (["ours+fold", "ours+cl", "ours+roi"] if args.ablations else [])
                             + fast)
                    add(f"R50-FPN {mode} batch {b}", "detector", impls, b, **det, arch="R50-FPN", mode=mode,
                        batch=b)
        c4 = ["ours"] + fast
    if "c4" in args.sections:
        for mode, batches in (("inference", args.infer_batches), ("train", args.c4_train_batches)):
            for b in batches:
                add(f"R{args.c4_depth}-C4 {mode} batch {b}", "detector", c4, b, **det, arch="C4", mode=mode,
                    batch=b)
    if "precision" in args.sections:  # TEST.PRECISION bf16 / int8 vs our fp32 fast path and torchvision (CPU)
        for hw in [tuple(args.det_hw)] if args.tiny else [(480, 640), (800, 1333)]:
            size = dict(det, det_hw=hw, det_min=min(hw), det_max=max(hw), mode="inference", batch=1)
            add(f"R50-FPN inference {hw[0]}x{hw[1]} precision", "detector",
                ["ours+fast", "ours+fast+tbf16", "ours+fast+int8", "torchvision", "torchvision+bf16"], 1,
                **size, arch="R50-FPN")
            add(f"R{args.c4_depth}-C4 inference {hw[0]}x{hw[1]} precision", "detector",
                ["ours+fast", "ours+fast+tbf16", "ours+fast+int8"], 1, **size, arch="C4")
    if "data" in args.sections:
        b = args.train_batches[-1]
        add(f"R18-FPN demo train batch {b}", "demo", ["ours", "ours+fast"] + (["ours+fast+bf16"] if cuda else []),
            b, batch=b, device=dev, tiny=args.tiny)
    return groups


def headline(rows, device) -> dict:
    """The ratios issue 7 set targets for on the 2-core CPU (>= 1.25, 1.1, 1.2)."""
    out = {"detector_inference_ours_fast_vs_torchvision": ratio(rows, "R50-FPN inference", "ours+fast"),
           "detector_train_ours_fast_vs_torchvision": ratio(rows, "R50-FPN train", "ours+fast"),
           "backbone_r50_forward_ours_fast_vs_torchvision": ratio(rows, "R50 forward ", "ours+fast"),
           "backbone_r50_forward_backward_ours_fast_vs_torchvision": ratio(rows, "R50 forward_backward",
                                                                           "ours+fast")}
    if device.type == "cuda":
        out["detector_train_bf16_vs_fp32"] = ratio(rows, "R50-FPN train", "ours+fast+bf16", "ours+fast")
        out["backbone_r50_forward_backward_bf16_vs_fp32"] = ratio(rows, "R50 forward_backward",
                                                                  "ours+fast+bf16", "ours+fast")
    return out


def loader_section(args, device, rows) -> dict:
    """The loader's images/s next to our R50-FPN training step's at the same batch."""
    out = bench_loader(device, images=args.loader_images, batch=args.loader_batch, batches=args.loader_batches,
                       workers=args.loader_workers)
    impl = target_impls()["train"] if args.plan == "gpu" else "ours+fast"
    group = f"R50-FPN train batch {args.loader_batch}"
    model = [r["images_per_s"] for r in rows if r["group"] == group and r["impl"] == impl]
    out.update(model_group=group, model_impl=impl, model_images_per_s=model[0] if model else None,
               keeps_up=(out["images_per_s"] > model[0]) if model else None)
    return out


def profile_section(args, device) -> str:
    """torch.profiler tables of the target cases: our training step with the GPU settings (CPU plan:
    ours+fast), torchvision's at the same precision, our inference at batch 1."""
    t = target_impls() if args.plan == "gpu" else dict(train="ours+fast", train_tv="torchvision", infer="ours+fast")
    det = dict(det_hw=args.det_hw, det_min=args.det_min, det_max=args.det_max, device=str(device),
               proposals=args.proposals, rois=args.rois, arch="R50-FPN")
    b = max(args.train_batches)
    parts = []
    for mode, batch, impl in (("train", b, t["train"]), ("train", b, t["train_tv"]), ("inference", 1, t["infer"])):
        step = build_detector(dict(det, impl=impl, mode=mode, batch=batch))
        parts.append(f"==== R50-FPN {mode} batch {batch}, {impl} ====\n"
                     + profile_step(step, device, warmup=args.warmup + 1, steps=1 if args.tiny else 2,
                                    rows=args.profile_rows))
        del step
    return "\n\n".join(parts) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, metavar="DIR", help="writes DIR/results.json and DIR/results.md")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--plan", choices=["cpu", "gpu"], help="what to compare (default: gpu on CUDA, cpu on CPU)")
    p.add_argument("--quick", action="store_true", help="fewer iterations and smaller inputs")
    p.add_argument("--tiny", action="store_true", help="tiny inputs, one iteration: a smoke test, not a measurement")
    p.add_argument("--targets-only", action="store_true",
                   help="GPU plan: only the target groups and the implementations the target ratios need")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per implementation")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per implementation first")
    p.add_argument("--depths", type=int, nargs="+", default=None, choices=(18, 34, 50, 101, 152))
    p.add_argument("--train-batches", type=int, nargs="+", default=None, help="R50-FPN training batch sizes")
    p.add_argument("--sections", nargs="+", choices=["backbone", "detector", "c4", "data", "loader", "precision"],
                   default=None, help="default: backbone detector c4, and loader (GPU plan) or data (CPU plan)")
    p.add_argument("--loader-workers", type=int, default=None, help="default: the GPU config's DATALOADER.NUM_WORKERS")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurements")
    p.add_argument("--profile", action="store_true", help="write DIR/profile.txt (torch.profiler of the target cases)")
    p.add_argument("--profile-rows", type=int, default=30)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new group after this many minutes (the rest is listed as not run)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    args.plan = args.plan or ("gpu" if device.type == "cuda" else "cpu")
    args.sections = args.sections or ["backbone", "detector", "c4", "loader" if args.plan == "gpu" else "data"]
    sizes = dict(SIZES["cuda" if device.type == "cuda" else "cpu"], loader_workers=None)
    if args.quick:
        sizes.update(SIZES["quick_cuda" if device.type == "cuda" else "quick"])
    if args.tiny:
        sizes.update(SIZES["tiny"])
    for k, v in sizes.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.iters < 1 or args.warmup < 0:
        p.error(f"--iters={args.iters} must be >= 1 and --warmup={args.warmup} >= 0")
    if "loader" in args.sections and args.loader_batch not in args.train_batches:
        args.train_batches = (*args.train_batches, args.loader_batch)  # the step rate the loader must match
    args.threads = args.threads or torch.get_num_threads()
    return args, device


def write(report: dict, output: str) -> None:
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)


def main(argv=None) -> dict:
    args, device = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    report = {"command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
              "machine": machine_info(device), "settings": {k: v for k, v in vars(args).items()},
              "complete": False, "results": [], "data": [], "skipped": []}
    t0 = time.perf_counter()

    def in_budget(what: str) -> bool:
        if args.max_minutes is None or time.perf_counter() - t0 < 60 * args.max_minutes:
            return True
        report["skipped"].append(what)
        return False

    for name, section, specs, images in plan(args, device):
        if not in_budget(name):
            continue
        print(f"[benchmark] {name}: {', '.join(s['impl'] for s in specs)}", flush=True)
        report["results"] += run_group(name, section, BUILDERS[section], specs, images, device=device,
                                       warmup=args.warmup, iters=args.iters, threads=args.threads,
                                       memory=args.memory, preload=["resnet_det.modeling"])
        write(report, args.output)
    if "data" in args.sections and in_budget("data"):
        spec = dict(batch=args.train_batches[-1], device=str(device), tiny=args.tiny)
        workers = sorted({0, data_cfg(spec).DATALOADER.NUM_WORKERS, 2})  # none, the demo's, the default
        report["data"] = [bench_data(spec, w, args.data_batches) for w in workers]
        demo = [r["images_per_s"] for r in report["results"] if r["section"] == "demo"]
        report["data_model_images_per_s"] = max(demo) if demo else None
        report["data_starved"] = max(d["images_per_s"] for d in report["data"]) < max(demo) if demo else None
    if "loader" in args.sections and in_budget("loader"):
        print("[benchmark] loader", flush=True)
        report["loader"] = loader_section(args, device, report["results"])
    if args.plan == "gpu":
        report["targets"] = targets(report["results"], args)
    else:
        report["headline"] = headline(report["results"], device)
    write(report, args.output)
    if args.profile and in_budget("profile"):
        print("[benchmark] profile", flush=True)
        with open(os.path.join(args.output, "profile.txt"), "w") as f:
            f.write(profile_section(args, device))
    report["elapsed_s"] = time.perf_counter() - t0
    report["complete"] = True
    write(report, args.output)
    md = report_markdown(report)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(md)
    print(md)
    return report


if __name__ == "__main__":
    main()
