"""Which input convention a run uses (INPUT.FORMAT, MODEL.PIXEL_MEAN/STD, MODEL.RESNETS.STRIDE_IN_1X1).

A fresh start adopts the one MODEL.WEIGHTS records (or its naming implies: meta.default_meta), and
every checkpoint records the values its run used (meta["config"], written by Trainer.weights_meta).
Under `--resume` these are restored from the checkpoint to be continued while the config is built
(engine.defaults.setup_cfg), so the model, the data and OUTPUT_DIR/config.yaml see exactly what the
interrupted run saw. A command-line override that contradicts the record is refused: feeding other
inputs half-way through a schedule costs accuracy without any error.
"""
from __future__ import annotations

import logging
import os

from ..utils.errors import UserInputError
from .checkpointer import newest_checkpoint
from .layouts import detect_convention
from .load import read_weights
from .meta import META_KEYS, default_meta, values_differ

logger = logging.getLogger(__name__)

# Config key -> the name of the same fact in a checkpoint's meta record (meta.META_KEYS).
CONVENTION_KEYS = {key: field for field, key in META_KEYS.items() if key is not None}


def _node(cfg, key: str):
    *groups, leaf = key.split(".")
    for g in groups:
        cfg = cfg[g]
    return cfg, leaf


def _plain(value):
    """A config value as the record stores it: str, bool, or a list of floats."""
    if isinstance(value, (str, bool)):
        return value
    return [float(v) for v in value]


def weights_meta(path: str) -> dict:
    """The input conventions the weights at `path` expect (recorded, or implied by their names)."""
    sd, meta = read_weights(path, int8_meta_only=True)  # a calibrated INT8 file records them too
    return meta or default_meta(detect_convention(sd))


def adopt_weight_conventions(cfg, path: str) -> list[str]:
    """Set INPUT.FORMAT / PIXEL_MEAN / PIXEL_STD / STRIDE_IN_1X1 to what the weights at `path` expect.

    Mismatched input conventions cost mAP silently in other toolkits; here each change is logged
    as a warning. Returns the changed keys. cfg must be mutable.
    """
    meta = weights_meta(path)
    changed = []
    for key, field in CONVENTION_KEYS.items():
        node, leaf = _node(cfg, key)
        if field in meta and values_differ(node[leaf], meta[field]):
            logger.warning("MODEL.WEIGHTS %s expects %s=%s (config has %s); adopting the weights' value",
                           path, key, meta[field], node[leaf])
            node[leaf] = _plain(meta[field])
            changed.append(key)
    return changed


def run_conventions(cfg) -> dict:
    """{config key: value} of the input convention `cfg` trains with; recorded as meta["config"]."""
    out = {}
    for key in CONVENTION_KEYS:
        node, leaf = _node(cfg, key)
        out[key] = _plain(node[leaf])
    return out


def recorded_conventions(meta: dict) -> dict:
    """The input convention the run that wrote a checkpoint used; {} when its meta records none.

    meta["config"] when present. Checkpoints written before that record carry the same values in the
    weights' fields (Trainer.weights_meta), except a per-pixel-mean classifier's pixel_mean, which is
    its mean image's average (for the detector hand-off) and is therefore not taken as the config's.
    """
    if isinstance(meta.get("config"), dict):
        return {k: _plain(v) for k, v in meta["config"].items() if k in CONVENTION_KEYS}
    out = {key: _plain(meta[name]) for key, name in CONVENTION_KEYS.items() if name in meta}
    if meta.get("mean_mode") == "per_pixel":
        out.pop("MODEL.PIXEL_MEAN", None)
    return out


def restore_run_conventions(cfg, overrides) -> bool:
    """Under `--resume`: set cfg's input convention to what the checkpoint in OUTPUT_DIR recorded.

    Args:
        cfg: the mutable config, merged from the file and `overrides`.
        overrides: the command line's KEY VALUE list; a key there whose value contradicts the record
            is a UserInputError (one paragraph: key, both values, the two ways out).
    Returns False when OUTPUT_DIR has no checkpoint (the run starts fresh and adopts MODEL.WEIGHTS'
    convention like any fresh start), True otherwise.
    """
    path, state = newest_checkpoint(cfg.OUTPUT_DIR, mmap=True)
    if path is None:
        return False
    recorded = recorded_conventions(state.get("meta") or {})
    if not recorded:
        # Written by an older resnet_det: the best guess of what that run used is what its fresh
        # start did, adopting MODEL.WEIGHTS' convention, if that file is still there.
        weights = cfg.MODEL.WEIGHTS
        if weights and os.path.isfile(weights):
            logger.warning("--resume: %s records no input convention (an older checkpoint); adopting "
                           "MODEL.WEIGHTS' as the interrupted run's fresh start did", path)
            adopt_weight_conventions(cfg, weights)
        else:
            logger.warning("--resume: %s records no input convention (an older checkpoint) and MODEL.WEIGHTS "
                           "%r is not there to read it from; continuing with the config's %s", path, weights,
                           ", ".join(f"{k}={v}" for k, v in run_conventions(cfg).items()))
        return True
    given = {str(k) for k in list(overrides)[0::2]}
    current = run_conventions(cfg)
    conflicts = [k for k, v in recorded.items() if k in given and values_differ(current[k], v)]
    if conflicts:
        raise UserInputError(
            f"--resume: the run in OUTPUT_DIR {cfg.OUTPUT_DIR!r} trained with "
            + ", ".join(f"{k}={recorded[k]}" for k in conflicts)
            + f" (recorded in {path}), but the command line sets "
            + ", ".join(f"{k} {current[k]}" for k in conflicts)
            + ". A resumed run keeps the input convention it started with; changing it mid-run would "
            "train the rest of the schedule on other inputs. To continue the run, drop the override; "
            "to train with the new value, start a new run in another folder (OUTPUT_DIR path/to/new_dir) "
            "without --resume.")
    for key, value in recorded.items():
        if current[key] != value:
            if values_differ(current[key], value):
                logger.warning("--resume: restoring %s=%s from %s (the config says %s): the run trained "
                               "with it", key, value, path, current[key])
            node, leaf = _node(cfg, key)
            node[leaf] = value
    return True


def check_resumed_conventions(cfg, meta: dict, path: str) -> None:
    """After loading a checkpoint: its run's input convention must be `cfg`'s (guards callers that
    build the config without setup_cfg, which restores it)."""
    recorded, current = recorded_conventions(meta or {}), run_conventions(cfg)
    bad = [k for k, v in recorded.items() if values_differ(current[k], v)]
    if bad:
        raise UserInputError(
            f"{path} was trained with " + ", ".join(f"{k}={recorded[k]}" for k in bad) + " but the config "
            "resuming it has " + ", ".join(f"{k}={current[k]}" for k in bad) + ". Build the config with "
            "resnet_det.engine.setup_cfg (it restores them under --resume) or set these keys to the "
            "recorded values.")
