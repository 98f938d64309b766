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

from ..utils.errors import ConfigError, WeightsError
from ..utils.io import atomic_save, atomic_write_text

logger = logging.getLogger(__name__)

LAST = "last_checkpoint"
# Input conventions a checkpoint records ("meta"), and the config keys they set.
META_KEYS = {"input_format": ("INPUT", "FORMAT"), "pixel_mean": ("MODEL", "PIXEL_MEAN"),
             "pixel_std": ("MODEL", "PIXEL_STD")}
_WRAPPER_PREFIXES = ("module.", "net.", "model.")  # DDP and classifier wrappers


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
            atomic_write_text(os.path.join(self.output_dir, LAST), os.path.basename(path))
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


# Layers whose shape follows the number of classes: a checkpoint for another NUM_CLASSES leaves them
# at their initialisation (a warning names them). Any other shape difference is an error.
_CLASS_LAYERS = re.compile(r"^(roi_heads\.box_predictor\.|(net\.)?fc\.|head\.(cls_logits|bbox_pred)\.)")


def _resnet_name(key: str) -> str | None:
    """The torchvision ResNet parameter name a model key holds (backbone, C4 res5 head, a Localizer's
    net), or None for the parts around the ResNet (FPN, RPN, box head, predictor, ...)."""
    from ..checkpoint import parse_key

    for prefix, replace in (("backbone.body.", ""), ("roi_heads.box_head.res5.", "layer4."), ("net.", "")):
        if key.startswith(prefix):
            key = replace + key[len(prefix):]
            break
    return key if parse_key(key, "torchvision") is not None else None


def classification_to_detector_names(sd: dict, model_keys: set[str]) -> tuple[dict, list[str]]:
    """Map ResNet weights (any naming in the key table, or a whole detector's backbone) onto the model:
    stem..res4 (and res5 for FPN) into `backbone.body.*`; for C4, `layer4.*` into the res5 box head;
    a classifier takes the names as they are. Returns (mapped, dropped): `fc.*` has no place in a
    detector, and a detector checkpoint's other parts none in a classifier."""
    from ..checkpoint import convert_state_dict, detect_convention, detect_layout, split_detector

    dropped: list[str] = []
    layout = detect_layout(sd)
    if layout is not None:
        sd, rest = split_detector(sd, layout)
        dropped += list(rest)
    try:
        convention = detect_convention(sd)
    except ValueError:  # no ResNet name at all: load_model_weights says what the file holds instead
        convention = "torchvision"
    if convention != "torchvision":
        sd, _ = convert_state_dict(sd, convention, "torchvision", keep_unmatched=True, log=False)
    mapped = {}
    for k, v in sd.items():
        body = f"backbone.body.{k}"
        head = "roi_heads.box_head.res5." + k[len("layer4."):] if k.startswith("layer4.") else None
        if body in model_keys:
            mapped[body] = v
        elif head is not None and head in model_keys:
            mapped[head] = v
        elif k.startswith("fc.") and k not in model_keys:
            dropped.append(k)
        else:
            mapped[k] = v  # a classifier's own name, or reported as unused by load_model_weights
    return mapped, dropped


def _to_model_names(sd: dict, model: nn.Module, target: dict, path: str) -> tuple[dict, list[str], str, bool]:
    """(checkpoint under the model's names, keys with no place by design, what the file is, whether it
    is a whole model's checkpoint rather than backbone weights)."""
    from ..checkpoint import LAYOUTS, convert_detector, detect_layout

    layout = detect_layout(sd)
    is_detector = any(k.startswith("rpn.") for k in target)
    if layout is not None and not layout.startswith("resnet_det-") and is_detector:
        # detectron2 (or detectron2-plugin) detector: every part converts, none is re-initialised.
        dst = "resnet_det-C4" if LAYOUTS[layout].res5_prefix else "resnet_det-FPN"
        generator = getattr(getattr(model, "rpn", None), "anchor_generator", None)
        grid = (len(generator.sizes[0]), len(generator.aspect_ratios[0])) if generator is not None else None
        try:
            converted, report = convert_detector(sd, layout, dst, anchor_grid=grid)
        except ValueError:  # another anchor grid: converted as detectron2's default, the shapes then tell
            try:
                converted, report = convert_detector(sd, layout, dst)
            except ValueError as e:
                raise WeightsError(f"MODEL.WEIGHTS {path} (a {layout} detector checkpoint): {e}") from None
        return ({**converted, **{k: sd[k] for k in report.unmatched}}, list(report.dropped),
                f"a {layout} detector checkpoint", True)
    if layout is None and not any(k in target for k in sd):
        mapped, dropped = classification_to_detector_names(sd, set(target))
        return mapped, dropped, "backbone weights", False
    if layout is not None and not is_detector:
        mapped, dropped = classification_to_detector_names(sd, set(target))
        return mapped, dropped, f"the backbone of a {layout} detector checkpoint", False
    return sd, [], "a checkpoint of this model's layout", True


def load_model_weights(model: nn.Module, path: str) -> dict:
    """Load MODEL.WEIGHTS into `model`; returns and logs the report (loaded / reinitialized /
    missing / unused).

    What the file is decides what it must provide. A whole-model checkpoint (resnet_det's, or a
    detectron2 detector, converted part by part: checkpoint/heads.py) must fill every tensor; only the
    class layers of another NUM_CLASSES may keep their initialisation (a warning lists them).
    Backbone weights (ImageNet, any naming) must fill the ResNet; the parts around it (FPN, RPN, box
    head, predictor) start from their initialisation by design, logged as such. A file that matches
    nothing, leaves required tensors missing or differs in another shape raises WeightsError naming
    the file, what is missing and what the file holds.
    """
    model = _unwrap(model)
    sd, _ = read_weights(path)
    target = model.state_dict()
    sd, dropped, kind, whole = _to_model_names(sd, model, target, path)
    loaded, reinit, unused, wrong_shape = [], [], [], []
    new_state = dict(target)
    for k, v in sd.items():
        if k not in target:
            if not k.endswith("num_batches_tracked"):  # BN's counter; FrozenBN has none
                unused.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            (reinit if _CLASS_LAYERS.match(k) else wrong_shape).append(
                f"{k} {tuple(v.shape)} -> {tuple(target[k].shape)}")
        else:
            new_state[k] = v.to(target[k].dtype)
            loaded.append(k)
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    src_has_fc = any(k.startswith(("fc.", "net.fc.")) for k in loaded + [r.split(" ")[0] for r in reinit])
    required = [k for k in missing
                if whole or (_resnet_name(k) is not None and (src_has_fc or not _resnet_name(k).startswith("fc.")))]
    if not loaded or required or wrong_shape:
        raise WeightsError(_mismatch_message(path, kind, list(target), loaded, required, wrong_shape, unused))
    model.load_state_dict(new_state)
    report = {"loaded": loaded, "reinitialized": reinit, "missing": missing, "unused": dropped + unused}
    logger.info("Loaded %d of the model's %d tensors from %s (%s)", len(loaded), len(target), path, kind)
    if reinit:
        logger.warning("MODEL.WEIGHTS %s: the class layers' shapes differ (another NUM_CLASSES), so they keep "
                       "their initialisation: %s", path, "; ".join(reinit))
    if missing:  # only parts a backbone checkpoint cannot hold; anything else raised above
        logger.info("MODEL.WEIGHTS %s holds %s only: the model's other parts (%d tensors) start from their "
                    "initialisation, as in any fine-tuning: %s", path, kind, len(missing), _summarize(missing))
    if dropped:
        logger.info("Not needed by this model, by design (%d): %s", len(dropped), _summarize(dropped))
    if unused:
        logger.warning("MODEL.WEIGHTS %s: %d tensors have no place in this model and were not loaded: %s",
                       path, len(unused), _summarize(unused))
    return report


def _mismatch_message(path, kind, target, loaded, required, wrong_shape, unused) -> str:
    if not loaded:
        what = (f"matches none of the model's {len(target)} tensors (named like {', '.join(target[:3])}; "
                "ResNet weights may also use detectron2's or MSRA's names).")
    else:
        what = f"fills {len(loaded)} of the model's {len(target)} tensors."
    if required and loaded:
        what += (f" {len(required)} it should provide are missing and would start from random "
                 f"initialisation: {_summarize(required)}.")
    if wrong_shape:
        what += f" Shapes differ outside the class layers: {'; '.join(wrong_shape[:6])}."
    if unused:
        what += f" The file's tensors without a place in the model ({len(unused)}): {_summarize(unused)}."
    return (f"MODEL.WEIGHTS {path} ({kind}) {what} The config builds another model than the one these "
            "weights belong to (depth, C4 vs FPN, anchors, FPN levels, block type): use the config the "
            "weights were trained with; for a detectron2 model-zoo checkpoint, the config of the same name "
            "in configs/detectron2_zoo/; for other formats, tools/convert_weights.py.")


def _summarize(keys: list[str], limit: int = 12) -> str:
    groups: dict[str, int] = {}
    for k in keys:
        group = ".".join(k.split(".")[:3])
        groups[group] = groups.get(group, 0) + 1
    parts = [f"{g} ({n})" if n > 1 else g for g, n in sorted(groups.items())]
    more = f" ... ({len(parts) - limit} more groups)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more
