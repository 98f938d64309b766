"""RoIAlign on CPU as one weighted gather of channel vectors: torchvision's sampling, ``embedding_bag``'s kernel.

torchvision's CPU ``roi_align`` kernels loop over RoIs, channels and bins in one thread on NCHW maps: on
the 2-core CPU they were ~22% of R50-FPN inference and ~28% of a training step, and the backward alone
~0.6 s for 1000 RoIs on P2 (benchmarks/RESULTS.md). But RoIAlign is linear in the features: output
(RoI, bin, channel) is a weighted sum of ``4 * samples`` feature pixels of that channel, and which pixels
and weights depends only on the box, never on the channel. So ``FastMultiScaleRoIAlign``

1. computes, per (RoI, bin), the pixel indices and bilinear weights with the same float32 expressions as
   torchvision's kernel (sample positions, the out-of-map test, clamping at the border, ``aligned``,
   fixed or adaptive ``sampling_ratio``), for all RoIs at once;
2. views every pyramid level as rows of one (pixels, channels) table (free for channels_last maps, one
   copy per level otherwise);
3. lets ``F.embedding_bag(mode="sum", per_sample_weights=...)`` gather and sum the channel rows of each
   bin: vectorised over channels, multi-threaded, and its backward is an index-add of rows.

The result equals torchvision's ``MultiScaleRoIAlign`` within float rounding (the sums use fused
multiply-adds and 1/count is folded into the weights): about 1e-7 relative, features and gradients
(tests/test_pooling.py, torchvision as the oracle). It comes out channels_last-strided (RoI, C, h, w),
which the box heads read without a copy (``FCHead`` permutes its fc6 weight instead).

It falls back to torchvision's path on GPUs (their kernels are already parallel), for dtypes other than
float32/float64, under autocast, and under tracing, scripting, ``torch.compile`` and ONNX export (which
must record torchvision's op). Switch: MODEL.ROI_BOX_HEAD.POOLER_IMPL "gather"; off by itself where
torchvision's private pooler functions are not to be used (``utils.compat.private_internals_ok``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, box_area, roi_align

try:  # private: build_box_pooler picks this module's class only where utils.compat.private_internals_ok()
    from torchvision.ops.poolers import (LevelMapper, _convert_to_roi_format, _filter_input, _multiscale_roi_align,
                                         _setup_scales)
except ImportError:
    pass

__all__ = ["Detectron2LevelMapper", "FastMultiScaleRoIAlign", "roi_align_gather"]


def _feature_table(features: list[Tensor]) -> tuple[Tensor, list[int]]:
    """All levels as rows of one (sum of N*H*W, C) table, channels last; and each level's first row."""
    starts, n = [], 0
    for f in features:
        starts.append(n)
        n += f.shape[0] * f.shape[2] * f.shape[3]
    f0 = features[0]
    if len(features) == 1 and f0.is_contiguous(memory_format=torch.channels_last):
        return f0.permute(0, 2, 3, 1).reshape(n, f0.shape[1]), starts  # a view
    table = f0.new_empty((n, f0.shape[1]))
    for f, start in zip(features, starts):
        b, c, h, w = f.shape
        rows = table[start:start + b * h * w].view(b, h * w, c)
        if f.is_contiguous(memory_format=torch.channels_last):
            rows.copy_(f.permute(0, 2, 3, 1).reshape(b, h * w, c))
        else:  # one (C, H*W) -> (H*W, C) transpose per image: PyTorch's blocked transpose copy
            for i in range(b):
                rows[i].copy_(f[i].reshape(c, h * w).t())
    return table, starts


def _axis_taps(start: Tensor, bin_size: Tensor, size: Tensor, pooled: int, grid: int):
    """Sample positions along one axis, (R, pooled, grid), and their two taps and weights, exactly as
    torchvision's ``pre_calc_for_bilinear_interpolate`` (roi_align_kernel.cpp) computes them."""
    dtype = start.dtype
    p = torch.arange(pooled, dtype=dtype).view(1, -1, 1)
    i = torch.arange(grid, dtype=dtype).view(1, 1, -1)
    start, bin_size, size = start.view(-1, 1, 1), bin_size.view(-1, 1, 1), size.view(-1, 1, 1)
    coord = (start + p * bin_size) + ((i + 0.5) * bin_size) / grid
    outside = (coord < -1.0) | (coord > size)  # such a sample contributes 0
    coord = coord.clamp(min=0)
    lo = coord.to(torch.int64)  # truncation = floor for coord >= 0
    last = lo >= size - 1
    lo = torch.where(last, size - 1, lo)
    hi = torch.where(last, lo, lo + 1)
    frac = torch.where(last, torch.zeros((), dtype=dtype), coord - lo.to(dtype))
    return lo, hi, 1.0 - frac, frac, outside


def _roi_extent(rois: Tensor, scale: Tensor, aligned: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Start x, start y, width and height of each RoI on its map, as torchvision's kernel computes them."""
    offset = 0.5 if aligned else 0.0
    x0, y0 = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    rw, rh = rois[:, 3] * scale - offset - x0, rois[:, 4] * scale - offset - y0
    if not aligned:  # force malformed RoIs to be 1x1
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    return x0, y0, rw, rh


def _bags(rois: Tensor, level_rows: Tensor, sizes: Tensor, scale: Tensor, output_size: tuple[int, int],
          grid: tuple[int, int], aligned: bool) -> tuple[Tensor, Tensor]:
    """Table rows and weights of every (RoI, bin) for one sampling grid: two (R * ph * pw, 4 * samples)
    tensors, in torchvision's summation order (grid rows, grid columns, then the 4 bilinear taps)."""
    ph, pw = output_size
    gh, gw = grid
    x0, y0, rw, rh = _roi_extent(rois, scale, aligned)
    height, width = sizes[:, 0], sizes[:, 1]
    ylo, yhi, yh, yl, yout = _axis_taps(y0, rh / ph, height, ph, gh)  # (R, ph, gh)
    xlo, xhi, xh, xl, xout = _axis_taps(x0, rw / pw, width, pw, gw)  # (R, pw, gw)

    def ys(t):  # (R, ph, gh) -> (R, ph, 1, gh, 1)
        return t[:, :, None, :, None]

    def xs(t):  # (R, pw, gw) -> (R, 1, pw, 1, gw)
        return t[:, None, :, None, :]

    base = level_rows.view(-1, 1, 1, 1, 1)
    row_lo, row_hi = base + ys(ylo) * width.view(-1, 1, 1, 1, 1), base + ys(yhi) * width.view(-1, 1, 1, 1, 1)
    index = torch.stack(torch.broadcast_tensors(row_lo + xs(xlo), row_lo + xs(xhi), row_hi + xs(xlo),
                                                row_hi + xs(xhi)), dim=-1)
    weight = torch.stack(torch.broadcast_tensors(ys(yh) * xs(xh), ys(yh) * xs(xl), ys(yl) * xs(xh),
                                                 ys(yl) * xs(xl)), dim=-1)
    inside = ~(ys(yout) | xs(xout))
    weight = torch.where(inside.unsqueeze(-1), weight, torch.zeros((), dtype=weight.dtype)) / max(gh * gw, 1)
    bags = len(rois) * ph * pw
    return index.reshape(bags, -1), weight.reshape(bags, -1)


def roi_align_gather(features: list[Tensor], rois: Tensor, levels: Tensor, scales: list[float],
                     output_size: tuple[int, int], sampling_ratio: int, aligned: bool = False) -> Tensor:
    """torchvision's ``roi_align`` of each RoI (``[batch_index, x1, y1, x2, y2]``) on its level's map,
    as a weighted gather; (R, C, h, w), channels_last-strided. Differentiable in ``features``."""
    ph, pw = output_size
    table, starts = _feature_table(features)
    if len(rois) == 0:
        return table.new_zeros((0, ph, pw, table.shape[1])).permute(0, 3, 1, 2)
    with torch.no_grad():  # where to sample depends on the boxes only; no gradient reaches them
        dims = torch.tensor([f.shape[2:] for f in features], dtype=torch.int64)
        sizes = dims[levels]  # (R, 2): height, width of each RoI's map
        level_rows = torch.tensor(starts, dtype=torch.int64)[levels] + rois[:, 0].to(torch.int64) * sizes.prod(1)
        scale = torch.tensor(scales, dtype=rois.dtype)[levels]
        if sampling_ratio > 0:
            groups = [((sampling_ratio, sampling_ratio), None)]  # None: every RoI
        else:  # adaptive: ceil(roi size / output size) samples per bin and axis, one sampling grid per group
            _, _, rw, rh = _roi_extent(rois, scale, aligned)
            grids = torch.stack([torch.ceil(rh / ph), torch.ceil(rw / pw)], 1).clamp(min=0).to(torch.int64)
            keys, inverse = torch.unique(grids, dim=0, return_inverse=True)
            groups = [(tuple(k), torch.nonzero(inverse == i).flatten()) for i, k in enumerate(keys.tolist())]
        # One embedding_bag over all groups (one backward pass): bags of group after group.
        indices, weights, bag_sizes = [], [], []
        for (gh, gw), idx in groups:
            per_roi = [rois, level_rows, sizes, scale] if idx is None else [rois[idx], level_rows[idx], sizes[idx],
                                                                            scale[idx]]
            bag_sizes.append(torch.full((len(per_roi[0]) * ph * pw,), 4 * gh * gw, dtype=torch.int64))
            if gh * gw > 0:  # an empty RoI (aligned=True) has no samples: zeros, like torchvision
                index, weight = _bags(*per_roi, output_size, (gh, gw), aligned)
                indices.append(index.flatten())
                weights.append(weight.flatten())
        sizes_flat = torch.cat(bag_sizes)
        offsets = torch.cumsum(sizes_flat, 0) - sizes_flat
        index = torch.cat(indices) if indices else sizes_flat.new_zeros(0)
        weight = torch.cat(weights).to(table.dtype) if weights else table.new_zeros(0)
    out = F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weight)
    out = out.view(len(rois), ph, pw, table.shape[1])
    if len(groups) > 1:  # from group order back to RoI order
        out = out.index_select(0, torch.argsort(torch.cat([idx for _, idx in groups])))
    return out.permute(0, 3, 1, 2)


class Detectron2LevelMapper(LevelMapper):
    """FPN's level of each box as detectron2's assign_boxes_to_levels (modeling/poolers.py) computes it:
    floor(4 + log2(sqrt(area) / 224 + 1e-8)); torchvision adds its 1e-6 outside the log."""

    def __call__(self, boxlists: list[Tensor]) -> Tensor:
        s = torch.sqrt(torch.cat([box_area(b) for b in boxlists]))
        levels = torch.floor(self.lvl0 + torch.log2(s / self.s0 + 1e-8))
        return levels.clamp(min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same arguments, level mapping and scales) that pools on
    CPU with ``roi_align_gather``; see the module docstring.

    Beyond torchvision's arguments: ``aligned`` (RoIAlign with the half-pixel shift, detectron2's
    ROIAlignV2), ``gather=False`` (always torchvision's kernels), and ``strides`` (the maps' strides:
    scales 1/stride as detectron2's ROIPooler, instead of inferring them from the map sizes) with
    ``level_mapping="detectron2"`` (``Detectron2LevelMapper``).
    """

    def __init__(self, featmap_names: list[str], output_size, sampling_ratio: int, *, aligned: bool = False,
                 gather: bool = True, strides: list[int] | None = None, level_mapping: str = "torchvision"):
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.aligned, self.gather = aligned, gather
        if level_mapping not in ("torchvision", "detectron2"):
            raise ValueError(f"MODEL.ROI_BOX_HEAD.POOLER_LEVEL_MAPPING={level_mapping!r}: expected "
                             "'torchvision' or 'detectron2'")
        if level_mapping == "detectron2" and strides is None:
            raise ValueError("level_mapping='detectron2' needs the maps' strides")
        if strides is not None:
            self.scales = [1.0 / s for s in strides]
            k_min, k_max = int(math.log2(strides[0])), int(math.log2(strides[-1]))
            mapper = Detectron2LevelMapper if level_mapping == "detectron2" else LevelMapper
            self.map_levels = mapper(k_min, k_max, self.canonical_scale, self.canonical_level)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        x_filtered = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(x_filtered, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        if not torch.jit.is_scripting() and self.gather and self._use_gather(x_filtered):
            return self._gather_forward(x_filtered, boxes)
        if self.aligned:  # torchvision's _multiscale_roi_align has no `aligned`
            return self._per_level_forward(x_filtered, boxes)
        return _multiscale_roi_align(x_filtered, boxes, self.output_size, self.sampling_ratio, self.scales,
                                     self.map_levels)

    def _per_level_forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """torchvision's roi_align per level (its kernels: GPU, autocast, export)."""
        rois = _convert_to_roi_format(boxes)
        size = tuple(self.output_size)
        if len(features) == 1:
            return roi_align(features[0], rois, size, self.scales[0], self.sampling_ratio, self.aligned)
        levels = self.map_levels(boxes)
        out = features[0].new_zeros((len(rois), features[0].shape[1]) + size)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            out[idx] = roi_align(feature, rois[idx], size, scale, self.sampling_ratio, self.aligned).to(out.dtype)
        return out

    @torch.jit.unused
    def _use_gather(self, features: list[Tensor]) -> bool:
        f = features[0]
        return not (f.device.type != "cpu" or f.dtype not in (torch.float32, torch.float64) or f.is_quantized
                    or torch.is_autocast_enabled("cpu") or torch.jit.is_tracing()
                    or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export())

    @torch.jit.unused
    def _gather_forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            levels = torch.zeros(len(rois), dtype=torch.int64)
        else:
            levels = self.map_levels(boxes).to(torch.int64)
        size = tuple(self.output_size)
        return roi_align_gather(features, rois, levels, list(self.scales), size, self.sampling_ratio, self.aligned)
