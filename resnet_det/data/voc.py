"""PASCAL VOC (ImageSets/Main/<split>.txt + Annotations/*.xml) -> dataset dicts (docs/CONTRACTS.md)."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from ..utils.errors import DataError
from .catalog import DatasetCatalog, MetadataCatalog, require_files

# The 20 VOC classes in the order of the VOC devkit; index = contiguous category id.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

VOC_LAYOUT = ("a PASCAL VOC folder <dirname>/{Annotations/*.xml, JPEGImages/*.jpg, "
              "ImageSets/Main/<split>.txt}, e.g. VOC2007/ImageSets/Main/trainval.txt")


def _text(node, field: str, xml_file: str, where: str) -> str:
    child = node.find(field)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{xml_file}: {where}: field {field!r} is missing or empty")
    return child.text.strip()


def _number(node, field: str, xml_file: str, where: str) -> float:
    value = _text(node, field, xml_file, where)
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{xml_file}: {where}: field {field!r} must be a number, got {value!r}") from None


def _parse_xml(xml_file: str, class_index: dict, class_names) -> tuple[int, int, list]:
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise DataError(f"{xml_file}: malformed XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise DataError(f"{xml_file}: field 'size' is missing")
    width = int(_number(size, "width", xml_file, "size"))
    height = int(_number(size, "height", xml_file, "size"))
    if width <= 0 or height <= 0:
        raise DataError(f"{xml_file}: size: width/height must be positive, got {width}x{height}")
    anns = []
    for k, obj in enumerate(root.findall("object")):
        where = f"object {k}"
        name = _text(obj, "name", xml_file, where)
        if name not in class_index:
            raise DataError(f"{xml_file}: {where}: field 'name' is {name!r}, not one of the "
                            f"{len(class_names)} classes {list(class_names)}; pass class_names=")
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{xml_file}: {where}: field 'bndbox' is missing")
        x0, y0, x1, y1 = (_number(box, f, xml_file, f"{where} bndbox") for f in ("xmin", "ymin", "xmax", "ymax"))
        # VOC pixel indexes are 1-based and inclusive; like detectron2, shift the top-left corner
        # by one so the box is [x0, x1) in 0-based continuous coordinates.
        x0, y0 = x0 - 1.0, y0 - 1.0
        if not (x1 > x0 and y1 > y0):
            raise DataError(f"{xml_file}: {where}: field 'bndbox' has no area: "
                            f"xmin={x0 + 1:g} ymin={y0 + 1:g} xmax={x1:g} ymax={y1:g}")
        difficult = obj.find("difficult")
        is_difficult = difficult is not None and (difficult.text or "0").strip() not in ("0", "")
        anns.append({"bbox": [x0, y0, x1, y1], "category_id": class_index[name], "iscrowd": 0,
                     "difficult": bool(is_difficult)})
    return width, height, anns


def load_voc_instances(dirname: str, split: str, class_names=VOC_CLASSES) -> list[dict]:
    """Load ``<dirname>/ImageSets/Main/<split>.txt`` with its Annotations/<id>.xml.

    ``image_id`` is the VOC id as an integer ("2008_000123" -> 2008000123, "000005" -> 5: unique over
    VOC2007 + VOC2012) or, for ids with other characters, the position in the split file.
    ``difficult`` is kept per annotation.
    """
    dirname = os.fspath(dirname)
    split_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    with open(split_file, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    class_index = {n: i for i, n in enumerate(class_names)}
    numeric = all(fid.replace("_", "").isdigit() for fid in ids)
    dicts = []
    for i, fileid in enumerate(ids):
        xml_file = os.path.join(dirname, "Annotations", f"{fileid}.xml")
        if not os.path.isfile(xml_file):
            raise DataError(f"{split_file}: lists {fileid!r} but {xml_file} does not exist")
        width, height, anns = _parse_xml(xml_file, class_index, class_names)
        dicts.append({"file_name": os.path.join(dirname, "JPEGImages", f"{fileid}.jpg"),
                      "image_id": int(fileid.replace("_", "")) if numeric else i,
                      "height": height, "width": width, "annotations": anns})
    return dicts


def register_pascal_voc(name: str, dirname: str, split: str, year: int, class_names=VOC_CLASSES) -> None:
    """Register a PASCAL VOC split (evaluator_type "voc"); ``class_names`` default: the 20 VOC classes."""
    class_names = list(class_names)
    dirname = os.fspath(dirname)

    def load():
        require_files(name, {os.path.join(dirname, "ImageSets", "Main", f"{split}.txt"): "file",
                             os.path.join(dirname, "Annotations"): "dir"}, VOC_LAYOUT)
        return load_voc_instances(dirname, split, class_names)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=class_names, dirname=dirname, year=int(year),
                                  split=split, evaluator_type="voc")
