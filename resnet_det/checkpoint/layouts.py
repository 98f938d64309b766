"""Where backbone weights sit inside whole-detector state dicts, for each framework.

A ResNet checkpoint (key_map's names) becomes a detector's by a prefix, and in C4 by moving res5
(conv5_x) into the box head: Appendix A runs "all of conv5_x" per region after RoI pooling.

| layout         | stem..res4 (+res5 in FPN)       | C4 res5 head                             |
|----------------|---------------------------------|------------------------------------------|
| resnet_det-C4  | backbone.body.<torchvision>     | roi_heads.box_head.res5.<i>.<torchvision> |
| resnet_det-FPN | backbone.body.<torchvision>     | -                                        |
| detectron2-C4  | backbone.<detectron2>           | roi_heads.res5.<i>.<detectron2>          |
| detectron2-FPN | backbone.bottom_up.<detectron2> | -                                        |
| d2plugin-C4    | backbone.body.<torchvision>     | roi_heads.res5.<i>.<detectron2>          |
| d2plugin-FPN   | backbone.bottom_up.body.<tv>    | -                                        |

The d2plugin layouts are detectron2 models whose backbone is resnet_det's (integrations/detectron2.py):
our module names under the backbone, detectron2's own Res5ROIHeads on top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .heads import convert_heads
from .key_map import CONVENTIONS, FIELDS, TABLE, ConversionReport, convert_state_dict, parse_key


@dataclass(frozen=True)
class Layout:
    convention: str              # names of the backbone part
    body_prefix: str             # prefix of the backbone's keys
    res5_prefix: str | None = None       # C4: prefix of the res5 box head
    res5_convention: str | None = None   # C4: names inside that head


LAYOUTS: dict[str, Layout] = {
    "resnet_det-C4": Layout("torchvision", "backbone.body.", "roi_heads.box_head.res5.", "torchvision"),
    "resnet_det-FPN": Layout("torchvision", "backbone.body."),
    "detectron2-C4": Layout("detectron2", "backbone.", "roi_heads.res5.", "detectron2"),
    "detectron2-FPN": Layout("detectron2", "backbone.bottom_up."),
    "d2plugin-C4": Layout("torchvision", "backbone.body.", "roi_heads.res5.", "detectron2"),
    "d2plugin-FPN": Layout("torchvision", "backbone.bottom_up.body."),
}


def _stage5_prefix(convention: str) -> str:
    """'layer4.' (torchvision) / 'res5.' (detectron2): what a res5 block key starts with."""
    return TABLE["conv"][convention].split("{block}")[0].format(stage=FIELDS["stage"][convention][5])


def _check_layout(layout: str) -> Layout:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


def detect_layout(sd: dict) -> str | None:
    """The detector layout of `sd`'s keys, or None for a bare backbone/classifier state dict."""
    keys = list(sd)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("backbone.bottom_up.body."):
        return "d2plugin-FPN"
    if has("backbone.bottom_up."):
        return "detectron2-FPN"
    if has("backbone.body."):
        if has("roi_heads.res5."):
            return "d2plugin-C4"
        # Without a res5 head (FPN, or a C4 checkpoint of the backbone alone) splitting is the same.
        return "resnet_det-C4" if has("roi_heads.box_head.res5.") else "resnet_det-FPN"
    if has("backbone.stem.") or has("backbone.res") or has("roi_heads.res5."):
        return "detectron2-C4"
    return None


def detect_convention(sd: dict) -> str:
    """The convention most of `sd`'s ResNet keys parse in (key_map's table); a ValueError (with
    examples) if none fits. For a whole detector's state dict its backbone part decides."""
    layout = detect_layout(sd)
    if layout is not None:
        sd = split_detector(sd, layout)[0]
    counts = {c: sum(parse_key(k, c) is not None for k in sd) for c in CONVENTIONS}
    best = max(counts, key=counts.get)
    if counts[best] == 0:
        sample = ", ".join(list(sd)[:5]) or "(empty)"
        raise ValueError(f"no key of this state dict is a ResNet parameter name in any known convention "
                         f"(first keys: {sample}); expected names like 'layer1.0.conv1.weight' "
                         "(torchvision), 'res2.0.conv1.weight' (detectron2) or 'res2_0_branch2a_w' (MSRA)")
    return best


def split_detector(sd: dict, layout: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(backbone state dict in the layout's convention, every other tensor under its own key).

    In C4 the head's res5 blocks come back as the backbone's stage 5 (`layer4.*` / `res5.*`).
    """
    lay = _check_layout(layout)
    backbone, head, rest = {}, {}, {}
    for key, value in sd.items():
        if lay.res5_prefix and key.startswith(lay.res5_prefix):
            head[_stage5_prefix(lay.res5_convention) + key[len(lay.res5_prefix):]] = value
        elif key.startswith(lay.body_prefix):
            backbone[key[len(lay.body_prefix):]] = value
        else:
            rest[key] = value
    if head and lay.res5_convention != lay.convention:
        converted, report = convert_state_dict(head, lay.res5_convention, lay.convention, log=False)
        stage5 = _stage5_prefix(lay.res5_convention)
        for k in report.unmatched:  # not a ResNet block parameter: back under its own name
            rest[lay.res5_prefix + k[len(stage5):]] = head[k]
        head = converted
    backbone.update(head)
    return backbone, rest


def join_detector(sd: dict, src: str, layout: str, *, log: bool = True
                  ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Place a backbone/classifier state dict (convention `src`) at a detector's names.

    The classifier (`fc`) has no place in a detector and is reported as dropped.
    """
    lay = _check_layout(layout)
    converted, report = convert_state_dict(sd, src, lay.convention, log=False)
    renamed: dict[str, str] = {}  # key in lay.convention -> detector key
    res5: list[str] = []
    for key in converted:
        kind, fields = parse_key(key, lay.convention)
        if kind == "fc":
            continue
        if lay.res5_prefix and fields.get("stage") == 5:
            res5.append(key)
        else:
            renamed[key] = lay.body_prefix + key
    if res5:
        # C4: conv5_x runs per region after RoI pooling (Appendix A), so it lives in the box head.
        _, head = convert_state_dict({k: converted[k] for k in res5}, lay.convention,
                                     lay.res5_convention, log=False)
        stage5 = _stage5_prefix(lay.res5_convention)
        renamed.update({k: lay.res5_prefix + new[len(stage5):] for k, new in head.converted.items()})
    for src_key, key in list(report.converted.items()):
        if key in renamed:
            report.converted[src_key] = renamed[key]
        else:
            del report.converted[src_key]
            report.dropped[src_key] = "a detector has no ImageNet classifier"
    report.synthesized = [renamed[k] for k in report.synthesized]
    report.dst = f"{report.dst} ({layout})"
    if log:
        report.log()
    return {renamed[k]: v for k, v in converted.items() if k in renamed}, report


def head_framework(layout: str) -> str:
    """Whose FPN / RPN / box-head names a layout uses: the d2plugin layouts are detectron2 models."""
    _check_layout(layout)
    return "resnet_det" if layout.startswith("resnet_det-") else "detectron2"


def convert_detector(sd: dict, src_layout: str, dst_layout: str, *, anchor_grid: tuple[int, int] | None = None,
                     fpn_first_level: int = 2, cls_agnostic: bool | None = None
                     ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """A whole detector's state dict from one layout to another: backbone through the ResNet table
    (key_map), FPN / RPN / box head / predictor through the head table (heads.py; `cls_agnostic`: the
    config's CLS_AGNOSTIC_BBOX_REG, see heads.box_regression_is_agnostic). Every source key is converted
    or listed in `report.unmatched`; nothing is logged (the caller decides)."""
    backbone, rest = split_detector(sd, src_layout)
    out, report = join_detector(backbone, LAYOUTS[src_layout].convention, dst_layout, log=False)
    heads, head_report = convert_heads(rest, head_framework(src_layout), head_framework(dst_layout),
                                       anchor_grid=anchor_grid, fpn_first_level=fpn_first_level,
                                       cls_agnostic=cls_agnostic)
    out.update(heads)
    if head_framework(dst_layout) == "detectron2":  # its FrozenBN, the model zoo's norm, has no counter
        for key in [k for k in out if k.endswith("num_batches_tracked")]:
            del out[key]
            src_key = next((s for s, d in report.converted.items() if d == key), key)
            report.converted.pop(src_key, None)
            report.dropped[src_key] = "detectron2's FrozenBN keeps no batch counter"
    report.src, report.dst = src_layout, dst_layout
    report.converted.update(head_report.converted)
    report.synthesized += head_report.synthesized
    report.unmatched += head_report.unmatched
    return out, report
