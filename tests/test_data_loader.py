"""DatasetMapper and the detection loaders: flips against pixels, bad-image policies, determinism,
exact resume at an iteration, aspect grouping, rank sharding, and catalog error messages."""
import itertools
import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch

from engine_utils import registered_shapes
from resnet_det.config import get_cfg
from resnet_det.data import (BadImageError, DatasetCatalog, DatasetNotFoundError, MetadataCatalog, DatasetMapper,
                             InferenceSampler, TrainingSampler, build_detection_test_loader,
                             build_detection_train_loader, get_detection_dataset_dicts, register_all_builtins,
                             register_coco_instances)
from resnet_det.data.catalog import unregister


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small shapes set registered as "tl_shapes" (train split: 24 images, both orientations)."""
    with registered_shapes(str(tmp_path_factory.mktemp("ds") / "shapes"), "tl_shapes", 24, 3, 7) as root:
        yield root


def _cfg(tmp_path, **kw):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("tl_shapes",)
    cfg.SOLVER.IMS_PER_BATCH = 3
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.merge_from_list([x for kv in kw.items() for x in kv])  # dotted keys, yacs' own type checks
    return cfg


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _same(b1, b2):
    assert [x["image_id"] for x in b1] == [x["image_id"] for x in b2]
    for x, y in zip(b1, b2):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["boxes"], y["boxes"])


def _write_img(path, w=10, h=8):
    img = np.zeros((h, w, 3), np.uint8)
    img[2:6, 1:4] = (0, 0, 255)  # a red patch: pixels x 1..3, y 2..5 = box [1, 2, 4, 6]
    cv2.imwrite(str(path), img)
    return {"file_name": str(path), "image_id": 1, "height": h, "width": w,
            "annotations": [{"bbox": [1.0, 2.0, 4.0, 6.0], "category_id": 2, "iscrowd": 0},
                            {"bbox": [0.0, 0.0, 2.0, 2.0], "category_id": 0, "iscrowd": 1}]}


def test_mapper_flip_matches_pixels_and_formats(tmp_path):
    d = _write_img(tmp_path / "a.png")
    out = DatasetMapper(_cfg(tmp_path, **{"INPUT.RANDOM_FLIP_PROB": 1.0}), is_train=True)(d)
    img = out["image"]
    assert img.dtype == torch.uint8 and img.shape == (3, 8, 10) and (out["height"], out["width"]) == (8, 10)
    # Crowd box dropped at training; the flipped box is where the red pixels are now (x 6..8).
    assert out["boxes"].tolist() == [[6.0, 2.0, 9.0, 6.0]] and out["classes"].tolist() == [2]
    ys, xs = torch.nonzero(img[2] == 255, as_tuple=True)
    assert (xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1) == (6, 9, 2, 6)
    test = DatasetMapper(_cfg(tmp_path, **{"INPUT.FORMAT": "RGB"}), is_train=False)(d)
    assert test["image"][0, 3, 2].item() == 255 and test["image"][2].max().item() == 0  # RGB: red first
    assert test["boxes"].tolist() == [[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 2.0, 2.0]]  # no flip, crowd kept
    empty = DatasetMapper(_cfg(tmp_path), is_train=True)(dict(d, annotations=[]))
    assert empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert empty["classes"].shape == (0,) and empty["classes"].dtype == torch.int64


def _bad_files(tmp_path, good):
    data = open(good["file_name"], "rb").read()
    cases = {"missing.jpg": None, "text.jpg": b"this is not an image", "empty.png": b""}
    ok = cv2.imencode(".jpg", np.full((8, 10, 3), 128, np.uint8))[1].tobytes()
    cases["cut.jpg"] = ok[: len(ok) // 2]
    cases["cut.png"] = data[: len(data) - 20]
    dicts = []
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        dicts.append(dict(good, file_name=str(tmp_path / name)))
    (tmp_path / "wrong_size.png").write_bytes(data)
    dicts.append(dict(good, file_name=str(tmp_path / "wrong_size.png"), width=11))
    return dicts


def test_bad_images_error_policy(tmp_path):
    good = _write_img(tmp_path / "good.png")
    mapper = DatasetMapper(_cfg(tmp_path), is_train=False)
    for d in _bad_files(tmp_path, good):
        with pytest.raises(BadImageError) as e:
            mapper(d)
        assert d["file_name"] in str(e.value) and "ON_BAD_IMAGE" in str(e.value)


def test_bad_images_skip_policy(tmp_path):
    good = _write_img(tmp_path / "good.png")
    cfg = _cfg(tmp_path, **{"DATALOADER.ON_BAD_IMAGE": "skip"})
    mapper = DatasetMapper(cfg, is_train=False)
    bad = _bad_files(tmp_path, good)
    assert all(mapper(d) is None for d in bad) and mapper.num_skipped == len(bad)
    lines = open(os.path.join(cfg.OUTPUT_DIR, "skipped_images.txt")).read().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [d["file_name"] for d in bad]
    # The test loader moves on: only the good images come out, in order.
    dicts = [dict(good, image_id=1), dict(bad[0], image_id=2), dict(good, image_id=3)]
    DatasetCatalog.register("tl_bad", lambda: dicts)
    try:
        out = [b[0]["image_id"] for b in build_detection_test_loader(cfg, "tl_bad")]
        assert out == [1, 3]
    finally:
        unregister("tl_bad")


@pytest.mark.parametrize("grouping", [True, False])
def test_train_stream_reproducible_and_resumable(tmp_path, shapes, grouping):
    cfg = _cfg(tmp_path, **{"DATALOADER.ASPECT_RATIO_GROUPING": grouping, "SEED": 5})
    fresh = _take(build_detection_train_loader(cfg), 14)  # > 1 epoch of 23 images
    again = _take(build_detection_train_loader(cfg), 14)
    for b1, b2 in zip(fresh, again):
        _same(b1, b2)
    assert all(len(b) == 3 for b in fresh)
    for k in (1, 5, 9):
        resumed = _take(build_detection_train_loader(cfg, start_iter=k), 4)
        for b1, b2 in zip(fresh[k:k + 4], resumed):
            _same(b1, b2)
    other = _take(build_detection_train_loader(_cfg(tmp_path, **{"SEED": 6})), 4)
    assert [x["image_id"] for b in other for x in b] != [x["image_id"] for b in fresh[:4] for x in b]
    flipped = sum(x["boxes"].numel() > 0 and not torch.equal(x["boxes"], _unflipped(x)) for b in fresh for x in b)
    assert 0 < flipped < 42  # RANDOM_FLIP_PROB 0.5 flips some, not all


def _unflipped(x):
    d = next(d for d in DatasetCatalog.get("tl_shapes") if d["image_id"] == x["image_id"])
    return torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32)


def test_workers_give_the_same_stream(tmp_path, shapes):
    cfg = _cfg(tmp_path)
    ref = _take(build_detection_train_loader(cfg), 4)
    cfg.DATALOADER.NUM_WORKERS = 2
    for b1, b2 in zip(ref, _take(build_detection_train_loader(cfg), 4)):
        _same(b1, b2)


def test_resume_with_skipped_images(tmp_path, shapes):
    dicts = get_detection_dataset_dicts("tl_shapes")
    dicts[3] = dict(dicts[3], file_name=dicts[3]["file_name"] + ".missing")
    cfg = _cfg(tmp_path, **{"DATALOADER.ON_BAD_IMAGE": "skip"})
    fresh = _take(build_detection_train_loader(cfg, dataset=dicts), 12)
    assert all(len(b) == 3 and dicts[3]["image_id"] not in [x["image_id"] for x in b] for b in fresh)
    resumed = _take(build_detection_train_loader(cfg, dataset=dicts, start_iter=7), 5)
    for b1, b2 in zip(fresh[7:], resumed):
        _same(b1, b2)


def test_aspect_grouping(tmp_path, shapes):
    def orientations(grouping):
        batches = _take(build_detection_train_loader(_cfg(tmp_path, **{"DATALOADER.ASPECT_RATIO_GROUPING": grouping,
                                                                      "INPUT.RANDOM_FLIP_PROB": 0.0})), 16)
        return [{x["width"] >= x["height"] for x in b} for b in batches]

    assert all(len(o) == 1 for o in orientations(True))
    assert any(len(o) == 2 for o in orientations(False))  # the check above is not vacuous


def test_filter_empty_and_class_mismatch(tmp_path, shapes):
    all_dicts = get_detection_dataset_dicts("tl_shapes", filter_empty=False)
    kept = get_detection_dataset_dicts("tl_shapes", filter_empty=True)
    n_empty = sum(not d["annotations"] for d in all_dicts)
    assert len(kept) == len(all_dicts) - n_empty and all(d["annotations"] for d in kept)
    doc = json.load(open(MetadataCatalog.get("tl_shapes").json_file))
    doc["categories"][0]["name"] = "blob"
    (tmp_path / "other.json").write_text(json.dumps(doc))
    register_coco_instances("tl_other", {}, str(tmp_path / "other.json"), os.path.dirname(kept[0]["file_name"]))
    try:
        with pytest.raises(ValueError, match="different thing_classes"):
            get_detection_dataset_dicts(["tl_shapes", "tl_other"])
    finally:
        unregister("tl_other")
    with pytest.raises(ValueError, match="DATASETS.TRAIN"):
        get_detection_dataset_dicts([])


def test_samplers_shard_by_rank():
    glob = [i for _, i in itertools.islice(TrainingSampler(10, seed=1, rank=0, world_size=1).indices(), 40)]
    for e in range(4):
        assert sorted(glob[10 * e:10 * e + 10]) == list(range(10))  # each epoch a permutation
    assert glob[:10] != glob[10:20]  # reshuffled per epoch
    r0 = [i for _, i in itertools.islice(TrainingSampler(10, seed=1, rank=0, world_size=2).indices(), 20)]
    r1 = [i for _, i in itertools.islice(TrainingSampler(10, seed=1, rank=1, world_size=2).indices(), 20)]
    assert r0 == glob[0::2] and r1 == glob[1::2]
    late = [i for _, i in itertools.islice(TrainingSampler(10, seed=1, rank=1, world_size=2).indices(7), 5)]
    assert late == r1[7:12]
    shards = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_test_loader_sequential(tmp_path, shapes):
    loader = build_detection_test_loader(_cfg(tmp_path, **{"INPUT.RANDOM_FLIP_PROB": 1.0}), "tl_shapes")
    dicts = DatasetCatalog.get("tl_shapes")
    batches = list(loader)
    assert len(loader) == len(batches) == len(dicts) and all(len(b) == 1 for b in batches)
    for b, d in zip(batches, dicts):
        assert b[0]["image_id"] == d["image_id"]
        assert torch.equal(b[0]["boxes"], _unflipped(b[0]))  # never flipped at test time


def test_missing_dataset_messages(tmp_path):
    register_all_builtins(str(tmp_path))
    try:
        with pytest.raises(DatasetNotFoundError) as e:
            DatasetCatalog.get("coco_2017_val")
        msg = str(e.value)
        assert isinstance(e.value, FileNotFoundError) and "\n" not in msg
        for part in ("'coco_2017_val'", str(tmp_path / "coco" / "annotations" / "instances_val2017.json"),
                     str(tmp_path / "coco" / "val2017"), "Expected layout", "datasets/README.md",
                     "RESNET_DET_DATASETS"):
            assert part in msg
        with pytest.raises(DatasetNotFoundError, match=r"'voc_2007_test'.*VOC2007.*test\.txt.*README"):
            DatasetCatalog.get("voc_2007_test")
    finally:
        register_all_builtins()
    with pytest.raises(KeyError) as e:
        DatasetCatalog.get("coco_2099_val")
    assert "coco_2017_val" in str(e.value) and "shapes_train" in str(e.value)
    with pytest.raises(KeyError, match="Registered: .*voc_2012_val"):
        MetadataCatalog.get("nope")


def test_metadata_refuses_silent_change():
    DatasetCatalog.register("tl_meta", lambda: [])
    try:
        meta = MetadataCatalog.get("tl_meta").set(thing_classes=["a"])
        meta.set(thing_classes=["a"])  # same value: fine
        with pytest.raises(ValueError, match="thing_classes"):
            meta.set(thing_classes=["b"])
        with pytest.raises(AttributeError, match="has no 'json_file'"):
            meta.json_file
        clone = pickle.loads(pickle.dumps(meta))  # e.g. sent to spawned DDP workers
        assert clone.thing_classes == ["a"] and clone.name == "tl_meta"
    finally:
        unregister("tl_meta")
