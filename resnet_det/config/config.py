"""Strict yacs configs: unknown keys, wrong types and impossible values are errors that say why."""
from __future__ import annotations

import difflib
import os

import yaml
from fvcore.common.config import CfgNode as _FvCfgNode

from ..utils.errors import ConfigError, MissingFileError

# Keys renamed since a config could have used them: old full key -> new full key.
RENAMED_KEYS = {
    "MODEL.RESNETS.STRIDE_IN_1x1": "MODEL.RESNETS.STRIDE_IN_1X1",
    "MODEL.BACKBONE.FREEZE_AT_STAGE": "MODEL.BACKBONE.FREEZE_AT",
    "MODEL.RESNETS.SHORTCUT_TYPE": "MODEL.RESNETS.SHORTCUT",
    "MODEL.ROI_HEADS.SCORE_THRESH": "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "SOLVER.REFERENCE_WORLD_SIZE": "SOLVER.REFERENCE_BATCH",
    "MODEL.PARALLEL_ROI_ALIGN": "MODEL.FAST_ROI_ALIGN",
}


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, full + ".")
        else:
            yield full, v


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode (with ``_BASE_``) whose merges check every key before touching anything."""

    def _check_known(self, keys, source: str) -> None:
        known = {k for k, _ in _flatten(self)}
        for key in keys:
            if key in known or key == "_BASE_":
                continue
            if key in RENAMED_KEYS:
                raise KeyError(f"{source}: config key {key!r} was renamed to "
                               f"{RENAMED_KEYS[key]!r}; update the config.")
            # A key naming a whole group being replaced by a scalar is caught by yacs' type check.
            if any(k.startswith(key + ".") for k in known):
                continue
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"{source}: unknown config key {key!r}.{hint} "
                           "All keys are documented in resnet_det/config/defaults.py.")

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if not os.path.isfile(cfg_filename):
            raise MissingFileError(f"config file {cfg_filename!r} does not exist; shipped configs "
                                   "are under configs/ (e.g. configs/frcnn_r101_coco.yaml)")
        with open(cfg_filename, encoding="utf-8") as f:
            try:
                loaded = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{cfg_filename}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_filename}: expected a mapping of config keys at the top level")
        self._check_known([k for k, _ in _flatten(loaded)], cfg_filename)
        try:
            super().merge_from_file(cfg_filename, allow_unsafe=allow_unsafe)
        except (ValueError, KeyError) as e:
            raise type(e)(f"{cfg_filename}: {e}") from None

    def merge_from_list(self, cfg_list: list) -> None:
        if len(cfg_list) % 2:
            raise ValueError(f"overrides must be KEY VALUE pairs, got an odd list: {cfg_list}")
        self._check_known(cfg_list[0::2], "command line")
        try:
            super().merge_from_list(cfg_list)
        except (ValueError, KeyError) as e:
            raise type(e)(f"command line override: {e}") from None


def get_cfg() -> CfgNode:
    """A fresh copy of the defaults (resnet_det/config/defaults.py)."""
    from .defaults import _C

    return _C.clone()
