"""The detector parts around the ResNet (FPN, RPN head, box head, box predictor): names and value
layouts in resnet_det (torchvision's modules) and detectron2, used in both directions.

    part            resnet_det                                  detectron2
    FPN lateral     backbone.fpn.inner_blocks.{level-2}.0.*     backbone.fpn_lateral{level}.*
    FPN output      backbone.fpn.layer_blocks.{level-2}.0.*     backbone.fpn_output{level}.*
    RPN conv        rpn.head.conv.0.0.*                         proposal_generator.rpn_head.conv.*
    RPN objectness  rpn.head.cls_logits.*                       proposal_generator.rpn_head.objectness_logits.*
    RPN deltas      rpn.head.bbox_pred.*                        proposal_generator.rpn_head.anchor_deltas.*
    box head fc     roi_heads.box_head.fc{6,7}.*                roi_heads.box_head.fc{1,2}.*
    classifier      roi_heads.box_predictor.cls_score.*         (same name)
    box regression  roi_heads.box_predictor.bbox_pred.*         (same name)

Values differ in two places, converted rather than re-initialised:
- Anchors per location: torchvision's AnchorGenerator lists them ratio-major (for each ratio, each
  size), detectron2's size-major (anchor_generator.py, generate_cell_anchors). With several sizes on
  one map (C4: 5 sizes x 3 ratios) the RPN's output channels are permuted.
- Box predictor: torchvision puts the background class first and predicts a box for it too
  ((K+1) x 4 outputs); detectron2 puts it last and predicts K x 4 (roi_heads/fast_rcnn.py). The
  background's box is never used at test time; converting to ours fills it with zeros.
"""
from __future__ import annotations

import re

import torch

from ..utils.errors import WeightsError
from .key_map import ConversionReport

FRAMEWORKS = ("resnet_det", "detectron2")
HEAD_TABLE: dict[str, dict[str, str]] = {
    "fpn_lateral": {"resnet_det": "backbone.fpn.inner_blocks.{level}.0.{cp}",
                    "detectron2": "backbone.fpn_lateral{level}.{cp}"},
    "fpn_output": {"resnet_det": "backbone.fpn.layer_blocks.{level}.0.{cp}",
                   "detectron2": "backbone.fpn_output{level}.{cp}"},
    "rpn_conv": {"resnet_det": "rpn.head.conv.0.0.{cp}", "detectron2": "proposal_generator.rpn_head.conv.{cp}"},
    "rpn_objectness": {"resnet_det": "rpn.head.cls_logits.{cp}",
                       "detectron2": "proposal_generator.rpn_head.objectness_logits.{cp}"},
    "rpn_deltas": {"resnet_det": "rpn.head.bbox_pred.{cp}",
                   "detectron2": "proposal_generator.rpn_head.anchor_deltas.{cp}"},
    "box_fc": {"resnet_det": "roi_heads.box_head.fc{fc}.{cp}", "detectron2": "roi_heads.box_head.fc{fc}.{cp}"},
    "cls_score": {"resnet_det": "roi_heads.box_predictor.cls_score.{cp}",
                  "detectron2": "roi_heads.box_predictor.cls_score.{cp}"},
    "bbox_pred": {"resnet_det": "roi_heads.box_predictor.bbox_pred.{cp}",
                  "detectron2": "roi_heads.box_predictor.bbox_pred.{cp}"},
}
# How a framework writes the integer fields, as an offset from the canonical value (FPN level: p2 = 2;
# box-head fc: the first is 1): torchvision's FPN lists count from the first level, its TwoMLPHead has
# fc6 and fc7.
_OFFSETS = {"resnet_det": {"level": None, "fc": 5}, "detectron2": {"level": 0, "fc": 0}}


def _pattern(template: str) -> re.Pattern:
    rx = re.escape(template).replace(r"\{level\}", r"(?P<level>\d+)").replace(r"\{fc\}", r"(?P<fc>\d+)")
    return re.compile(rx.replace(r"\{cp\}", r"(?P<cp>weight|bias)"))


_PATTERNS = {fw: [(kind, _pattern(t[fw])) for kind, t in HEAD_TABLE.items()] for fw in FRAMEWORKS}


def _offsets(framework: str, fpn_first_level: int) -> dict[str, int]:
    off = dict(_OFFSETS[framework])
    if off["level"] is None:
        off["level"] = -fpn_first_level
    return off


def parse_head_key(key: str, framework: str, fpn_first_level: int = 2) -> tuple[str, dict] | None:
    """(kind, canonical fields) of a head parameter name, or None."""
    off = _offsets(framework, fpn_first_level)
    for kind, pattern in _PATTERNS[framework]:
        m = pattern.fullmatch(key)
        if m:
            return kind, {f: (v if f == "cp" else int(v) - off[f]) for f, v in m.groupdict().items()}
    return None


def format_head_key(kind: str, fields: dict, framework: str, fpn_first_level: int = 2) -> str:
    off = _offsets(framework, fpn_first_level)
    return HEAD_TABLE[kind][framework].format(**{f: (v if f == "cp" else v + off[f]) for f, v in fields.items()})


def anchor_order(num_sizes: int, num_ratios: int) -> torch.Tensor:
    """Index i of torchvision's (ratio-major) anchor list -> the same anchor's index in detectron2's."""
    return torch.tensor([s * num_ratios + r for r in range(num_ratios) for s in range(num_sizes)])


def _anchor_grid(num_anchors: int, anchor_grid: tuple[int, int] | None) -> tuple[int, int]:
    if anchor_grid is None:  # both libraries default to 3 aspect ratios per size
        if num_anchors % 3:
            raise ValueError(f"the RPN head predicts {num_anchors} anchors per location; give the anchor "
                             "grid (number of sizes, number of aspect ratios) to convert its channel order")
        return num_anchors // 3, 3
    if anchor_grid[0] * anchor_grid[1] != num_anchors:
        raise ValueError(f"the RPN head predicts {num_anchors} anchors per location, but the model's anchor "
                         f"generator has {anchor_grid[0]} sizes x {anchor_grid[1]} aspect ratios; "
                         "MODEL.ANCHOR_GENERATOR does not describe these weights")
    return anchor_grid


def _permute_anchors(value: torch.Tensor, per_anchor: int, order: torch.Tensor) -> torch.Tensor:
    rows = value.reshape(len(order), per_anchor, *value.shape[1:])
    return rows[order].reshape(value.shape)


def _agnostic_name(agnostic: bool) -> str:
    return "class-agnostic" if agnostic else "class-aware"


def box_regression_is_agnostic(rows: int, num_classes: int, framework: str, cls_agnostic: bool | None = None,
                               where: str = "roi_heads.box_predictor.bbox_pred") -> bool:
    """Whether a box predictor with `rows` outputs for `num_classes` classes (background excluded) is
    class-agnostic (4 rows, one box for all) or class-aware (detectron2: 4 per class; resnet_det: 4 per
    class and the background's), decided with the config's MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG
    (`cls_agnostic`; None where no config is known). The row count alone cannot tell detectron2's
    class-aware head for ONE class (4 rows) from a class-agnostic one; WeightsError where the rows and
    the config disagree (naming both), or where they cannot tell and no config says."""
    aware_rows = 4 * num_classes + (4 if framework == "resnet_det" else 0)
    fits = [agnostic for agnostic, n in ((True, 4), (False, aware_rows)) if rows == n]
    if not fits:
        raise WeightsError(f"{where} has {rows} outputs for {num_classes} classes: neither class-agnostic (4) "
                           f"nor class-aware ({aware_rows}) regression in {framework}'s layout; the file is not a "
                           "box predictor for its own classifier")
    if cls_agnostic is None:
        if len(fits) > 1:
            raise WeightsError(f"{where} has 4 outputs for {num_classes} class: in {framework}'s layout that is "
                               "class-aware and class-agnostic regression alike. Say which: "
                               "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG in the config, or tools/convert_weights.py "
                               "--bbox-reg aware or --bbox-reg agnostic")
        return fits[0]
    if bool(cls_agnostic) not in fits:
        raise WeightsError(f"{where} has {rows} outputs for {num_classes} classes: {_agnostic_name(fits[0])} box "
                           f"regression, but the config builds {_agnostic_name(bool(cls_agnostic))} regression "
                           f"(MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG={bool(cls_agnostic)}); set "
                           f"MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG {not cls_agnostic} to load these weights, or "
                           f"give {_agnostic_name(bool(cls_agnostic))} weights")
    return bool(cls_agnostic)


def _predictor(cls: torch.Tensor, box: torch.Tensor | None, to_ours: bool, num_classes: int,
               cls_agnostic: bool | None = None):
    """Background last -> first (to_ours) or back; class-aware box rows gain (lose) the background's."""
    k = num_classes
    order = torch.cat([torch.tensor([k]), torch.arange(k)]) if to_ours else torch.cat([torch.arange(1, k + 1),
                                                                                        torch.tensor([0])])
    cls = cls[order]
    src = "detectron2" if to_ours else "resnet_det"
    if box is not None and not box_regression_is_agnostic(box.shape[0], k, src, cls_agnostic):
        box = torch.cat([box.new_zeros((4,) + box.shape[1:]), box]) if to_ours else box[4:]
    return cls, box  # class-agnostic: 4 rows, the same in both


def convert_heads(sd: dict, src: str, dst: str, *, anchor_grid: tuple[int, int] | None = None,
                  fpn_first_level: int = 2, cls_agnostic: bool | None = None
                  ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename (and re-lay out) detector head tensors from framework `src` to `dst` (see the table).

    Keys that are not head parameters are listed in `report.unmatched`. `anchor_grid` = (sizes,
    ratios) per location of the RPN's map(s); None assumes detectron2's default 3 ratios.
    `cls_agnostic`: the config's MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG (box_regression_is_agnostic);
    None: read off the rows, an error where they cannot tell.
    """
    for name, fw in (("src", src), ("dst", dst)):
        if fw not in FRAMEWORKS:
            raise ValueError(f"{name}={fw!r}: expected one of {', '.join(FRAMEWORKS)}")
    report = ConversionReport(src, dst)
    if src == "detectron2":  # torchvision's FPN lists count from the checkpoint's first level
        levels = [int(m["level"]) for k in sd for _, pat in _PATTERNS[src][:2] if (m := pat.fullmatch(k))]
        fpn_first_level = min(levels, default=fpn_first_level)
    parsed: dict[str, tuple[str, dict, torch.Tensor]] = {}
    for key, value in sd.items():
        p = parse_head_key(key, src, fpn_first_level)
        if key in ("pixel_mean", "pixel_std"):  # older detectron2 saved its input normalisation
            report.dropped[key] = "the input normalisation is MODEL.PIXEL_MEAN / PIXEL_STD of the config"
        elif p is None:
            report.unmatched.append(key)
        else:
            parsed[key] = (p[0], p[1], value if isinstance(value, torch.Tensor) else torch.as_tensor(value))
    out = {}
    if src == dst:
        return {k: v for k, (_, _, v) in parsed.items()}, report
    to_ours = dst == "resnet_det"
    by_kind = {(kind, f["cp"]): v for kind, f, v in parsed.values()}
    for key, (kind, fields, value) in parsed.items():
        if kind in ("rpn_objectness", "rpn_deltas"):
            per_anchor = 4 if kind == "rpn_deltas" else 1
            order = anchor_order(*_anchor_grid(value.shape[0] // per_anchor, anchor_grid))
            value = _permute_anchors(value, per_anchor, order if to_ours else torch.argsort(order))
        elif kind == "cls_score":
            k = value.shape[0] - 1
            value, _ = _predictor(value, None, to_ours, k)
        elif kind == "bbox_pred":
            cls = by_kind.get(("cls_score", fields["cp"]))
            if cls is None:
                raise ValueError(f"{key} without roi_heads.box_predictor.cls_score.{fields['cp']}: the number of "
                                 "classes is unknown, so the box rows cannot be converted")
            _, value = _predictor(cls, value, to_ours, cls.shape[0] - 1, cls_agnostic)
            if to_ours and value.shape[0] != 4:
                report.synthesized.append(f"{format_head_key(kind, fields, dst, fpn_first_level)}[:4]")
        new_key = format_head_key(kind, fields, dst, fpn_first_level)
        out[new_key] = value.contiguous()
        report.converted[key] = new_key
    return out, report
