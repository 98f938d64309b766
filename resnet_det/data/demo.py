"""Generated, deterministic data sets that need no download (all drawn by shapes_draw.render_scene).

- "shapes" detection set (COCO json): ``<root>/shapes/{train,val}/*.jpg`` and
  ``<root>/shapes/annotations/instances_{train,val}.json``; created on first use by the catalog.
- ``make_classification_set``: ImageNet-style folders ``train/<class>/*.png``, ``val/<class>/*.png``.
- ``make_localization_set``: ILSVRC-style ``train/<wnid>/<name>.png`` with ``<name>.xml`` boxes beside.

Every image has its own generator seeded by (seed, split, index): a count change keeps earlier images.
Everything is written to a temporary folder renamed into place, so an interrupted run leaves nothing
half written.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from .shapes_draw import SHAPE_KINDS, render_scene

logger = logging.getLogger(__name__)

# Bump when the drawing changes, so a stale generated set is noticed (it is logged, not redrawn).
SHAPES_VERSION = 1
SHAPES_CLASSES = SHAPE_KINDS[:5]
# What the catalog generates on first use of shapes_train / shapes_val.
SHAPES_DEFAULTS = {"num_train": 600, "num_val": 100, "seed": 0}
_SPLIT_IDS = {"train": 0, "val": 1}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def _atomic_dir(final: str, write) -> str:
    """Run ``write(tmpdir)`` and rename tmpdir to ``final``; if another process won the race, keep its.
    (A whole folder appears at once here; utils.io.atomic_write is the same idea for one file.)"""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    for old in os.listdir(parent):  # leftovers of interrupted runs (older than an hour)
        p = os.path.join(parent, old)
        if old.startswith(".tmp-") and time.time() - os.path.getmtime(p) > 3600:
            shutil.rmtree(p, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        write(tmp)
        os.rename(tmp, final)
    except OSError:
        if not os.path.isdir(final):
            raise
        logger.info("%s was created by another process meanwhile; using it", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _detection_split(out: str, split: str, num_images: int, seed: int, classes) -> None:
    os.makedirs(os.path.join(out, split))
    images, anns = [], []
    for i in range(num_images):
        rng = _rng(seed, split, i)
        w, h = (int(v) for v in rng.integers(200, 321, 2))
        # ~3% of images are empty scenes (only background and distractors): a detector must learn to
        # say nothing, and FILTER_EMPTY_ANNOTATIONS has something to filter.
        n_obj = 0 if rng.uniform() < 0.03 else int(rng.integers(1, 7))
        img, objs = render_scene(rng, h, w, classes, n_obj, size_range=(0.05, 0.4),
                                 n_distractors=int(rng.integers(0, 4)))
        name = f"{i:06d}.jpg"
        cv2.imwrite(os.path.join(out, split, name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        _append_coco_boxes(anns, i + 1, objs)
    _write_coco_json(os.path.join(out, "annotations", f"instances_{split}.json"), images, anns, classes,
                     {"description": "resnet_det generated shapes", "version": SHAPES_VERSION, "seed": seed,
                      "split": split})


def _append_coco_boxes(anns: list, image_id: int, objs) -> None:
    for k, (x0, y0, x1, y1) in objs:
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": k + 1, "iscrowd": 0,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})


def _write_coco_json(path: str, images: list, anns: list, classes, info: dict) -> None:
    coco = {"info": info, "images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(classes)]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(coco, f)


def generate_shapes_dataset(dirname: str, num_train: int = 600, num_val: int = 100, seed: int = 0,
                            classes=SHAPES_CLASSES) -> str:
    """Write the shapes detection set to ``dirname`` (atomically); returns ``dirname``."""
    t0 = time.perf_counter()

    def write(tmp):
        os.makedirs(os.path.join(tmp, "annotations"))
        _detection_split(tmp, "train", num_train, seed, classes)
        _detection_split(tmp, "val", num_val, seed, classes)

    _atomic_dir(dirname, write)
    logger.info("generated the shapes data set (%d train / %d val images) in %s in %.1f s",
                num_train, num_val, dirname, time.perf_counter() - t0)
    return dirname


def make_loader_benchmark_set(dirname: str, num_images: int = 300, height: int = 480, width: int = 640,
                              distinct: int = 8, seed: int = 0, classes=SHAPES_CLASSES) -> str:
    """COCO-like JPEGs of one size with boxes, to time a training loader (tools/benchmark.py --sections loader).

    Writes ``<dirname>/images/*.jpg`` and ``<dirname>/instances.json``. Only ``distinct`` scenes are
    drawn (a 640x480 scene takes ~0.1 s to draw, decoding one ~3 ms); each file is one of them, so
    decoding costs what it would for as many different photos of that size. Returns ``dirname``.
    """
    def write(tmp):
        os.makedirs(os.path.join(tmp, "images"))
        scenes = []
        for j in range(min(distinct, num_images)):
            rng = _rng(seed, "train", j)
            scenes.append(render_scene(rng, height, width, classes, int(rng.integers(1, 7)), size_range=(0.05, 0.4),
                                       n_distractors=2))
        encoded = [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1] for img, _ in scenes]
        images, anns = [], []
        for i in range(num_images):
            name = f"{i:06d}.jpg"
            encoded[i % len(scenes)].tofile(os.path.join(tmp, "images", name))
            images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
            _append_coco_boxes(anns, i + 1, scenes[i % len(scenes)][1])
        _write_coco_json(os.path.join(tmp, "instances.json"), images, anns, classes,
                         {"description": "resnet_det loader benchmark set", "seed": seed})

    return _atomic_dir(dirname, write)


def ensure_shapes_dataset(dirname: str, **kwargs) -> str:
    """Generate the shapes set in ``dirname`` unless it is there; warn when it is from another version."""
    ann = os.path.join(dirname, "annotations", "instances_val.json")
    if not os.path.isfile(ann):
        return generate_shapes_dataset(dirname, **{**SHAPES_DEFAULTS, **kwargs})
    with open(ann, encoding="utf-8") as f:
        version = json.load(f).get("info", {}).get("version")
    if version != SHAPES_VERSION:
        logger.warning("%s was generated by shapes version %s (now %s); delete %s to regenerate it",
                       ann, version, SHAPES_VERSION, dirname)
    return dirname


def _shape_kinds(num_classes: int) -> tuple:
    if num_classes > len(SHAPE_KINDS):
        raise ValueError(f"num_classes={num_classes}: at most {len(SHAPE_KINDS)} shape kinds ({SHAPE_KINDS})")
    return SHAPE_KINDS[:num_classes]


def make_classification_set(root: str, num_classes: int = 10, train_per_class: int = 100,
                            val_per_class: int = 20, image_size: int = 32, seed: int = 0) -> str:
    """ImageNet-style folders ``<root>/{train,val}/<class>/<i>.png`` of one shape per image.

    Shapes are drawn at twice the size and downsampled (area), so small images keep clean edges.
    Returns ``root``; an existing ``root`` is left alone.
    """
    kinds = _shape_kinds(num_classes)
    if os.path.isdir(root):
        return root

    def write(tmp):
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            for k, kind in enumerate(kinds):
                os.makedirs(os.path.join(tmp, split, kind))
                for j in range(per_class):
                    rng = _rng(seed, split, k * per_class + j)
                    s = 2 * image_size
                    img, _ = render_scene(rng, s, s, [kind], 1, size_range=(0.25, 0.45),
                                          n_distractors=int(rng.uniform() < 0.3), center_jitter=0.12)
                    img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
                    cv2.imwrite(os.path.join(tmp, split, kind, f"{j:05d}.png"), img)

    return _atomic_dir(root, write)


def _wnid(k: int) -> str:
    # ILSVRC-shaped synset ids ("n" + 8 digits) that cannot clash with WordNet's (those start n0/n1).
    return f"n9{k:07d}"


def _write_ilsvrc_xml(path: str, folder: str, name: str, width: int, height: int, objs) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = name
    size = ET.SubElement(root, "size")
    for tag, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    for wnid, (x0, y0, x1, y1) in objs:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = wnid
        box = ET.SubElement(obj, "bndbox")
        # ILSVRC boxes are integer, inclusive pixel indexes: the last covered pixel is x1 - 1.
        for tag, v in (("xmin", x0), ("ymin", y0), ("xmax", x1 - 1), ("ymax", y1 - 1)):
            ET.SubElement(box, tag).text = str(int(v))
    ET.ElementTree(root).write(path, encoding="utf-8")


def make_localization_set(root: str, num_classes: int = 5, train_per_class: int = 40,
                          val_per_class: int = 10, image_size: int = 96, seed: int = 0) -> str:
    """ILSVRC-style localization set: ``<root>/{train,val}/<wnid>/<name>.png`` + ``<name>.xml``.

    Each image has one or two shapes of its folder's class and distractors. The class names are in
    ``<root>/LOC_synset_mapping.txt`` ("<wnid> <name>" per line, like ILSVRC's). Returns ``root``.
    """
    kinds = _shape_kinds(num_classes)
    if os.path.isdir(root):
        return root

    def write(tmp):
        with open(os.path.join(tmp, "LOC_synset_mapping.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{_wnid(k)} {kind}\n" for k, kind in enumerate(kinds))
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            for k, kind in enumerate(kinds):
                folder = os.path.join(tmp, split, _wnid(k))
                os.makedirs(folder)
                for j in range(per_class):
                    rng = _rng(seed, split, k * per_class + j)
                    img, objs = render_scene(rng, image_size, image_size, [kind], int(rng.integers(1, 3)),
                                             size_range=(0.15, 0.4), n_distractors=int(rng.integers(0, 3)))
                    name = f"{_wnid(k)}_{j:05d}"
                    cv2.imwrite(os.path.join(folder, name + ".png"), img)
                    _write_ilsvrc_xml(os.path.join(folder, name + ".xml"), _wnid(k), name, image_size,
                                      image_size, [(_wnid(k), box) for _, box in objs])

    return _atomic_dir(root, write)
