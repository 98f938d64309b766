"""COCO box AP with the official pycocotools COCOeval (AP, AP50, AP75, APs, APm, APl, per-class AP).

The numbers are pycocotools' own: this module only converts predictions to the COCO result format and
reads COCOeval's arrays, so they match a direct pycocotools run on the same ground-truth and result json.
At COCO-val scale (5,000 images, ~500k detections) pycocotools' Python loops take minutes; the
``faster-coco-eval`` package (a C++ COCOeval, detectron2's COCOeval_opt lineage) gives the same 12 stats
and precision array (tests/test_coco_eval_impl.py: within 1e-4) several times faster
(benchmarks/RESULTS.md, "COCO evaluation at scale"). ``run_coco_eval`` runs whichever
TEST.COCO_EVAL_IMPL picks ("auto": faster-coco-eval when it is installed, pycocotools otherwise).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.coco import dataset_dicts_to_coco
from ..utils.comm import gather_to_main
from ..utils.errors import ConfigError, MissingFileError
from ..utils.io import quiet_pycocotools
from .evaluator import DatasetEvaluator, format_table, unique_images

logger = logging.getLogger(__name__)

__all__ = ["COCOEvaluator", "instances_to_coco_results", "run_coco_eval", "resolve_coco_eval_impl",
           "COCO_EVAL_IMPLS"]

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six of COCOeval.stats


COCO_EVAL_IMPLS = ("auto", "pycocotools", "faster_coco_eval")


def _faster_coco_eval_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_coco_eval_impl(impl: str = "auto") -> str:
    """"pycocotools" or "faster_coco_eval" for a TEST.COCO_EVAL_IMPL value ("auto": the fast one when
    installed). Asking for faster_coco_eval without the package is a ConfigError that says how to get it."""
    if impl not in COCO_EVAL_IMPLS:
        raise ConfigError(f"TEST.COCO_EVAL_IMPL={impl!r}: expected one of {', '.join(COCO_EVAL_IMPLS)}")
    if impl == "auto":
        return "faster_coco_eval" if _faster_coco_eval_available() else "pycocotools"
    if impl == "faster_coco_eval" and not _faster_coco_eval_available():
        raise ConfigError("TEST.COCO_EVAL_IMPL=faster_coco_eval but the faster-coco-eval package is not installed: "
                          "pip install faster-coco-eval (or pip install -e .[fast-eval]), or set "
                          "TEST.COCO_EVAL_IMPL auto / pycocotools")
    return impl


def _empty_results(coco_gt, coco_cls):
    """The result set pycocotools' loadRes would build from an empty list (which it cannot take)."""
    coco_dt = coco_cls()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                       "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    quiet_pycocotools(coco_dt.createIndex)
    return coco_dt


def run_coco_eval(coco_gt: COCO, results: list[dict], img_ids: list[int] | None = None, iou_type: str = "bbox",
                  impl: str = "auto"):
    """COCOeval of ``results`` (COCO result records; not modified) against ``coco_gt`` on ``img_ids``
    (default: all), with evaluate, accumulate and summarize done and their prints captured.

    Returns ``(coco_eval, summary_text)``; ``coco_eval.stats`` (12 values) and ``coco_eval.eval["precision"]``
    ([T, R, K, A, M]) read the same for both implementations. ``impl``: a TEST.COCO_EVAL_IMPL value.
    """
    impl = resolve_coco_eval_impl(impl)
    if impl == "faster_coco_eval":
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster

        gt = FastCOCO()
        gt.dataset = coco_gt.dataset
        quiet_pycocotools(gt.createIndex)
        coco_cls, make_eval = FastCOCO, lambda g, d: COCOeval_faster(g, d, iou_type, print_function=print)
    else:
        gt, coco_cls, make_eval = coco_gt, COCO, lambda g, d: COCOeval(g, d, iou_type)
    # loadRes adds keys to the records it is given; keep the caller's (and the json) as written.
    coco_dt = quiet_pycocotools(gt.loadRes, copy.deepcopy(results))[0] if results else _empty_results(gt, coco_cls)
    coco_eval = make_eval(gt, coco_dt)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    quiet_pycocotools(coco_eval.evaluate)
    quiet_pycocotools(coco_eval.accumulate)
    _, summary = quiet_pycocotools(coco_eval.summarize)
    coco_eval.stats = np.asarray(coco_eval.stats[:12], dtype=np.float64)  # faster-coco-eval may add extras
    return coco_eval, summary


def instances_to_coco_results(instances: dict, image_id: int, contiguous_to_dataset: dict) -> list[dict]:
    """One image's ``{"boxes" XYXY, "scores", "pred_classes"}`` -> COCO result records (xywh boxes)."""
    for key in ("boxes", "scores", "pred_classes"):
        if key not in instances:
            raise KeyError(f"model output 'instances' of image {image_id} has no {key!r} (has "
                           f"{sorted(instances)}); see docs/CONTRACTS.md, 'Model output'")
    boxes = np.asarray(instances["boxes"].detach().cpu().double(), dtype=np.float64).reshape(-1, 4)
    scores = instances["scores"].detach().cpu().double().tolist()
    classes = instances["pred_classes"].detach().cpu().tolist()
    results = []
    for (x0, y0, x1, y1), s, c in zip(boxes.tolist(), scores, classes):
        if c not in contiguous_to_dataset:
            raise ValueError(f"image {image_id}: predicted class {c} is outside 0..{len(contiguous_to_dataset) - 1}"
                             f"; does MODEL.ROI_HEADS.NUM_CLASSES match the data set's classes?")
        results.append({"image_id": int(image_id), "category_id": contiguous_to_dataset[c],
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s)})
    return results


class COCOEvaluator(DatasetEvaluator):
    """Box AP of detections against a COCO-format ground truth, computed by pycocotools.

    Args:
        ground_truth: a COCO instances json path, a ``pycocotools.coco.COCO``, or a list of dataset dicts
            (CONTRACTS.md), which is converted to ``<output_dir>/inference/gt_coco_format.json``.
        thing_classes: class names by contiguous id; default: the json's category names by increasing id.
        thing_dataset_id_to_contiguous_id: json category id -> contiguous id; default: categories by
            increasing id -> 0..K-1 (how resnet_det.data reads a COCO json).
        output_dir: where ``inference/coco_instances_results.json`` is written (None: nothing is written).
        distributed: gather predictions from all ranks to rank 0 when a process group is initialised.
        impl: which COCOeval computes the numbers (TEST.COCO_EVAL_IMPL: "auto", "pycocotools",
            "faster_coco_eval"); the choice is logged.

    What pycocotools decides, this class keeps: crowd boxes never count as misses and detections on
    them are ignored; a category without ground truth gets AP NaN (shown as nan, left out of the mean);
    an area range without ground truth gives NaN (pycocotools' -1). Only the images this evaluator saw
    in ``process()`` are evaluated, so evaluating a subset of the data does not count the rest as misses.
    Results whose ``image_id`` is not in the ground truth (pycocotools would assert) are dropped with a
    warning that names the ids; an image processed twice (a padding sampler) counts once. With zero detections, pycocotools' own evaluation of an empty result
    set is returned (AP 0 where ground truth exists) with a warning.
    """

    def __init__(self, ground_truth: str | os.PathLike | COCO | list[dict], thing_classes: list[str] | None = None,
                 thing_dataset_id_to_contiguous_id: dict | None = None, output_dir: str | None = None,
                 distributed: bool = True, impl: str = "auto"):
        self._output_dir = output_dir
        self._distributed = distributed
        self._impl = resolve_coco_eval_impl(impl)
        logger.info("COCOEvaluator: COCOeval from %s (TEST.COCO_EVAL_IMPL=%s)", self._impl, impl)
        if isinstance(ground_truth, list):
            if thing_classes is None:
                raise ValueError("COCOEvaluator: thing_classes are required when the ground truth is a "
                                 "list of dataset dicts (their category ids are contiguous indices)")
            gt_dict = dataset_dicts_to_coco(ground_truth, thing_classes, thing_dataset_id_to_contiguous_id)
            if output_dir:
                path = os.path.join(output_dir, "inference", "gt_coco_format.json")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(gt_dict, f)
                logger.info("wrote the ground truth in COCO format to %s", path)
            self._coco = COCO()
            self._coco.dataset = gt_dict
            quiet_pycocotools(self._coco.createIndex)
            # Whichever converter wrote the json, map its category ids back through the class names.
            thing_dataset_id_to_contiguous_id = {c["id"]: thing_classes.index(c["name"])
                                                 for c in gt_dict["categories"]}
        elif isinstance(ground_truth, COCO):
            self._coco = ground_truth
        else:
            path = os.fspath(ground_truth)
            if not os.path.isfile(path):
                raise MissingFileError(f"COCOEvaluator: ground-truth json {path!r} does not exist")
            self._coco, _ = quiet_pycocotools(COCO, path)

        cats = sorted(self._coco.loadCats(self._coco.getCatIds()), key=lambda c: c["id"])
        if thing_dataset_id_to_contiguous_id is None:
            thing_dataset_id_to_contiguous_id = {c["id"]: i for i, c in enumerate(cats)}
        if thing_classes is None:
            thing_classes = [c["name"] for c in cats]
        self._id_map = {int(k): int(v) for k, v in thing_dataset_id_to_contiguous_id.items()}
        unknown = sorted(set(self._id_map) - set(self._coco.getCatIds()))
        if unknown:
            raise ValueError(f"COCOEvaluator: thing_dataset_id_to_contiguous_id names category ids {unknown} "
                             f"that the ground truth does not have (it has {sorted(self._coco.getCatIds())})")
        if sorted(self._id_map.values()) != list(range(len(thing_classes))):
            raise ValueError(f"COCOEvaluator: thing_dataset_id_to_contiguous_id values "
                             f"{sorted(self._id_map.values())} must be 0..{len(thing_classes) - 1}, one per "
                             f"entry of thing_classes ({len(thing_classes)} classes)")
        self._to_dataset = {v: k for k, v in self._id_map.items()}
        self._thing_classes = list(thing_classes)
        self.reset()

    @classmethod
    def from_dataset(cls, dataset_name: str, output_dir: str | None = None, **kwargs) -> "COCOEvaluator":
        """Build from a registered data set: its ``json_file`` when it has one, else its dataset dicts."""
        meta = MetadataCatalog.get(dataset_name)
        json_file = meta.get("json_file")
        if json_file and not os.path.isfile(json_file):
            # Some sets write their json on first load (the generated shapes set); a missing data set
            # raises the catalog's error, which says what was expected where.
            DatasetCatalog.get(dataset_name)
        if json_file:
            return cls(json_file, meta.get("thing_classes"), meta.get("thing_dataset_id_to_contiguous_id"),
                       output_dir=output_dir, **kwargs)
        return cls(DatasetCatalog.get(dataset_name), meta.thing_classes,
                   meta.get("thing_dataset_id_to_contiguous_id"), output_dir=output_dir, **kwargs)

    def reset(self) -> None:
        self._predictions: list[dict] = []  # one {"image_id", "instances": [coco records]} per image

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            if "instances" not in out:
                raise KeyError(f"model output of image {inp.get('image_id')} has no 'instances' (has "
                               f"{sorted(out)}); see docs/CONTRACTS.md, 'Model output'")
            self._predictions.append({"image_id": int(inp["image_id"]), "instances": instances_to_coco_results(
                out["instances"], inp["image_id"], self._to_dataset)})

    def evaluate(self) -> dict:
        predictions = gather_to_main(self._predictions) if self._distributed else self._predictions
        if predictions is None:
            return {}
        if not predictions:
            logger.warning("COCOEvaluator: process() saw no images; nothing to evaluate")
            return {}
        predictions = unique_images(predictions, lambda p: p["image_id"], "COCOEvaluator")
        results = [r for p in predictions for r in p["instances"]]
        img_ids = {p["image_id"] for p in predictions}
        known = set(self._coco.getImgIds())
        stray = sorted(img_ids - known)
        if stray:
            logger.warning("COCOEvaluator: dropping the results of %d image id(s) not in the ground truth "
                           "(pycocotools would fail on them): %s%s", len(stray), stray[:20],
                           " ..." if len(stray) > 20 else "")
            results = [r for r in results if r["image_id"] in known]
            img_ids &= known
        if len(img_ids) < len(known):
            logger.info("COCOEvaluator: evaluating %d of the %d ground-truth images (those processed)",
                        len(img_ids), len(known))
        if self._output_dir:
            path = os.path.join(self._output_dir, "inference", "coco_instances_results.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(results, f)
            logger.info("saved %d detections to %s", len(results), path)
        return {"bbox": self._evaluate_bbox(results, sorted(img_ids))}

    def _evaluate_bbox(self, results: list[dict], img_ids: list[int]) -> dict:
        if not results:
            logger.warning("COCOEvaluator: no detections at all; every AP is 0 (NaN where there is no "
                           "ground truth). Is MODEL.ROI_HEADS.SCORE_THRESH_TEST too high?")
        coco_eval, summary = run_coco_eval(self._coco, results, img_ids, "bbox", self._impl)
        logger.info("COCOeval summary:\n%s", summary.rstrip())

        # pycocotools writes -1 for "no ground truth in this area range": NaN, so it cannot pass for 0.
        metrics = {m: float(s * 100) if s >= 0 else math.nan for m, s in zip(COCO_METRICS, coco_eval.stats)}
        logger.info("Box AP (%%):\n%s", format_table([[metrics[m] for m in COCO_METRICS]], COCO_METRICS))
        metrics.update(self._per_category_ap(coco_eval))
        return metrics

    def _per_category_ap(self, coco_eval) -> dict:
        """AP@[.5:.95] per class from COCOeval's precision array [T, R, K, A, M] (all areas, 100 dets)."""
        precision = coco_eval.eval["precision"]
        cat_ids = coco_eval.params.catIds  # K axis order
        per_class: dict[str, float] = {}
        for k, cat_id in enumerate(cat_ids):
            if cat_id not in self._id_map:
                continue  # a json category the model does not predict
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]  # -1: no ground truth of this class in the evaluated images
            per_class[self._thing_classes[self._id_map[cat_id]]] = float(np.mean(p) * 100) if p.size else math.nan
        # Three (class, AP) pairs per row keeps long class lists readable.
        items = [(name, per_class[name]) for name in self._thing_classes if name in per_class]
        rows = [sum(map(list, items[i:i + 3]), []) for i in range(0, len(items), 3)]
        if rows:
            rows[-1] += [""] * (6 - len(rows[-1]))
            logger.info("Per-category box AP (%%):\n%s", format_table(rows, ["category", "AP"] * 3))
        return {f"AP-{name}": ap for name, ap in per_class.items()}
