"""TEST.PRECISION: run a built, loaded detector in fp32, bf16 or int8 for inference.

- ``bf16`` (CPU with AVX512_BF16 or AMX; ``utils.compat.cpu_has_native_bf16``): the convs and fcs of
  the backbone (+FPN), the RPN head and the box head hold bf16 weights and compute in bf16; what they
  return is cast back to float32, so anchors, box decoding, NMS, RoIAlign and the box predictor (class
  scores and box deltas) stay in float. Norms are folded into the convs in float32 first
  (``fusion.materialize_folds``), so each weight is rounded once. On a CPU without native bf16 this
  logs one line and runs fp32 (oneDNN would emulate bf16, slower). On CUDA it is autocast, as usual.
- ``int8`` (CPU): post-training static quantization (torch.ao FX graph mode, x86 backend: per-channel
  int8 weights, VNNI/AMX kernels through oneDNN/fbgemm) of the backbone + FPN, the RPN head convs and
  the box head (fc6/fc7 of the FPN head, or res5 of the C4 head). Activations are observed on
  calibration images (``calibrate``) and each part dequantizes its outputs, so RoIAlign, NMS, box
  decoding and the box predictor stay in float32.
  Why torch.ao FX and not torchao's PT2E flow: torchao is not a dependency of this stack (torch 2.14.1
  ships the FX flow; PT2E's X86InductorQuantizer lowers only through torch.compile/inductor, which the
  eager detector around the quantized parts cannot use).
- The fast path (MODEL.FUSE_CONV_BN_RELU / CHANNELS_LAST / POOLER_IMPL gather): folding becomes
  ``materialize_folds`` (permanent), the fused blocks step aside (their oneDNN call is float32-only;
  the bf16 blocks run their own forward, the int8 ones are torch.ao's fused ConvReLU/add-ReLU kernels),
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
           "save_int8", "load_int8", "is_int8_checkpoint"]

PRECISIONS = ("fp32", "bf16", "int8")


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
    """torch.ao's x86 defaults (per-channel symmetric int8 weights, uint8 activations) with min/max
    activation observers instead of its histogram ones (those took about a minute per calibration
    image of a detector on this 2-core machine, and matched fewer fp32 boxes on the test photo: 0.81
    vs 0.86), and the full 8-bit activation range where the CPU has VNNI (reduce_range guards
    against the int16 overflow of AVX2's u8*s8 multiply-add, which VNNI does not have)."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver

    default = get_default_qconfig_mapping("x86").global_qconfig
    qconfig = QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=not _vnni()),
                      weight=default.weight)
    return get_default_qconfig_mapping("x86").set_global(qconfig)


def _prepare_int8(model: nn.Module) -> dict[str, nn.Module]:
    """Fold, trace and insert observers into each part, in place; returns {path: observed part}."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    if next(model.parameters()).device.type != "cpu":
        raise ConfigError("TEST.PRECISION int8 runs on the CPU (x86 quantized kernels): set MODEL.DEVICE cpu, "
                          "or TEST.PRECISION bf16 on a GPU")
    model.eval()
    materialize_folds(model)
    torch.backends.quantized.engine = "x86"
    qconfig = _qconfig_mapping()
    example = {"backbone": torch.zeros(1, 3, 64, 64), "rpn.head": None, "roi_heads.box_head": None}
    observed = {}
    ctx = _quiet()
    try:
        for path, part in _int8_float_parts(model).items():
            part = _traced(part.eval())
            observed[path] = prepare_fx(part, qconfig, example_inputs=(example[path],))
            _set(model, path, PerLevelRPNHead(observed[path]) if path == "rpn.head" else observed[path])
    finally:
        ctx.__exit__(None, None, None)
    return observed


def _convert_int8(model: nn.Module, observed: dict[str, nn.Module], channels_last: bool) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    ctx = _quiet()
    try:
        for path, part in observed.items():
            q = convert_fx(part)
            _set(model, path, PerLevelRPNHead(q) if path == "rpn.head" else q)
    finally:
        ctx.__exit__(None, None, None)
    if channels_last:  # quantized convs run NHWC: quantize the batch in that layout once
        model.backbone.register_forward_pre_hook(
            lambda _, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:]))
    return model.eval()


def quantize_int8(model: nn.Module, batches: Iterable[list[dict]], channels_last: bool = True) -> nn.Module:
    """Post-training static INT8 quantization of the backbone (+FPN), RPN head and box head, in place:
    observers record the activations of `model(batch)` for each calibration batch (lists of input
    dicts, docs/CONTRACTS.md), then each part becomes its quantized twin. Returns the model (eval mode)."""
    observed = _prepare_int8(model)
    n = 0
    with torch.no_grad():
        for batch in batches:
            model(batch)
            n += len(batch)
    if n == 0:
        raise ConfigError("TEST.PRECISION int8: no calibration images (TEST.PRECISION_CALIB_IMAGES images of "
                          "DATASETS.TRAIN); give a data set with images or a calibrated checkpoint from "
                          "tools/quantize.py")
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
                 "meta": {**meta, "precision": "int8", "calibration": calibration}}, path)


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
