"""Inference-time fusion that keeps a model's function: conv + BN folding and fused residual blocks.

- ``fuse_conv_bn_relu`` (MODEL.FUSE_CONV_BN_RELU): a FrozenBN (or an eval-mode BN) after a conv is an
  affine map per channel, y = x * s + t, so conv(x, W) * s + t = conv(x, W * s) + t. The folded conv does
  one pass over the activations instead of three (conv, multiply, add) and, in training, gradients still
  reach W through the product W * s. Parameter and buffer names are untouched, so checkpoints load as before.
- Folding happens only where the dataflow is known (our stems, blocks and projection shortcuts), and a
  folded pair acts folded only while both halves are still where they were folded (replacing a norm,
  e.g. by ``convert_sync_batchnorm`` or freezing, turns the pair back into conv then norm).
- It also lets residual blocks run, where no gradient is needed on a CPU with NHWC float32 activations,
  each folded conv with its ReLU (and the residual addition) as one oneDNN call (``FusedBottleneck``,
  ``FusedBasicBlock``): the blocks' own values (bit for bit where measured) without the extra passes over
  the activations and without reordering the weights on every call. These calls use private PyTorch
  internals: ``utils.compat.private_internals_ok`` allows them only on the versions they were checked on,
  else the blocks run unfused (logged once).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from ..utils.compat import private_internals_ok
from .backbone.blocks import BasicBlock, Bottleneck
from .backbone.cifar import CifarResNet
from .backbone.resnet import ResNet
from .weight_cache import WeightCache, must_recompute, tracing

__all__ = ["fuse_conv_bn_relu", "unfuse_conv_bn_relu", "materialize_folds", "FoldedConv2d", "FusedBottleneck", "FusedBasicBlock"]


def _norm_is_folded(norm: nn.Module) -> bool:
    """FrozenBN always folds; a BatchNorm2d only in eval mode (training uses batch statistics)."""
    return isinstance(norm, FrozenBatchNorm2d) or not norm.training


class _FoldLink:
    """Where a folded (conv, norm) pair lives. Both halves act folded only while both are still the
    parent's children under their names: a module swapped in later (convert_sync_batchnorm, BN ->
    FrozenBN when freezing, a user's new conv) must meet a plain partner, never a norm applied twice
    or not at all. A copy of a model copies its links along (deepcopy/pickle follow the references)."""

    def __init__(self, parent: nn.Module, conv_name: str, norm_name: str, conv: nn.Module, norm: nn.Module):
        self.parent, self.conv_name, self.norm_name, self.conv, self.norm = parent, conv_name, norm_name, conv, norm

    def intact(self) -> bool:
        children = self.parent._modules
        return children.get(self.conv_name) is self.conv and children.get(self.norm_name) is self.norm

    def active(self) -> bool:
        return self.intact() and _norm_is_folded(self.norm)


class _FoldedNormMixin:
    """The norm half of a folded pair: the identity while its conv applies the affine map."""

    _fold_link: _FoldLink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fold_link.active():
            return x
        return super().forward(x)


class FoldedFrozenBatchNorm2d(_FoldedNormMixin, FrozenBatchNorm2d):
    pass


class FoldedBatchNorm2d(_FoldedNormMixin, nn.BatchNorm2d):
    pass


_FOLDED_NORM = {FrozenBatchNorm2d: FoldedFrozenBatchNorm2d, nn.BatchNorm2d: FoldedBatchNorm2d}


class FoldedConv2d(nn.Conv2d):
    """A conv that applies the following norm's affine map through its weights and bias.

    The norm stays registered where it was (its state_dict keys and buffers are unchanged) and is
    read on every call, so loading weights after folding is correct. When no gradient is needed
    (inference, or frozen stages in training) the folded weights are cached in a `WeightCache`, which
    sees every change of the conv's or the norm's tensors, writes through `.data` included.
    """

    _fold_link: _FoldLink
    _fold_cache: WeightCache
    _packed_cache: tuple | None

    @property
    def _fold_norm(self) -> nn.Module:
        return self._fold_link.norm

    def _fold_sources(self) -> list[torch.Tensor]:
        n = self._fold_norm
        return [t for t in (n.running_var, n.running_mean, n.weight, n.bias, self.bias, self.weight)
                if t is not None]  # small ones first: a changed statistic is found before reading W

    def train(self, mode: bool = True):
        self._fold_cache.clear()  # statistics may change while training; rebuild on the next eval call
        self._packed_cache = None
        return super().train(mode)

    def __getstate__(self):
        state = dict(super().__getstate__())
        # oneDNN's opaque tensors neither deepcopy nor pickle; the fold is rebuilt on the first call.
        state["_fold_cache"], state["_packed_cache"] = WeightCache(), None
        return state

    def _fold_with_grad(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Ours, not fuse_conv_bn_weights: that returns new nn.Parameters, detached from W and the norm,
        # and here gradients must reach W (and a trainable eval-mode norm) through W * s.
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

    def _fold_no_grad(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._fold_norm
        weight, bias = fuse_conv_bn_weights(self.weight, self.bias, n.running_mean, n.running_var, n.eps,
                                            n.weight, n.bias)
        return weight.detach(), bias.detach()  # plain tensors: the Parameters it returns could collect grads

    def folded_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        sources = self._fold_sources()
        if must_recompute(sources):
            return self._fold_with_grad()
        return self._fold_cache.get(sources, self._fold_no_grad)

    def onednn_weight_and_bias(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded weight, reordered once into oneDNN's blocked layout for inputs shaped like `x`
        (as inductor's freezing does) while the folded weights are cached; else as they are."""
        weight, bias = self.folded_weight_and_bias()
        cached = self._fold_cache.value
        if cached is None or cached[0] is not weight:
            return weight, bias
        if self._packed_cache is None or self._packed_cache[0] is not cached or self._packed_cache[1] != x.shape:
            with torch.inference_mode(False), torch.no_grad():
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                    list(x.shape))
            self._packed_cache = (cached, x.shape, packed)
        return self._packed_cache[2], bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fold_link.active():
            if self._fold_cache.value is not None:  # free the memory of a pair that may be gone for good
                self._fold_cache.clear()
                self._packed_cache = None
            return super().forward(x)
        weight, bias = self.folded_weight_and_bias()
        return self._conv_forward(x, weight, bias)


_UNFOLDED = {FoldedConv2d: nn.Conv2d, **{folded: base for base, folded in _FOLDED_NORM.items()}}


def _unfolded_type(module: nn.Module) -> type | None:
    """The plain class of a conv or norm that is free to fold: plain, or left behind by a broken pair."""
    link = getattr(module, "_fold_link", None)
    if link is None:
        return type(module)
    return None if link.intact() else _UNFOLDED[type(module)]


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if _unfolded_type(conv) is not nn.Conv2d or _unfolded_type(norm) not in _FOLDED_NORM:
        return False
    if isinstance(norm, nn.BatchNorm2d) and not norm.track_running_stats:
        return False  # eval-mode BN without running statistics normalises by the batch: not affine
    return conv.out_channels == norm.weight.shape[0]


# Fold only inside layouts whose dataflow we wrote: sibling names cannot tell bn(conv(x)) from a
# pre-activation conv(relu(bn(x))), and torch.fx cannot trace every user forward. Exact types, since a
# subclass may have its own forward.
_STEM = (("conv1", "bn1"),)
_KNOWN_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    ResNet: _STEM, CifarResNet: _STEM,  # relu(bn1(conv1(x))) in forward and forward_features
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


def _conv_norm_pairs(module: nn.Module):
    """(parent, conv name, norm name, conv, norm) where the conv's output feeds only the norm: in our
    stems and blocks (torchvision's names, STYLE.md) and their projection shortcut Sequential(conv, norm)."""
    for parent in module.modules():
        block_type = next((b for b, f in _FUSED_BLOCK.items() if type(parent) is f), type(parent))
        children = parent._modules
        for conv_name, norm_name in _KNOWN_PAIRS.get(block_type, ()):
            conv, norm = children.get(conv_name), children.get(norm_name)
            if conv is not None and norm is not None and _foldable(conv, norm):
                yield parent, conv_name, norm_name, conv, norm
        shortcut = children.get("downsample") if block_type in (BasicBlock, Bottleneck) else None
        if type(shortcut) is nn.Sequential and len(shortcut) == 2 and _foldable(shortcut[0], shortcut[1]):
            yield shortcut, "0", "1", shortcut[0], shortcut[1]


def _pointwise_conv_op():
    """oneDNN's fused conv + post-op kernel (what inductor's CPU backend calls), or None where this
    PyTorch build has no oneDNN or its private internals are not to be used."""
    try:
        if not (torch.backends.mkldnn.is_available() and private_internals_ok()):
            return None
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


def _conv_relu(conv: FoldedConv2d, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """relu(conv(x) [+ residual]) of a folded conv in one oneDNN call."""
    weight, bias = conv.onednn_weight_and_bias(x)
    args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    op = _pointwise_conv_op()
    if residual is None:
        return op(x, weight, bias, *args, "relu", [None], "")
    return op.binary(x, residual, weight, bias, *args, "add", None, "relu", [None], "")


class _FusedBlockMixin:
    """A residual block whose folded convs run with their ReLU (and the residual addition) fused, where
    that computes the same values as the block's own forward: CPU with oneDNN enabled, float32 NHWC
    input, no gradient needed, no autocast, not tracing, no hooks on the block's parts (they would not
    fire); anywhere else the block's own forward runs."""

    def _fusable(self, x: torch.Tensor) -> bool:
        if (not torch.backends.mkldnn.enabled or type(x) is not torch.Tensor
                or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or x.numel() == 0
                or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()
                or tracing() or torch.is_autocast_enabled("cpu") or _pointwise_conv_op() is None):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        children = dict(self.named_children())
        if any(m._forward_hooks or m._forward_pre_hooks for m in children.values()):
            return False
        return all(isinstance(c, FoldedConv2d) and c._fold_link.active() and c.padding_mode == "zeros"
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


def fuse_conv_bn_relu(module: nn.Module) -> int:
    """Fold every FrozenBN (and BatchNorm2d, when in eval mode) into the conv before it, in place, in
    our stems, blocks and projection shortcuts (other layouts are left as they are), and let the
    residual blocks run conv + ReLU (+ addition) fused where no gradient is needed on a CPU.

    Parameters, buffers and their names stay as they are (the same tensor objects, so an optimizer
    built earlier keeps working); `unfuse_conv_bn_relu` undoes it. Folding again after a norm or conv
    was replaced folds the new pair. Returns the number of pairs folded.

    Example::
        >>> net = ResNet(50, norm="FrozenBN").eval()
        >>> fuse_conv_bn_relu(net)  # stem + 16 blocks x 3 + 4 projection shortcuts
        53
    """
    pairs = list(_conv_norm_pairs(module))
    for parent, conv_name, norm_name, conv, norm in pairs:
        # Swapping to a subclass keeps every parameter, buffer and hook (torch.nn.utils.parametrize
        # does the same); the pair is referenced outside _modules so state_dict keys do not change.
        norm.__class__ = _FOLDED_NORM[_unfolded_type(norm)]
        conv.__class__ = FoldedConv2d
        link = _FoldLink(parent, conv_name, norm_name, conv, norm)
        object.__setattr__(norm, "_fold_link", link)
        object.__setattr__(conv, "_fold_link", link)
        object.__setattr__(conv, "_fold_cache", WeightCache())
        object.__setattr__(conv, "_packed_cache", None)
    for block in module.modules():
        if type(block) in _FUSED_BLOCK and isinstance(block.relu, nn.ReLU):
            block.__class__ = _FUSED_BLOCK[type(block)]
    return len(pairs)


def unfuse_conv_bn_relu(module: nn.Module) -> int:
    """Undo `fuse_conv_bn_relu`: plain convs, norms and blocks again. Returns the number of convs restored."""
    count = 0
    for m in module.modules():
        if isinstance(m, FoldedConv2d):
            m.__class__ = nn.Conv2d
            del m._fold_link, m._fold_cache, m._packed_cache
            count += 1
        elif isinstance(m, _FoldedNormMixin):
            m.__class__ = _UNFOLDED[type(m)]
            del m._fold_link
        elif isinstance(m, _FusedBlockMixin):
            m.__class__ = next(base for base, fused in _FUSED_BLOCK.items() if isinstance(m, fused))
    return count


def materialize_folds(module: nn.Module) -> int:
    """Fold for good, for reduced-precision inference (modeling/precision.py): every conv + norm pair
    that `fuse_conv_bn_relu` folds becomes a plain nn.Conv2d holding the folded float32 weights and
    bias, and the norm an nn.Identity, so a cast to bf16 or a quantizer sees one conv with the whole
    affine map (folding after the cast would round twice; torch.ao's fuser does not know FrozenBN).
    The fused blocks then run their own forward. The function is unchanged but the norms' state_dict
    entries are gone: load weights first. Returns the number of pairs folded."""
    unfuse_conv_bn_relu(module)
    pairs = list(_conv_norm_pairs(module))
    for parent, conv_name, norm_name, conv, norm in pairs:
        with torch.no_grad():
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                norm.eps, norm.weight, norm.bias)
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                        device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight, new.bias = (nn.Parameter(t.detach().clone(), requires_grad=False) for t in (weight, bias))
        new.train(conv.training)
        setattr(parent, conv_name, new)
        setattr(parent, norm_name, nn.Identity())
    return len(pairs)
