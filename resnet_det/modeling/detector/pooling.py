"""RoIAlign over FPN levels on all CPU threads: torchvision's own kernels, run on chunks of RoIs at once.

torchvision's CPU ``roi_align`` forward and backward kernels loop over RoIs in one thread. On the
2-core CPU they were ~22% of R50-FPN inference and ~28% of a training step (benchmarks/RESULTS.md),
with the second core idle. ``ParallelMultiScaleRoIAlign`` maps RoIs to levels exactly as
torchvision's ``MultiScaleRoIAlign`` does (same ``LevelMapper``, same scales), splits the (level, RoI)
pairs into one chunk per thread of about equal sampling cost, and runs torchvision's forward and
backward kernels on the chunks in a thread pool (the ops release the GIL). Every RoI goes through the
same kernel with the same arguments, so the pooled features are bitwise those of torchvision; feature
gradients are the per-chunk gradients summed, equal up to float summation order.

It falls back to torchvision's path where that is as good or required: on GPUs (their kernels are
already parallel), with one thread, few RoIs, autocast or non-float inputs, and under tracing,
scripting, ``torch.compile`` and ONNX export. Switch: MODEL.PARALLEL_ROI_ALIGN.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _multiscale_roi_align, _setup_scales

__all__ = ["ParallelMultiScaleRoIAlign"]

MIN_ROIS = 32  # below this, thread hand-off costs more than it saves
_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)


def _executor(workers: int) -> ThreadPoolExecutor:
    """One pool per process (a forked DataLoader worker or DDP child must not reuse the parent's)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
            _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="roi_align"))
        return _pool[2]


def _run_parallel(fn, chunks: list) -> list:
    """fn(chunk) for every chunk, the first in the calling thread and the rest in the pool."""
    if len(chunks) == 1:  # e.g. one RoI carrying nearly all the sampling work
        return [fn(chunks[0])]
    futures = [_executor(len(chunks) - 1).submit(fn, c) for c in chunks[1:]]
    first = fn(chunks[0])
    return [first] + [f.result() for f in futures]


def _nchw(x: Tensor) -> Tensor:
    """``x.contiguous()``; from channels_last as one (H*W, C) -> (C, H*W) matrix transpose per image,
    which PyTorch's blocked transpose copy does several times faster than the generic strided copy."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    n, c, h, w = x.shape
    out = x.new_empty((n, c, h, w))
    for i in range(n):
        out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out


def _chunks(rois: Tensor, levels: Tensor, scales: list[float], output_size: tuple[int, int],
            sampling_ratio: int, parts: int) -> list[list[tuple[int, Tensor]]]:
    """Split RoIs, grouped by level, into `parts` runs of about equal sampling work; each run is a
    list of (level, RoI indices) segments."""
    order = torch.argsort(levels, stable=True)
    if sampling_ratio > 0:
        cost = torch.ones(len(order), dtype=torch.float64)
    else:  # adaptive sampling: ceil(roi size / bin size) points per bin along each axis
        scale = torch.tensor(scales, dtype=torch.float64)[levels[order]]
        r = rois[order].double()
        h = ((r[:, 4] - r[:, 2]) * scale).clamp(min=1) / output_size[0]
        w = ((r[:, 3] - r[:, 1]) * scale).clamp(min=1) / output_size[1]
        cost = h.ceil() * w.ceil()
    cum = torch.cat([cost.new_zeros(1), cost.cumsum(0)])  # cum[i]: work of the first i RoIs
    targets = cum[-1] * torch.arange(1, parts, dtype=torch.float64) / parts
    hi = torch.searchsorted(cum, targets).clamp(max=len(order))  # first edge with cum >= target
    closer = (cum[hi] - targets) <= (targets - cum[(hi - 1).clamp(min=0)])  # or the edge just before
    edges = sorted({0, *torch.where(closer, hi, hi - 1).clamp(min=0).tolist(), len(order)})
    sorted_levels = levels[order]
    runs = []
    for a, b in zip(edges[:-1], edges[1:]):
        lv = sorted_levels[a:b]
        cuts = [a] + (a + torch.nonzero(lv[1:] != lv[:-1]).flatten() + 1).tolist() + [b]
        runs.append([(int(sorted_levels[s]), order[s:e]) for s, e in zip(cuts[:-1], cuts[1:])])
    return runs


class _ParallelRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rois, levels, scales, output_size, sampling_ratio, parts, *features):
        features = [_nchw(f) for f in features]  # the kernel would copy a channels_last map per call
        runs = _chunks(rois, levels, scales, output_size, sampling_ratio, parts)
        ph, pw = output_size
        result = features[0].new_empty((len(rois), features[0].shape[1], ph, pw))

        inference = torch.is_inference_mode_enabled()  # grad modes are per thread: carry the caller's

        def pool(run):
            with torch.inference_mode(inference), torch.no_grad():
                for level, idx in run:
                    out = torch.ops.torchvision.roi_align(features[level], rois.index_select(0, idx), scales[level],
                                                          ph, pw, sampling_ratio, False)
                    result.index_copy_(0, idx, out)  # disjoint rows per segment

        _run_parallel(pool, runs)
        ctx.save_for_backward(rois)
        ctx.runs, ctx.scales, ctx.output_size, ctx.sampling_ratio = runs, scales, output_size, sampling_ratio
        ctx.shapes = [f.shape for f in features]
        ctx.needs = ctx.needs_input_grad[6:]
        return result

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        grad, (ph, pw) = grad.contiguous(), ctx.output_size

        def unpool(run):
            with torch.no_grad():
                return [(level, torch.ops.torchvision._roi_align_backward(
                    grad.index_select(0, idx), rois.index_select(0, idx), ctx.scales[level], ph, pw,
                    *ctx.shapes[level], ctx.sampling_ratio, False)) for level, idx in run if ctx.needs[level]]

        grads = [None] * len(ctx.shapes)
        for parts in _run_parallel(unpool, ctx.runs):
            for level, g in parts:
                grads[level] = g if grads[level] is None else grads[level] + g
        for level, needed in enumerate(ctx.needs):  # a level without RoIs still gets a zero gradient
            if needed and grads[level] is None:
                grads[level] = grad.new_zeros(ctx.shapes[level])
        return (None,) * 6 + tuple(grads)


class ParallelMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same arguments, levels, scales and results) whose CPU
    kernels run on all ``torch.get_num_threads()`` threads; see the module docstring."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        x_filtered = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(x_filtered, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        if not torch.jit.is_scripting():
            parts = self._parallel_parts(x_filtered, boxes)
            if parts > 1:
                return self._parallel_forward(x_filtered, boxes, parts)
        return _multiscale_roi_align(x_filtered, boxes, self.output_size, self.sampling_ratio, self.scales,
                                     self.map_levels)

    @torch.jit.unused
    def _parallel_parts(self, features: list[Tensor], boxes: list[Tensor]) -> int:
        f = features[0]
        if (f.device.type != "cpu" or f.dtype not in (torch.float32, torch.float64) or f.is_quantized
                or torch.is_autocast_enabled("cpu") or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or torch.onnx.is_in_onnx_export()):
            return 1
        rois = sum(len(b) for b in boxes)
        return min(torch.get_num_threads(), math.ceil(rois / MIN_ROIS)) if rois >= 2 * MIN_ROIS else 1

    @torch.jit.unused
    def _parallel_forward(self, features: list[Tensor], boxes: list[Tensor], parts: int) -> Tensor:
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            levels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        else:
            levels = self.map_levels(boxes)
        return _ParallelRoIAlign.apply(rois, levels, list(self.scales), tuple(self.output_size), self.sampling_ratio,
                                       parts, *features)
