"""Data health report for a registered detection set: counts, box statistics and the problems found.

COCO-format sets (metadata ``json_file``) are read from the raw json, not through the registered loader:
the loader clips, drops or refuses bad records (data/coco.py), which would hide exactly what this report
is for. Other sets (VOC, sets registered by a function) are checked on their dataset dicts. Nothing here
raises on bad data: every malformed record becomes a listed problem with its image id and file.

    report = dataset_health("shapes_train")
    print(report.text())
    report.plot("stats.png")
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..utils.errors import UserInputError
from .catalog import DatasetCatalog, MetadataCatalog

# The problem kinds, in the order the report lists them.
OUTSIDE = "box outside the image"
EMPTY = "zero or negative box size"
UNKNOWN_CATEGORY = "unknown category id"
DUPLICATE_IMAGE = "duplicate image id"
MISSING_FILE = "missing image file"
MALFORMED = "malformed record"
LOADER = "the registered loader refuses the set"
PROBLEM_KINDS = (OUTSIDE, EMPTY, UNKNOWN_CATEGORY, DUPLICATE_IMAGE, MISSING_FILE, MALFORMED, LOADER)


@dataclass
class Problem:
    kind: str
    image_id: object  # as written in the data (may be malformed itself)
    file_name: str
    detail: str

    def line(self) -> str:
        if self.image_id is None and self.kind == LOADER:
            return self.detail  # the loader's own message names its file
        return f"image id {self.image_id!r} ({self.file_name or 'no file name'}): {self.detail}"


@dataclass
class HealthReport:
    """What ``dataset_health`` found; ``text()`` and ``plot()`` present it."""

    name: str
    source: str  # the json file, or "dataset dicts"
    num_images: int = 0
    class_names: list = field(default_factory=list)
    boxes_per_class: Counter = field(default_factory=Counter)  # class name -> boxes (crowd included)
    num_crowd: int = 0
    box_wh: list = field(default_factory=list)  # (w, h) of the well-formed, non-empty boxes
    image_wh: list = field(default_factory=list)
    boxes_per_image: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def num_boxes(self) -> int:
        return sum(self.boxes_per_class.values())

    def add(self, kind: str, image_id, file_name: str, detail: str) -> None:
        self.problems.append(Problem(kind, image_id, file_name, detail))

    def text(self, max_per_kind: int | None = None) -> str:
        """The report; ``max_per_kind`` lists at most that many problems of each kind (None: all)."""
        lines = [f"data set {self.name} ({self.source})",
                 (f"  images: {self.num_images}, boxes: {self.num_boxes} ({self.num_crowd} crowd), "
                  f"classes: {len(self.class_names)}")]
        if self.boxes_per_image:
            bpi = np.asarray(self.boxes_per_image)
            lines.append(f"  boxes per image: mean {bpi.mean():.1f}, max {bpi.max()}, "
                         f"images without boxes {int((bpi == 0).sum())}")
        width = max([len(str(c)) for c in self.boxes_per_class] + [5])
        lines.append("  boxes per class:")
        for c in list(self.class_names) + sorted(set(self.boxes_per_class) - set(self.class_names), key=str):
            lines.append(f"    {str(c):<{width}} {self.boxes_per_class.get(c, 0)}")
        if self.box_wh:
            wh = np.asarray(self.box_wh, np.float64)
            size, aspect = np.sqrt(wh[:, 0] * wh[:, 1]), wh[:, 0] / wh[:, 1]
            q = lambda v: " / ".join(f"{x:.3g}" for x in np.percentile(v, [0, 5, 50, 95, 100]))  # noqa: E731
            lines.append(f"  box size sqrt(w*h) px, min / 5% / median / 95% / max: {q(size)}")
            lines.append(f"  box aspect w/h,        min / 5% / median / 95% / max: {q(aspect)}")
            lines.append(f"  COCO area ranges: small {int((size < 32).sum())}, medium "
                         f"{int(((size >= 32) & (size < 96)).sum())}, large {int((size >= 96).sum())}")
        by_kind = defaultdict(list)
        for p in self.problems:
            by_kind[p.kind].append(p)
        lines.append(f"  problems: {len(self.problems)}" + ("" if self.problems else " (none found)"))
        for kind in PROBLEM_KINDS:
            found = by_kind.get(kind, [])
            if not found:
                continue
            lines.append(f"    {kind}: {len(found)}")
            shown = found if max_per_kind is None else found[:max_per_kind]
            lines.extend(f"      {p.line()}" for p in shown)
            if len(shown) < len(found):
                lines.append(f"      ... and {len(found) - len(shown)} more (all of them in the report file)")
        return "\n".join(lines)

    def plot(self, output: str) -> str:
        """stats.png: boxes per class, box size and aspect histograms, image sizes."""
        from matplotlib.figure import Figure  # a bare Figure: no pyplot backend needed (as utils/plot.py)

        fig = Figure(figsize=(13, 8))
        ax = fig.subplots(2, 2)
        names = list(self.class_names) + sorted(set(self.boxes_per_class) - set(self.class_names), key=str)
        ax[0, 0].bar(range(len(names)), [self.boxes_per_class.get(c, 0) for c in names], color="C0")
        ax[0, 0].set_xticks(range(len(names)), [str(c) for c in names], rotation=45 if len(names) > 8 else 0,
                            ha="right" if len(names) > 8 else "center", fontsize=8 if len(names) > 20 else 10)
        ax[0, 0].set_title(f"boxes per class ({self.num_boxes} boxes, {self.num_images} images)")
        wh = np.asarray(self.box_wh, np.float64).reshape(-1, 2)
        if len(wh):
            size = np.sqrt(wh[:, 0] * wh[:, 1])
            bins = np.geomspace(max(size.min(), 0.5), max(size.max(), 1.0) * 1.01, 40)
            ax[0, 1].hist(size, bins=bins, color="C1")
            ax[0, 1].set_xscale("log")
            for edge in (32, 96):  # COCO's small / medium / large limits
                ax[0, 1].axvline(edge, color="k", linestyle="--", linewidth=0.8)
            aspect = wh[:, 0] / wh[:, 1]
            ax[1, 0].hist(aspect, bins=np.geomspace(aspect.min(), aspect.max() * 1.01 + 1e-9, 40), color="C2")
            ax[1, 0].set_xscale("log")
            _plain_log_ticks(ax[0, 1], size.min(), size.max(), 2.0 ** np.arange(-2, 14))
            _plain_log_ticks(ax[1, 0], aspect.min(), aspect.max(), 2.0 ** np.arange(-6, 7))
        ax[0, 1].set_title("box size sqrt(w*h), px (dashed: COCO 32 / 96)")
        ax[1, 0].set_title("box aspect ratio w / h")
        iw = np.asarray(self.image_wh, np.float64).reshape(-1, 2)
        if len(iw):
            ax[1, 1].scatter(iw[:, 0], iw[:, 1], s=8, alpha=0.5, color="C3")
        ax[1, 1].set_title("image sizes")
        ax[1, 1].set_xlabel("width px")
        ax[1, 1].set_ylabel("height px")
        for a in ax.flat:
            a.grid(True, alpha=0.3)
        fig.suptitle(f"{self.name}: {len(self.problems)} problems found (see the report)")
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        fig.savefig(output, dpi=90)
        return output


def _plain_log_ticks(ax, lo: float, hi: float, candidates) -> None:
    """Log axis ticked at the ``candidates`` within [lo, hi], written as plain numbers (not 2x10^1)."""
    from matplotlib.ticker import NullFormatter

    ticks = [t for t in candidates if lo / 1.5 <= t <= hi * 1.5]
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _number(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)


def _check_box(report: HealthReport, x0, y0, x1, y1, width, height, iid, file_name: str, where: str) -> bool:
    """Record size / outside problems of one XYXY box; True when it is a usable (non-empty) box."""
    if x1 <= x0 or y1 <= y0:
        report.add(EMPTY, iid, file_name, f"{where}: box {x1 - x0:g} x {y1 - y0:g} px (xyxy "
                                          f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}])")
        return False
    if _number(width) and _number(height) and (x0 < 0 or y0 < 0 or x1 > width or y1 > height):
        inside = not (x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height)
        report.add(OUTSIDE, iid, file_name, f"{where}: xyxy [{x0:g}, {y0:g}, {x1:g}, {y1:g}] "
                                            f"{'extends past' if inside else 'lies entirely outside'} "
                                            f"the {width:g}x{height:g} image")
    report.box_wh.append((x1 - x0, y1 - y0))
    return True


def check_coco_json(json_file: str, image_root: str, name: str | None = None) -> HealthReport:
    """Health report of a COCO instances json read as it is on disk (no record is repaired or dropped)."""
    report = HealthReport(name or os.path.basename(json_file), json_file)
    try:
        with open(json_file, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        report.add(MALFORMED, None, json_file, f"the json cannot be read: {e}")
        return report
    if not isinstance(data, dict):
        report.add(MALFORMED, None, json_file, f"expected a JSON object, got {type(data).__name__}")
        return report
    listed = lambda key: [r for r in data.get(key) or [] if isinstance(r, dict)]  # noqa: E731
    cats = {c.get("id"): str(c.get("name", c.get("id"))) for c in listed("categories")}
    report.class_names = [cats[k] for k in sorted(cats, key=str)]
    images: dict = {}
    for i, img in enumerate(listed("images")):
        iid, fname = img.get("id"), img.get("file_name")
        fname = fname if isinstance(fname, str) else ""
        if iid is None or not isinstance(iid, (int, str)):
            report.add(MALFORMED, iid, fname, f"images[{i}] has no usable 'id'")
            continue
        if iid in images:
            report.add(DUPLICATE_IMAGE, iid, fname, f"images[{i}] repeats the id of {images[iid]['file_name']!r}")
            continue
        w, h = img.get("width"), img.get("height")
        if not (_number(w) and _number(h) and w > 0 and h > 0):
            report.add(MALFORMED, iid, fname, f"width/height {w!r} x {h!r} are not positive numbers")
        else:
            report.image_wh.append((w, h))
        if not fname:
            report.add(MALFORMED, iid, fname, "no 'file_name'")
        elif not os.path.isfile(os.path.join(image_root, fname)):
            report.add(MISSING_FILE, iid, fname, f"{os.path.join(image_root, fname)} does not exist")
        images[iid] = {"file_name": fname, "width": w, "height": h}
    report.num_images = len(images)
    per_image = Counter()
    for j, ann in enumerate(listed("annotations")):
        iid, aid = ann.get("image_id"), ann.get("id", f"#{j}")
        img = images.get(iid) if isinstance(iid, (int, str)) else None
        fname = img["file_name"] if img else ""
        where = f"annotation {aid}"
        if img is None:
            report.add(MALFORMED, iid, fname, f"{where}: image_id names no image in 'images'")
            continue
        cid = ann.get("category_id")
        if cid not in cats:
            report.add(UNKNOWN_CATEGORY, iid, fname, f"{where}: category_id {cid!r} is not in 'categories' "
                                                     f"(ids {sorted(cats, key=str)})")
        box = ann.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_number(v) for v in box)):
            report.add(MALFORMED, iid, fname, f"{where}: bbox {box!r} is not [x, y, width, height] numbers")
            continue
        x, y, bw, bh = (float(v) for v in box)
        if _check_box(report, x, y, x + bw, y + bh, img["width"], img["height"], iid, fname, where):
            report.boxes_per_class[cats.get(cid, f"unknown id {cid}")] += 1
            report.num_crowd += int(bool(ann.get("iscrowd", 0)))
            per_image[iid] += 1
    report.boxes_per_image = [per_image[i] for i in images]
    return report


def check_dataset_dicts(dicts: list, class_names, name: str) -> HealthReport:
    """Health report of dataset dicts (docs/CONTRACTS.md) as a registered loader returned them."""
    report = HealthReport(name, "dataset dicts", class_names=list(class_names or []))
    seen: dict = {}
    for d in dicts:
        iid, fname = d.get("image_id"), d.get("file_name", "")
        if iid in seen:
            report.add(DUPLICATE_IMAGE, iid, fname, f"also used by {seen[iid]!r}")
        seen.setdefault(iid, fname)
        if not os.path.isfile(fname):
            report.add(MISSING_FILE, iid, fname, "the file does not exist")
        w, h = d.get("width"), d.get("height")
        report.image_wh.append((w, h))
        n = 0
        for k, a in enumerate(d.get("annotations", [])):
            cid = a.get("category_id")
            known = isinstance(cid, int) and 0 <= cid < len(report.class_names)
            if not known:
                report.add(UNKNOWN_CATEGORY, iid, fname, f"annotation {k}: category id {cid!r} is not in "
                                                         f"0..{len(report.class_names) - 1}")
            box = a.get("bbox")
            if not (isinstance(box, (list, tuple, np.ndarray)) and len(box) == 4 and all(_number(v) for v in box)):
                report.add(MALFORMED, iid, fname, f"annotation {k}: bbox {box!r} is not [x0, y0, x1, y1] numbers")
                continue
            if _check_box(report, *(float(v) for v in box), w, h, iid, fname, f"annotation {k}"):
                report.boxes_per_class[report.class_names[cid] if known else f"unknown id {cid}"] += 1
                report.num_crowd += int(bool(a.get("iscrowd", 0)))
                n += 1
        report.boxes_per_image.append(n)
    report.num_images = len(seen)
    return report


def dataset_health(name: str) -> HealthReport:
    """Health report of registered set ``name``: its raw COCO json when it has one (metadata ``json_file``,
    ``image_root``), else its dataset dicts. A loader that refuses the data is itself a listed problem."""
    meta = MetadataCatalog.get(name)
    dicts, refusal = None, None
    try:
        dicts = DatasetCatalog.get(name)  # also generates the built-in shapes sets on first use
    except UserInputError as e:
        refusal = str(e)
    json_file, image_root = meta.get("json_file"), meta.get("image_root")
    if json_file and os.path.isfile(json_file):
        report = check_coco_json(json_file, image_root or os.path.dirname(json_file), name)
    elif dicts is not None:
        report = check_dataset_dicts(dicts, meta.get("thing_classes"), name)
    else:
        report = HealthReport(name, "nothing readable")
    if refusal:
        report.add(LOADER, None, json_file or "", refusal)
    return report
