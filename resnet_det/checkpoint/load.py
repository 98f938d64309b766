"""MODEL.WEIGHTS into a model, for every model resnet_det builds (detectors, classifiers, the
Localizer): the file is read in any accepted format (formats.py), its names are mapped onto the
model's (key_map.py, layouts.py, heads.py), and the loading policy decides what the file must provide.
The returned report says what went where.
"""
from __future__ import annotations

import logging
import re

from torch import nn

from ..utils.errors import ConfigError, WeightsError
from .checkpointer import unwrap_model
from .formats import read_checkpoint
from .heads import box_regression_is_agnostic
from .key_map import block_mismatch, block_structure, convert_state_dict, parse_key
from .layouts import LAYOUTS, convert_detector, detect_convention, detect_layout, join_detector, split_detector

logger = logging.getLogger(__name__)

# Layers whose shape follows the number of classes: a checkpoint for another NUM_CLASSES leaves them
# at their initialisation (a warning names them). Any other shape difference is an error.
_CLASS_LAYERS = re.compile(r"^(roi_heads\.box_predictor\.|(net\.)?fc\.|head\.(cls_logits|bbox_pred)\.)")
# Where resnet_det's models keep their ResNet, as (model prefix, torchvision prefix): a detector's
# backbone body and, in C4, its res5 box head (layouts.py; Appendix A); a Classifier's or Localizer's
# `net`; or the model is the ResNet itself.
_C4 = LAYOUTS["resnet_det-C4"]
_NET = "net."
_RESNET_HOMES = ((_C4.body_prefix, ""), (_C4.res5_prefix, "layer4."), (_NET, ""))


def read_weights(path: str, *, ema: bool = False, int8_meta_only: bool = False) -> tuple[dict, dict]:
    """(state_dict of tensors, meta or {}) of MODEL.WEIGHTS; a one-paragraph error when unset or missing.
    ``ema``: a checkpoint's EMA weights where it holds them; ``int8_meta_only``: see read_checkpoint."""
    if not path:
        raise ConfigError("MODEL.WEIGHTS is empty: give a weights file (MODEL.WEIGHTS path/to/weights.pth)")
    sd, meta = read_checkpoint(path, ema=ema, int8_meta_only=int8_meta_only)
    return sd, meta or {}


def _resnet_name(key: str) -> str | None:
    """The torchvision ResNet parameter name a model key holds, or None for the parts around the
    ResNet (FPN, RPN, box head, predictor, the Localizer's head, ...)."""
    for prefix, replace in _RESNET_HOMES:
        if key.startswith(prefix):
            key = replace + key[len(prefix):]
            break
    return key if parse_key(key, "torchvision") is not None else None


def _place_resnet(sd: dict, model_keys) -> tuple[dict, list[str]]:
    """ResNet weights (any naming in the key table, or a whole detector's backbone) under the model's
    names: a resnet_det detector's through its layout (layouts.join_detector: stem..res4, and res5 in
    FPN, into `backbone.body.*`; C4's res5 into the box head), a Classifier's or Localizer's under
    `net.`, a bare ResNet's as they are. Returns (placed, dropped): `fc.*` has no place in a detector,
    a detector checkpoint's other parts none in a classifier. Keys outside the table keep their names
    (load_model_weights reports them as unused)."""
    dropped: list[str] = []
    layout = detect_layout(sd)
    if layout is not None:
        sd, rest = split_detector(sd, layout)
        dropped += list(rest)
    try:
        convention = detect_convention(sd)
    except ValueError:  # no ResNet name at all: load_model_weights says what the file holds instead
        convention = "torchvision"
    home = detect_layout(model_keys)  # resnet_det-C4/-FPN for our detectors, None otherwise
    if home is not None:
        placed, report = join_detector(sd, convention, home, log=False)
        dropped += list(report.dropped)
    else:
        prefix = _NET if any(k.startswith(_NET) for k in model_keys) else ""
        names, report = convert_state_dict(sd, convention, "torchvision", log=False)
        placed = {prefix + k: v for k, v in names.items()}
        for k in [k for k in placed if k.startswith(prefix + "fc.") and k not in model_keys]:
            dropped.append(k[len(prefix):])
            del placed[k]
    placed.update({k: sd[k] for k in report.unmatched})
    return placed, dropped


def _to_model_names(sd: dict, model: nn.Module, target: dict, path: str) -> tuple[dict, list[str], str, bool]:
    """(checkpoint under the model's names, keys with no place by design, what the file is, whether it
    is a whole model's checkpoint rather than backbone weights)."""
    layout = detect_layout(sd)
    is_detector = any(k.startswith("rpn.") for k in target)
    if layout is not None and not layout.startswith("resnet_det-") and is_detector:
        # detectron2 (or detectron2-plugin) detector: every part converts, none is re-initialised.
        dst = "resnet_det-C4" if LAYOUTS[layout].res5_prefix else "resnet_det-FPN"
        generator = getattr(getattr(model, "rpn", None), "anchor_generator", None)
        grid = (len(generator.sizes[0]), len(generator.aspect_ratios[0])) if generator is not None else None
        agnostic = _cls_agnostic(model)
        try:
            converted, report = convert_detector(sd, layout, dst, anchor_grid=grid, cls_agnostic=agnostic)
        except ValueError:  # another anchor grid: converted as detectron2's default, the shapes then tell
            try:
                converted, report = convert_detector(sd, layout, dst, cls_agnostic=agnostic)
            except ValueError as e:
                raise WeightsError(f"MODEL.WEIGHTS {path} (a {layout} detector checkpoint): {e}") from None
        return ({**converted, **{k: sd[k] for k in report.unmatched}}, list(report.dropped),
                f"a {layout} detector checkpoint", True)
    if layout is None and not any(k in target for k in sd):
        placed, dropped = _place_resnet(sd, target)
        return placed, dropped, "backbone weights", False
    if layout is not None and not is_detector:
        placed, dropped = _place_resnet(sd, target)
        return placed, dropped, f"the backbone of a {layout} detector checkpoint", False
    return sd, [], "a checkpoint of this model's layout", True


def _cls_agnostic(model: nn.Module) -> bool | None:
    """The model's MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG, or None for a model without a box predictor."""
    return getattr(getattr(getattr(model, "roi_heads", None), "box_predictor", None), "cls_agnostic", None)


_PREDICTOR = "roi_heads.box_predictor."


def _check_fit(sd: dict, model: nn.Module, target: dict, path: str, kind: str, whole: bool) -> None:
    """Weights that would load into a different network than they were trained as are refused: a box
    regression of the other kind (class-aware vs agnostic: heads.box_regression_is_agnostic), and ResNet
    blocks the model lacks (a deeper net's weights would run truncated; the depth check of
    tools/convert_weights.py --depth, key_map.block_mismatch)."""
    box, cls, agnostic = _PREDICTOR + "bbox_pred.weight", _PREDICTOR + "cls_score.weight", _cls_agnostic(model)
    if whole and agnostic is not None and box in sd and cls in sd:
        try:
            box_regression_is_agnostic(sd[box].shape[0], sd[cls].shape[0] - 1, "resnet_det", agnostic)
        except WeightsError as e:
            raise WeightsError(f"MODEL.WEIGHTS {path} ({kind}): {e}") from None
    in_file = {n: v for k, v in sd.items() if (n := _resnet_name(k)) is not None}
    in_model = {n: v for k, v in target.items() if (n := _resnet_name(k)) is not None}
    if in_file and in_model:
        mismatch = block_mismatch(block_structure(in_file, "torchvision"), block_structure(in_model, "torchvision"),
                                  "the ResNet this config builds", extra_only=True)
        if mismatch:
            raise WeightsError(f"MODEL.WEIGHTS {path} ({kind}): {mismatch}: these are a deeper network's weights, "
                               "and loading them would run it truncated. Set MODEL.RESNETS.DEPTH (and the rest of "
                               "the config) to the network the weights were trained as, or give weights of this "
                               "depth.")


def load_model_weights(model: nn.Module, path: str, *, require_all: bool = False, use_ema: bool = False) -> dict:
    """Load MODEL.WEIGHTS into `model`; returns and logs the report (loaded / reinitialized /
    missing / unused).

    What the file is decides what it must provide. A whole-model checkpoint (resnet_det's, or a
    detectron2 detector, converted part by part: checkpoint/heads.py) must fill every tensor; only the
    class layers of another NUM_CLASSES may keep their initialisation (a warning lists them).
    Backbone weights (ImageNet, any naming) must fill the ResNet; the parts around it (FPN, RPN, box
    head, predictor, the Localizer's head) start from their initialisation by design, logged as such.
    A file that matches nothing, leaves required tensors missing or differs in another shape raises
    WeightsError naming the file, what is missing and what the file holds.

    ``require_all``: the file must hold exactly this model (every tensor loads, none is left over or
    re-initialised), as export needs: a deployed model with random layers is wrong.

    ``use_ema``: a training checkpoint's weights EMA (MODEL_EMA) where it holds one (logged), as
    --eval-only evaluates what training evaluated.
    """
    model = unwrap_model(model)
    sd, _ = read_weights(path, ema=use_ema)
    in_file = len(sd)
    target = model.state_dict()
    sd, dropped, kind, whole = _to_model_names(sd, model, target, path)
    _check_fit(sd, model, target, path, kind, whole)
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
    if loaded and require_all and (missing or unused or dropped or reinit or wrong_shape):
        raise WeightsError(_not_exact_message(path, model, list(target), missing, dropped + unused,
                                              reinit + wrong_shape))
    if not loaded or required or wrong_shape:
        raise WeightsError(_mismatch_message(path, kind, in_file, list(target), loaded, required, wrong_shape,
                                             unused))
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


def _mismatch_message(path, kind, in_file, target, loaded, required, wrong_shape, unused) -> str:
    if not loaded:
        what = (f"matches none of the model's {len(target)} tensors: none of its {in_file} tensors matches "
                f"one in name and shape (the model's are named like {', '.join(target[:3])}; ResNet weights "
                "may also use detectron2's or MSRA's names).")
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


def _not_exact_message(path, model, target, missing, unused, reshaped) -> str:
    """One paragraph for require_all: which tensors of `path` do not fit the model, and the fix."""
    def some(keys):
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    order = {k: i for i, k in enumerate(target)}  # the model's order: the first missing block first
    parts = []
    if reshaped:
        reshaped = sorted(reshaped, key=lambda r: order.get(r.split(" ")[0], len(order)))
        parts.append(f"{len(reshaped)} differ in shape (file -> model: {'; '.join(reshaped[:3])})")
    if missing:
        parts.append(f"{len(missing)} of the model's tensors are missing from the file ({some(missing)})")
    if unused:
        parts.append(f"{len(unused)} of the file's tensors are not in the network ({some(unused)})")
    return (f"MODEL.WEIGHTS {path} does not hold exactly the {type(model).__name__} this config builds "
            f"({len(target)} tensors): {'; '.join(parts)}. Every trained tensor must load exactly; use the "
            "config the weights were trained with (MODEL.CLASSIFIER.STYLE, MODEL.CLASSIFIER.CIFAR_DEPTH or "
            "MODEL.RESNETS.DEPTH, MODEL.CLASSIFIER.NUM_CLASSES, MODEL.RESNETS.SHORTCUT), or that config's weights.")


def _summarize(keys: list[str], limit: int = 12) -> str:
    groups: dict[str, int] = {}
    for k in keys:
        group = ".".join(k.split(".")[:3])
        groups[group] = groups.get(group, 0) + 1
    parts = [f"{g} ({n})" if n > 1 else g for g, n in sorted(groups.items())]
    more = f" ... ({len(parts) - limit} more groups)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more
