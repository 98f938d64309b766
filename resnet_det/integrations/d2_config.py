"""The detectron2-free half of the detectron2 plugin: our config keys and cfg -> ResNet arguments.

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


def _get(cfg, full_key: str):
    node = cfg
    for part in full_key.split("."):
        if part not in node:
            raise KeyError(f"config key {full_key} is missing; call "
                           "resnet_det.integrations.add_resnet_det_config(cfg) before merging config files")
        node = node[part]
    return node


def d2_resnet_kwargs(cfg, out_features=None) -> dict:
    """`ResNet(...)` keyword arguments from a detectron2 config (plus add_resnet_det_config's keys).

    Reads MODEL.RESNETS.{DEPTH, OUT_FEATURES, NORM, STRIDE_IN_1X1, RES5_DILATION, RES2_OUT_CHANNELS,
    STEM_OUT_CHANNELS, NUM_GROUPS, WIDTH_PER_GROUP, SHORTCUT, PLAIN, ZERO_INIT_RESIDUAL},
    MODEL.BACKBONE.FREEZE_AT (same meaning in both: 1 = stem, 2 = stem + res2, ...) and
    MODEL.PIXEL_MEAN (its length is the input channel count).
    """
    from resnet_det.modeling.backbone.resnet import ARCHS

    depth = _get(cfg, "MODEL.RESNETS.DEPTH")
    if depth not in ARCHS:
        raise ValueError(f"MODEL.RESNETS.DEPTH={depth!r}: expected one of {', '.join(map(str, ARCHS))}")
    norm = _get(cfg, "MODEL.RESNETS.NORM")
    if norm not in D2_NORMS:
        raise ValueError(f"MODEL.RESNETS.NORM={norm!r}: resnet_det's backbones support "
                         f"{', '.join(D2_NORMS)}")
    deform = cfg.MODEL.RESNETS.get("DEFORM_ON_PER_STAGE", [False])  # a detectron2 key
    if any(deform):
        raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(deform)}: resnet_det's backbones have "
                         "no deformable convolutions; use detectron2's build_resnet_backbone for those")
    res2 = _get(cfg, "MODEL.RESNETS.RES2_OUT_CHANNELS")
    block = ARCHS[depth][0]
    expected_res2 = 64 if block == "basic" else 256  # Table 1: 64-d basic blocks, 256-d bottlenecks
    if res2 != expected_res2:
        raise ValueError(f"MODEL.RESNETS.RES2_OUT_CHANNELS={res2} with DEPTH={depth}: expected "
                         f"{expected_res2} ({block} blocks); detectron2 needs 64 for R18/R34 too")
    return dict(
        depth=depth,
        num_classes=None,
        out_features=list(out_features or _get(cfg, "MODEL.RESNETS.OUT_FEATURES")),
        norm=D2_NORMS[norm],
        stride_in_1x1=bool(_get(cfg, "MODEL.RESNETS.STRIDE_IN_1X1")),
        res5_dilation=_get(cfg, "MODEL.RESNETS.RES5_DILATION"),
        res2_out_channels=res2,
        stem_out_channels=_get(cfg, "MODEL.RESNETS.STEM_OUT_CHANNELS"),
        num_groups=_get(cfg, "MODEL.RESNETS.NUM_GROUPS"),
        width_per_group=_get(cfg, "MODEL.RESNETS.WIDTH_PER_GROUP"),
        shortcut=_get(cfg, "MODEL.RESNETS.SHORTCUT"),
        plain=bool(_get(cfg, "MODEL.RESNETS.PLAIN")),
        zero_init_residual=bool(_get(cfg, "MODEL.RESNETS.ZERO_INIT_RESIDUAL")),
        freeze_at=_get(cfg, "MODEL.BACKBONE.FREEZE_AT"),
        in_channels=len(_get(cfg, "MODEL.PIXEL_MEAN")),
    )
