"""Speed-ups that keep a model's function: each is a switch, each is tested for equal outputs.

- ``fold_frozen_bn``: a FrozenBN (or an eval-mode BN) after a conv is an affine map per channel,
  y = x * s + t, so conv(x, W) * s + t = conv(x, W * s) + t. The folded conv does one pass over the
  activations instead of three (conv, multiply, add) and, in training, gradients still reach W
  through the product W * s. Parameter and buffer names are untouched, so checkpoints load as before.
- ``fold_frozen_bn`` also lets residual blocks run, where no gradient is needed on a CPU with NHWC
  float32 activations, each folded conv with its ReLU (and the residual addition) as one oneDNN call
  (``FusedBottleneck``, ``FusedBasicBlock``): the blocks' own values (bit for bit where measured)
  without the extra passes over the activations and without reordering the weights on every call.
- ``to_channels_last``: NHWC activations (oneDNN on CPU and cuDNN on GPU prefer them for convs).
- ``compile_backbone``: ``torch.compile`` of the backbone in place (state_dict keys unchanged).
- ``apply_fast_path(model, cfg)``: all of the above as MODEL.FUSE_FROZEN_BN / CHANNELS_LAST /
  COMPILE ask; ``configure_backends(cfg)`` sets cudnn.benchmark (CUDNN_BENCHMARK).
- ``DeviceMeter``: averages losses on the device so a training loop syncs once per log period.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .backbone.blocks import BasicBlock, Bottleneck

logger = logging.getLogger(__name__)

__all__ = ["fold_frozen_bn", "unfold_frozen_bn", "FoldedConv2d", "FusedBottleneck", "FusedBasicBlock",
           "to_channels_last", "compile_backbone", "apply_fast_path", "configure_backends", "DeviceMeter",
           "version_key"]


def _norm_is_folded(norm: nn.Module) -> bool:
    """FrozenBN always folds; a BatchNorm2d only in eval mode (training uses batch statistics)."""
    return isinstance(norm, FrozenBatchNorm2d) or not norm.training


class _FoldedNormMixin:
    """The norm half of a folded pair: the identity while its conv applies the affine map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _norm_is_folded(self):
            return x
        return super().forward(x)


class FoldedFrozenBatchNorm2d(_FoldedNormMixin, FrozenBatchNorm2d):
    pass


class FoldedBatchNorm2d(_FoldedNormMixin, nn.BatchNorm2d):
    pass


_FOLDED_NORM = {FrozenBatchNorm2d: FoldedFrozenBatchNorm2d, nn.BatchNorm2d: FoldedBatchNorm2d}


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def version_key(tensors) -> tuple | None:
    """Identifies the values of `tensors` for a cache of something computed from them: storage, version
    counter (bumped by every in-place change), dtype and device. None for inference tensors (no
    version counter), which must not be cached on."""
    try:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
    except RuntimeError:
        return None


class FoldedConv2d(nn.Conv2d):
    """A conv that applies the following norm's affine map through its weights and bias.

    The norm stays registered where it was (its state_dict keys and buffers are unchanged) and is
    read on every call, so loading weights after folding is correct. When no gradient is needed
    (inference, or frozen stages in training) the folded weights are cached and recomputed only when
    a weight or statistic changes (tensor version counters) or moves (device, dtype, storage).
    """

    _fold_norm: nn.Module
    _fold_cache: tuple | None
    _packed_cache: tuple | None

    def _fold_sources(self) -> list[torch.Tensor]:
        n = self._fold_norm
        # BN's kernel updates running statistics without bumping their version counters, but each
        # training step bumps num_batches_tracked (and `train()` below drops the cache as well).
        tracked = getattr(n, "num_batches_tracked", None)
        return [t for t in (self.weight, self.bias, n.weight, n.bias, n.running_mean, n.running_var, tracked)
                if t is not None]

    def train(self, mode: bool = True):
        self._fold_cache = None  # statistics may change while training; rebuild on the next eval call
        self._packed_cache = None
        return super().train(mode)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_packed_cache"] = None  # oneDNN's opaque tensors neither deepcopy nor pickle
        return state

    def _compute_fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._fold_norm
        inv_std = torch.rsqrt(n.running_var + n.eps)  # the expression FrozenBatchNorm2d uses
        scale = inv_std if n.weight is None else n.weight * inv_std
        shift = -n.running_mean * scale
        if n.bias is not None:
            shift = shift + n.bias
        if self.bias is not None:
            shift = shift + self.bias * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype)
        return weight, shift.to(self.weight.dtype)

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        sources = self._fold_sources()
        if _tracing() or (torch.is_grad_enabled() and any(t.requires_grad for t in sources)):
            return self._compute_fold()  # gradients flow to W (and to a trainable norm) through W * s
        key = version_key(sources)
        if key is None:  # inference tensors have no version counter: do not cache
            return self._compute_fold()
        if self._fold_cache is None or self._fold_cache[0] != key:
            # Normal (not inference-mode) tensors, so a frozen stage can reuse them in training.
            with torch.inference_mode(False), torch.no_grad():
                self._fold_cache = (key, *self._compute_fold())
        return self._fold_cache[1], self._fold_cache[2]

    def onednn_weight_and_bias(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded weight, reordered once into oneDNN's blocked layout for inputs shaped like `x`
        (as inductor's freezing does) while the folded weights are cached; else as they are."""
        weight, bias = self.folded_weight_and_bias()
        if self._fold_cache is None or self._fold_cache[1] is not weight:
            return weight, bias
        key = (self._fold_cache[0], tuple(x.shape))
        if self._packed_cache is None or self._packed_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                    list(x.shape))
            self._packed_cache = (key, packed)
        return self._packed_cache[1], bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _norm_is_folded(self._fold_norm):
            return super().forward(x)
        weight, bias = self.folded_weight_and_bias()
        return self._conv_forward(x, weight, bias)


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or type(norm) not in _FOLDED_NORM:
        return False
    if isinstance(norm, nn.BatchNorm2d) and not norm.track_running_stats:
        return False  # eval-mode BN without running statistics normalises by the batch: not affine
    return conv.out_channels == norm.weight.shape[0]


def _conv_norm_pairs(module: nn.Module):
    """(conv, norm) pairs where the conv's output feeds only the norm, by the names our blocks use.

    ResNet stems and blocks call `bnK(convK(x))` (torchvision's names, STYLE.md); a shortcut is
    `Sequential(conv, norm)`. Modules laid out differently are left alone.
    """
    for parent in module.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            items = list(children.values())
            yield from ((parent, str(i), a, b) for i, (a, b) in enumerate(zip(items, items[1:]))
                        if _foldable(a, b))
            continue
        for name, conv in children.items():
            if name.startswith("conv") and name[4:].isdigit():
                norm = children.get("bn" + name[4:])
                if norm is not None and _foldable(conv, norm):
                    yield parent, name, conv, norm


def _pointwise_conv_op():
    """oneDNN's fused conv + post-op kernel (what inductor's CPU backend calls), or None where this
    PyTorch build has no oneDNN."""
    try:
        return torch.ops.mkldnn._convolution_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_POINTWISE_CONV = _pointwise_conv_op()


def _conv_relu(conv: FoldedConv2d, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """relu(conv(x) [+ residual]) of a folded conv in one oneDNN call."""
    weight, bias = conv.onednn_weight_and_bias(x)
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if residual is None:
        return _POINTWISE_CONV(x, weight, bias, *args, "relu", [None], "")
    return _POINTWISE_CONV.binary(x, residual, weight, bias, *args, "add", None, "relu", [None], "")


class _FusedBlockMixin:
    """A residual block whose folded convs run with their ReLU (and the residual addition) fused, where
    that computes the same values as the block's own forward: CPU with oneDNN enabled, float32 NHWC
    input, no gradient needed, no autocast, not tracing, no hooks on the block's parts (they would not
    fire); anywhere else the block's own forward runs."""

    def _fusable(self, x: torch.Tensor) -> bool:
        if (_POINTWISE_CONV is None or not torch.backends.mkldnn.enabled or type(x) is not torch.Tensor
                or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or x.numel() == 0
                or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()
                or _tracing() or torch.is_autocast_enabled("cpu")):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        children = dict(self.named_children())
        if any(m._forward_hooks or m._forward_pre_hooks for m in children.values()):
            return False
        return all(isinstance(c, FoldedConv2d) and _norm_is_folded(c._fold_norm) and c.padding_mode == "zeros"
                   and not isinstance(c.padding, str) for n, c in children.items() if n.startswith("conv"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fusable(x):
            return super().forward(x)
        convs = [m for n, m in sorted(self.named_children()) if n.startswith("conv")]
        out = x
        for conv in convs[:-1]:
            out = _conv_relu(conv, out)
        # The shortcut (a projection is a folded conv + identity norm) runs as usual; the last conv
        # adds it and applies the ReLU in its epilogue: relu(F(x) + shortcut(x)), Eq. (1)/(2).
        return _conv_relu(convs[-1], out, None if self.plain else self.downsample(x).contiguous(
            memory_format=torch.channels_last))


class FusedBottleneck(_FusedBlockMixin, Bottleneck):
    pass


class FusedBasicBlock(_FusedBlockMixin, BasicBlock):
    pass


_FUSED_BLOCK = {Bottleneck: FusedBottleneck, BasicBlock: FusedBasicBlock}


def fold_frozen_bn(module: nn.Module) -> int:
    """Fold every FrozenBN (and BatchNorm2d, when in eval mode) into the conv before it, in place.

    Parameters, buffers and their names stay as they are (the same tensor objects, so an optimizer
    built earlier keeps working); `unfold_frozen_bn` undoes it. Returns the number of pairs folded.

    Example::
        >>> net = ResNet(50, norm="FrozenBN").eval()
        >>> fold_frozen_bn(net)  # stem + 16 blocks x 3 + 4 projection shortcuts
        53
    """
    pairs = list(_conv_norm_pairs(module))
    for _, _, conv, norm in pairs:
        # Swapping to a subclass keeps every parameter, buffer and hook (torch.nn.utils.parametrize
        # does the same); the norm is referenced outside _modules so state_dict keys do not change.
        norm.__class__ = _FOLDED_NORM[type(norm)]
        conv.__class__ = FoldedConv2d
        object.__setattr__(conv, "_fold_norm", norm)
        object.__setattr__(conv, "_fold_cache", None)
        object.__setattr__(conv, "_packed_cache", None)
    for block in module.modules():
        if type(block) in _FUSED_BLOCK and isinstance(block.relu, nn.ReLU):
            block.__class__ = _FUSED_BLOCK[type(block)]
    return len(pairs)


def unfold_frozen_bn(module: nn.Module) -> int:
    """Undo `fold_frozen_bn`: plain convs and norms again. Returns the number of pairs restored."""
    count = 0
    for m in module.modules():
        if isinstance(m, FoldedConv2d):
            norm = m._fold_norm
            norm.__class__ = next(base for base, folded in _FOLDED_NORM.items() if isinstance(norm, folded))
            m.__class__ = nn.Conv2d
            del m._fold_norm, m._fold_cache, m._packed_cache
            count += 1
        elif isinstance(m, _FusedBlockMixin):
            m.__class__ = next(base for base, fused in _FUSED_BLOCK.items() if isinstance(m, fused))
    return count


def to_channels_last(model: nn.Module) -> nn.Module:
    """4-D weights in NHWC and the backbone's input converted on entry, so every conv runs NHWC."""
    model = model.to(memory_format=torch.channels_last)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and not getattr(backbone, "_channels_last_hook", False):
        # The weights alone would switch oneDNN/cuDNN to NHWC at the first conv; converting the
        # (normalised, padded) batch here makes it explicit and independent of that heuristic.
        backbone.register_forward_pre_hook(
            lambda _, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:]))
        backbone._channels_last_hook = True
    return model


def compile_backbone(model: nn.Module, **compile_kwargs) -> nn.Module:
    """`torch.compile` the backbone in place (nn.Module.compile keeps the state_dict keys).

    The first calls at each new input shape are slow (compilation); multi-scale training reuses a
    dynamic-shape graph after the first recompilation.
    """
    target = getattr(model, "backbone", model)
    target.compile(**compile_kwargs)
    return model


def apply_fast_path(model: nn.Module, cfg) -> nn.Module:
    """Apply the speed-ups the config asks for: MODEL.FUSE_FROZEN_BN, MODEL.CHANNELS_LAST, MODEL.COMPILE.

    Call it after building the model; moving it to a device afterwards keeps all of them.
    """
    if cfg.MODEL.FUSE_FROZEN_BN:
        n = fold_frozen_bn(model)
        logger.info("Folded %d FrozenBN/BN layers into their convs (MODEL.FUSE_FROZEN_BN)", n)
    if cfg.MODEL.CHANNELS_LAST:
        model = to_channels_last(model)
    if cfg.MODEL.COMPILE:
        model = compile_backbone(model)
    return model


def configure_backends(cfg) -> None:
    """Process-wide switches: cudnn.benchmark (CUDNN_BENCHMARK) picks the fastest conv algorithms
    per input shape on GPU; with many distinct shapes (multi-scale training) the search can cost more
    than it saves, hence a switch."""
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)


class DeviceMeter:
    """Running sums of scalar tensors kept on their device: `add` never synchronises, `averages`
    does once. A training loop that calls `float(loss)` per step stalls the GPU every step."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: dict) -> None:
        for k, v in values.items():
            v = v.detach() if isinstance(v, torch.Tensor) else v
            self._sums[k] = self._sums[k] + v if k in self._sums else v
            self._counts[k] = self._counts.get(k, 0) + 1

    def averages(self) -> dict[str, float]:
        """Mean of each key since the last call (one device-to-host copy), then reset."""
        keys = list(self._sums)
        tensors = [k for k in keys if isinstance(self._sums[k], torch.Tensor)]
        host = {}
        if tensors:
            stacked = torch.stack([self._sums[k].float().reshape(()) for k in tensors]).cpu().tolist()
            host = dict(zip(tensors, stacked))
        out = {k: float(host.get(k, self._sums[k])) / self._counts[k] for k in keys}
        self._sums.clear()
        self._counts.clear()
        return out
