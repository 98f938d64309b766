"""Generated data sets: deterministic bytes, boxes inside images, atomic writes, the three layouts."""
import hashlib
import json
import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from resnet_det.data import DatasetCatalog, MetadataCatalog, register_all_builtins
from resnet_det.data import demo
from resnet_det.data.demo import generate_shapes_dataset, make_classification_set, make_localization_set
from resnet_det.data.shapes_draw import SHAPE_KINDS, render_scene, shape_mask


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            h.update(f.encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_shapes_deterministic_and_boxes_inside(tmp_path):
    a = generate_shapes_dataset(str(tmp_path / "a"), num_train=10, num_val=3, seed=3)
    b = generate_shapes_dataset(str(tmp_path / "b"), num_train=10, num_val=3, seed=3)
    c = generate_shapes_dataset(str(tmp_path / "c"), num_train=10, num_val=3, seed=4)
    ja = (tmp_path / "a" / "annotations" / "instances_train.json").read_bytes()
    assert ja == (tmp_path / "b" / "annotations" / "instances_train.json").read_bytes()
    assert _digest(a) == _digest(b) != _digest(c)
    # Each image is seeded by its own index: a longer set starts with the same images.
    generate_shapes_dataset(str(tmp_path / "d"), num_train=12, num_val=3, seed=3)
    assert (tmp_path / "d/train/000009.jpg").read_bytes() == (tmp_path / "a/train/000009.jpg").read_bytes()

    coco = json.loads(ja)
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_KINDS[:5])
    imgs = {im["id"]: im for im in coco["images"]}
    assert len(coco["annotations"]) >= 10
    for im in coco["images"]:
        arr = cv2.imread(os.path.join(a, "train", im["file_name"]))
        assert arr.shape == (im["height"], im["width"], 3)
        assert 200 <= im["height"] <= 320 and 200 <= im["width"] <= 320
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        im = imgs[ann["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
    assert len({(im["width"] > im["height"]) for im in coco["images"]}) == 2  # both orientations


def test_shape_mask_geometry():
    # cv2 draws a radius-10 disc over pixels cx-10..cx+10: its box is 21 pixels wide.
    m = shape_mask("circle", 64, 64, 30, 20, 10)
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (20, 40, 10, 30)
    ring = shape_mask("ring", 64, 64, 30, 30, 10)
    assert ring[30, 30] == 0 and ring[30, 39] == 1  # hollow centre
    sq = shape_mask("square", 64, 64, 30, 30, 10)  # half side 0.8 * 10
    assert sq.sum() == pytest.approx(17 * 17, abs=20)
    for kind in SHAPE_KINDS:
        assert shape_mask(kind, 64, 64, 32, 32, 12, angle=0.3).sum() > 50


def test_render_scene_boxes_are_visible_extents():
    rng = np.random.default_rng(0)
    img, objs = render_scene(rng, 120, 160, SHAPE_KINDS[:5], 6, n_distractors=2)
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8 and objs
    for k, (x0, y0, x1, y1) in objs:
        assert 0 <= k < 5 and 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
        assert x0 == int(x0) and x1 == int(x1)


def test_generation_is_atomic(tmp_path, monkeypatch):
    calls = []

    def broken_split(out, split, *args):
        calls.append(split)
        os.makedirs(os.path.join(out, split))
        raise KeyboardInterrupt  # an interrupted run

    monkeypatch.setattr(demo, "_detection_split", broken_split)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes_dataset(str(tmp_path / "shapes"), num_train=2, num_val=1)
    assert calls == ["train"] and os.listdir(tmp_path) == []  # nothing half written, no temp left


def test_catalog_generates_shapes_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.SHAPES_DEFAULTS, "num_train", 6)
    monkeypatch.setitem(demo.SHAPES_DEFAULTS, "num_val", 2)
    register_all_builtins(str(tmp_path))
    try:
        assert not (tmp_path / "shapes").exists()
        val = DatasetCatalog.get("shapes_val")
        assert len(val) == 2 and (tmp_path / "shapes" / "train").is_dir()
        assert all(os.path.isfile(d["file_name"]) for d in val)
        meta = MetadataCatalog.get("shapes_val")
        assert meta.thing_classes == list(SHAPE_KINDS[:5]) and meta.evaluator_type == "coco"
        assert meta.json_file == str(tmp_path / "shapes" / "annotations" / "instances_val.json")
        assert len(DatasetCatalog.get("shapes_train")) == 6
    finally:
        register_all_builtins()


def test_classification_set(tmp_path):
    root = make_classification_set(str(tmp_path / "cls"), num_classes=4, train_per_class=3, val_per_class=2,
                                   image_size=32, seed=1)
    again = make_classification_set(str(tmp_path / "cls2"), num_classes=4, train_per_class=3, val_per_class=2,
                                    image_size=32, seed=1)
    assert _digest(root) == _digest(again)
    assert sorted(os.listdir(os.path.join(root, "train"))) == sorted(SHAPE_KINDS[:4])
    for split, n in (("train", 3), ("val", 2)):
        for kind in SHAPE_KINDS[:4]:
            files = sorted(os.listdir(os.path.join(root, split, kind)))
            assert len(files) == n and all(f.endswith(".png") for f in files)
            assert cv2.imread(os.path.join(root, split, kind, files[0])).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="num_classes=11"):
        make_classification_set(str(tmp_path / "x"), num_classes=11)


def test_localization_set(tmp_path):
    root = make_localization_set(str(tmp_path / "loc"), num_classes=3, train_per_class=2, val_per_class=1,
                                 image_size=64, seed=0)
    mapping = dict(line.split() for line in open(os.path.join(root, "LOC_synset_mapping.txt")))
    assert list(mapping.values()) == list(SHAPE_KINDS[:3])
    n_images = 0
    for split in ("train", "val"):
        for wnid in mapping:
            folder = os.path.join(root, split, wnid)
            for png in (f for f in os.listdir(folder) if f.endswith(".png")):
                n_images += 1
                tree = ET.parse(os.path.join(folder, png[:-4] + ".xml")).getroot()
                assert tree.findtext("filename") == png[:-4]
                assert (tree.findtext("size/width"), tree.findtext("size/height")) == ("64", "64")
                objs = tree.findall("object")
                assert 1 <= len(objs) <= 2
                for o in objs:
                    assert o.findtext("name") == wnid  # ILSVRC: objects are of the image's class
                    x0, y0, x1, y1 = (int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
                    assert 0 <= x0 <= x1 <= 63 and 0 <= y0 <= y1 <= 63
    assert n_images == 3 * 3
