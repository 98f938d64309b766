"""COCO instances json <-> dataset dicts (docs/CONTRACTS.md).

Reading is defensive: each record is checked before pycocotools indexes it, so a broken file gives a
DataError naming the file, the image/annotation id and the field, never a KeyError from deep inside.
Geometry that has an obvious fix is fixed and counted (boxes clipped to the image, empty boxes dropped)
and summarised in one log line.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter

from pycocotools.coco import COCO

from ..utils.errors import DataError
from ..utils.io import atomic_write, quiet_pycocotools
from .catalog import DatasetCatalog, MetadataCatalog, require_files

logger = logging.getLogger(__name__)

COCO_LAYOUT = ("a COCO instances json (keys images, annotations, categories) and a folder with the "
               "images its 'file_name' entries name, e.g. coco/annotations/instances_val2017.json "
               "and coco/val2017/*.jpg")


def _read_json(json_file: str) -> dict:
    with open(json_file, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{json_file}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                        f"COCO json files must be UTF-8 - re-save it as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{json_file}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{json_file}: expected a JSON object with keys images, annotations, "
                        f"categories; got {type(data).__name__}")
    return data


class _Checker:
    """Field checks that name the file, the record and the field in their error."""

    def __init__(self, json_file: str):
        self.json_file = json_file

    def fail(self, where: str, field: str, msg: str):
        raise DataError(f"{self.json_file}: {where}: field {field!r} {msg}")

    def int_field(self, rec: dict, field: str, where: str, default=None, positive=False) -> int:
        if field not in rec:
            if default is not None:
                return default
            self.fail(where, field, "is missing")
        v = rec[field]
        # Accept 480.0 (some exporters write floats), refuse True, "480" and 480.5.
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(where, field, f"must be an integer, got {v!r}")
        if positive and v <= 0:
            self.fail(where, field, f"must be positive, got {v}")
        return v

    def list_field(self, data: dict, field: str, required=True) -> list:
        if field not in data:
            if required:
                self.fail("top level", field, "is missing (a COCO instances json has images, "
                                               "annotations, categories)")
            return []
        if not isinstance(data[field], list):
            self.fail("top level", field, f"must be a list, got {type(data[field]).__name__}")
        for i, rec in enumerate(data[field]):
            if not isinstance(rec, dict):
                self.fail(f"{field}[{i}]", field, f"entries must be objects, got {rec!r}")
        return data[field]


def _check_categories(ck: _Checker, cats: list) -> list:
    if not cats:
        ck.fail("top level", "categories", "is empty; at least one category is needed")
    seen = set()
    for i, c in enumerate(cats):
        cid = ck.int_field(c, "id", f"categories[{i}]")
        if cid in seen:
            ck.fail(f"category id {cid}", "id", "is duplicated")
        seen.add(cid)
        if not isinstance(c.get("name"), str):
            ck.fail(f"category id {cid}", "name", f"must be a string, got {c.get('name')!r}")
    return sorted(cats, key=lambda c: int(c["id"]))


def _check_images(ck: _Checker, images: list, stats: Counter) -> list:
    by_id: dict[int, dict] = {}
    for i, img in enumerate(images):
        iid = ck.int_field(img, "id", f"images[{i}]")
        where = f"image id {iid}"
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            ck.fail(where, "file_name", f"must be a non-empty string, got {img.get('file_name')!r}")
        clean = {"id": iid, "file_name": img["file_name"],
                 "height": ck.int_field(img, "height", where, positive=True),
                 "width": ck.int_field(img, "width", where, positive=True)}
        if iid in by_id:
            if by_id[iid] != clean:  # Two different images under one id: annotations are ambiguous.
                ck.fail(where, "id", f"is used by two different images ({by_id[iid]['file_name']!r} and "
                                     f"{clean['file_name']!r}); image ids must be unique")
            stats["duplicate image records"] += 1
            continue
        by_id[iid] = clean
    return list(by_id.values())


def _check_annotation(ck: _Checker, ann: dict, idx: int, images: dict, cat_ids: set,
                      stats: Counter, fixed_imgs: dict):
    """The cleaned annotation (bbox still xywh, clipped), or None when it is dropped (counted)."""
    aid = ann.get("id", f"#{idx}")
    where = f"annotation id {aid}"
    iid = ck.int_field(ann, "image_id", where)
    if iid not in images:
        ck.fail(where, "image_id", f"{iid} names no image in 'images'")
    cid = ck.int_field(ann, "category_id", where)
    if cid not in cat_ids:
        ck.fail(where, "category_id", f"{cid} is not in 'categories' (ids {sorted(cat_ids)})")
    crowd = ck.int_field(ann, "iscrowd", where, default=0)
    if crowd not in (0, 1):
        ck.fail(where, "iscrowd", f"must be 0 or 1, got {crowd!r}")
    box = ann.get("bbox")
    if "bbox" not in ann:
        ck.fail(where, "bbox", "is missing")
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        ck.fail(where, "bbox", f"must be [x, y, width, height] numbers, got {box!r}")
    if not all(math.isfinite(v) for v in box):
        ck.fail(where, "bbox", f"has a non-finite value: {box!r}")
    x, y, w, h = (float(v) for v in box)
    img = images[iid]
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(img["width"])), min(y + h, float(img["height"]))
    if x1 <= x0 or y1 <= y0:  # zero/negative size, or entirely outside the image
        stats["degenerate boxes"] += 1
        fixed_imgs.setdefault("degenerate boxes", set()).add(iid)
        return None
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        stats["boxes clipped to the image"] += 1
        fixed_imgs.setdefault("boxes clipped to the image", set()).add(iid)
    # Internal ids are positions: pycocotools' index needs unique ids, the input's may not be.
    return {"id": idx + 1, "image_id": iid, "category_id": cid,
            "iscrowd": crowd, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}


def load_coco_json(json_file: str, image_root: str, dataset_name: str | None = None) -> list[dict]:
    """Read a COCO instances json into dataset dicts (XYXY boxes, contiguous category ids 0..K-1).

    Category ids are mapped to 0..K-1 in increasing id order; with ``dataset_name`` the mapping
    (``thing_dataset_id_to_contiguous_id``) and ``thing_classes`` are stored in its metadata.
    Raises DataError (a ValueError) naming the file, record and field for data that cannot be fixed safely.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    ck = _Checker(json_file)
    data = _read_json(json_file)
    stats: Counter = Counter()
    fixed_imgs: dict[str, set] = {}
    cats = _check_categories(ck, ck.list_field(data, "categories"))
    images = _check_images(ck, ck.list_field(data, "images"), stats)
    if "annotations" not in data:
        logger.info("%s has no 'annotations' (an image-info file); images load without boxes", json_file)
    img_by_id = {im["id"]: im for im in images}
    cat_ids = {int(c["id"]) for c in cats}
    anns = [a for a in (_check_annotation(ck, ann, i, img_by_id, cat_ids, stats, fixed_imgs)
                        for i, ann in enumerate(ck.list_field(data, "annotations", required=False)))
            if a is not None]

    # pycocotools indexes the checked records (imgToAnns, cats); it never sees a malformed one.
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": cats}
    quiet_pycocotools(coco.createIndex)  # its progress prints stay out of the logs

    id_map = {int(c["id"]): i for i, c in enumerate(cats)}
    dicts = []
    for img in coco.loadImgs(sorted(coco.imgs)):
        objs = [{"bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                 "category_id": id_map[a["category_id"]], "iscrowd": a["iscrowd"]}
                for a in coco.imgToAnns.get(img["id"], [])]
        dicts.append({"file_name": os.path.join(image_root, img["file_name"]), "image_id": img["id"],
                      "height": img["height"], "width": img["width"], "annotations": objs})
    if stats:
        parts = [f"{'dropped' if k in ('degenerate boxes', 'duplicate image records') else 'fixed'} {n} {k}"
                 + (f" in {len(fixed_imgs[k])} images" if k in fixed_imgs else "") for k, n in stats.items()]
        logger.warning("%s: %s", json_file, "; ".join(parts))
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(thing_classes=[c["name"] for c in cats],
                                              thing_dataset_id_to_contiguous_id=id_map)
    logger.info("loaded %d images, %d boxes from %s", len(dicts), len(anns), json_file)
    return dicts


def dataset_dicts_to_coco(dicts: list[dict], class_names: list[str],
                          dataset_id_to_contiguous_id: dict | None = None) -> dict:
    """Dataset dicts -> a COCO instances dict (xywh boxes, ``area`` = box area).

    Category ids: the inverse of ``dataset_id_to_contiguous_id`` when given, else contiguous id + 1.
    VOC's ``difficult`` is kept as an extra annotation key (pycocotools ignores unknown keys).
    """
    if dataset_id_to_contiguous_id:
        to_dataset = {v: int(k) for k, v in dataset_id_to_contiguous_id.items()}
    else:
        to_dataset = {i: i + 1 for i in range(len(class_names))}
    cats = [{"id": to_dataset[i], "name": n} for i, n in enumerate(class_names)]
    images, anns = [], []
    for d in dicts:
        images.append({"id": d["image_id"], "file_name": d["file_name"],
                       "height": d["height"], "width": d["width"]})
        for a in d.get("annotations", []):
            x0, y0, x1, y1 = (float(v) for v in a["bbox"])
            ann = {"id": len(anns) + 1, "image_id": d["image_id"],
                   "category_id": to_dataset[a["category_id"]], "bbox": [x0, y0, x1 - x0, y1 - y0],
                   "area": (x1 - x0) * (y1 - y0), "iscrowd": int(a.get("iscrowd", 0))}
            if "difficult" in a:
                ann["difficult"] = bool(a["difficult"])
            anns.append(ann)
    return {"info": {"description": "written by resnet_det.data.coco"},
            "images": images, "annotations": anns, "categories": cats}


def convert_to_coco_json(dataset_name: str, output_file: str, allow_cached: bool = True) -> str:
    """Write registered data set ``dataset_name`` as a COCO json (atomically); returns the path."""
    if allow_cached and os.path.isfile(output_file):
        return output_file
    dicts = DatasetCatalog.get(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    coco = dataset_dicts_to_coco(dicts, meta.thing_classes, meta.get("thing_dataset_id_to_contiguous_id"))

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(coco, f)  # streamed: a large set's json need not fit in memory twice

    return atomic_write(output_file, write)


def register_coco_instances(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Register a COCO-format detection set: the loader and its metadata (evaluator_type "coco").

    Args:
        metadata: extra metadata (may be ``{}``); thing_classes come from the json's categories.
        json_file: the instances json; image_root: the folder its file_names are relative to.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)

    def load():
        require_files(name, {json_file: "file", image_root: "dir"}, COCO_LAYOUT)
        return load_coco_json(json_file, image_root, dataset_name=name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  **metadata)
