"""The detectron2-free half of the detectron2 plugin: our config keys, and detectron2's side of
cfg -> ResNet arguments (the translation itself is modeling/backbone/build.py's, as for every builder).

Nothing here imports detectron2, so it is tested everywhere; `integrations/detectron2.py` (which
needs detectron2) builds the backbones from what these functions return.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

# resnet_det's keys that detectron2's config lacks, with their defaults (resnet_det/config/defaults.py).
RESNET_DET_D2_DEFAULTS: dict[str, object] = {
    "MODEL.RESNETS.SHORTCUT": "B",              # Table 3 option: "A", "B" or "C"
    "MODEL.RESNETS.PLAIN": False,               # plain baselines of Sec. 4.1 (no shortcuts)
    "MODEL.RESNETS.ZERO_INIT_RESIDUAL": False,  # start each residual branch's last norm at zero
}
# detectron2 norm names -> ours. nnSyncBN is torch's SyncBatchNorm, which is what our SyncBN is.
D2_NORMS = {"BN": "BN", "FrozenBN": "FrozenBN", "GN": "GN", "SyncBN": "SyncBN", "nnSyncBN": "SyncBN"}


def add_resnet_det_config(cfg):
    """Add resnet_det's keys (RESNET_DET_D2_DEFAULTS) to a detectron2 (yacs) config; idempotent.

    Call it before `cfg.merge_from_file`, as detectron2 projects do for their own keys.
    """
    if cfg.is_frozen():
        raise RuntimeError("add_resnet_det_config: the config is frozen; call it right after get_cfg(), "
                           "before merge_from_file and freeze")
    for full_key, value in RESNET_DET_D2_DEFAULTS.items():
        *groups, leaf = full_key.split(".")
        node = cfg
        for g in groups:
            node = getattr(node, g)
        if leaf not in node:
            setattr(node, leaf, value)
    return cfg


def choose_d2_device(cfg, opts=()) -> str:
    """Pick MODEL.DEVICE as tools/train_net.py does ("auto"): CUDA when there is one, else the CPU.

    detectron2's default "cuda" stops a CPU-only machine with "Found no NVIDIA driver"; so unless the
    command line names a device itself (`MODEL.DEVICE ...` in `opts`), a "cuda" device becomes "cpu"
    there, with a log line. Call it after merging, before freezing. Returns the device.
    """
    device = str(cfg.MODEL.DEVICE)
    asked = "MODEL.DEVICE" in [str(k) for k in list(opts)[0::2]]
    if device.startswith("cuda") and not asked and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but this machine has no CUDA device: using cpu (pass MODEL.DEVICE "
                       "to choose yourself)", device)
        cfg.MODEL.DEVICE = device = "cpu"
    return device


def d2_resnet_kwargs(cfg, out_features=None) -> dict:
    """`ResNet(...)` keyword arguments from a detectron2 config (plus add_resnet_det_config's keys).

    The translation is resnet_det's own (`modeling.backbone.build.resnet_kwargs_from_cfg`: detectron2
    uses the same MODEL.RESNETS / MODEL.BACKBONE.FREEZE_AT names and meanings) with detectron2's norm
    names (D2_NORMS); here only what detectron2 allows and our ResNet does not build is refused, and
    MODEL.PIXEL_MEAN's length gives the input channels.
    """
    from resnet_det.modeling.backbone.build import resnet_kwargs_from_cfg
    from resnet_det.modeling.backbone.resnet import ARCHS

    deform = cfg.MODEL.RESNETS.get("DEFORM_ON_PER_STAGE", [False])  # a detectron2 key
    if any(deform):
        raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(deform)}: resnet_det's backbones have "
                         "no deformable convolutions; use detectron2's build_resnet_backbone for those")
    try:
        kwargs = resnet_kwargs_from_cfg(cfg, norm_names=D2_NORMS)
    except KeyError as e:
        raise KeyError(f"{e.args[0]}; call resnet_det.integrations.add_resnet_det_config(cfg) before merging "
                       "config files") from None
    depth, res2 = kwargs["depth"], kwargs["res2_out_channels"]
    block = ARCHS[depth][0]
    expected_res2 = 64 if block == "basic" else 256  # Table 1: 64-d basic blocks, 256-d bottlenecks
    if res2 != expected_res2:
        raise ValueError(f"MODEL.RESNETS.RES2_OUT_CHANNELS={res2} with DEPTH={depth}: expected "
                         f"{expected_res2} ({block} blocks); detectron2 needs 64 for R18/R34 too")
    return dict(kwargs, num_classes=None, out_features=list(out_features or cfg.MODEL.RESNETS.OUT_FEATURES),
                in_channels=len(cfg.MODEL.PIXEL_MEAN))
