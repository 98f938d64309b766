"""The speed switches of a built model, as the config asks for them; each keeps the model's function.

- MODEL.FUSE_CONV_BN_RELU: BN folding and fused residual blocks (``fusion.fuse_conv_bn_relu``).
- MODEL.CHANNELS_LAST (``to_channels_last``): NHWC activations (oneDNN on CPU and cuDNN on GPU prefer
  them for convs).
- MODEL.COMPILE (``compile_backbone``): ``torch.compile`` of the backbone in place (state_dict keys unchanged).
The RoIAlign implementation (MODEL.ROI_BOX_HEAD.POOLER_IMPL) is chosen where the pooler is built
(detector/heads.py); cudnn.benchmark is a process-wide setting of the run (engine/defaults.py).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .fusion import fuse_conv_bn_relu

logger = logging.getLogger(__name__)

__all__ = ["apply_fast_path", "compile_backbone", "to_channels_last"]


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
    """Apply the speed switches the config asks for: MODEL.FUSE_CONV_BN_RELU, MODEL.CHANNELS_LAST,
    MODEL.COMPILE. Call it after building the model; moving it to a device afterwards keeps all of them.
    """
    if cfg.MODEL.FUSE_CONV_BN_RELU:
        n = fuse_conv_bn_relu(model)
        logger.info("Folded %d FrozenBN/BN layers into their convs (MODEL.FUSE_CONV_BN_RELU)", n)
    if cfg.MODEL.CHANNELS_LAST:
        model = to_channels_last(model)
    if cfg.MODEL.COMPILE:
        model = compile_backbone(model)
    return model
