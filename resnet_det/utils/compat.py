"""The one gate for private PyTorch/torchvision internals that the fast paths call.

The fused residual blocks (modeling/fusion.py) call oneDNN's fused conv, torch.ops.mkldnn._convolution_pointwise
(and its .binary overload), on weights packed by torch._C._nn.mkldnn_reorder_conv2d_weight; both were added
for inductor in PyTorch 2.0 (pytorch PRs 86581, 86582, 88048, 88988). The gather RoIAlign
(modeling/detector/pooling.py) calls torchvision.ops.poolers' _filter_input, _setup_scales,
_multiscale_roi_align and _convert_to_roi_format, and reproduces torchvision's roi_align kernel.
Private means they can change without notice, so they are used only on the minor versions in
VERIFIED_VERSIONS (inclusive): the lower end is the package's own minimum (setup.py), the upper end the
newest stack the tests ran on. Elsewhere the public ops run (same outputs, slower), with one log line.
"""
from __future__ import annotations

import importlib
import logging

import torch
import torchvision

logger = logging.getLogger(__name__)

__all__ = ["VERIFIED_VERSIONS", "cpu_flags", "cpu_has_native_bf16", "private_internals_ok"]

VERIFIED_VERSIONS = {"torch": ((2, 5), (2, 14)), "torchvision": ((0, 20), (0, 29))}
_PRIVATE_NAMES = {"torchvision.ops.poolers": ("_filter_input", "_setup_scales", "_multiscale_roi_align",
                                              "_convert_to_roi_format", "LevelMapper"),
                  "torch._C._nn": ("mkldnn_reorder_conv2d_weight",)}
_verdict: bool | None = None


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _problem() -> str | None:
    """Why the private internals must not be used here, or None."""
    for lib, version in (("torch", torch.__version__), ("torchvision", torchvision.__version__)):
        lo, hi = VERIFIED_VERSIONS[lib]
        try:
            v = _minor(version)
        except ValueError:
            return f"{lib} {version} is not a release version"
        if not lo <= v <= hi:
            return (f"{lib} {version} is outside the versions whose private internals were checked "
                    f"({lo[0]}.{lo[1]} .. {hi[0]}.{hi[1]})")
    for where, names in _PRIVATE_NAMES.items():
        missing = [n for n in names if not hasattr(importlib.import_module(where), n)]
        if missing:
            return f"{where} has no {', '.join(missing)}"
    return None


def private_internals_ok() -> bool:
    """Whether the fast paths may call the private internals above; decided once per process. Where
    not, the fused blocks run unfused and POOLER_IMPL "gather" uses torchvision's MultiScaleRoIAlign."""
    global _verdict
    if _verdict is None:
        problem = _problem()
        if problem:
            logger.warning("Fast path: %s; residual blocks run unfused and RoIAlign is torchvision's (same "
                           "outputs, slower on CPU)", problem)
        _verdict = problem is None
    return _verdict


def cpu_flags() -> set[str]:
    """The CPU's feature flags as lscpu shows them (/proc/cpuinfo); empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.split(":", 1)[-1].split())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix math natively (AVX512_BF16 or AMX-BF16), so TEST.PRECISION
    bf16 is faster than float32. torch.cpu's capability checks (the ones inductor uses) decide; the
    CPU's flags (/proc/cpuinfo, as lscpu shows them) where this PyTorch lacks them. Not
    torch.ops.mkldnn._is_mkldnn_bf16_supported: that is true on any AVX512 CPU, where oneDNN emulates
    bf16 (slower than float32)."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(c is not None for c in checks):
        try:
            return any(c() for c in checks)
        except RuntimeError:
            pass
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
