"""The meta record: what input a checkpoint's weights were trained on.

Weights only make sense with the input they were trained on (channel order, mean/std, where the
bottleneck strides); a resnet_det checkpoint records it next to the weights, and files that record
nothing get `default_meta` of their naming.
"""
from __future__ import annotations

import numpy as np

from ..utils.errors import WeightsError
from .key_map import CONVENTIONS

# Every field of a record -> the config key it sets when the weights are adopted (conventions.py).
# `norm` and `source` are recorded, not adopted: BN vs FrozenBN is the config's choice for fine-tuning.
META_KEYS: dict[str, str | None] = {
    "input_format": "INPUT.FORMAT", "pixel_mean": "MODEL.PIXEL_MEAN", "pixel_std": "MODEL.PIXEL_STD",
    "stride_in_1x1": "MODEL.RESNETS.STRIDE_IN_1X1", "norm": None, "source": None}
_TV_META = {"input_format": "RGB", "pixel_mean": [123.675, 116.28, 103.53],
            "pixel_std": [58.395, 57.12, 57.375], "stride_in_1x1": False, "norm": "BN"}
# MSRA's Caffe2 nets: BGR, mean subtraction only, stride in the first 1x1 (as the paper), and BN
# reduced to scale/bias, so only FrozenBN reproduces them.
_MSRA_META = {"input_format": "BGR", "pixel_mean": [103.53, 116.28, 123.675],
              "pixel_std": [1.0, 1.0, 1.0], "stride_in_1x1": True, "norm": "FrozenBN"}


def default_meta(convention: str) -> dict:
    """What weights named in `convention` expect when the file records nothing.

    torchvision/resnet_det names: torchvision's ImageNet recipe. msra and detectron2 names: MSRA's
    (detectron2's ImageNet weights R-50.pkl / R-101.pkl are MSRA's). Files written by
    tools/convert_weights.py carry the source's record, so this guess is only for foreign files.
    """
    if convention in ("torchvision", "resnet_det"):
        return {**_TV_META, "source": convention}
    if convention in ("msra", "detectron2"):
        return {**_MSRA_META, "source": convention}
    raise ValueError(f"convention={convention!r}: expected one of resnet_det, {', '.join(CONVENTIONS)}")


def check_meta(meta: dict, where: str = "meta") -> dict:
    """`meta` if it is a complete, sensible record; a WeightsError (a ValueError) naming the bad key otherwise."""
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise WeightsError(f"{where}: missing keys {missing}; a record has {', '.join(META_KEYS)} "
                           "(see resnet_det.checkpoint.default_meta)")
    if meta["input_format"] not in ("RGB", "BGR"):
        raise WeightsError(f"{where}: input_format={meta['input_format']!r}: expected 'RGB' or 'BGR'")
    for key in ("pixel_mean", "pixel_std"):
        if len(meta[key]) != 3 or not all(isinstance(v, (int, float)) for v in meta[key]):
            raise WeightsError(f"{where}: {key}={meta[key]!r}: expected 3 numbers (0-255 range)")
    if not isinstance(meta["stride_in_1x1"], bool):
        raise WeightsError(f"{where}: stride_in_1x1={meta['stride_in_1x1']!r}: expected true or false")
    return meta


def meta_mismatches(meta: dict, cfg) -> list[str]:
    """Where `cfg` feeds the weights differently from how they were trained, each with its fix."""
    found = []
    src = meta.get("source", "?")
    if cfg.INPUT.FORMAT != meta["input_format"]:
        found.append(f"INPUT.FORMAT={cfg.INPUT.FORMAT} but the weights ({src}) expect "
                     f"{meta['input_format']}: set INPUT.FORMAT {meta['input_format']}")
    for key, cfg_key in (("pixel_mean", "PIXEL_MEAN"), ("pixel_std", "PIXEL_STD")):
        if not np.allclose(list(getattr(cfg.MODEL, cfg_key)), meta[key], atol=1e-3):
            found.append(f"MODEL.{cfg_key}={list(getattr(cfg.MODEL, cfg_key))} but the weights ({src}) "
                         f"expect {meta[key]}: set MODEL.{cfg_key} \"{meta[key]}\"")
    if cfg.MODEL.RESNETS.STRIDE_IN_1X1 != meta["stride_in_1x1"] and cfg.MODEL.RESNETS.DEPTH >= 50:
        found.append(f"MODEL.RESNETS.STRIDE_IN_1X1={cfg.MODEL.RESNETS.STRIDE_IN_1X1} but the weights "
                     f"({src}) were trained with {meta['stride_in_1x1']}: set MODEL.RESNETS.STRIDE_IN_1X1 "
                     f"{meta['stride_in_1x1']}")
    return found


def values_differ(a, b) -> bool:
    """Whether two config/record values differ: strings exactly, numbers and lists up to float noise."""
    if isinstance(a, str) or isinstance(b, str):
        return str(a) != str(b)
    return not np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
