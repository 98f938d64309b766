"""Strict yacs configs: unknown keys, wrong types and impossible values are errors that say why."""
from __future__ import annotations

import difflib
import os
import warnings

import yaml
from fvcore.common.config import CfgNode as _FvCfgNode

from ..utils.errors import ConfigError, MissingFileError

# Keys renamed since a config could have used them: old full key -> new full key. Using one is an
# error naming the new key (its value may mean something else there).
RENAMED_KEYS = {
    "MODEL.RESNETS.STRIDE_IN_1x1": "MODEL.RESNETS.STRIDE_IN_1X1",
    "MODEL.BACKBONE.FREEZE_AT_STAGE": "MODEL.BACKBONE.FREEZE_AT",
    "MODEL.RESNETS.SHORTCUT_TYPE": "MODEL.RESNETS.SHORTCUT",
    "MODEL.ROI_HEADS.SCORE_THRESH": "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "SOLVER.REFERENCE_WORLD_SIZE": "SOLVER.REFERENCE_BATCH",
    "MODEL.PARALLEL_ROI_ALIGN": "MODEL.ROI_BOX_HEAD.POOLER_IMPL",
}


def _pooler_impl(old_key: str, value) -> str:
    if not isinstance(value, bool):
        raise ConfigError(f"{old_key}={value!r}: expected True or False; better, set "
                          "MODEL.ROI_BOX_HEAD.POOLER_IMPL gather or torchvision")
    return "gather" if value else "torchvision"


# Keys renamed with the same meaning: the old key still works. It sets the new key (its value converted
# where the type changed) and warns once (FutureWarning) naming the new key.
# old full key -> (new full key, converter(old key, value) -> new value, or None to keep the value).
ALIASED_KEYS = {
    "MODEL.FUSE_FROZEN_BN": ("MODEL.FUSE_CONV_BN_RELU", None),
    "MODEL.FAST_ROI_ALIGN": ("MODEL.ROI_BOX_HEAD.POOLER_IMPL", _pooler_impl),
}


def _aliased(old_key: str, value, source: str) -> tuple[str, object]:
    """(new key, its value) for an aliased old key, with the deprecation warning."""
    new_key, convert = ALIASED_KEYS[old_key]
    new_value = value if convert is None else convert(old_key, _FvCfgNode._decode_cfg_value(value))
    warnings.warn(f"{source}: config key {old_key} is deprecated and now sets {new_key}={new_value!r}; "
                  f"rename it to {new_key}", FutureWarning, stacklevel=3)
    return new_key, new_value


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
            if key in known or key == "_BASE_" or key in ALIASED_KEYS:
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
        keys = [k for k, _ in _flatten(loaded)]
        self._check_known(keys, cfg_filename)
        both = [k for k in keys if k in ALIASED_KEYS and ALIASED_KEYS[k][0] in keys]
        if both:
            raise ConfigError(f"{cfg_filename}: gives both {both[0]} and its new name {ALIASED_KEYS[both[0]][0]}; "
                              "keep the new one")
        try:
            super().merge_from_file(cfg_filename, allow_unsafe=allow_unsafe)
        except (ValueError, KeyError) as e:
            raise type(e)(f"{cfg_filename}: {e}") from None

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict:
        # fvcore calls this for the file and, recursively, for each _BASE_: every file's aliased keys
        # become their new keys, and the warning names the file that holds them.
        loaded = super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
        for old_key in ALIASED_KEYS:
            *groups, leaf = old_key.split(".")
            node = loaded
            for g in groups:
                node = node.get(g) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node:
                new_key, value = _aliased(old_key, node.pop(leaf), filename)
                *groups, leaf = new_key.split(".")
                node = loaded
                for g in groups:
                    node = node.setdefault(g, {})
                node[leaf] = value
        return loaded

    def merge_from_list(self, cfg_list: list) -> None:
        if len(cfg_list) % 2:
            raise ValueError(f"overrides must be KEY VALUE pairs, got an odd list: {cfg_list}")
        self._check_known(cfg_list[0::2], "command line")
        cfg_list = list(cfg_list)
        for i in range(0, len(cfg_list), 2):
            if cfg_list[i] in ALIASED_KEYS:
                cfg_list[i], cfg_list[i + 1] = _aliased(cfg_list[i], cfg_list[i + 1], "command line")
        try:
            super().merge_from_list(cfg_list)
        except (ValueError, KeyError) as e:
            raise type(e)(f"command line override: {e}") from None


def get_cfg() -> CfgNode:
    """A fresh copy of the defaults (resnet_det/config/defaults.py)."""
    from .defaults import _C

    return _C.clone()
