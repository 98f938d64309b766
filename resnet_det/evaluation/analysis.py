"""Where a detector fails, read from pycocotools' own evaluation (no second matching implementation).

* ``pr_curves``: per-class precision/recall at IoU 0.5 and 0.75 -- COCOeval's ``eval["precision"]``
  [T, R, K, A, M] at area "all", 100 detections.
* ``error_breakdown``: the COCO error analysis of Hoiem et al. as cocoapi's ``analyze()`` / Detectron /
  mmdetection's coco_error_analysis compute it, by re-running COCOeval with modified parameters and
  ground truth: C75 and C50 (PR at IoU .75 / .5), Loc (IoU .1: localisation errors forgiven), Sim (also
  detections on objects of another class of the same supercategory ignored), Oth (detections on objects
  of any other class ignored), BG (all remaining false positives removed: precision 1 wherever Oth
  reaches the recall) and FN (recall 1: every miss found). Each is an area under a PR curve (an AP),
  increasing from C75 to FN; the gap between two neighbours is what that error type costs. The
  relabelled objects are *ignored* (pycocotools' gtIgnore: neither a miss nor a match that counts), as
  in cocoapi's MATLAB analyze; the Python ports' ``ignored_split`` flag is not read by pycocotools.
* ``confusion_matrix``: class-agnostic COCOeval matching (``params.useCats = 0``) at one IoU, on the
  detections scoring at least a threshold: matched pairs count (true class, predicted class);
  unmatched ground truth counts (class, background), unmatched detections (background, class).
* ``image_errors``: per image, the true positives, false positives and misses of COCOeval's own
  per-image matching (``evalImgs``) at IoU 0.5, for the worst images' drawings.

``tools/analyze_results.py`` writes them as pictures, tables and csv files.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..utils.errors import DataError, MissingFileError
from ..utils.io import quiet_pycocotools

logger = logging.getLogger(__name__)

__all__ = ["ERROR_TYPES", "load_gt_and_results", "pr_curves", "error_breakdown", "confusion_matrix",
           "image_errors", "ImageErrors"]

ERROR_TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
MAX_DETS = 100  # COCO's per-image detection budget, used throughout


def load_gt_and_results(gt_path: str, results_path: str) -> tuple[COCO, COCO, list[dict]]:
    """The ground truth and results as pycocotools COCO objects, checked so that the user's mistakes
    (missing files, a results file made for another ground truth, no detections) are DataErrors
    naming the file and the fix, not pycocotools assertions."""
    for what, path in (("--gt", gt_path), ("--results", results_path)):
        if not os.path.isfile(path):
            raise MissingFileError(f"{what} {path!r} does not exist")
    try:
        gt, _ = quiet_pycocotools(COCO, gt_path)
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"--gt {gt_path!r} is not a COCO instances json ({type(e).__name__}: {e}); it needs "
                        "'images', 'annotations' and 'categories'") from None
    try:
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"--results {results_path!r} is not json ({e})") from None
    if isinstance(results, dict) and "annotations" in results:
        results = results["annotations"]
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise DataError(f"--results {results_path!r}: expected a list of COCO result records "
                        "{image_id, category_id, bbox [x, y, w, h], score}, as tools/train_net.py --eval-only "
                        "writes to OUTPUT_DIR/inference/<data set>/inference/coco_instances_results.json")
    if not results:
        raise DataError(f"--results {results_path!r} holds no detections: nothing to analyse. Was "
                        "MODEL.ROI_HEADS.SCORE_THRESH_TEST (or --confidence-threshold) too high?")
    need = {"image_id", "category_id", "bbox", "score"}
    for i, r in enumerate(results):
        if not need <= set(r) or len(r["bbox"]) != 4:
            raise DataError(f"--results {results_path!r}: record {i} ({r}) lacks {sorted(need - set(r))} or a "
                            "4-number bbox; expected {image_id, category_id, bbox [x, y, w, h], score}")
    img_ids, cat_ids = set(gt.getImgIds()), set(gt.getCatIds())
    stray_imgs = sorted({r["image_id"] for r in results} - img_ids)
    stray_cats = sorted({r["category_id"] for r in results} - cat_ids)
    if stray_imgs or stray_cats:
        parts = []
        if stray_imgs:
            parts.append(f"{len(stray_imgs)} image id(s) that --gt does not have (e.g. {stray_imgs[:5]})")
        if stray_cats:
            parts.append(f"category id(s) {stray_cats[:10]} that --gt does not have (it has {sorted(cat_ids)[:10]})")
        raise DataError(f"--results {results_path!r} names {' and '.join(parts)}: it was made for another "
                        f"ground truth than --gt {gt_path!r}. Pass the json the results were evaluated against "
                        "(tools/train_net.py --eval-only writes both under OUTPUT_DIR/inference/<data set>/inference/)")
    dt, _ = quiet_pycocotools(gt.loadRes, copy.deepcopy(results))
    return gt, dt, results


def _evaluate(gt: COCO, dt: COCO, iou_thrs, cat_ids=None, use_cats: bool = True, cls=COCOeval) -> COCOeval:
    ev = cls(gt, dt, "bbox")
    ev.params.iouThrs = np.array(iou_thrs, dtype=np.float64)
    ev.params.maxDets = [MAX_DETS]
    ev.params.areaRng, ev.params.areaRngLbl = [ev.params.areaRng[0]], ["all"]
    if cat_ids is not None:
        ev.params.catIds = list(cat_ids)
    ev.params.useCats = int(use_cats)
    quiet_pycocotools(ev.evaluate)
    quiet_pycocotools(ev.accumulate)
    return ev


def _class_names(gt: COCO) -> tuple[list[int], list[str]]:
    cat_ids = sorted(gt.getCatIds())
    return cat_ids, [gt.cats[c]["name"] for c in cat_ids]


def pr_curves(gt: COCO, dt: COCO, iou_thrs=(0.5, 0.75)) -> dict:
    """{"recall": (101,), "precision": {iou: (K, 101)} with NaN where a class has no ground truth,
    "ap": {iou: (K,)}, "classes": names}."""
    cat_ids, names = _class_names(gt)
    ev = _evaluate(gt, dt, iou_thrs, cat_ids)
    prec = ev.eval["precision"][:, :, :, 0, 0]  # T, R, K
    prec = np.where(prec < 0, np.nan, prec)
    out = {"recall": np.asarray(ev.params.recThrs), "classes": names, "precision": {}, "ap": {}}
    for t, iou in enumerate(iou_thrs):
        out["precision"][iou] = prec[t].T
        out["ap"][iou] = np.nanmean(prec[t], axis=0) if prec.size else np.zeros(0)
    return out


class _IgnoringCOCOeval(COCOeval):
    """COCOeval that also ignores ground truth flagged ``analysis_ignore`` (pycocotools resets its own
    ``ignore`` field from ``iscrowd``); ignored objects are matched last and matches on them do not count."""

    def _prepare(self):
        super()._prepare()
        for gts in self._gts.values():
            for g in gts:
                if g.get("analysis_ignore"):
                    g["ignore"] = 1


def _relabelled_gt(gt: COCO, cat_id: int, others: set) -> COCO:
    """A copy of the ground truth where objects of ``others`` become ignored objects of ``cat_id``."""
    data = copy.deepcopy(gt.dataset)
    for a in data["annotations"]:
        if a["category_id"] in others:
            a["category_id"], a["analysis_ignore"] = cat_id, 1
    out = COCO()
    out.dataset = data
    quiet_pycocotools(out.createIndex)
    return out


def error_breakdown(gt: COCO, dt: COCO) -> dict:
    """{"recall": (101,), "precision": (7, K, 101) per ERROR_TYPES (NaN for classes without ground
    truth), "ap": (7, K), "overall_precision": (7, 101), "overall_ap": (7,), "classes": names}."""
    cat_ids, names = _class_names(gt)
    base = _evaluate(gt, dt, [0.75, 0.5, 0.1], cat_ids).eval["precision"][:, :, :, 0, 0]  # 3, R, K
    R, K = base.shape[1], base.shape[2]
    ps = np.zeros((len(ERROR_TYPES), R, K))
    ps[:3] = base
    supercat = {c: gt.cats[c].get("supercategory") for c in cat_ids}
    for k, cat_id in enumerate(cat_ids):
        if (base[:, :, k] < 0).all():
            ps[3:, :, k] = -1
            continue
        same_super = {c for c in cat_ids if c != cat_id and supercat[c] is not None and supercat[c] == supercat[cat_id]}
        for row, others in ((3, same_super), (4, set(cat_ids) - {cat_id})):
            ev = _evaluate(_relabelled_gt(gt, cat_id, others), dt, [0.1], [cat_id], cls=_IgnoringCOCOeval)
            ps[row, :, k] = ev.eval["precision"][0, :, 0, 0, 0]
    valid = ps[0] >= 0  # R, K: classes with ground truth
    ps[5] = np.where(valid, ps[4] > 0, -1)
    ps[6] = np.where(valid, 1.0, -1)
    prec = np.where(ps < 0, np.nan, ps)
    with np.errstate(invalid="ignore"):
        overall = np.nanmean(prec, axis=2) if valid.any() else np.zeros((len(ERROR_TYPES), R))
    return {"recall": np.linspace(0, 1, R), "classes": names, "precision": prec.transpose(0, 2, 1),
            "ap": np.nanmean(prec, axis=1) if valid.any() else np.full((len(ERROR_TYPES), K), np.nan),
            "overall_precision": overall, "overall_ap": overall.mean(axis=1)}


def _filtered(dt: COCO, gt: COCO, score_thresh: float) -> COCO:
    out = COCO()
    out.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                   "annotations": [a for a in dt.dataset["annotations"] if a["score"] >= score_thresh]}
    quiet_pycocotools(out.createIndex)
    return out


def confusion_matrix(gt: COCO, dt: COCO, iou: float = 0.5, score_thresh: float = 0.3) -> dict:
    """{"matrix": (K+1, K+1) int, rows = ground-truth class (last: background = a false positive),
    columns = predicted class (last: background = a miss), "classes": names + ["background"]}."""
    cat_ids, names = _class_names(gt)
    index = {c: i for i, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    m = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    ev = _evaluate(gt, _filtered(dt, gt, score_thresh), [iou], cat_ids, use_cats=False)
    for e in ev.evalImgs:
        if e is None:
            continue
        gt_cls = {g: index[gt.anns[g]["category_id"]] for g in e["gtIds"]}
        matched = set()
        for d, g, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]):
            if ignored:  # matched a crowd region: COCO neither rewards nor penalises it
                continue
            pred = index[ev.cocoDt.anns[d]["category_id"]]
            if g > 0:
                m[gt_cls[int(g)], pred] += 1
                matched.add(int(g))
            else:
                m[bg, pred] += 1
        for g, ignored in zip(e["gtIds"], e["gtIgnore"]):
            if not ignored and g not in matched:
                m[gt_cls[g], bg] += 1
    return {"matrix": m, "classes": names + ["background"], "iou": iou, "score_thresh": score_thresh}


@dataclass
class ImageErrors:
    image_id: int
    tp: list   # detection annotation dicts (bbox xywh, category_id, score)
    fp: list
    missed: list  # ground-truth annotation dicts

    @property
    def num_errors(self) -> int:
        return len(self.fp) + len(self.missed)


def image_errors(gt: COCO, dt: COCO, iou: float = 0.5, score_thresh: float = 0.3) -> list[ImageErrors]:
    """Per ground-truth image: COCOeval's matches (per class, at ``iou``) of the detections scoring at
    least ``score_thresh``; worst first (most false positives + misses, then most misses)."""
    cat_ids, _ = _class_names(gt)
    ev = _evaluate(gt, _filtered(dt, gt, score_thresh), [iou], cat_ids)
    per = {i: ImageErrors(i, [], [], []) for i in gt.getImgIds()}
    for e in ev.evalImgs:
        if e is None:
            continue
        rec = per[e["image_id"]]
        for d, g, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]):
            if not ignored:
                (rec.tp if g > 0 else rec.fp).append(ev.cocoDt.anns[d])
        matched = set(int(g) for g in e["dtMatches"][0] if g > 0)
        rec.missed += [gt.anns[g] for g, ig in zip(e["gtIds"], e["gtIgnore"]) if not ig and g not in matched]
    return sorted(per.values(), key=lambda r: (-r.num_errors, -len(r.missed), r.image_id))


# ---- pictures and tables (tools/analyze_results.py) ----------------------------------------------
# Outcome colours (BGR) of the worst-image drawings: distinct from each other whatever the class.
TP_COLOR, FP_COLOR, MISS_COLOR = (0, 190, 0), (0, 0, 235), (0, 215, 255)
WORST_MIN_SIZE = 512  # worst images are drawn enlarged to at least this shorter side
_ERROR_COLORS = ("#2b6fb5", "#4fa3db", "#7fcfe8", "#b8e5a8", "#f2d16b", "#f29b53", "#d9534f")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, panel: float = 2.6):
    plt = _plt()
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols, panel * rows * 0.92), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return plt, fig, list(axes.flat)


def plot_pr_curves(pr: dict, path: str) -> None:
    """One panel per class (first: all classes): precision vs recall at each IoU, AP in the legend."""
    names = ["all classes"] + pr["classes"]
    plt, fig, axes = _grid(len(names))
    styles = {0.5: ("#1f77b4", "-"), 0.75: ("#d62728", "--")}
    for i, (ax, name) in enumerate(zip(axes, names)):
        for iou, prec in pr["precision"].items():
            curve = np.nanmean(prec, axis=0) if i == 0 else prec[i - 1]
            if np.isnan(curve).all():
                continue
            ap = float(np.nanmean(curve))
            color, ls = styles.get(iou, ("k", ":"))
            ax.plot(pr["recall"], curve, color=color, ls=ls, lw=1.8, label=f"IoU {iou:g}: AP {100 * ap:.1f}")
        ax.set_title(name, fontsize=10, fontweight="bold" if i == 0 else "normal")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="best")
        if i % int(np.ceil(np.sqrt(len(names)))) == 0:
            ax.set_ylabel("precision", fontsize=8)
        ax.set_xlabel("recall", fontsize=8)
    fig.suptitle("Precision-recall per class (COCOeval, area all, 100 detections per image)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stacked(ax, recall, curves, title, big=False):
    """Detectron/cocoapi analyze style: each error type's PR curve filled down to the previous one."""
    for j in range(len(ERROR_TYPES) - 1, -1, -1):  # FN (largest) first, C75 last on top
        curve = np.nan_to_num(curves[j])
        ax.fill_between(recall, 0, curve, color=_ERROR_COLORS[j], label=f"[{np.mean(curve):.3f}] {ERROR_TYPES[j]}")
        ax.plot(recall, curve, color="k", lw=0.4)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=8 if big else 6, loc="lower left", framealpha=0.85)
    ax.set_title(title, fontsize=11 if big else 9, fontweight="bold" if big else "normal")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.0)
    ax.tick_params(labelsize=7)


def plot_errors(br: dict, path: str) -> None:
    names = ["overall"] + br["classes"]
    plt, fig, axes = _grid(len(names), panel=3.0)
    for i, (ax, name) in enumerate(zip(axes, names)):
        curves = br["overall_precision"] if i == 0 else br["precision"][:, i - 1]
        if np.isnan(curves).all():
            ax.set_title(f"{name} (no ground truth)", fontsize=9)
            continue
        _stacked(ax, br["recall"], curves, name, big=i == 0)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
    fig.suptitle("COCO error breakdown ([area] = AP). C75, C50: PR at IoU .75, .5; Loc: at IoU .1;\n"
                 "Sim, Oth: detections on same-supercategory / any other class ignored;\n"
                 "BG: all false positives removed; FN: all misses found", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: dict, path: str) -> None:
    """Rows (true class) normalised to fractions for the colours; the cells print the counts."""
    plt = _plt()
    m, names = cm["matrix"], cm["classes"]
    n = len(names)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    size = max(4.5, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row (true class)")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted class (background = missed)")
    ax.set_ylabel("true class (background = false positive)")
    if n <= 40:
        for r in range(n):
            for c in range(n):
                if m[r, c]:
                    ax.text(c, r, str(m[r, c]), ha="center", va="center", fontsize=7 if n > 15 else 9,
                            color="white" if frac[r, c] > 0.5 else "black")
    ax.set_title(f"Confusion at IoU {cm['iou']:g}, score >= {cm['score_thresh']:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_image_errors(image: np.ndarray, rec: ImageErrors, class_name) -> np.ndarray:
    """True positives (green), false positives (red, with scores) and misses (yellow, dashed)."""
    from ..utils.visualizer import draw_boxes

    def xyxy(anns):
        return np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in anns], dtype=np.float64).reshape(-1, 4)

    img = draw_boxes(image, xyxy(rec.missed), [MISS_COLOR] * len(rec.missed),
                     [f"miss {class_name(a['category_id'])}" for a in rec.missed], dashed=True)
    for anns, color, tag in ((rec.tp, TP_COLOR, ""), (rec.fp, FP_COLOR, "FP ")):
        anns = sorted(anns, key=lambda a: a["score"])
        img = draw_boxes(img, xyxy(anns), [color] * len(anns),
                         [f"{tag}{class_name(a['category_id'])} {100 * a['score']:.0f}%" for a in anns])
    return img


def write_report(gt: COCO, dt: COCO, output_dir: str, image_root: str | None = None, iou: float = 0.5,
                 score_thresh: float = 0.3, num_worst: int = 8) -> dict:
    """Every analysis above, written to ``output_dir``; returns {name: path} and the tables' text."""
    import cv2
    from tabulate import tabulate

    from ..utils.visualizer import image_grid

    os.makedirs(output_dir, exist_ok=True)
    out = {}
    pr = pr_curves(gt, dt)
    out["pr_curves"] = os.path.join(output_dir, "pr_curves.png")
    plot_pr_curves(pr, out["pr_curves"])
    br = error_breakdown(gt, dt)
    out["errors"] = os.path.join(output_dir, "errors.png")
    plot_errors(br, out["errors"])
    rows = [["overall", *(100 * br["overall_ap"])]]
    rows += [[n, *(100 * br["ap"][:, k])] for k, n in enumerate(br["classes"])]
    header = ["class", *ERROR_TYPES]
    out["errors_table"] = tabulate(rows, headers=header, floatfmt=".1f", missingval="-")
    _write_csv(os.path.join(output_dir, "errors.csv"), header, [[r[0], *(f"{v:.3f}" for v in r[1:])] for r in rows])
    with open(os.path.join(output_dir, "errors.txt"), "w", encoding="utf-8") as f:
        f.write("AP (%) under each error type's PR curve (COCO error analysis, cocoapi analyze())\n")
        f.write(out["errors_table"] + "\n")
    cm = confusion_matrix(gt, dt, iou, score_thresh)
    out["confusion"] = os.path.join(output_dir, "confusion.png")
    plot_confusion(cm, out["confusion"])
    _write_csv(os.path.join(output_dir, "confusion.csv"), ["true \\ predicted", *cm["classes"]],
               [[n, *row] for n, row in zip(cm["classes"], cm["matrix"].tolist())])
    out["confusion_table"] = tabulate([[n, *row] for n, row in zip(cm["classes"], cm["matrix"].tolist())],
                                      headers=["true \\ pred", *cm["classes"]])
    errs = image_errors(gt, dt, iou, score_thresh)
    worst = [r for r in errs if r.num_errors > 0][:num_worst]
    drawn, missing = [], 0
    worst_dir = os.path.join(output_dir, "worst")
    os.makedirs(worst_dir, exist_ok=True)

    def class_name(cat_id):
        return gt.cats[cat_id]["name"]

    for rank, rec in enumerate(worst):
        info = gt.imgs[rec.image_id]
        path = os.path.join(image_root or "", info["file_name"])
        img = cv2.imread(path) if os.path.isfile(path) else None
        if img is None:
            missing += 1
            img = np.full((int(info.get("height", 480)), int(info.get("width", 640)), 3), 96, np.uint8)
        scale = max(1.0, WORST_MIN_SIZE / min(img.shape[:2]))  # labels on a 200-pixel image would be unreadable
        if scale > 1:
            img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)))
            rec = ImageErrors(rec.image_id, *([{**a, "bbox": [v * scale for v in a["bbox"]]} for a in anns]
                                              for anns in (rec.tp, rec.fp, rec.missed)))
        vis = draw_image_errors(img, rec, class_name)
        name = f"{rank:02d}_{os.path.splitext(os.path.basename(info['file_name']))[0]}.png"
        cv2.imwrite(os.path.join(worst_dir, name), vis)
        drawn.append(vis)
    if missing:
        logger.warning("%d of the worst images were not found under %r (drawn on grey); pass --image-root "
                       "or --dataset", missing, image_root)
    if drawn:
        out["worst"] = os.path.join(output_dir, "worst.png")
        cv2.imwrite(out["worst"], image_grid(drawn, cols=min(2, len(drawn)), height=WORST_MIN_SIZE,
                                             title=f"worst images: TP green, FP red, missed yellow dashed "
                                                   f"(IoU {iou:g}, score >= {score_thresh:g})"))
    out["num_worst"] = len(worst)
    return out


def _write_csv(path: str, header, rows) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
