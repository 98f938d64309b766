"""TEST.PRECISION: run a built, loaded detector in fp32, bf16 or int8 for inference.

- ``bf16`` (CPU with AVX512_BF16 or AMX; ``utils.compat.cpu_has_native_bf16``): the convs and fcs of
  the backbone (+FPN), the RPN head and the box head hold bf16 weights and compute in bf16; what they
  return is cast back to float32, so anchors, box decoding, NMS, RoIAlign and the box predictor (class
  scores and box deltas) stay in float. Norms are folded into the convs in float32 first
  (``fusion.materialize_folds``), so each weight is rounded once. On a CPU without native bf16 this
  logs one line and runs fp32 (oneDNN would emulate bf16, slower). On CUDA it is autocast, as usual.
- ``int8`` (CPU): post-training static quantization (torch.ao FX graph mode, oneDNN backend: per-channel
  int8 weights, uint8 activations, each residual block's last conv fused with its addition and ReLU;
  VNNI/AMX kernels where the CPU has them) of the backbone + FPN, the RPN head convs and the box head
  (fc6/fc7 of the FPN head, or res5 of the C4 head). First the residual streams are equalized on the
  calibration images (``equalize_activations``: the float function is unchanged, the per-tensor 8-bit
  activations lose less), then activations are observed on the same images and each part dequantizes its
  outputs, so RoIAlign, NMS, box decoding and the box predictor stay in float32. Without VNNI the
  weights get 7 bits (``_qconfig_mapping`` says why).
  Why torch.ao FX and not torchao's PT2E flow: torchao is not a dependency of this stack (torch 2.14.1
  ships the FX flow; PT2E's X86InductorQuantizer lowers only through torch.compile/inductor, which the
  eager detector around the quantized parts cannot use).
- The fast path (MODEL.FUSE_CONV_BN_RELU / CHANNELS_LAST / POOLER_IMPL gather): folding becomes
  ``materialize_folds`` (permanent), the fused blocks step aside (their oneDNN call is float32-only;
  the bf16 blocks run their own forward, the int8 ones are torch.ao's fused ConvReLU/ConvAddReLU kernels),
  NHWC stays (bf16 weights and activations; int8 inputs are quantized NHWC), and the gather RoIAlign
  runs as before on the float32 features the parts return.

`apply_precision` is what ``engine.inference.load_for_inference`` calls; a calibrated INT8 model
saves and loads through ``save_int8`` / ``load_int8`` (tools/quantize.py).
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ..checkpoint.formats import INT8_FORMAT
from ..utils.compat import cpu_has_native_bf16
from ..utils.errors import ConfigError, WeightsError
from .fusion import materialize_folds

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "INT8_FORMAT", "apply_precision", "to_bf16", "quantize_int8", "calibration_inputs",
           "save_int8", "load_int8", "is_int8_checkpoint", "equalize_activations", "int8_scheme"]

PRECISIONS = ("fp32", "bf16", "int8")
# torch.ao's oneDNN backend: its fused conv + add (+ ReLU) ends each residual block in one quantized
# kernel, so the last conv's output is not rounded to 8 bits before the addition (x86's backend
# quantizes it: 0.4-0.6 dB more quantization noise on R50-FPN, as fast). oneDNN has int8 kernels
# for AVX2 too; VNNI/AMX where the CPU has them.
ENGINE = "onednn"


def _cast(obj, dtype: torch.dtype):
    """Every floating tensor in obj (nested lists, tuples, dicts) cast to dtype; the rest as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _cast(v, dtype)) for k, v in obj.items())
    return obj


def _parts(model: nn.Module) -> dict[str, nn.Module]:
    """The compute-heavy parts run in reduced precision: name -> module (attribute path in model)."""
    return {"backbone": model.backbone, "rpn.head": model.rpn.head, "roi_heads.box_head": model.roi_heads.box_head}


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


# ---- bf16 -----------------------------------------------------------------------------------------
def to_bf16(model: nn.Module) -> nn.Module:
    """The detector's backbone, RPN head and box head in bf16, their outputs cast back to float32; in place."""
    materialize_folds(model)
    for part in _parts(model).values():
        part.to(torch.bfloat16)
        part.register_forward_pre_hook(lambda m, args, kwargs: (_cast(args, torch.bfloat16),
                                                                _cast(kwargs, torch.bfloat16)), with_kwargs=True)
        part.register_forward_hook(lambda m, args, out: _cast(out, torch.float32))
    return model


# ---- int8 -----------------------------------------------------------------------------------------
class _RPNHeadLevel(nn.Module):
    """torchvision's RPNHead on one level (its forward loops over a list, which FX cannot trace)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.conv, self.cls_logits, self.bbox_pred = head.conv, head.cls_logits, head.bbox_pred

    def forward(self, x: torch.Tensor):
        t = self.conv(x)
        return self.cls_logits(t), self.bbox_pred(t)


class PerLevelRPNHead(nn.Module):
    """RPNHead's interface (features list -> (objectness list, deltas list)) over a per-level module."""

    def __init__(self, level: nn.Module):
        super().__init__()
        self.level = level

    def forward(self, features: list[torch.Tensor]):
        outs = [self.level(f) for f in features]
        return [o[0] for o in outs], [o[1] for o in outs]


def _fc_stack(head: nn.Module) -> nn.Module:
    """FCHead as a plain Sequential (flatten, fc6, ReLU, fc7, ReLU, ...): the same function and names."""
    layers = [nn.Flatten(1)]
    for i in range(head.num_fc):
        layers += [getattr(head, f"fc{6 + i}"), nn.ReLU()]
    return nn.Sequential(*layers)


def _traced(module: nn.Module):
    """`module` traced by torch.fx with its nn.Identity calls (folded norms, identity shortcuts)
    removed, so the quantizer sees conv -> relu and conv -> add -> relu patterns."""
    import torch.fx as fx

    gm = fx.symbolic_trace(module)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _int8_float_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The parts to quantize, rewritten into FX-traceable float modules computing the same function."""
    from .detector.heads import FCHead

    parts = {"backbone": model.backbone, "rpn.head": _RPNHeadLevel(model.rpn.head)}
    head = model.roi_heads.box_head
    parts["roi_heads.box_head"] = _fc_stack(head) if isinstance(head, FCHead) else head
    return parts


def _quiet():
    """torch.ao's FX flow warns about its own deprecation and uncalibrated observers on every call."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


def _vnni() -> bool:
    """AVX512_VNNI (or AVX_VNNI): torch.cpu's check, the CPU flags where this PyTorch lacks it."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    if check is not None:
        return bool(check())
    from ..utils.compat import cpu_flags

    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def _qconfig_mapping():
    """Per-channel symmetric int8 weights and uint8 activations with min/max observers (torch.ao's
    histogram ones took about a minute per calibration image of a detector on this 2-core machine
    and clip the peaks detections come from: +1.5 dB but fewer of fp32's boxes found on the test photo).
    Without VNNI, u8 x s8 products are summed in pairs into int16 (AVX2's vpmaddubsw), which 255 x 127
    x 2 overflows: there the weights get 7 bits (observed range [-64, 63]; symmetric rounding can give
    64, and 255 x 64 x 2 still fits) and the activations keep 8. torch.ao's
    reduce_range does the reverse; 7-bit activations cost every one of the ~90 quantized tensors of
    R50-FPN a bit (22.1 dB of signal-to-quantization-noise vs 27.7 with VNNI), 7-bit weights only the
    weights (26.1 dB; benchmarks/bench_int8_accuracy.py)."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    weight_range = {} if _vnni() else {"quant_min": -64, "quant_max": 63}
    qconfig = QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8),
                      weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                                **weight_range))
    return get_default_qconfig_mapping(ENGINE).set_global(qconfig)


# ---- activation equalization (before INT8) --------------------------------------------------------
class _Stream:
    """Channels that pass unchanged, up to a positive per-channel scale, from `producers` (convs whose
    output channels may be scaled: ReLU, max pooling and residual additions commute with it) to `consumers` (convs/linears whose input channels undo it). `points` are the
    modules whose outputs show the stream's range (a ("pre", m) pair: m's input)."""

    def __init__(self, producers: list, points: list):
        self.producers, self.points, self.consumers = list(producers), list(points), []


def _streams(model: nn.Module) -> list[_Stream]:
    """The residual streams of the folded ResNet (the stem's, each stage's shared channels) and the
    FPN's top-down stream, where both ends lie inside the backbone: a stage the backbone returns (C4's
    res4) keeps its scale, so each quantized part still returns what the float one does. [] where the
    model is not built of the blocks this knows (zero-padded option-A shortcuts, unfolded norms, an FPN
    with norms), which then is quantized as it is."""
    from .backbone.blocks import Bottleneck
    from .backbone.resnet import STAGE_NAMES

    body = getattr(model.backbone, "body", None)
    if body is None or not isinstance(body.bn1, nn.Identity):
        return []
    fpn = getattr(model.backbone, "fpn", None)
    if fpn is not None and any(len(m) != 1 for m in (*fpn.inner_blocks, *fpn.layer_blocks)):
        return []
    cur = _Stream([body.conv1], [body.maxpool])
    streams, outputs = [cur], []
    for i in range(1, body.num_stages + 1):
        for b in getattr(body, f"layer{i}"):
            last, ds = (b.conv3 if isinstance(b, Bottleneck) else b.conv2), b.downsample
            if not isinstance(b.last_norm(), nn.Identity):
                return []
            if isinstance(ds, nn.Sequential) and isinstance(ds[0], nn.Conv2d) and isinstance(ds[1], nn.Identity):
                cur.consumers += [b.conv1, ds[0]]
                cur = _Stream([last, ds[0]], [last, ds[0], b])
                streams.append(cur)
            elif isinstance(ds, nn.Identity) and not b.plain:
                cur.consumers.append(b.conv1)
                cur.producers.append(last)
                cur.points += [last, b]
            elif b.plain:
                cur.consumers.append(b.conv1)
                cur = _Stream([last], [b])
                streams.append(cur)
            else:  # option A's zero-padded shortcut ties the channels of two stages together
                return []
        if fpn is None and STAGE_NAMES[i] in body.out_features:
            outputs.append(cur)
        elif fpn is not None and STAGE_NAMES[i] in model.backbone.in_features:
            cur.consumers.append(fpn.inner_blocks[model.backbone.in_features.index(STAGE_NAMES[i])][0])
    if fpn is not None:
        top_down = _Stream([m[0] for m in fpn.inner_blocks],
                           [m[0] for m in fpn.inner_blocks] + [("pre", m[0]) for m in fpn.layer_blocks])
        top_down.consumers += [m[0] for m in fpn.layer_blocks]
        streams.append(top_down)
    return [st for st in streams if st.consumers and st not in outputs]  # unread stages stay as they are


@torch.no_grad()
def equalize_activations(model: nn.Module, batches: list[list[dict]], alpha: float = 0.5) -> nn.Module:
    """Scale the channels of each residual stream (and the FPN's top-down one) towards equal ranges
    before INT8, in place: a stream's channel c is multiplied by s_c = (max_k r_k / r_c) ** alpha where
    r_c is its largest magnitude on the calibration `batches`, and its consumers divide it out. The
    float function is unchanged (up to rounding); per-tensor INT8 activations then waste fewer of their
    256 levels on the few wide channels (SmoothQuant's migration, Xiao et al. 2023, with alpha 0.5;
    cross-layer equalization, Nagel et al. 2019). On detectron2's R50-FPN with seeded weights it
    raises the INT8 backbone's signal-to-quantization-noise by 2-3 dB at every FPN level
    (benchmarks/bench_int8_accuracy.py)."""
    streams = _streams(model)
    ranges: dict[int, torch.Tensor] = {}

    def record(i, x):
        r = x.detach().float().abs().amax(dim=(0, 2, 3))
        ranges[i] = r if i not in ranges else torch.maximum(ranges[i], r)

    hooks = []
    for i, st in enumerate(streams):
        for p in st.points:
            if isinstance(p, tuple):
                hooks.append(p[1].register_forward_pre_hook(lambda m, args, i=i: record(i, args[0])))
            else:
                hooks.append(p.register_forward_hook(lambda m, args, out, i=i: record(i, out)))
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    for i, st in enumerate(streams):
        r = ranges[i]
        r = r.clamp(min=1e-2 * float(r.max()) + 1e-12)  # dead channels: a bounded scale
        s = (r.max() / r) ** alpha
        for m in st.producers:
            m.weight.mul_(s.view(-1, *[1] * (m.weight.dim() - 1)))
            m.bias.mul_(s)
        for m in st.consumers:
            m.weight.div_(s.view(1, -1, *[1] * (m.weight.dim() - 2)))
    return model


def _backend_config():
    """torch.ao's fusion patterns for ENGINE ("x86": its default ones; benchmarks/bench_int8_accuracy.py
    compares the two)."""
    from torch.ao.quantization.backend_config import get_native_backend_config, get_onednn_backend_config

    return get_onednn_backend_config() if ENGINE == "onednn" else get_native_backend_config()


def _check_cpu(model: nn.Module) -> None:
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError("TEST.PRECISION int8 runs on the CPU (x86 quantized kernels): set MODEL.DEVICE cpu, "
                          "or TEST.PRECISION bf16 on a GPU")


def _prepare_int8(model: nn.Module) -> dict[str, nn.Module]:
    """Fold, trace and insert observers into each part, in place; returns {path: observed part}."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    _check_cpu(model)
    model.eval()
    materialize_folds(model)
    torch.backends.quantized.engine = ENGINE
    qconfig = _qconfig_mapping()
    example = {"backbone": torch.zeros(1, 3, 64, 64), "rpn.head": None, "roi_heads.box_head": None}
    observed = {}
    ctx = _quiet()
    try:
        for path, part in _int8_float_parts(model).items():
            part = _traced(part.eval())
            observed[path] = prepare_fx(part, qconfig, example_inputs=(example[path],),
                                        backend_config=_backend_config())
            _set(model, path, PerLevelRPNHead(observed[path]) if path == "rpn.head" else observed[path])
    finally:
        ctx.__exit__(None, None, None)
    return observed


def _convert_int8(model: nn.Module, observed: dict[str, nn.Module], channels_last: bool) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    ctx = _quiet()
    try:
        for path, part in observed.items():
            q = convert_fx(part, backend_config=_backend_config())
            _set(model, path, PerLevelRPNHead(q) if path == "rpn.head" else q)
    finally:
        ctx.__exit__(None, None, None)
    if channels_last:  # quantized convs run NHWC: quantize the batch in that layout once
        model.backbone.register_forward_pre_hook(
            lambda _, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:]))
    return model.eval()


def quantize_int8(model: nn.Module, batches: Iterable[list[dict]], channels_last: bool = True) -> nn.Module:
    """Post-training static INT8 quantization of the backbone (+FPN), RPN head and box head, in place:
    the folded float model's streams are equalized on the calibration batches (`equalize_activations`),
    then observers record the activations of `model(batch)` for each calibration batch (lists of input
    dicts, docs/CONTRACTS.md), then each part becomes its quantized twin. Returns the model (eval mode)."""
    batches = [b for b in batches if b]
    n = sum(map(len, batches))
    if n == 0:
        raise ConfigError("TEST.PRECISION int8: no calibration images (TEST.PRECISION_CALIB_IMAGES images of "
                          "DATASETS.TRAIN); give a data set with images or a calibrated checkpoint from "
                          "tools/quantize.py")
    _check_cpu(model)
    model.eval()
    materialize_folds(model)
    equalize_activations(model, batches)
    observed = _prepare_int8(model)
    with torch.no_grad():
        for batch in batches:
            model(batch)
    logger.info("INT8: calibrated on %d images", n)
    return _convert_int8(model, observed, channels_last)


def calibration_inputs(cfg) -> list[list[dict]]:
    """TEST.PRECISION_CALIB_IMAGES images of DATASETS.TRAIN (evenly spaced over it) through the
    test-time mapper, one per batch: what the detector sees at test time."""
    from ..data import DatasetMapper, get_detection_dataset_dicts

    n = cfg.TEST.PRECISION_CALIB_IMAGES
    if not cfg.DATASETS.TRAIN:
        raise ConfigError("TEST.PRECISION int8 calibrates on TEST.PRECISION_CALIB_IMAGES images of DATASETS.TRAIN, "
                          "which is empty: set DATASETS.TRAIN (e.g. DATASETS.TRAIN \"('shapes_train',)\"), or "
                          "give MODEL.WEIGHTS a calibrated checkpoint written by tools/quantize.py")
    dicts = get_detection_dataset_dicts(list(cfg.DATASETS.TRAIN), filter_empty=False)
    step = max(len(dicts) / n, 1.0)
    picked = [dicts[int(i * step)] for i in range(min(n, len(dicts)))]
    mapper = DatasetMapper(cfg, is_train=False)
    return [[m] for m in map(mapper, picked) if m is not None]


# ---- the switch -----------------------------------------------------------------------------------
def apply_precision(model: nn.Module, cfg, batches: Iterable[list[dict]] | None = None) -> nn.Module:
    """`model` (built from cfg, weights loaded) in TEST.PRECISION, for inference. int8 calibrates on
    `batches` (default: `calibration_inputs(cfg)`)."""
    precision = cfg.TEST.PRECISION
    if precision == "fp32":
        return model
    device = next(model.parameters()).device
    if precision == "bf16":
        if device.type == "cuda":
            model.forward = torch.autocast("cuda", dtype=torch.bfloat16)(model.forward)
            return model
        if not cpu_has_native_bf16():
            logger.warning("TEST.PRECISION bf16: this CPU has no native bf16 (AVX512_BF16 or AMX); running fp32 "
                           "(emulated bf16 is slower)")
            return model
        return to_bf16(model)
    if precision == "int8":
        return quantize_int8(model, calibration_inputs(cfg) if batches is None else batches,
                             channels_last=cfg.MODEL.CHANNELS_LAST)
    raise ConfigError(f"TEST.PRECISION={precision!r}: expected one of {', '.join(PRECISIONS)}")


# ---- calibrated checkpoints -----------------------------------------------------------------------
def save_int8(model: nn.Module, path: str, meta: dict, calibration: dict) -> None:
    """A calibrated INT8 detector: its quantized state_dict, the weights' meta record and how it was
    calibrated (recorded in meta["calibration"])."""
    from ..utils.io import atomic_save

    atomic_save({"format": INT8_FORMAT, "precision": "int8", "model": model.state_dict(),
                 "meta": {**meta, "precision": "int8", "calibration": calibration, "scheme": int8_scheme()}}, path)


def int8_scheme() -> dict:
    """How this machine quantizes (recorded in each calibrated checkpoint; load_int8 checks it)."""
    return {"engine": ENGINE, "fused": "conv+add+relu", "equalization": "residual and FPN streams, alpha 0.5",
            "activations": "uint8 [0, 255], per-tensor min/max",
            "weights": "int8 per-channel symmetric " + ("[-128, 127]" if _vnni() else "[-64, 64] (no VNNI)")}


def is_int8_checkpoint(path: str) -> bool:
    """Whether `path` is a checkpoint save_int8 wrote (reads the file)."""
    if not str(path).endswith((".pth", ".pt")):
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: reads only the header
    except Exception:  # not ours to judge here: the weights loader reports unreadable files
        return False
    return isinstance(obj, dict) and obj.get("format") == INT8_FORMAT


def load_int8(model: nn.Module, path: str, channels_last: bool = True) -> nn.Module:
    """`model` (built from the config, float weights irrelevant) turned into the quantized structure
    and filled from a save_int8 checkpoint; a file made for another architecture is refused."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    scheme = obj.get("meta", {}).get("scheme") or {}
    redo = "quantize the fp32 weights again with tools/quantize.py --config-file C MODEL.WEIGHTS W --output DIR"
    if scheme.get("engine") != ENGINE:
        raise WeightsError(f"{path}: this INT8 checkpoint was made by an older resnet_det (quantized engine "
                           f"{scheme.get('engine', 'x86')!r}, no stream equalization), whose modules this one does "
                           f"not build; {redo}")
    if "[-128, 127]" in scheme.get("weights", "") and not _vnni():
        raise WeightsError(f"{path}: this INT8 checkpoint holds 8-bit weights, calibrated on a CPU with VNNI; this CPU "
                           "has none, and its int8 kernels sum pairs of 8-bit products in int16, which 8-bit weights "
                           f"overflow (wrong detections, silently). On this machine, {redo} (it uses 7-bit weights)")
    observed = _prepare_int8(model)
    model = _convert_int8(model, observed, channels_last)
    try:
        model.load_state_dict(obj["model"], strict=True)
    except (RuntimeError, KeyError, ValueError) as e:  # quantized modules raise KeyError for a missing key
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise WeightsError(f"{path}: this INT8 checkpoint was calibrated for another architecture than this "
                           f"config builds ({first}); quantize the fp32 weights for this config with "
                           "tools/quantize.py --config-file C MODEL.WEIGHTS W --output DIR") from None
    return model.eval()
