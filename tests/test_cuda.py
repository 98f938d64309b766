"""What must hold on a GPU (`pytest -m cuda`; benchmarks/gpu_check.py runs it on a lent machine).

Each test is parametrised over devices: the "cpu" case runs here and in CI (the same logic, with the
CPU fast paths in play), the "cuda" case is marked `cuda` and skips where CUDA is absent. Oracles: the
plain float32 path on CPU (FrozenBN not folded, NCHW, torchvision's RoIAlign), torchvision's resnet,
CUDA events for timing; TF32 is turned off for the equality checks (it rounds fp32 operands to 10 bits).
"""
import json
import math
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from resnet_det.config import get_cfg
from resnet_det.data import build_detection_train_loader
from resnet_det.engine import Trainer
from resnet_det.engine.launch import launch
from resnet_det.export import export_model, generated_image
from resnet_det.modeling import fusion
from resnet_det.modeling.speed import to_channels_last
from resnet_det.modeling.backbone.resnet import ResNet
from resnet_det.modeling.detector import build_model, inputs_to_device
from resnet_det.modeling.detector import pooling
from resnet_det.utils import comm
from resnet_det.utils.benchmark import cuda_step_memory, interleaved_times, pretrained_like_norms, synchronize

from engine_utils import REPO, TINY_OPTS

CUDA = pytest.param("cuda", marks=pytest.mark.cuda)
DEVICES = ["cpu", CUDA]
GPU_FPN = os.path.join(REPO, "configs", "gpu", "Base-RCNN-FPN.yaml")


@pytest.fixture
def strict_fp32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def host_threads():
    """Sets torch's intra-op threads for one test (the suite keeps 1 on its 2 cores); restores them."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def fast_path_calls(monkeypatch):
    """Counts calls of the CPU-only kernels: fused conv+ReLU(+add) blocks and the gather RoIAlign."""
    calls = {"fused": 0, "gather": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(fusion, "_conv_relu", counting("fused", fusion._conv_relu))
    monkeypatch.setattr(pooling, "roi_align_gather", counting("gather", pooling.roi_align_gather))
    return calls


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ---- outputs on the device equal the plain CPU path ----------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_backbone_fast_path_on_device_equals_torchvision_on_cpu(device, strict_fp32, fast_path_calls):
    depth, size = (18, 64) if device == "cpu" else (50, 224)
    tv = pretrained_like_norms(getattr(torchvision.models, f"resnet{depth}")(norm_layer=FrozenBatchNorm2d)).eval()
    ours = ResNet(depth, norm="FrozenBN")
    ours.load_state_dict(tv.state_dict())
    fusion.fuse_conv_bn_relu(ours)
    ours = to_channels_last(ours).to(device).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = tv(x)
        out = ours(x.to(device).contiguous(memory_format=torch.channels_last))
    assert rel_l2(out, ref) < 1e-5
    # On CPU the fused oneDNN blocks ran; on a GPU the blocks' own forward (cuDNN convs) did.
    assert (fast_path_calls["fused"] > 0) == (device == "cpu")


def detector_cfg(kind: str, device: str, shipped: bool):
    """A small detector of the Base config; `shipped` keeps its fast switches (folding, channels_last,
    gather RoIAlign), otherwise the plain path. Proposal and detection caps are high enough that no
    top-k cut can pick between near-equal scores (their order may flip with float rounding)."""
    cpu = device == "cpu"
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", f"Base-RCNN-{kind}.yaml"))
    # On the GPU: ResNet-50 bottlenecks for FPN; C4 keeps ResNet-18's res5, which runs once per RoI in
    # the CPU reference too.
    cfg.merge_from_list([
        "MODEL.DEVICE", device, "MODEL.RESNETS.DEPTH", 50 if kind == "FPN" and not cpu else 18,
        "MODEL.ROI_HEADS.NUM_CLASSES", 3, "INPUT.MIN_SIZE_TEST", 96 if cpu else 192,
        "INPUT.MAX_SIZE_TEST", 128 if cpu else 256,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 100000, "MODEL.RPN.POST_NMS_TOPK_TEST", 40 if cpu else 100000,
        "MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE", 10000, "MODEL.FUSE_CONV_BN_RELU", shipped,
        "MODEL.CHANNELS_LAST", shipped, "MODEL.ROI_BOX_HEAD.POOLER_IMPL", "gather" if shipped else "torchvision"])
    if kind == "FPN":
        cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", 64, "MODEL.ROI_BOX_HEAD.FC_DIM", 128])
    return cfg


def detector_inputs(device: str) -> list[dict]:
    scale = 1 if device == "cpu" else 2
    out = []
    for h, w in ((96, 128), (112, 96)):
        image = generated_image(h * scale, w * scale)  # a drawn scene, BGR HxWx3
        out.append({"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "height": h * scale,
                    "width": w * scale})
    return out


@pytest.mark.parametrize("kind", ["FPN", "C4"])
@pytest.mark.parametrize("device", DEVICES)
def test_detector_on_device_equals_plain_cpu(kind, device, strict_fp32, fast_path_calls, host_threads):
    if device == "cuda":  # the CPU reference runs every proposal through the head: use the GPU host's cores
        host_threads(min(8, os.cpu_count() or 1))
    torch.manual_seed(0)
    ref = pretrained_like_norms(build_model(detector_cfg(kind, device, shipped=False))).eval()
    with torch.no_grad():
        ref.roi_heads.box_predictor.cls_score.bias[1] += 2.0  # random weights that detect something
    model = build_model(detector_cfg(kind, device, shipped=True))
    model.load_state_dict(ref.state_dict())
    model = model.to(device).eval()
    inputs = detector_inputs(device)
    with torch.inference_mode():
        # Stage by stage, on the reference's resized batch and proposals: features, then the RoI head.
        images, _ = ref.transform(ref.preprocess(inputs)[0])
        feats_ref = ref.backbone(images.tensors)
        feats = model.backbone(images.tensors.to(device))
        for name in feats_ref:
            assert rel_l2(feats[name], feats_ref[name]) < 1e-4, name
        proposals, _ = ref.rpn(images, feats_ref)
        heads = []
        for m, f, p in ((ref, feats_ref, proposals), (model, feats, [b.to(device) for b in proposals])):
            pooled = m.roi_heads.box_roi_pool({k: f[k] for k in m.roi_features}, p, images.image_sizes)
            heads.append(m.roi_heads.box_predictor(m.roi_heads.box_head(pooled)))
        for out, expected in zip(heads[1], heads[0]):
            assert rel_l2(out, expected) < 1e-4
        # The whole forward: the same detections.
        before = dict(fast_path_calls)
        dets_ref = [d["instances"] for d in ref(inputs)]
        dets = [d["instances"] for d in model(inputs)]
    for d, e in zip(dets, dets_ref):
        assert 0 < len(e["scores"]) == len(d["scores"]), "no detections, or a different number"
        boxes, scores, classes = d["boxes"].cpu(), d["scores"].cpu(), d["pred_classes"].cpu()
        for box, score, cls in zip(e["boxes"], e["scores"], e["pred_classes"]):
            same = torch.nonzero(classes == cls).flatten()
            dist_ = (boxes[same] - box).abs().amax(1)
            j = same[dist_.argmin()]
            assert dist_.min() < 1e-2 and abs(scores[j] - score) < 1e-4
    # CPU: the gather RoIAlign and the fused blocks computed this; GPU: torchvision's and cuDNN's kernels.
    ran = {k: fast_path_calls[k] - before[k] for k in before}
    assert (ran["gather"] > 0 and ran["fused"] > 0) if device == "cpu" else ran == {"fused": 0, "gather": 0}


# ---- training with AMP, through the Trainer -----------------------------------------------------
def gpu_train_cfg(output_dir, device: str, *opts):
    """configs/gpu/Base-RCNN-FPN.yaml (AMP, folding, channels_last) shrunk to the tiny shapes set."""
    cfg = get_cfg()
    cfg.merge_from_file(GPU_FPN)
    cfg.merge_from_list(TINY_OPTS + ["DATASETS.TRAIN", ("shapes_train",), "DATASETS.TEST", (),
                                     "MODEL.RESNETS.DEPTH", 18, "MODEL.ROI_HEADS.NUM_CLASSES", 5,
                                     "OUTPUT_DIR", str(output_dir), "MODEL.DEVICE", device, *opts])
    return cfg


@pytest.mark.parametrize("device,dtype", [("cpu", "bfloat16"),
                                          pytest.param("cuda", "bfloat16", marks=pytest.mark.cuda),
                                          pytest.param("cuda", "float16", marks=pytest.mark.cuda)])
def test_training_steps_with_amp_stay_finite(shapes_root, tmp_path, device, dtype):
    cfg = gpu_train_cfg(tmp_path, device, "SOLVER.AMP.DTYPE", dtype, "SOLVER.MAX_ITER", 4,
                        "DATALOADER.PIN_MEMORY", True)
    seen = []

    class Recording(Trainer):
        @classmethod
        def build_model(cls, cfg):
            model = super().build_model(cfg)
            model.roi_heads.box_predictor.cls_score.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
            return model

    trainer = Recording(cfg)
    # SOLVER.AMP applies on CUDA only; on CPU the same config trains in float32.
    amp = getattr(torch, dtype) if device == "cuda" else None
    assert trainer.amp_dtype == amp and (trainer.scaler is not None) == (amp == torch.float16)
    trainer.train()
    assert set(seen) == {amp or torch.float32}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    losses = [v for r in records for k, v in r.items() if "loss" in k]
    assert len(records) == 4 and losses and all(math.isfinite(v) for v in losses)
    assert records[-1]["nonfinite_skipped"] == 0


# ---- the loader pins batches for the GPU; the model copies them non_blocking ---------------------
@pytest.mark.parametrize("device", DEVICES)
def test_train_loader_pins_batches_and_copies_reach_the_device(shapes_root, tmp_path, device):
    for pin in (True, False):
        cfg = gpu_train_cfg(tmp_path, device, "DATALOADER.PIN_MEMORY", pin, "DATALOADER.NUM_WORKERS",
                            0 if device == "cpu" else 2)
        batch = next(iter(build_detection_train_loader(cfg)))
        assert all(d["image"].is_pinned() == (pin and device == "cuda") for d in batch), pin
    images, targets = inputs_to_device(batch, torch.device(device), with_targets=True)
    synchronize(torch.device(device))
    for d, image, target in zip(batch, images, targets):
        assert image.device.type == device and torch.equal(image.cpu(), d["image"].float())
        assert torch.equal(target["labels"].cpu(), d["classes"] + 1)
        assert torch.equal(target["boxes"].cpu(), d["boxes"].float())


# ---- export of weights that lived on the device -------------------------------------------------
@pytest.mark.parametrize("device,fmt", [("cpu", "torchscript"),
                                        pytest.param("cuda", "torchscript", marks=pytest.mark.cuda),
                                        pytest.param("cuda", "onnx", marks=pytest.mark.cuda)])
def test_export_of_weights_saved_on_device(tmp_path, device, fmt):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.RESNETS.DEPTH", 18, "MODEL.BACKBONE.FREEZE_AT", 0,
                         "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
                         "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
                         "MODEL.ROI_HEADS.NUM_CLASSES", 3, "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128])
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 4.0  # detects boxes
    weights = tmp_path / "model.pth"
    torch.save(model.state_dict(), weights)  # tensors on the device, as a GPU run saves them
    cfg.MODEL.WEIGHTS = str(weights)
    path, meta = export_model(cfg, fmt, str(tmp_path / "export"))
    assert os.path.isfile(path) and meta["verification"]["passed"] and meta["device"] == "cpu"


# ---- DDP: one process, NCCL on a GPU (gloo on CPU) ----------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_ddp_initialises_with_world_size_one(monkeypatch, device):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)  # as torchrun sets them: launch() joins that group
    if device == "cpu":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = {}

    def main():
        seen["backend"], seen["world"] = dist.get_backend(), comm.get_world_size()
        model = nn.Linear(4, 2).to(device)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None)
        ddp(torch.randn(3, 4, device=device)).sum().backward()
        total = torch.full((1,), 2.0, device=device)
        dist.all_reduce(total)
        seen["sum"], seen["grad"] = total.item(), model.weight.grad is not None

    launch(main, num_gpus_per_machine=1)
    assert seen == {"backend": "nccl" if device == "cuda" else "gloo", "world": 1, "sum": 2.0, "grad": True}
    assert not dist.is_initialized()


# ---- the benchmark's timing waits for the device; its memory probe sees a step's peak -----------
@pytest.mark.parametrize("device", DEVICES)
def test_interleaved_times_wait_for_the_device(device):
    dev = torch.device(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(20_000_000)  # the GPU spins ~10 ms; the host returns at once
        end.record()
        torch.cuda.synchronize()
        busy_s = start.elapsed_time(end) / 1000

        def work():
            torch.cuda._sleep(20_000_000)
    else:
        busy_s = 0.01

        def work():
            time.sleep(busy_s)
    times = interleaved_times({"work": work}, warmup=1, iters=3, device=dev)
    assert min(times["work"]) >= 0.8 * busy_s


@pytest.mark.parametrize("device", [CUDA])
def test_cuda_step_memory_sees_a_step_peak(device):
    dev = torch.device(device)
    kept = torch.ones(2**20, device=dev)  # resident before the step: not part of its peak

    def step():
        return torch.ones(64 * 2**20, device=dev).sum()  # 256 MiB, freed when the step returns

    mem = cuda_step_memory(step, dev, setup_bytes=kept.numel() * 4)
    assert 256 <= mem["step_peak_over_setup_mb"] < 300 and mem["cuda_setup_mb"] == 4.0
