"""ILSVRC localization data for the Localizer: XML and Kaggle CSV readers (with malformed input), the
generated set, registration, and the training scale + crop checked on pixels."""
import os

import cv2
import numpy as np
import pytest
import torch

from resnet_det.config import get_cfg
from resnet_det.data import DatasetCatalog, MetadataCatalog, make_localization_set
from resnet_det.data.catalog import unregister
from resnet_det.localization import (LocalizationMapper, load_ilsvrc_localization, read_ilsvrc_xml, read_loc_csv,
                                     register_ilsvrc_localization, scale_and_crop)

XML = """<annotation><folder>{wnid}</folder><filename>{name}</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
OBJ = "<object><name>{wnid}</name><bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax><ymax>{3}</ymax></bndbox></object>"


def write_image(path, w, h):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.full((h, w, 3), 128, np.uint8))


def write_xml(path, wnid, objs, w=40, h=30, raw=None):
    with open(path, "w") as f:
        f.write(raw if raw is not None else XML.format(
            wnid=wnid, name="x", w=w, h=h, objects="".join(OBJ.format(*b, wnid=o) for o, b in objs)))


def test_xml_boxes_are_inclusive_pixels(tmp_path):
    p = str(tmp_path / "a.xml")
    write_xml(p, "n01", [("n01", (10, 5, 29, 14)), ("n02", (0, 0, 39, 29))])
    w, h, objs = read_ilsvrc_xml(p)
    # xmin..xmax covers 20 pixels: the pixel-edge box ends at xmax + 1; a full-image box is [0, 0, w, h].
    assert (w, h) == (40, 30)
    assert objs == [("n01", [10.0, 5.0, 30.0, 15.0]), ("n02", [0.0, 0.0, 40.0, 30.0])]


def test_generated_set_labels_and_boxes(tmp_path):
    root = make_localization_set(str(tmp_path / "loc"), num_classes=3, train_per_class=3, val_per_class=2,
                                 image_size=64, seed=1)
    dicts, wnids, names = load_ilsvrc_localization(os.path.join(root, "train"),
                                                   synset_file=os.path.join(root, "LOC_synset_mapping.txt"))
    assert names == ["circle", "square", "triangle"] and len(dicts) == 9
    for d in dicts:
        folder = os.path.basename(os.path.dirname(d["file_name"]))
        assert d["label"] == wnids.index(folder) and (d["height"], d["width"]) == (64, 64)
        assert all(a["category_id"] == d["label"] for a in d["annotations"])
        img = cv2.imread(d["file_name"])
        assert 1 <= len(d["annotations"]) <= 2  # the generator draws one or two objects per image
        for a in d["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]


def test_csv_layout_train_and_val(tmp_path):
    root = tmp_path / "imagenet"
    write_image(str(root / "train" / "n02" / "n02_7.JPEG"), 50, 40)
    write_image(str(root / "train" / "n01" / "n01_3.JPEG"), 30, 20)
    write_image(str(root / "val" / "ILSVRC2012_val_00000001.JPEG"), 60, 45)
    syn = root / "LOC_synset_mapping.txt"
    syn.write_text("n02 zebra, Equus\nn01 tench, Tinca tinca\n")  # file order, not sorted order
    (root / "train.csv").write_text("ImageId,PredictionString\nn02_7,n02 1 2 10 20 n02 0 0 49 39 \n"
                                    "n01_3,n01 0 0 5 5\n")
    (root / "val.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01 3 4 5 6\n")
    dicts, wnids, names = load_ilsvrc_localization(str(root / "train"), csv_file=str(root / "train.csv"),
                                                   synset_file=str(syn))
    assert wnids == ["n02", "n01"] and names == ["zebra", "tench"]
    by_name = {os.path.basename(d["file_name"]): d for d in dicts}
    d = by_name["n02_7.JPEG"]
    assert (d["width"], d["height"], d["label"]) == (50, 40, 0)  # size from the image header
    assert [a["bbox"] for a in d["annotations"]] == [[1, 2, 11, 21], [0, 0, 50, 40]]
    assert by_name["n01_3.JPEG"]["label"] == 1
    val, _, _ = load_ilsvrc_localization(str(root / "val"), csv_file=str(root / "val.csv"), synset_file=str(syn))
    assert val[0]["annotations"] == [{"bbox": [3.0, 4.0, 6.0, 7.0], "category_id": 1, "iscrowd": 0}]
    assert (val[0]["width"], val[0]["height"]) == (60, 45)


@pytest.mark.parametrize("content,match", [
    ("<annotation><size>", "malformed XML"),
    (XML.format(wnid="n01", name="x", w=40, h=30, objects=OBJ.format(1, 2, "abc", 4, wnid="n01")),
     r"object 0 bndbox: field 'xmax' must be a number, got 'abc'"),
    (XML.format(wnid="n01", name="x", w=40, h=30, objects=OBJ.format(1, 2, "", 4, wnid="n01")),
     r"field 'xmax' is missing"),
    (XML.format(wnid="n01", name="x", w=40, h=30, objects=OBJ.format(9, 2, 3, 4, wnid="n01")),
     r"xmin=9 ymin=2 xmax=3 ymax=4 is not a box"),
    (XML.format(wnid="n01", name="x", w=40, h=30, objects=OBJ.format(1, 2, 40, 4, wnid="n01")),
     r"outside the 40x30 image"),
    (XML.format(wnid="n01", name="x", w=40, h=30, objects=OBJ.format(1, 2, 3, 4, wnid="")),
     r"field 'name'"),
    ("<annotation><object/></annotation>", r"field 'size' is missing"),
    (XML.format(wnid="n01", name="x", w=0, h=30, objects=""), "width and height must be positive"),
])
def test_malformed_xml_names_file_and_field(tmp_path, content, match):
    p = str(tmp_path / "bad.xml")
    write_xml(p, "", [], raw=content)
    with pytest.raises(ValueError, match=match) as e:
        read_ilsvrc_xml(p)
    assert p in str(e.value)


@pytest.mark.parametrize("content,match", [
    ("Id,Boxes\nx,n01 1 2 3 4\n", "header 'ImageId,PredictionString'"),
    ("ImageId,PredictionString\nx,n01 1 2 3\n", r":2: field 'PredictionString' has 4 values"),
    ("ImageId,PredictionString\nx,n01 1 2 3 4\ny,n01 1 b 3 4\n", r":3 PredictionString box 0: field 'ymin' must be a number, got 'b'"),
    ("ImageId,PredictionString\nx,n01 1 2 3 4,extra\n", r":2: expected 2 fields"),
    ("ImageId,PredictionString\nx,n01 1 2 3 4\nx,n01 1 2 3 4\n", "appears twice"),
])
def test_malformed_csv_names_file_line_and_field(tmp_path, content, match):
    p = tmp_path / "LOC_val_solution.csv"
    p.write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        read_loc_csv(str(p))
    assert str(p) in str(e.value)


def test_missing_image_unknown_class_and_missing_folder(tmp_path):
    write_image(str(tmp_path / "val" / "a.png"), 20, 20)
    (tmp_path / "s.txt").write_text("n01 one\n")
    (tmp_path / "v.csv").write_text("ImageId,PredictionString\nb,n01 1 1 3 3\n")
    with pytest.raises(FileNotFoundError, match=r"ImageId 'b' has no image"):
        load_ilsvrc_localization(str(tmp_path / "val"), csv_file=str(tmp_path / "v.csv"))
    (tmp_path / "v.csv").write_text("ImageId,PredictionString\na,n07 1 1 3 3\n")
    with pytest.raises(ValueError, match=r"object class 'n07' is not in the synset list .*s.txt"):
        load_ilsvrc_localization(str(tmp_path / "val"), csv_file=str(tmp_path / "v.csv"),
                                 synset_file=str(tmp_path / "s.txt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ilsvrc_localization(str(tmp_path / "nope"))


def test_registered_split_has_localization_metadata(tmp_path):
    root = make_localization_set(str(tmp_path / "loc"), num_classes=2, train_per_class=2, val_per_class=1,
                                 image_size=48)
    name = "test_loc_reg_val"
    unregister(name)
    try:
        register_ilsvrc_localization(name, os.path.join(root, "val"),
                                     synset_file=os.path.join(root, "LOC_synset_mapping.txt"))
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "localization" and meta.thing_classes == ["circle", "square"]
        assert len(DatasetCatalog.get(name)) == 2
    finally:
        unregister(name)


def test_scale_and_crop_moves_boxes_with_the_pixels():
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:60, 150:190] = 255  # the object: box [150, 20, 190, 60]
    img[0:10, 0:10] = 255      # a second one, cut away by most crops
    boxes = np.array([[150, 20, 190, 60], [0, 0, 10, 10]], np.float32)
    for seed in range(5):
        out, b, c = scale_and_crop(img, boxes, np.array([3, 3]), 50, 50, np.random.default_rng(seed))
        assert out.shape == (50, 50, 3)
        for (x0, y0, x1, y1), _ in zip(b, c):
            # The box interior is the white object's, the ring just outside is not (or the crop edge).
            x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
            assert out[y0 + 1:y1 - 1, x0 + 1:x1 - 1].min() > 200
            if x0 > 1:
                assert out[y0 + 1:y1 - 1, x0 - 2].max() < 60
            if y1 < 49:
                assert out[y1 + 1, x0 + 1:x1 - 1].max() < 60
    # Scale 0.5 (shorter side 100 -> 50): a crop at x=75 holds the first object entirely.
    rng = np.random.default_rng(0)
    while True:
        _, b, _ = scale_and_crop(img, boxes, np.array([3, 3]), 50, 50, rng)
        if len(b) and b[0, 0] > 0 and b[0, 2] < 50:
            break
    assert b[0, 2] - b[0, 0] == pytest.approx(20) and b[0, 3] - b[0, 1] == pytest.approx(20)


def test_mapper_train_crop_and_test_original(tmp_path):
    root = make_localization_set(str(tmp_path / "loc"), num_classes=2, train_per_class=2, val_per_class=1,
                                 image_size=64)
    dicts, _, _ = load_ilsvrc_localization(os.path.join(root, "train"))
    cfg = get_cfg()
    cfg.INPUT.CROP_SIZE, cfg.INPUT.SCALE_RANGE = 48, (48, 64)
    train = LocalizationMapper(cfg, is_train=True)
    a = train(dicts[0], np.random.default_rng(3))
    b = train(dicts[0], np.random.default_rng(3))
    assert a["image"].shape == (3, 48, 48) and a["label"] == dicts[0]["label"]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])  # rng decides all
    assert (a["boxes"] >= 0).all() and (a["boxes"] <= 48).all()
    test = LocalizationMapper(cfg, is_train=False)(dicts[0])
    assert test["image"].shape == (3, 64, 64)
    torch.testing.assert_close(test["boxes"], torch.tensor([x["bbox"] for x in dicts[0]["annotations"]]))
    cfg.INPUT.SCALE_RANGE = (32, 64)
    with pytest.raises(ValueError, match=r"INPUT.SCALE_RANGE=\(32, 64\) starts below INPUT.CROP_SIZE=48"):
        LocalizationMapper(cfg, is_train=True)
