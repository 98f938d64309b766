"""COCO json / VOC xml readers: round trips against pycocotools, fixes that are counted, errors that name
the file and field, and hypothesis fuzzing of malformed annotation records."""
import copy
import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO

from resnet_det.data import (DatasetCatalog, MetadataCatalog, VOC_CLASSES, load_coco_json, load_voc_instances,
                             register_coco_instances, register_pascal_voc)
from resnet_det.data.catalog import unregister
from resnet_det.data.coco import convert_to_coco_json, dataset_dicts_to_coco


def _coco_doc():
    # Category ids deliberately sparse and unsorted: contiguous ids follow sorted dataset ids.
    return {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 100, "width": 200},
                   {"id": 3, "file_name": "sub/b.jpg", "height": 50, "width": 60}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [0.5, 1.5, 2.0, 3.0], "iscrowd": 1},
            {"id": 3, "image_id": 3, "category_id": 17, "bbox": [1, 2, 3, 4]},
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 5, "name": "plane"}, {"id": 17, "name": "cat"}],
    }


def _write(tmp_path, doc, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc), encoding="utf-8")
    return str(p)


def test_coco_reader_matches_pycocotools(tmp_path):
    doc = _coco_doc()
    path = _write(tmp_path, doc)
    dicts = load_coco_json(path, "/imgs")
    coco = COCO(path)  # the oracle reads the same file
    id_map = {cid: i for i, cid in enumerate(sorted(coco.getCatIds()))}
    assert id_map == {5: 0, 17: 1, 90: 2}
    assert [d["image_id"] for d in dicts] == sorted(coco.getImgIds())
    for d in dicts:
        img = coco.loadImgs(d["image_id"])[0]
        assert d["file_name"] == "/imgs/" + img["file_name"]
        assert (d["height"], d["width"]) == (img["height"], img["width"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=d["image_id"]))
        assert len(d["annotations"]) == len(anns)
        for got, ref in zip(d["annotations"], anns):
            x, y, w, h = ref["bbox"]
            assert got["bbox"] == [x, y, x + w, y + h]
            assert got["category_id"] == id_map[ref["category_id"]]
            assert got["iscrowd"] == ref.get("iscrowd", 0)


def test_coco_round_trip_and_metadata(tmp_path):
    path = _write(tmp_path, _coco_doc())
    register_coco_instances("test_rt_coco", {"extra": 1}, path, str(tmp_path))
    try:
        dicts = DatasetCatalog.get("test_rt_coco")
        meta = MetadataCatalog.get("test_rt_coco")
        assert meta.thing_classes == ["plane", "cat", "toothbrush"]
        assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 17: 1, 90: 2}
        assert meta.evaluator_type == "coco" and meta.extra == 1
        out = convert_to_coco_json("test_rt_coco", str(tmp_path / "out" / "rt.json"))
        # Written with the original dataset ids, so re-reading gives the same dicts.
        again = load_coco_json(out, "")
        assert [(d["image_id"], d["annotations"]) for d in again] == [(d["image_id"], d["annotations"]) for d in dicts]
        assert {c["id"] for c in json.load(open(out))["categories"]} == {5, 17, 90}
    finally:
        unregister("test_rt_coco")


def test_dicts_to_coco_default_ids_keep_difficult():
    dicts = [{"file_name": "x.jpg", "image_id": 1, "height": 10, "width": 10,
              "annotations": [{"bbox": [1, 2, 4, 6], "category_id": 1, "iscrowd": 0, "difficult": True}]}]
    coco = dataset_dicts_to_coco(dicts, ["a", "b"])
    assert coco["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    ann = coco["annotations"][0]
    assert ann["bbox"] == [1.0, 2.0, 3.0, 4.0] and ann["area"] == 12.0
    assert ann["category_id"] == 2 and ann["difficult"] is True


def test_coco_fixes_are_counted_and_logged(tmp_path, caplog):
    doc = _coco_doc()
    doc["annotations"] += [
        {"id": 10, "image_id": 7, "category_id": 5, "bbox": [5, 5, 0, 10]},     # zero width
        {"id": 11, "image_id": 7, "category_id": 5, "bbox": [5, 5, -3, 10]},    # negative width
        {"id": 12, "image_id": 3, "category_id": 5, "bbox": [100, 5, 10, 10]},  # outside (w=60)
        {"id": 13, "image_id": 3, "category_id": 5, "bbox": [-5, 40, 20, 30]},  # needs clipping
    ]
    doc["images"].append(dict(doc["images"][0]))  # an identical duplicate record
    with caplog.at_level(logging.WARNING, logger="resnet_det.data.coco"):
        dicts = load_coco_json(_write(tmp_path, doc), "")
    by_id = {d["image_id"]: d for d in dicts}
    assert len(dicts) == 2
    assert len(by_id[7]["annotations"]) == 2
    assert [a["bbox"] for a in by_id[3]["annotations"]] == [[1, 2, 4, 6], [0.0, 40.0, 15.0, 50.0]]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 3 degenerate boxes in 2 images" in msg
    assert "fixed 1 boxes clipped to the image in 1 images" in msg
    assert "dropped 1 duplicate image records" in msg


@pytest.mark.parametrize("mutate, field, who", [
    (lambda d: d["annotations"][0].update(category_id=4), "category_id", "annotation id 1"),
    (lambda d: d["annotations"][1].pop("bbox"), "bbox", "annotation id 2"),
    (lambda d: d["annotations"][2].update(image_id=99), "image_id", "annotation id 3"),
    (lambda d: d["annotations"][0].update(bbox="1,2,3,4"), "bbox", "annotation id 1"),
    (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd", "annotation id 1"),
    (lambda d: d["images"][1].update(width="60"), "width", "image id 3"),
    (lambda d: d["images"][1].pop("height"), "height", "image id 3"),
    (lambda d: d["images"].append({"id": 3, "file_name": "other.jpg", "height": 5, "width": 5}), "id", "image id 3"),
    (lambda d: d.pop("images"), "images", "top level"),
    (lambda d: d.update(categories=[]), "categories", "top level"),
])
def test_coco_unfixable_errors_name_file_record_field(tmp_path, mutate, field, who):
    doc = _coco_doc()
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(ValueError) as e:
        load_coco_json(path, "")
    assert path in str(e.value) and who in str(e.value) and repr(field) in str(e.value)


def test_coco_non_utf8_and_bad_json(tmp_path):
    p = tmp_path / "latin.json"
    p.write_bytes(json.dumps(_coco_doc()).replace("cat", "chat\u00e9").encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_coco_json(str(p), "")
    p2 = tmp_path / "cut.json"
    p2.write_text(json.dumps(_coco_doc())[:-20])
    with pytest.raises(ValueError, match=r"cut\.json: not valid JSON"):
        load_coco_json(str(p2), "")


# Values a broken exporter might write into any field.
_junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=3), st.lists(st.integers(-50, 300), max_size=5),
                  st.lists(st.floats(-50, 300), min_size=4, max_size=4), st.dictionaries(st.text(max_size=2), st.integers()))
_fields = st.sampled_from(["id", "image_id", "category_id", "bbox", "iscrowd"])


def _mutated(box, cat, overrides, drops):
    rec = {"id": 50, "image_id": 7, "category_id": cat, "bbox": box, "iscrowd": 0}
    rec.update(overrides)
    return {k: v for k, v in rec.items() if k not in drops}


# Valid records with a few fields broken, boxes anywhere (in, across or outside the image), and
# sometimes a record that is not even an object.
_record = st.builds(_mutated, st.lists(st.floats(-300, 400), min_size=4, max_size=4), st.sampled_from([5, 17, 90]),
                    st.dictionaries(_fields, _junk, max_size=2), st.sets(_fields, max_size=1))
_records = st.builds(lambda recs, junk: recs + junk, st.lists(_record, max_size=4),
                     st.lists(_junk, max_size=1).filter(lambda j: not j or not isinstance(j[0], dict)) | st.just([]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=_records)
def test_coco_fuzz_malformed_annotations(tmp_path, records):
    doc = _coco_doc()
    doc["annotations"] += copy.deepcopy(records)
    path = _write(tmp_path, doc, "fuzz.json")
    try:
        dicts = load_coco_json(path, "")
    except ValueError as e:  # a KeyError/TypeError here would be a crash, not a message
        assert path in str(e) and "field" in str(e)
        return
    for d in dicts:  # loaded: every kept box is inside its image and has area
        for a in d["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= d["width"] and 0 <= y0 < y1 <= d["height"]
            assert a["category_id"] in (0, 1, 2) and a["iscrowd"] in (0, 1)


def _voc_xml(objs, size=(200, 100)):
    parts = [f"<annotation><filename>x.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
             "<depth>3</depth></size>"]
    for name, box, diff in objs:
        d = "" if diff is None else f"<difficult>{diff}</difficult>"
        parts.append(f"<object><name>{name}</name><pose>Left</pose>{d}<bndbox><xmin>{box[0]}</xmin>"
                     f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def _voc_dir(tmp_path, files: dict, split_ids):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(split_ids) + "\n")
    for fid, text in files.items():
        (tmp_path / "Annotations" / f"{fid}.xml").write_text(text)
    return str(tmp_path)


def test_voc_reader(tmp_path):
    d = _voc_dir(tmp_path, {
        "000005": _voc_xml([("chair", (263, 211, 324, 339), 0), ("dog", (1, 1, 200, 100), 1), ("cat", (5, 6, 7, 8), None)]),
        "2008_000002": _voc_xml([]),
    }, ["000005", "2008_000002"])
    dicts = load_voc_instances(d, "trainval", VOC_CLASSES)
    assert [x["image_id"] for x in dicts] == [5, 2008000002]
    assert dicts[0]["file_name"].endswith("JPEGImages/000005.jpg")
    assert (dicts[0]["width"], dicts[0]["height"]) == (200, 100)
    a = dicts[0]["annotations"]
    # 1-based inclusive VOC pixels -> 0-based pixel edges: only the top-left corner moves.
    assert a[0]["bbox"] == [262.0, 210.0, 324.0, 339.0] and a[0]["category_id"] == VOC_CLASSES.index("chair")
    assert a[1]["bbox"] == [0.0, 0.0, 200.0, 100.0] and a[1]["difficult"] is True
    assert a[0]["difficult"] is False and a[2]["difficult"] is False
    assert dicts[1]["annotations"] == []
    # Round trip through COCO and back with the same boxes.
    coco = dataset_dicts_to_coco(dicts, list(VOC_CLASSES))
    assert coco["annotations"][0]["bbox"] == [262.0, 210.0, 62.0, 129.0]


def test_voc_register_and_errors(tmp_path):
    d = _voc_dir(tmp_path, {"a": _voc_xml([("b", (1, 2, 3, 4), 0)]), "bad": "<annotation><size>",
                            "nofield": "<annotation><size><width>5</width></size></annotation>",
                            "unknown": _voc_xml([("zebra", (1, 2, 3, 4), 0)])}, ["a"])
    register_pascal_voc("test_voc_small", d, "trainval", 2007, class_names=["a", "b"])
    try:
        assert DatasetCatalog.get("test_voc_small")[0]["annotations"][0]["category_id"] == 1
        meta = MetadataCatalog.get("test_voc_small")
        assert (meta.evaluator_type, meta.year, meta.split, meta.thing_classes) == ("voc", 2007, "trainval", ["a", "b"])
    finally:
        unregister("test_voc_small")
    split = tmp_path / "ImageSets" / "Main" / "trainval.txt"
    for fid, pattern in [("bad", r"bad\.xml: malformed XML"), ("nofield", r"nofield\.xml: size: field 'height'"),
                         ("unknown", r"unknown\.xml: object 0: field 'name' is 'zebra'"),
                         ("missing", r"lists 'missing' but .*missing\.xml does not exist")]:
        split.write_text(fid + "\n")
        with pytest.raises(ValueError, match=pattern):
            load_voc_instances(d, "trainval", VOC_CLASSES)
