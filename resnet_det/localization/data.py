"""ILSVRC localization annotations (Appendix C) -> dataset dicts (docs/CONTRACTS.md) with an image label.

Two layouts are read:

* XML beside the images: ``<image_root>/<wnid>/<name>.JPEG`` with ``<name>.xml`` in the same folder, or
  under ``ann_root`` at the same relative path (ILSVRC's ``Annotations/CLS-LOC/<split>/`` tree).
  Images without an XML are skipped (ILSVRC boxes only a subset of the training images).
* Kaggle's ``LOC_{train,val}_solution.csv``: header ``ImageId,PredictionString``, the string being
  ``"wnid x0 y0 x1 y1 [wnid x0 y0 x1 y1 ...]"``; images at ``<image_root>/<wnid>/<ImageId>.JPEG``
  (train) or ``<image_root>/<ImageId>.JPEG`` (val).

Class ids follow ``LOC_synset_mapping.txt`` ("<wnid> <names>" per line, ILSVRC's order) when given, else
the sorted wnids. Box coordinates are inclusive integer pixel indexes (ILSVRC's, and the generator's in
``resnet_det.data.demo``); they become pixel-edge XYXY ``[xmin, ymin, xmax + 1, ymax + 1]``. Each dict also
has ``"label"``: the image's class (its folder's wnid, else its first box's), for the classification loss.
"""
from __future__ import annotations

import csv
import logging
import os
import xml.etree.ElementTree as ET

from ..utils.errors import DataError, MissingFileError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")
SYNSET_FILE = "LOC_synset_mapping.txt"
CSV_HEADER = ("ImageId", "PredictionString")


def read_synsets(path: str) -> tuple[list[str], list[str]]:
    """(wnids, names) from a ``LOC_synset_mapping.txt``; a name is the first of its comma-separated list."""
    wnids, names = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            wnid = parts[0]
            if wnid in wnids:
                raise DataError(f"{path}:{lineno}: wnid {wnid!r} is listed twice")
            wnids.append(wnid)
            names.append(parts[1].split(",")[0].strip() if len(parts) > 1 else wnid)
    if not wnids:
        raise DataError(f"{path}: no '<wnid> <name>' lines")
    return wnids, names


def _number(text: str | None, where: str, field: str) -> int:
    if text is None or not text.strip():
        raise DataError(f"{where}: field {field!r} is missing or empty")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: field {field!r} must be a number, got {text.strip()!r}") from None
    if value != int(value):
        raise DataError(f"{where}: field {field!r} must be an integer pixel index, got {text.strip()!r}")
    return int(value)


def _box(x0: int, y0: int, x1: int, y1: int, where: str) -> list[float]:
    # Inclusive pixel indexes: the box covers pixels xmin..xmax, i.e. pixel edges [xmin, xmax + 1).
    if x1 < x0 or y1 < y0 or x0 < 0 or y0 < 0:
        raise DataError(f"{where}: box xmin={x0} ymin={y0} xmax={x1} ymax={y1} is not a box "
                        "(need 0 <= xmin <= xmax and 0 <= ymin <= ymax)")
    return [float(x0), float(y0), float(x1 + 1), float(y1 + 1)]


def read_ilsvrc_xml(path: str) -> tuple[int, int, list[tuple[str, list[float]]]]:
    """(width, height, [(wnid, XYXY box), ...]) from one ILSVRC bounding-box XML file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise DataError(f"{path}: field 'size' is missing")
    width = _number(size.findtext("width"), f"{path}: size", "width")
    height = _number(size.findtext("height"), f"{path}: size", "height")
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: size: width and height must be positive, got {width}x{height}")
    objects = []
    for k, obj in enumerate(root.findall("object")):
        where = f"{path}: object {k}"
        wnid = (obj.findtext("name") or "").strip()
        if not wnid:
            raise DataError(f"{where}: field 'name' (the wnid) is missing or empty")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{where}: field 'bndbox' is missing")
        coords = [_number(bnd.findtext(f), f"{where} bndbox", f) for f in ("xmin", "ymin", "xmax", "ymax")]
        box = _box(*coords, where)
        if box[2] > width or box[3] > height:
            raise DataError(f"{where}: bndbox xmax={coords[2]} ymax={coords[3]} lies outside the "
                            f"{width}x{height} image")
        objects.append((wnid, box))
    return width, height, objects


def read_loc_csv(path: str) -> dict[str, list[tuple[str, list[float]]]]:
    """ImageId -> [(wnid, XYXY box), ...] from a Kaggle ``LOC_*_solution.csv``."""
    out: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[:2]) != CSV_HEADER:
            raise DataError(f"{path}: the first line must be the header {','.join(CSV_HEADER)!r}, got {header!r}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or not any(row):
                continue
            if len(row) != 2 or not row[0].strip():
                raise DataError(f"{where}: expected 2 fields 'ImageId,PredictionString', got {row!r}")
            image_id, tokens = row[0].strip(), row[1].split()
            if not tokens or len(tokens) % 5:
                raise DataError(f"{where}: field 'PredictionString' has {len(tokens)} values; expected "
                                "groups of 5 'wnid xmin ymin xmax ymax'")
            if image_id in out:
                raise DataError(f"{where}: ImageId {image_id!r} appears twice")
            objs = []
            for g in range(0, len(tokens), 5):
                fields = ("xmin", "ymin", "xmax", "ymax")
                coords = [_number(t, f"{where} PredictionString box {g // 5}", n)
                          for t, n in zip(tokens[g + 1:g + 5], fields)]
                objs.append((tokens[g], _box(*coords, f"{where} box {g // 5}")))
            out[image_id] = objs
    return out


def _index_images(image_root: str) -> dict[str, str]:
    """Relative path without extension -> absolute image path, for every image under image_root."""
    index = {}
    for folder, dirs, files in os.walk(image_root):
        dirs.sort()
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() in IMAGE_EXTENSIONS:
                rel = os.path.relpath(os.path.join(folder, stem), image_root)
                index[rel.replace(os.sep, "/")] = os.path.join(folder, f)
    return index


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image  # reads the header only

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as e:
        raise DataError(f"{path}: cannot read the image size ({e})") from None


def load_ilsvrc_localization(image_root: str, *, csv_file: str | None = None, ann_root: str | None = None,
                             synset_file: str | None = None) -> tuple[list[dict], list[str], list[str]]:
    """Dataset dicts of an ILSVRC localization split; returns (dicts, wnids, class names).

    Args:
        image_root: the split's image folder (``train`` with ``<wnid>/`` subfolders, or flat ``val``).
        csv_file: a Kaggle ``LOC_*_solution.csv``; None reads the XML files.
        ann_root: where the XML tree lives (default: beside the images).
        synset_file: ``LOC_synset_mapping.txt`` fixing the class order; recommended, so that train and
            val agree (without it the class order is the sorted wnids this split contains).
    """
    if not os.path.isdir(image_root):
        raise MissingFileError(
            f"localization image folder {image_root!r} does not exist. Expected <split>/<wnid>/<name>.JPEG with "
            "<name>.xml beside it (or under ann_root), or the images of a LOC_<split>_solution.csv; for the "
            "built-in imagenet_loc_* sets, put them under $RESNET_DET_DATASETS/imagenet (datasets/README.md)")
    images = _index_images(image_root)
    records = []  # (image path, width or None, height or None, objects, folder wnid or None)
    if csv_file is not None:
        for image_id, objs in read_loc_csv(csv_file).items():
            key = image_id if image_id in images else f"{image_id.split('_')[0]}/{image_id}"
            if key not in images:
                raise MissingFileError(f"{csv_file}: ImageId {image_id!r} has no image {image_root}/{image_id}.* "
                                       f"nor {image_root}/{key}.* (extensions {IMAGE_EXTENSIONS})")
            records.append((images[key], None, None, objs, None))
    else:
        ann_root = ann_root or image_root
        missing = 0
        for rel, path in images.items():
            xml = os.path.join(ann_root, rel + ".xml")
            if not os.path.isfile(xml):
                missing += 1
                continue
            w, h, objs = read_ilsvrc_xml(xml)
            folder = rel.split("/")[0] if "/" in rel else None
            records.append((path, w, h, objs, folder))
        if missing:
            logger.info("%s: %d of %d images have no bounding-box XML in %s; skipped", image_root, missing,
                        len(images), ann_root)
    if not records:
        raise DataError(f"{image_root}: no annotated images (CSV {csv_file}, XML root {ann_root})")

    if synset_file is not None:
        wnids, names = read_synsets(synset_file)
    else:
        wnids = sorted({w for r in records for w, _ in r[3]} | {r[4] for r in records if r[4]})
        names = list(wnids)
    index = {w: i for i, w in enumerate(wnids)}
    dicts = []
    for image_id, (path, w, h, objs, folder) in enumerate(records):
        for wnid, _ in objs:
            if wnid not in index:
                raise DataError(f"{path}: object class {wnid!r} is not in the synset list "
                                f"({synset_file or 'the wnids of ' + image_root}, {len(wnids)} classes)")
        if not objs:
            logger.warning("%s: no objects in its annotation; skipped", path)
            continue
        if w is None:
            w, h = _image_size(path)
        label = index[folder] if folder in index else index[objs[0][0]]
        anns = [{"bbox": box, "category_id": index[wnid], "iscrowd": 0} for wnid, box in objs]
        dicts.append({"file_name": os.path.abspath(path), "image_id": image_id, "height": h, "width": w,
                      "label": label, "annotations": anns})
    return dicts, wnids, names


def register_ilsvrc_localization(name: str, image_root: str, *, csv_file: str | None = None,
                                 ann_root: str | None = None, synset_file: str | None = None,
                                 synset_optional: bool = False, prepare=None) -> None:
    """Register an ILSVRC localization split (evaluator_type "localization", Appendix C).

    ``thing_classes`` (and ``wnids``) are set when the split is first loaded (or now, from a synset
    file that exists already). With ``synset_optional`` a missing synset file falls back to the sorted
    wnids. ``prepare`` is called before each load (the demo generates its set there).
    """
    from ..data import DatasetCatalog, MetadataCatalog

    def load():
        if prepare is not None:
            prepare()
        syn = synset_file if synset_file is None or os.path.isfile(synset_file) else None
        if synset_file is not None and syn is None and not synset_optional:
            raise MissingFileError(f"data set {name!r}: synset file {synset_file!r} does not exist")
        dicts, wnids, names = load_ilsvrc_localization(image_root, csv_file=csv_file, ann_root=ann_root,
                                                       synset_file=syn)
        MetadataCatalog.get(name).set(thing_classes=names, wnids=wnids)
        return dicts

    DatasetCatalog.register(name, load)
    meta = MetadataCatalog.get(name).set(evaluator_type="localization", image_root=image_root)
    if synset_file is not None and os.path.isfile(synset_file):
        wnids, names = read_synsets(synset_file)
        meta.set(thing_classes=names, wnids=wnids)


# The generated demo set (resnet_det.data.make_localization_set): its size, fixed here so that
# train and val come from one generation.
LOC_DEMO = {"num_classes": 5, "train_per_class": 200, "val_per_class": 40, "image_size": 96, "seed": 0}


def register_builtin_localization(root: str | None = None) -> list[str]:
    """``imagenet_loc_{train,val}`` (``<root>/imagenet``; a ``LOC_<split>_solution.csv`` there is used
    when present, else the XML beside the images) and the generated ``loc_demo_{train,val}``.
    Names already registered (e.g. by the data room) are left alone. Returns the names registered."""
    from ..data import DatasetCatalog, datasets_root, make_localization_set

    root = os.path.abspath(root) if root is not None else datasets_root()
    done = []
    imagenet = os.path.join(root, "imagenet")
    for split in ("train", "val"):
        name = f"imagenet_loc_{split}"
        if name not in DatasetCatalog:
            csv_file = os.path.join(imagenet, f"LOC_{split}_solution.csv")
            register_ilsvrc_localization(name, os.path.join(imagenet, split),
                                         csv_file=csv_file if os.path.isfile(csv_file) else None,
                                         synset_file=os.path.join(imagenet, SYNSET_FILE), synset_optional=True)
            done.append(name)
    demo = os.path.join(root, "loc_demo")
    for split in ("train", "val"):
        name = f"loc_demo_{split}"
        if name not in DatasetCatalog:
            register_ilsvrc_localization(name, os.path.join(demo, split), synset_file=os.path.join(demo, SYNSET_FILE),
                                         prepare=lambda: make_localization_set(demo, **LOC_DEMO))
            done.append(name)
    return done
