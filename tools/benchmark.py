#!/usr/bin/env python
"""Side-by-side speed of resnet_det against torchvision, in one run, on the same inputs and threads.

    python tools/benchmark.py --output benchmarks/results_cpu            # `make bench`
    python tools/benchmark.py --device cuda --quick --output benchmarks/results_h100
    python tools/benchmark.py --quick --tiny --output /tmp/bench         # smoke test (seconds)

Sections: (1) backbone forward and forward+backward images/s, ResNet-18/50/101 vs torchvision's
resnet of the same depth with the same weights (FrozenBN, the detection setting); (2) Faster R-CNN
R50-FPN vs torchvision's fasterrcnn_resnet50_fpn (its state_dict loaded into ours; same sizes,
proposals and weights): inference latency per image and training step time; our R101-C4 alone (plain
vs fast path); (3) the training loader's images/s vs the model's step rate; (4) peak memory of each.
"ours" is the plain path, "ours+fast" folds FrozenBN into the convs and runs channels_last
(resnet_det.modeling.fast); on CUDA "+bf16" adds autocast. Implementations are timed interleaved
(A B C, C B A, ...) and we report medians after warm-up. Writes DIR/results.json and DIR/results.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.ops import FrozenBatchNorm2d  # noqa: E402

from resnet_det.modeling.fast import fold_frozen_bn, to_channels_last  # noqa: E402
from resnet_det.utils.benchmark import (machine_info, pretrained_like_norms, ratio, report_markdown,  # noqa: E402
                                       run_group)

# Random initialisation with frozen stages is expected here: silence that warning (probe processes too).
logging.getLogger("resnet_det").setLevel(logging.ERROR)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (section sizes) per mode; CPU sizes keep a full run around ten minutes on two cores.
SIZES = {
    "cpu": dict(bb_batch=4, bb_size=224, det_hw=(480, 640), det_min=512, det_max=853, train_batch=2,
                proposals=(2000, 1000), rois=512, ablations=True,
                c4_proposals=100, c4_rois=64, data_batches=20, iters=5, warmup=1, depths=(18, 50, 101)),
    "cuda": dict(bb_batch=64, bb_size=224, det_hw=(800, 1066), det_min=800, det_max=1333, train_batch=4,
                 proposals=(2000, 1000), rois=512, ablations=True,
                 c4_proposals=300, c4_rois=128, data_batches=40, iters=10, warmup=3, depths=(18, 50, 101)),
    "quick": dict(bb_batch=2, det_hw=(384, 512), det_min=384, det_max=640, data_batches=8, iters=3, warmup=1),
    "quick_cuda": dict(bb_batch=32, det_hw=(600, 800), det_min=600, det_max=1000, data_batches=20, iters=5,
                       warmup=2),
    "tiny": dict(bb_batch=1, bb_size=64, det_hw=(96, 128), det_min=96, det_max=128, train_batch=2,
                 c4_proposals=16, c4_rois=16, data_batches=2, iters=1, warmup=1, depths=(18,),
                 proposals=(64, 32), rois=32, ablations=False),
}
IMPLS = {"torchvision": {}, "ours": dict(fold=False, cl=False), "ours+fold": dict(fold=True, cl=False),
         "ours+cl": dict(fold=False, cl=True), "ours+roi": dict(fold=False, cl=False, roi=True),
         "ours+fast": dict(fold=True, cl=True, roi=True),
         "ours+fast+bf16": dict(fold=True, cl=True, roi=True, amp=True)}


def speed_up(model, impl: str):
    flags = IMPLS[impl]
    if flags.get("fold"):
        fold_frozen_bn(model)
    if flags.get("cl"):
        model = to_channels_last(model)
    return model


def autocast(spec):
    on = IMPLS[spec["impl"]].get("amp", False)
    return torch.autocast(spec["device"].split(":")[0], dtype=torch.bfloat16, enabled=on)


def case(step, check):
    """A built benchmark case: `step()` is what is timed; `step.check()` returns tensors to compare."""
    step.check = check
    return step


# ---- (1) backbones -------------------------------------------------------------------------------
def build_backbone(spec) -> Callable:
    from resnet_det.modeling.backbone.resnet import ResNet

    dev, depth = torch.device(spec["device"]), spec["depth"]
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(norm_layer=FrozenBatchNorm2d)
    pretrained_like_norms(tv)
    model = tv
    if spec["impl"] != "torchvision":
        model = ResNet(depth, norm="FrozenBN")
        model.load_state_dict(tv.state_dict(), strict=True)
        model = speed_up(model, spec["impl"])
    model = model.to(dev)
    x = torch.randn(spec["batch"], 3, spec["size"], spec["size"], generator=torch.Generator().manual_seed(1)).to(dev)

    def forward():
        with torch.inference_mode(), autocast(spec):
            return model(x)

    def forward_backward():
        with autocast(spec):
            out = model(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    def check():
        if spec["mode"] == "forward":
            return {"logits": forward().float()}
        with autocast(spec):
            out = model(x)
        out.float().square().mean().backward()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return {"logits": out.detach().float(), **grads}

    return case(forward if spec["mode"] == "forward" else forward_backward, check)


# ---- (2) detectors -------------------------------------------------------------------------------
def detector_cfg(spec, base: str, *opts):
    from resnet_det.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", base))
    s, m = spec["det_min"], spec["det_max"]
    cfg.merge_from_list(["MODEL.DEVICE", spec["device"], "INPUT.MIN_SIZE_TRAIN", (s,), "INPUT.MAX_SIZE_TRAIN", m,
                         "INPUT.MIN_SIZE_TEST", s, "INPUT.MAX_SIZE_TEST", m, *opts])
    return cfg


def detector_inputs(spec, n: int, num_classes: int) -> list[dict]:
    g = torch.Generator().manual_seed(2)
    h, w = spec["det_hw"]
    out = []
    for i in range(n):
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35]) + 16
        out.append({"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
                    "boxes": torch.cat([xy, xy + wh], 1), "classes": torch.randint(0, num_classes, (4,), generator=g),
                    "image_id": i, "height": h, "width": w})
    return out


def torchvision_frcnn(spec):
    """fasterrcnn_resnet50_fpn as torchvision builds it with pretrained weights (FrozenBN, 3 trainable
    stages), without downloading any; three class biases are raised so that random weights detect boxes."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    (train_n, test_n), rois = spec["proposals"], spec["rois"]
    tv = FasterRCNN(backbone, num_classes=91, min_size=spec["det_min"], max_size=spec["det_max"],
                    rpn_pre_nms_top_n_train=train_n, rpn_post_nms_top_n_train=train_n, rpn_pre_nms_top_n_test=test_n,
                    rpn_post_nms_top_n_test=test_n, box_batch_size_per_image=rois)
    pretrained_like_norms(tv)
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.bias[1:4] += 6.0
    return tv


def build_detector(spec) -> Callable:
    from resnet_det.modeling.detector import build_model

    dev, train = torch.device(spec["device"]), spec["mode"] == "train"
    if spec["arch"] == "R50-FPN":
        tv = torchvision_frcnn(spec)
        if spec["impl"] == "torchvision":
            model = tv
        else:
            (train_n, test_n), r = spec["proposals"], "MODEL.RPN."
            model = build_model(detector_cfg(
                spec, "Base-RCNN-FPN.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 90, "MODEL.FUSE_FROZEN_BN", False,
                "MODEL.FAST_ROI_ALIGN", IMPLS[spec["impl"]].get("roi", False),
                r + "PRE_NMS_TOPK_TRAIN", train_n, r + "POST_NMS_TOPK_TRAIN", train_n, r + "PRE_NMS_TOPK_TEST",
                test_n, r + "POST_NMS_TOPK_TEST", test_n, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", spec["rois"]))
            model.load_state_dict(tv.state_dict(), strict=True)
        num_classes = 90
    else:  # our R101-C4 (Appendix A), no torchvision counterpart
        torch.manual_seed(0)
        model = build_model(detector_cfg(
            spec, "Base-RCNN-C4.yaml", "MODEL.RESNETS.DEPTH", 101, "MODEL.FUSE_FROZEN_BN", False,
            "MODEL.FAST_ROI_ALIGN", IMPLS[spec["impl"]].get("roi", False),
            "MODEL.RPN.POST_NMS_TOPK_TEST", spec["c4_proposals"], "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
            spec["c4_rois"]))
        pretrained_like_norms(model)
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[1:4] += 6.0
        num_classes = 80
    if spec["impl"] != "torchvision":
        model = speed_up(model, spec["impl"])
    model = model.to(dev).train(train)
    inputs = detector_inputs(spec, spec["batch"], num_classes)
    if spec["impl"] == "torchvision":  # torchvision takes 0-1 floats and 1-based labels
        images = [d["image"].to(dev).float() / 255 for d in inputs]
        targets = [{"boxes": d["boxes"].to(dev), "labels": d["classes"].to(dev) + 1} for d in inputs]

        def run():
            return model(images, targets if train else None)
    else:
        def run():
            return model(inputs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-5, momentum=0.9) if train else None

    def infer():
        with torch.inference_mode(), autocast(spec):
            return run()

    def train_step():
        with autocast(spec):
            losses = run()
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    def check():
        torch.manual_seed(3)  # same RPN/RoI sampling in every implementation
        if not train:
            out = infer()[0]
            out = out.get("instances", out)
            labels = out["labels"] - 1 if "labels" in out else out["pred_classes"]
            return {"boxes": out["boxes"].float(), "scores": out["scores"].float(), "classes": labels.float()}
        with autocast(spec):
            losses = run()
        return {k: v.detach().float() for k, v in losses.items()}

    return case(infer if not train else train_step, check)


# ---- (3) data loading ----------------------------------------------------------------------------
def data_cfg(spec):
    from resnet_det.config import get_cfg
    from resnet_det.data import register_coco_instances
    from resnet_det.data.catalog import DatasetCatalog
    from resnet_det.data.demo import generate_shapes_dataset

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "demo", "frcnn_r18_fpn_shapes.yaml"))
    name = "shapes_train"
    if spec.get("tiny"):  # a private 8-image set instead of the 600-image demo set
        name = "bench_shapes_tiny"
        if name not in DatasetCatalog.list():
            root = generate_shapes_dataset(os.path.join(tempfile.mkdtemp(), "shapes"), num_train=8, num_val=1)
            register_coco_instances(name, {}, os.path.join(root, "annotations", "instances_train.json"),
                                    os.path.join(root, "train"))
    cfg.merge_from_list(["MODEL.DEVICE", spec["device"], "DATASETS.TRAIN", (name,), "SOLVER.IMS_PER_BATCH",
                         spec["batch"], "OUTPUT_DIR", tempfile.mkdtemp()])
    return cfg


def bench_data(spec, workers: int, batches: int) -> dict:
    """Images/s of the training loader alone (worker start-up excluded: the first batch is not timed)."""
    from resnet_det.data import build_detection_train_loader

    cfg = data_cfg(spec)
    cfg.DATALOADER.NUM_WORKERS = workers
    it = iter(build_detection_train_loader(cfg))
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    return {"workers": workers, "batches": batches, "images_per_s": batches * spec["batch"] / dt,
            "pin_memory": bool(cfg.DATALOADER.PIN_MEMORY) and torch.cuda.is_available()}


def build_demo_train(spec) -> Callable:
    """The demo model (R18-FPN on shapes) training on batches taken from the loader beforehand."""
    from resnet_det.data import build_detection_train_loader
    from resnet_det.modeling.detector import build_model

    cfg = data_cfg(spec)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.FAST_ROI_ALIGN = IMPLS[spec["impl"]].get("roi", False)
    loader = iter(build_detection_train_loader(cfg))
    batches = [next(loader) for _ in range(4)]
    torch.manual_seed(0)
    model = speed_up(build_model(cfg), spec["impl"]).to(spec["device"]).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    state = {"i": 0}

    def step():
        state["i"] += 1
        with autocast(spec):
            losses = model(batches[state["i"] % len(batches)])
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    return case(step, lambda: {})


# ---- orchestration -------------------------------------------------------------------------------
BUILDERS = {"backbone": build_backbone, "detector": build_detector, "demo": build_demo_train}


def plan(args, device) -> list[tuple[str, str, list[dict], int]]:
    dev, cuda = str(device), device.type == "cuda"
    fast = ["ours+fast"] + (["ours+fast+bf16"] if cuda else [])
    groups = []
    if "backbone" in args.sections:
        for depth in args.depths:
            for mode in ("forward", "forward_backward"):
                ablate = ["ours+fold", "ours+cl"] if depth == 50 and args.ablations else []
                impls = ["torchvision", "ours"] + ablate + fast
                specs = [dict(impl=i, depth=depth, mode=mode, batch=args.bb_batch, size=args.bb_size, device=dev)
                         for i in impls]
                groups.append((f"R{depth} {mode} {args.bb_size}px", "backbone", specs, args.bb_batch))
    det = dict(det_hw=args.det_hw, det_min=args.det_min, det_max=args.det_max, device=dev,
               proposals=args.proposals, rois=args.rois,
               c4_proposals=args.c4_proposals, c4_rois=args.c4_rois)
    if "detector" in args.sections:
        for mode, batch in (("inference", 1), ("train", args.train_batch)):
            impls = ["torchvision", "ours"] + (["ours+fold", "ours+cl", "ours+roi"] if args.ablations else []) + fast
            specs = [dict(det, impl=i, arch="R50-FPN", mode=mode, batch=batch) for i in impls]
            groups.append((f"R50-FPN {mode} batch {batch}", "detector", specs, batch))
    if "c4" in args.sections:
        for mode, batch in (("inference", 1), ("train", args.train_batch)):
            specs = [dict(det, impl=i, arch="R101-C4", mode=mode, batch=batch) for i in ["ours"] + fast]
            groups.append((f"R101-C4 {mode} batch {batch}", "detector", specs, batch))
    if "data" in args.sections:
        specs = [dict(impl=i, batch=args.train_batch, device=dev, tiny=args.tiny) for i in ["ours"] + fast]
        groups.append((f"R18-FPN demo train batch {args.train_batch}", "demo", specs, args.train_batch))
    return groups


def headline(rows, device) -> dict:
    """The ratios issue 7 sets targets for (>= 1.25, 1.1, 1.2 on the 2-core CPU; bf16 >= 1.5 on H100)."""
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, metavar="DIR", help="writes DIR/results.json and DIR/results.md")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--quick", action="store_true", help="fewer iterations and smaller inputs (< 3 min on a GPU)")
    p.add_argument("--tiny", action="store_true", help="tiny inputs, one iteration: a smoke test, not a measurement")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per implementation")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per implementation first")
    p.add_argument("--depths", type=int, nargs="+", default=None, choices=(18, 34, 50, 101, 152))
    p.add_argument("--sections", nargs="+", default=["backbone", "detector", "c4", "data"],
                   choices=["backbone", "detector", "c4", "data"])
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory probes")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    sizes = dict(SIZES["cuda" if device.type == "cuda" else "cpu"])
    if args.quick:
        sizes.update(SIZES["quick_cuda" if device.type == "cuda" else "quick"])
    if args.tiny:
        sizes.update(SIZES["tiny"])
    for k, v in sizes.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.iters < 1 or args.warmup < 0:
        p.error(f"--iters={args.iters} must be >= 1 and --warmup={args.warmup} >= 0")
    args.threads = args.threads or torch.get_num_threads()
    return args, device


def main(argv=None) -> dict:
    args, device = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes here: let cuDNN pick its fastest kernels
    os.makedirs(args.output, exist_ok=True)
    report = {"command": "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])]),
              "machine": machine_info(device), "settings": {k: v for k, v in vars(args).items()},
              "results": [], "data": []}
    t0 = time.perf_counter()
    for name, section, specs, images in plan(args, device):
        print(f"[benchmark] {name}: {', '.join(s['impl'] for s in specs)}", flush=True)
        report["results"] += run_group(name, section, BUILDERS[section], specs, images, device=device,
                                       warmup=args.warmup, iters=args.iters, threads=args.threads,
                                       memory=args.memory)
    if "data" in args.sections:
        spec = dict(batch=args.train_batch, device=str(device), tiny=args.tiny)
        workers = sorted({0, data_cfg(spec).DATALOADER.NUM_WORKERS, 2})  # none, the demo's, the default
        report["data"] = [bench_data(spec, w, args.data_batches) for w in workers]
        model_ips = max(r["images_per_s"] for r in report["results"] if r["section"] == "demo")
        report["data_model_images_per_s"] = model_ips
        report["data_starved"] = max(d["images_per_s"] for d in report["data"]) < model_ips
    report["headline"] = headline(report["results"], device)
    report["elapsed_s"] = time.perf_counter() - t0
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    md = report_markdown(report)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(md)
    print(md)
    return report


if __name__ == "__main__":
    main()
