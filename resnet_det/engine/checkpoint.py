"""Atomic checkpoints, exact resume, and MODEL.WEIGHTS loading with a report of what went where."""
from __future__ import annotations

import glob
import logging
import os
import random
import re

import numpy as np
import torch
from torch import nn

from ..utils.errors import ConfigError

logger = logging.getLogger(__name__)

LAST = "last_checkpoint"
# Input conventions a checkpoint records ("meta"), and the config keys they set.
META_KEYS = {"input_format": ("INPUT", "FORMAT"), "pixel_mean": ("MODEL", "PIXEL_MEAN"),
             "pixel_std": ("MODEL", "PIXEL_STD")}
_WRAPPER_PREFIXES = ("module.", "net.", "model.")  # DDP and classifier wrappers


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`: a crash at any
    point leaves either the old file or the complete new one, never a truncated `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states, as tensors and plain values only so that
    checkpoints load with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                    has_gauss, cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class Checkpointer:
    """Saves model + optimizer + scheduler + iteration + RNG state; finds the newest valid one."""

    def __init__(self, model: nn.Module, output_dir: str, meta: dict | None = None, **objects):
        self.model, self.output_dir, self.meta = model, output_dir, meta or {}
        self.objects = {k: v for k, v in objects.items() if v is not None}
        self.resumed_from: str | None = None

    def save(self, name: str, **extra) -> str:
        state = {"model": _unwrap(self.model).state_dict(), "meta": self.meta, "rng": rng_state(), **extra}
        for key, obj in self.objects.items():
            state[key] = obj.state_dict()
        path = os.path.join(self.output_dir, f"{name}.pth")
        atomic_save(state, path)
        if name != "model_best":
            atomic_write_text(os.path.basename(path), os.path.join(self.output_dir, LAST))
        logger.info("Saved checkpoint %s", path)
        return path

    def candidates(self) -> list[str]:
        return checkpoint_candidates(self.output_dir)

    def resume(self) -> dict | None:
        """Load the newest readable checkpoint (skipping corrupt ones with a warning); None if none.
        The path it came from is kept in `self.resumed_from`."""
        path, state = newest_checkpoint(self.output_dir)
        self.resumed_from = path
        if state is None:
            return None
        _unwrap(self.model).load_state_dict(state["model"])
        for key, obj in self.objects.items():
            if key in state:
                obj.load_state_dict(state[key])
        if "rng" in state:
            set_rng_state(state["rng"])
        logger.info("Resumed from %s at iteration %d", path, state["iteration"])
        return state


def checkpoint_candidates(output_dir: str) -> list[str]:
    """Checkpoints to resume from, newest first: the `last_checkpoint` pointer, then by iteration."""
    found = []
    pointer = os.path.join(output_dir, LAST)
    if os.path.isfile(pointer):
        with open(pointer, encoding="utf-8") as f:
            found.append(os.path.join(output_dir, f.read().strip()))

    def iteration(p):
        m = re.search(r"model_(\d+)\.pth$", p)
        return int(m.group(1)) if m else (float("inf") if p.endswith("model_final.pth") else -1)

    files = glob.glob(os.path.join(output_dir, "model_*.pth"))
    found += sorted((p for p in files if iteration(p) >= 0), key=iteration, reverse=True)
    return list(dict.fromkeys(p for p in found if os.path.isfile(p)))


def newest_checkpoint(output_dir: str, mmap: bool = False) -> tuple[str | None, dict | None]:
    """(path, state) of the checkpoint `--resume` continues from: the newest readable one, skipping
    corrupt ones with a warning; (None, None) if there is none. With `mmap` the tensors are mapped,
    not read (cheap when only the meta record is wanted)."""
    for path in checkpoint_candidates(output_dir):
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError:
                if not mmap:
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)  # not a zip file: read it
            if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
                raise ValueError("not a resnet_det training checkpoint (no model/iteration)")
        except Exception as e:  # truncated file, wrong format, ...
            logger.warning("Skipping unreadable checkpoint %s (%s: %s); trying an older one",
                           path, type(e).__name__, e)
            continue
        return path, state
    return None, None


# --------------------------------------------------------------------------------------------
# MODEL.WEIGHTS: detector checkpoints, resnet_det/torchvision classification weights, .pkl files
# --------------------------------------------------------------------------------------------
def read_weights(path: str) -> tuple[dict, dict]:
    """(state_dict of tensors, meta) from a .pth/.pkl file; a one-paragraph error when missing."""
    if not path:
        raise ConfigError("MODEL.WEIGHTS is empty: give a weights file (MODEL.WEIGHTS path/to/weights.pth)")
    from ..checkpoint.io import read_checkpoint  # .pth and .pkl, unwraps {"model": ...}, names formats

    sd, meta = read_checkpoint(path)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd, meta or {}


def weights_meta(path: str) -> dict:
    """The input conventions the weights at `path` expect (recorded, or implied by their names)."""
    sd, meta = read_weights(path)
    if meta:
        return meta
    from ..checkpoint import default_meta, detect_convention

    return default_meta(detect_convention(sd))


def adopt_weight_conventions(cfg, path: str) -> list[str]:
    """Set INPUT.FORMAT / PIXEL_MEAN / PIXEL_STD / STRIDE_IN_1X1 to what the weights expect.

    Mismatched input conventions cost mAP silently in other toolkits; here each change is logged
    as a warning. Returns the changed keys. cfg must be mutable.
    """
    meta = weights_meta(path)
    changed = []
    for key, (group, name) in META_KEYS.items():
        if key in meta and values_differ(cfg[group][name], meta[key]):
            logger.warning("MODEL.WEIGHTS %s expects %s.%s=%s (config has %s); adopting the weights' value",
                           path, group, name, meta[key], cfg[group][name])
            value = meta[key]
            cfg[group][name] = value if isinstance(value, str) else [float(x) for x in value]
            changed.append(f"{group}.{name}")
    if "stride_in_1x1" in meta and bool(meta["stride_in_1x1"]) != cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        logger.warning("MODEL.WEIGHTS %s were trained with STRIDE_IN_1X1=%s; adopting it",
                       path, meta["stride_in_1x1"])
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = bool(meta["stride_in_1x1"])
        changed.append("MODEL.RESNETS.STRIDE_IN_1X1")
    return changed


def values_differ(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) != str(b)
    return not np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


def classification_to_detector_names(sd: dict, model_keys: set[str]) -> tuple[dict, list[str]]:
    """Map torchvision-named classification weights onto the detector: stem..res4 (and res5 for
    FPN) into `backbone.body.*`; for C4, `layer4.*` into the res5 box head; `fc.*` is dropped."""
    from ..checkpoint import convert_state_dict, detect_convention

    convention = detect_convention(sd)
    if convention != "torchvision":
        sd, _ = convert_state_dict(sd, convention, "torchvision")
    mapped, dropped = {}, []
    for k, v in sd.items():
        if k.startswith("fc."):
            dropped.append(k)
            continue
        body = f"backbone.body.{k}"
        head = "roi_heads.box_head.res5." + k[len("layer4."):] if k.startswith("layer4.") else None
        if body in model_keys:
            mapped[body] = v
        elif head is not None and head in model_keys:
            mapped[head] = v
        else:
            mapped[k] = v  # reported as unused by load_model_weights
    return mapped, dropped


def load_model_weights(model: nn.Module, path: str) -> dict:
    """Load MODEL.WEIGHTS into `model`, matching by name and shape. Tensors whose shape differs
    (e.g. another NUM_CLASSES) keep their fresh initialisation. Returns and logs the report."""
    model = _unwrap(model)
    sd, _ = read_weights(path)
    target = model.state_dict()
    dropped: list[str] = []
    if not any(k in target for k in sd):
        sd, dropped = classification_to_detector_names(sd, set(target))
    loaded, reinit, unused = [], [], list(dropped)
    new_state = dict(target)
    for k, v in sd.items():
        if k not in target:
            if not k.endswith("num_batches_tracked"):  # BN's counter; FrozenBN has none
                unused.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            reinit.append(f"{k} {tuple(v.shape)} -> {tuple(target[k].shape)}")
        else:
            new_state[k] = v.to(target[k].dtype)
            loaded.append(k)
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    model.load_state_dict(new_state)
    report = {"loaded": loaded, "reinitialized": reinit, "missing": missing, "unused": unused}
    logger.info("Loaded %d tensors from %s", len(loaded), path)
    if reinit:
        logger.info("Re-initialised (shape differs from the checkpoint): %s", "; ".join(reinit))
    if missing:
        logger.info("Not in the checkpoint, left at their initialisation (%d): %s", len(missing),
                    _summarize(missing))
    if unused:
        logger.info("In the checkpoint but unused (%d): %s", len(unused), _summarize(unused))
    return report


def _summarize(keys: list[str], limit: int = 12) -> str:
    prefixes = sorted({".".join(k.split(".")[:3]) for k in keys})
    more = f" ... ({len(prefixes) - limit} more groups)" if len(prefixes) > limit else ""
    return ", ".join(prefixes[:limit]) + more
