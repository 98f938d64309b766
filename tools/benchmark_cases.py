"""What tools/benchmark.py times: implementations by name, and one builder per section.

An implementation name is a base, "torchvision" or "ours", plus modifiers joined by "+":
`fold` (FrozenBN folded into convs and fused blocks, MODEL.FUSE_CONV_BN_RELU), `cl` (channels_last, MODEL.CHANNELS_LAST),
`roi` (gather RoIAlign, MODEL.ROI_BOX_HEAD.POOLER_IMPL "gather"; CPU only, torchvision's kernel on GPU), `fast` (= fold, cl
and roi), `bf16` / `fp16` (autocast), `nocudnn` (cudnn.benchmark off; on by default), `compile`
(torch.compile of the backbone), `tbf16` / `int8` (ours only: TEST.PRECISION bf16 / int8, modeling/precision.py;
int8 calibrated on the timed inputs). "ours+fast+bf16" is what the shipped GPU configs would run with AMP on.
A builder takes a spec (impl, sizes, device) and returns the step to time; `step.check()` returns
tensors to compare with the group's first implementation.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from resnet_det.modeling.fusion import fuse_conv_bn_relu
from resnet_det.modeling.speed import compile_backbone, to_channels_last
from resnet_det.utils.benchmark import pretrained_like_norms, synchronize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_CONFIGS = {"FPN": os.path.join("configs", "gpu", "Base-RCNN-FPN.yaml"),
               "C4": os.path.join("configs", "gpu", "Base-RCNN-C4.yaml")}
_MODIFIERS = ("fast", "fold", "cl", "roi", "bf16", "fp16", "nocudnn", "compile", "tbf16", "int8")
_PRECISION = {"tbf16": "bf16", "int8": "int8"}  # TEST.PRECISION of a modifier
_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ---- implementation names ------------------------------------------------------------------------
def impl_flags(name: str) -> dict:
    """"ours+fast+bf16" -> {"base": "ours", "fold": True, "cl": True, "roi": True, "amp": "bf16", ...}."""
    base, *mods = name.split("+")
    flags = dict(base=base, fold=False, cl=False, roi=False, amp=None, cudnn=True, compile=False, precision=None)
    if base not in ("torchvision", "ours"):
        raise ValueError(f"implementation {name!r}: expected 'torchvision' or 'ours' first, then any of {_MODIFIERS}")
    for m in mods:
        if m not in _MODIFIERS:
            raise ValueError(f"implementation {name!r}: unknown modifier {m!r}; expected any of {_MODIFIERS}")
        if m == "fast":
            flags.update(fold=True, cl=True, roi=True)
        elif m in _AMP:
            flags["amp"] = m
        elif m == "nocudnn":
            flags["cudnn"] = False
        elif m in _PRECISION:
            flags["precision"] = _PRECISION[m]
        else:
            flags[m] = True
    if base == "torchvision" and (flags["fold"] or flags["roi"] or flags["precision"]):
        raise ValueError(f"implementation {name!r}: fold, roi, tbf16 and int8 are ours; torchvision takes cl, bf16, "
                         "fp16, nocudnn, compile")
    return flags


def impl_name(flags: dict) -> str:
    """The canonical name of a flag set (inverse of impl_flags)."""
    parts = [flags["base"]]
    if flags["fold"] and flags["cl"] and flags["roi"]:
        parts.append("fast")
    else:
        parts += [k for k in ("fold", "cl", "roi") if flags[k]]
    parts += [flags["amp"]] if flags["amp"] else []
    parts += [] if flags["cudnn"] else ["nocudnn"]
    parts += ["compile"] if flags["compile"] else []
    parts += [{v: k for k, v in _PRECISION.items()}[flags["precision"]]] if flags.get("precision") else []
    return "+".join(parts)


def variant(name: str, **changes) -> str:
    """`name` with some flags changed, e.g. variant("ours+fast+bf16", amp=None) == "ours+fast"."""
    flags = {**impl_flags(name), **changes}
    if flags["base"] == "torchvision":
        flags.update(fold=False, roi=False, precision=None)
    return impl_name(flags)


def gpu_impl(kind: str = "FPN", training: bool = True) -> str:
    """The implementation the shipped GPU config (configs/gpu/) runs: its switches as a name.

    SOLVER.AMP is a training setting; inference runs in float32 (TF32 convolutions on Ampere/Hopper).
    """
    from resnet_det.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, GPU_CONFIGS[kind]))
    m, amp = cfg.MODEL, cfg.SOLVER.AMP
    use_amp = training and amp.ENABLED
    return impl_name(dict(base="ours", fold=m.FUSE_CONV_BN_RELU, cl=m.CHANNELS_LAST, roi=m.ROI_BOX_HEAD.POOLER_IMPL == "gather",
                          amp={"bfloat16": "bf16", "float16": "fp16"}[amp.DTYPE] if use_amp else None,
                          cudnn=bool(cfg.CUDNN_BENCHMARK), compile=m.COMPILE))


def pooler_impl(flags: dict) -> str:
    """MODEL.ROI_BOX_HEAD.POOLER_IMPL of an implementation's `roi` flag."""
    return "gather" if flags["roi"] else "torchvision"


def speed_up(model, flags: dict):
    if flags["fold"]:
        fuse_conv_bn_relu(model)
    if flags["cl"]:
        model = to_channels_last(model)
    if flags["compile"]:
        model = compile_backbone(model)
    return model


def autocast(spec):
    amp = impl_flags(spec["impl"])["amp"]
    return torch.autocast(spec["device"].split(":")[0], dtype=_AMP.get(amp, torch.float32), enabled=amp is not None)


def case(spec, step: Callable, check: Callable, model=None) -> Callable:
    """A built benchmark case: `case()` is what is timed, `case.check()` returns tensors to compare,
    `case.model` is the model. Each call first sets the implementation's cudnn.benchmark (process-wide),
    so cases with it on and off can be timed interleaved."""
    cudnn = impl_flags(spec["impl"])["cudnn"]

    def timed():
        torch.backends.cudnn.benchmark = cudnn
        return step()

    def checked():
        torch.backends.cudnn.benchmark = cudnn
        return check()

    timed.check, timed.model = checked, model
    return timed


# ---- (1) backbones -------------------------------------------------------------------------------
def build_backbone(spec) -> Callable:
    from resnet_det.modeling.backbone.resnet import ResNet

    dev, depth, flags = torch.device(spec["device"]), spec["depth"], impl_flags(spec["impl"])
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(norm_layer=FrozenBatchNorm2d)
    pretrained_like_norms(tv)
    model = tv
    if flags["base"] == "ours":
        model = ResNet(depth, norm="FrozenBN")
        model.load_state_dict(tv.state_dict(), strict=True)
    model = speed_up(model, flags).to(dev)
    x = torch.randn(spec["batch"], 3, spec["size"], spec["size"], generator=torch.Generator().manual_seed(1)).to(dev)
    if flags["cl"]:
        x = x.contiguous(memory_format=torch.channels_last)

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

    return case(spec, forward if spec["mode"] == "forward" else forward_backward, check, model)


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

    dev, train, flags = torch.device(spec["device"]), spec["mode"] == "train", impl_flags(spec["impl"])
    if spec["arch"] == "R50-FPN":
        tv = torchvision_frcnn(spec)
        if flags["base"] == "torchvision":
            model = tv
        else:
            (train_n, test_n), r = spec["proposals"], "MODEL.RPN."
            model = build_model(detector_cfg(
                spec, "Base-RCNN-FPN.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 90, "MODEL.FUSE_CONV_BN_RELU", False,
                "MODEL.CHANNELS_LAST", False, "MODEL.ROI_BOX_HEAD.POOLER_IMPL", pooler_impl(flags),
                r + "PRE_NMS_TOPK_TRAIN", train_n, r + "POST_NMS_TOPK_TRAIN", train_n, r + "PRE_NMS_TOPK_TEST",
                test_n, r + "POST_NMS_TOPK_TEST", test_n, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", spec["rois"]))
            model.load_state_dict(tv.state_dict(), strict=True)
        num_classes = 90
    else:  # our C4 (Appendix A), no torchvision counterpart
        torch.manual_seed(0)
        model = build_model(detector_cfg(
            spec, "Base-RCNN-C4.yaml", "MODEL.RESNETS.DEPTH", spec["c4_depth"], "MODEL.FUSE_CONV_BN_RELU", False,
            "MODEL.CHANNELS_LAST", False, "MODEL.ROI_BOX_HEAD.POOLER_IMPL", pooler_impl(flags),
            "MODEL.RPN.POST_NMS_TOPK_TEST", spec["c4_proposals"], "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
            spec["c4_rois"]))
        pretrained_like_norms(model)
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[1:4] += 6.0
        num_classes = 80
    model = speed_up(model, flags).to(dev).train(train)
    inputs = detector_inputs(spec, spec["batch"], num_classes)
    if flags["precision"] == "bf16":
        from resnet_det.modeling.precision import to_bf16

        model = to_bf16(model)
    elif flags["precision"] == "int8":
        from resnet_det.modeling.precision import quantize_int8

        model = quantize_int8(model, [[d] for d in inputs], channels_last=flags["cl"])
    if flags["base"] == "torchvision":  # torchvision takes 0-1 floats and 1-based labels, prepared here
        images = [d["image"].to(dev).float() / 255 for d in inputs]
        targets = [{"boxes": d["boxes"].to(dev), "labels": d["classes"].to(dev) + 1} for d in inputs]

        def run():
            return model(images, targets if train else None)
    else:  # ours takes the loader's uint8 batches and copies them inside the timed call (pinned on GPU)
        if dev.type == "cuda":
            inputs = [{k: v.pin_memory() if torch.is_tensor(v) else v for k, v in d.items()} for d in inputs]

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

    return case(spec, infer if not train else train_step, check, model)


# ---- (3) data loading: the demo set vs the demo model --------------------------------------------
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

    flags = impl_flags(spec["impl"])
    cfg = data_cfg(spec)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.MODEL.ROI_BOX_HEAD.POOLER_IMPL = pooler_impl(flags)
    loader = iter(build_detection_train_loader(cfg))
    batches = [next(loader) for _ in range(4)]
    torch.manual_seed(0)
    model = speed_up(build_model(cfg), flags).to(spec["device"]).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    state = {"i": 0}

    def step():
        state["i"] += 1
        with autocast(spec):
            losses = model(batches[state["i"] % len(batches)])
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    return case(spec, step, lambda: {}, model)


# ---- (4) the training loader on COCO-like JPEGs, as the GPU config runs it -----------------------
def bench_loader(device: torch.device, *, images: int, batch: int, batches: int, workers: int | None = None,
                 height: int = 480, width: int = 640) -> dict:
    """Images/s the training loader delivers to `device`: `images` generated JPEGs of width x height
    with boxes (COCO json), configs/gpu/Base-RCNN-FPN.yaml's DATALOADER (workers unless `workers` is
    given, PIN_MEMORY), each batch copied to the device as the model does (non_blocking). The first
    batch (worker start-up) is not timed; the device is synchronised before the clock stops."""
    from resnet_det.config import get_cfg
    from resnet_det.data import build_detection_train_loader, make_loader_benchmark_set, register_coco_instances
    from resnet_det.data.catalog import DatasetCatalog
    from resnet_det.modeling.detector import inputs_to_device

    name = f"bench_loader_{images}_{height}x{width}"
    if name not in DatasetCatalog.list():
        root = make_loader_benchmark_set(os.path.join(tempfile.mkdtemp(), "coco_like"), num_images=images,
                                         height=height, width=width)
        register_coco_instances(name, {}, os.path.join(root, "instances.json"), os.path.join(root, "images"))
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, GPU_CONFIGS["FPN"]))
    cfg.merge_from_list(["MODEL.DEVICE", str(device), "DATASETS.TRAIN", (name,), "SOLVER.IMS_PER_BATCH", batch,
                         "OUTPUT_DIR", tempfile.mkdtemp()])
    if workers is not None:
        cfg.DATALOADER.NUM_WORKERS = workers
    it = iter(build_detection_train_loader(cfg))
    first = next(it)
    pinned = all(d["image"].is_pinned() for d in first)
    inputs_to_device(first, device, with_targets=True)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        inputs_to_device(next(it), device, with_targets=True)
    synchronize(device)
    dt = time.perf_counter() - t0
    del it  # shuts the workers down
    return {"config": GPU_CONFIGS["FPN"], "workers": cfg.DATALOADER.NUM_WORKERS,
            "pin_memory_config": bool(cfg.DATALOADER.PIN_MEMORY), "pinned": pinned, "non_blocking": True,
            "image_size": f"{width}x{height}", "images": images, "batch": batch, "batches": batches,
            "images_per_s": batches * batch / dt}


BUILDERS = {"backbone": build_backbone, "detector": build_detector, "demo": build_demo_train}

