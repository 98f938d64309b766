"""A tensor computed from weights (a folded conv weight, a permuted fc weight), reused while those weights
still hold the values it was computed from.

The check is by value, not by version counter: each call compares the source tensors with copies taken
when the cached tensor was computed (one read of each source per call), so every change is seen, writes
through `.data` included, which no `_version` counter records. Both caches of the model use it: the
folded conv weights (modeling/fusion.py) and FCHead's fc6 weight in NHWC column order (detector/heads.py).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["WeightCache", "must_recompute", "same_values", "tracing"]


def tracing() -> bool:
    """Whether a graph is being recorded (jit trace, torch.compile, ONNX export)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def must_recompute(sources: list[torch.Tensor]) -> bool:
    """A value derived from `sources` is computed on every call, never cached, where a gradient must flow
    back to a source through it, or while tracing (the graph must read the weights, not a copy)."""
    return tracing() or (torch.is_grad_enabled() and any(t.requires_grad for t in sources))


def same_values(t: torch.Tensor, copy: torch.Tensor) -> bool:
    """Whether `t` still holds the values of `copy` (its clone), bit for bit. Dense tensors with the
    same strides compare as int64 words, about 1.5x faster than torch.equal on floats."""
    if t.shape != copy.shape or t.dtype != copy.dtype or t.device != copy.device:
        return False
    size = t.element_size()
    if (t.stride() == copy.stride() and (t.numel() * size) % 8 == 0 and (t.storage_offset() * size) % 8 == 0
            and (copy.storage_offset() * size) % 8 == 0
            and (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last))):
        return torch.equal(*(u.as_strided((u.numel(),), (1,)).view(torch.int64) for u in (t, copy)))
    return torch.equal(t, copy)


class WeightCache:
    """`get(sources, compute, key)`: `compute()`'s result, computed again only when a source changed value
    or `key` (e.g. an input shape) changed. Call it where `must_recompute(sources)` is False.

    Cached results are normal (not inference-mode) tensors computed without autograd, so a frozen stage
    can reuse them in training.
    """

    __slots__ = ("_entry",)

    def __init__(self):
        self._entry: tuple | None = None  # (key, copies of the sources, value)

    @property
    def value(self):
        """The cached result, or None when nothing is cached."""
        return None if self._entry is None else self._entry[2]

    def clear(self) -> None:
        self._entry = None

    def get(self, sources: list[torch.Tensor], compute: Callable, key=None):
        entry = self._entry
        if (entry is None or entry[0] != key or len(entry[1]) != len(sources)
                or not all(map(same_values, sources, entry[1]))):
            with torch.inference_mode(False), torch.no_grad():
                entry = self._entry = (key, [t.clone() for t in sources], compute())
        return entry[2]
