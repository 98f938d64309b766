"""The serialized dataset store (data/store.py): same items as the list, fresh copies, used by every
loader, and forked workers that read it stay shared (the list's pages turn private)."""
import os
import sys

import numpy as np
import pytest
import torch

from engine_utils import registered_shapes
from resnet_det.config import get_cfg
from resnet_det.data import build_detection_test_loader, build_detection_train_loader
from resnet_det.data.store import SerializedList

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from bench_dataset_memory import coco_like_dicts, measure  # noqa: E402


def test_items_roundtrip_and_are_copies():
    items = [{"file_name": f"{i}.jpg", "image_id": i, "annotations": [{"bbox": [i, 0, 1, 1]}] * (i % 3),
              "image": np.full((2, 2, 3), i, np.uint8)} for i in range(50)]
    store = SerializedList(items)
    assert len(store) == 50
    for i in (0, 1, 17, 49, -1, -50):
        got, want = store[i], items[i]
        assert got.keys() == want.keys() and got["annotations"] == want["annotations"]
        np.testing.assert_array_equal(got["image"], want["image"])
    assert [d["image_id"] for d in store] == list(range(50))
    store[3]["annotations"].append("changed")  # a caller editing its dict changes nothing stored
    assert store[3]["annotations"] == items[3]["annotations"]
    assert len(SerializedList(store)) == 50 and SerializedList(store)[7]["image_id"] == 7
    assert len(SerializedList([])) == 0
    with pytest.raises(IndexError):
        store[50]
    with pytest.raises(TypeError):
        store[1:3]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    with registered_shapes(str(tmp_path_factory.mktemp("ds") / "shapes"), "store_shapes", 6, 3, 3) as root:
        yield root


def test_detection_loaders_hold_the_store(shapes, tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", ("store_shapes",), "SOLVER.IMS_PER_BATCH", 2,
                         "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path)])
    train = build_detection_train_loader(cfg)
    assert isinstance(train.dicts, SerializedList)
    batch = next(iter(train))
    assert len(batch) == 2 and batch[0]["image"].dtype == torch.uint8
    test = build_detection_test_loader(cfg, "store_shapes")
    assert isinstance(test.loader.dataset.dicts, SerializedList)
    assert [b[0]["image_id"] for b in test] == sorted(b[0]["image_id"] for b in test) and len(test) == 6


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc/PID/smaps_rollup")
def test_forked_workers_do_not_copy_the_store():
    """20k COCO-like dicts (~18 MB as Python objects), 2 forked workers reading every dict twice:
    with the list each worker ends up with a private copy; with the store it stays shared."""
    dicts = coco_like_dicts(20000, 145000)
    grown = {}
    for name, data in (("list", dicts), ("store", SerializedList(dicts))):
        rows = measure(data, workers=2)
        grown[name] = max(b - a for a, b in zip(rows[0]["per_worker_mb"], rows[-1]["per_worker_mb"]))
    assert grown["list"] > 8, grown  # the measurement sees the copy it is meant to prevent
    assert grown["store"] < 2, grown
