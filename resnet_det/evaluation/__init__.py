"""Evaluation: COCO box AP (pycocotools), PASCAL VOC AP@0.5 (07 11-point and area), top-k
classification, ILSVRC localization error, and the inference loop that feeds them."""
from __future__ import annotations

from ..data.catalog import MetadataCatalog
from .classification import ClassificationEvaluator, topk_correct, topk_errors
from .coco_evaluation import COCOEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_on_dataset
from .localization import LocalizationEvaluator, localization_errors, oracle_localization_error
from .voc_evaluation import PascalVOCDetectionEvaluator

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "build_evaluator",
           "COCOEvaluator", "PascalVOCDetectionEvaluator", "ClassificationEvaluator", "LocalizationEvaluator",
           "topk_errors", "topk_correct", "localization_errors", "oracle_localization_error"]

EVALUATOR_TYPES = ("coco", "voc", "classification", "localization")


def build_evaluator(cfg, dataset_name: str, output_dir: str | None = None) -> DatasetEvaluator:
    """The evaluator for registered data set ``dataset_name``, chosen by its metadata ``evaluator_type``.

    ``output_dir`` defaults to ``cfg.OUTPUT_DIR`` (COCO writes ``inference/`` files there). "localization"
    (Appendix C) is accepted beside the contract's coco / voc / classification.
    """
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type")
    if output_dir is None and cfg is not None:
        output_dir = cfg.OUTPUT_DIR
    if kind == "coco":
        impl = cfg.TEST.COCO_EVAL_IMPL if cfg is not None else "auto"
        return COCOEvaluator.from_dataset(dataset_name, output_dir=output_dir, impl=impl)
    if kind == "voc":
        return PascalVOCDetectionEvaluator.from_dataset(dataset_name)
    if kind == "classification":
        return ClassificationEvaluator(ks=(1, 5))
    if kind == "localization":
        return LocalizationEvaluator(k=(1, 5))
    raise ValueError(f"data set {dataset_name!r} has evaluator_type={kind!r}; expected one of "
                     f"{', '.join(EVALUATOR_TYPES)}. Set it when registering: "
                     f"MetadataCatalog.get({dataset_name!r}).set(evaluator_type='coco')")
