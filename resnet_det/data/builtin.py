"""Built-in data sets with the standard layouts under the data sets root (datasets/README.md).

Registered when ``resnet_det.data`` is imported, with the root of that moment
(``$RESNET_DET_DATASETS``, default ``./datasets``); ``register_all_builtins(root)`` re-registers them
under another root.
"""
from __future__ import annotations

import os

from .catalog import DatasetCatalog, MetadataCatalog, datasets_root, require_files, unregister
from .coco import load_coco_json, register_coco_instances
from .demo import SHAPES_CLASSES, ensure_shapes_dataset
from .voc import register_pascal_voc

# name -> (image folder, instances json), relative to the root.
COCO_SPLITS = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_valminusminival": ("coco/val2014", "coco/annotations/instances_valminusminival2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
}
# name -> (folder, split, year)
VOC_SPLITS = {f"voc_{y}_{s}": (f"VOC{y}", s, y) for y in (2007, 2012) for s in ("trainval", "train", "val")}
VOC_SPLITS["voc_2007_test"] = ("VOC2007", "test", 2007)
SHAPES_SPLITS = ("shapes_train", "shapes_val")


def _register_shapes(name: str, root: str) -> None:
    split = name.split("_", 1)[1]
    dirname = os.path.join(root, "shapes")
    json_file = os.path.join(dirname, "annotations", f"instances_{split}.json")
    image_root = os.path.join(dirname, split)

    def load():
        ensure_shapes_dataset(dirname)  # generated in a few seconds on first use
        require_files(name, {json_file: "file", image_root: "dir"},
                      f"the generated shapes set; {dirname} exists but is incomplete - delete it to regenerate")
        return load_coco_json(json_file, image_root, dataset_name=name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=list(SHAPES_CLASSES), evaluator_type="coco",
                                  json_file=json_file, image_root=image_root)


def register_all_builtins(root: str | None = None) -> None:
    """(Re-)register every built-in data set under ``root`` (default: datasets_root())."""
    root = os.path.abspath(root) if root is not None else datasets_root()
    for name, (images, ann) in COCO_SPLITS.items():
        unregister(name)
        register_coco_instances(name, {}, os.path.join(root, ann), os.path.join(root, images))
    for name, (folder, split, year) in VOC_SPLITS.items():
        unregister(name)
        register_pascal_voc(name, os.path.join(root, folder), split, year)
    for name in SHAPES_SPLITS:
        unregister(name)
        _register_shapes(name, root)


__all__ = ["register_all_builtins", "COCO_SPLITS", "VOC_SPLITS", "SHAPES_SPLITS"]
