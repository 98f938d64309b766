"""Data sets, readers and detection loaders (detectron2 style); importing registers the built-ins."""
from .build import build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from .builtin import register_all_builtins
from .catalog import DatasetCatalog, DatasetNotFoundError, Metadata, MetadataCatalog, datasets_root
from .coco import convert_to_coco_json, dataset_dicts_to_coco, load_coco_json, register_coco_instances
from .demo import generate_shapes_dataset, make_classification_set, make_loader_benchmark_set, make_localization_set
from .samplers import (InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler,
                       repeat_factors_from_category_frequency)
from .transforms import BadImageError, DatasetMapper, read_image, read_skipped_images
from .voc import VOC_CLASSES, load_voc_instances, register_pascal_voc

register_all_builtins()

__all__ = [
    "DatasetCatalog", "MetadataCatalog", "Metadata", "DatasetNotFoundError", "datasets_root",
    "register_coco_instances", "register_pascal_voc", "register_all_builtins",
    "DatasetMapper", "BadImageError", "read_image", "read_skipped_images",
    "build_detection_train_loader", "build_detection_test_loader", "get_detection_dataset_dicts",
    "TrainingSampler", "RepeatFactorTrainingSampler", "repeat_factors_from_category_frequency", "InferenceSampler",
    "load_coco_json", "dataset_dicts_to_coco", "convert_to_coco_json", "load_voc_instances", "VOC_CLASSES",
    "generate_shapes_dataset", "make_classification_set", "make_loader_benchmark_set", "make_localization_set",
]
