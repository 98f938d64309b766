"""CIFAR batch reader (generated files in the real pickle format), catalog errors, image folders,
exact resume of the training loader, test-loader shapes, per-pixel mean."""
import os
import pickle

import numpy as np
import pytest
import torch

from resnet_det.classification import (build_classification_test_loader, build_classification_train_loader,
                                       compute_mean_image, load_cifar10, read_cifar_batch,
                                       register_classification_builtins, write_cifar_batch)
from resnet_det.classification.cifar import write_cifar_meta
from resnet_det.classification.transforms import center_crop, resize_shorter, to_chw
from resnet_det.config import get_cfg
from resnet_det.data import DatasetCatalog, DatasetNotFoundError, make_classification_set, read_image


def _pattern(n, start=0):
    """Image i: R = i % 256, G = row * 8, B = column * 8 (so the layout is checkable)."""
    img = np.zeros((n, 32, 32, 3), np.uint8)
    img[..., 0] = ((np.arange(n) + start) % 256)[:, None, None]
    img[..., 1] = (np.arange(32) * 8)[None, :, None]
    img[..., 2] = (np.arange(32) * 8)[None, None, :]
    return img


def test_cifar_batch_layout_roundtrip(tmp_path):
    path = tmp_path / "data_batch_1"
    write_cifar_batch(path, _pattern(7), [3, 1, 4, 1, 5, 9, 2])
    with open(path, "rb") as f:  # the real files' structure: bytes keys, (N, 3072) planes R|G|B
        raw = pickle.load(f, encoding="bytes")
    assert raw[b"data"].shape == (7, 3072) and raw[b"data"].dtype == np.uint8
    assert raw[b"data"][2, 0] == 2 and raw[b"data"][2, 1024 + 32 * 5] == 40  # R of px 0; G of row 5
    images, labels = read_cifar_batch(str(path))
    np.testing.assert_array_equal(images, _pattern(7))
    assert labels.tolist() == [3, 1, 4, 1, 5, 9, 2]


def test_cifar_reader_accepts_str_keys_and_refuses_code(tmp_path):
    data = _pattern(2).transpose(0, 3, 1, 2).reshape(2, -1)
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({"data": data, "labels": [0, 1]}, f, protocol=2)
    assert read_cifar_batch(str(tmp_path / "b"))[1].tolist() == [0, 1]

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "evil", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(ValueError, match="refusing posix.system|refusing os.system|refusing nt.system"):
        read_cifar_batch(str(tmp_path / "evil"))
    assert not (tmp_path / "pwned").exists()
    with open(tmp_path / "c", "wb") as f:
        pickle.dump({b"labels": [0]}, f)
    with pytest.raises(ValueError, match="no 'data' entry"):
        read_cifar_batch(str(tmp_path / "c"))


def test_cifar_split_and_catalog(datasets_root):
    d = datasets_root / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):  # 5 x 1020 = 5100 images: 100 train, 5000 val
        write_cifar_batch(d / f"data_batch_{i}", _pattern(1020, 1020 * (i - 1)), np.arange(1020) % 10)
    write_cifar_batch(d / "test_batch", _pattern(10), np.arange(10))
    write_cifar_meta(str(d), ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])
    train, _ = load_cifar10(str(d), "train")
    val, _ = load_cifar10(str(d), "val")
    assert len(train) == 100 and len(val) == 5000
    assert train[99, 0, 0, 0] == 99 and val[0, 0, 0, 0] == 100 % 256  # val = the last 5000
    register_classification_builtins(str(datasets_root))
    try:
        dicts = DatasetCatalog.get("cifar10_val")
        assert len(dicts) == 5000 and dicts[3]["label"] == (103 % 1020) % 10
        assert len(DatasetCatalog.get("cifar10_test")) == 10
    finally:
        register_classification_builtins()


def test_cifar_reader_reads_what_torchvision_reads(tmp_path, monkeypatch):
    """Oracle: torchvision.datasets.CIFAR10 on the same files gives the same images, labels and class
    names. Why we keep our reader: torchvision accepts only the published archive's files (md5 check),
    reads str keys only (write_cifar_batch's bytes keys, as Python 3 sees the real files with
    encoding="bytes", are a KeyError to it), and unpickles without restriction."""
    import torchvision.datasets.cifar as tv_cifar

    from resnet_det.classification.cifar import read_label_names

    def write(root, keys):
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            n = 5 if name == "test_batch" else 12
            data = _pattern(n, 12 * i).transpose(0, 3, 1, 2).reshape(n, -1)
            with open(d / name, "wb") as f:
                pickle.dump({keys("data"): data, keys("labels"): [(j + i) % 10 for j in range(n)]}, f, protocol=2)
        with open(d / "batches.meta", "wb") as f:
            pickle.dump({keys("label_names"): [keys(c) for c in "abcdefghij"]}, f, protocol=2)
        return d

    d = write(tmp_path / "str", str)
    with pytest.raises(RuntimeError, match="not found or corrupted"):  # the md5 of the published files
        tv_cifar.CIFAR10(str(d.parent), train=True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    for train, split in ((True, "trainval"), (False, "test")):
        tv = tv_cifar.CIFAR10(str(d.parent), train=train)
        images, labels = load_cifar10(str(d), split)
        np.testing.assert_array_equal(images, tv.data)
        assert labels.tolist() == tv.targets
    assert tv.classes == read_label_names(str(d)) == list("abcdefghij")
    d = write(tmp_path / "bytes", str.encode)
    assert load_cifar10(str(d), "test")[1].tolist() == tv.targets
    with pytest.raises(KeyError):
        tv_cifar.CIFAR10(str(d.parent), train=False)


def test_missing_data_sets_say_where_and_what(datasets_root):
    register_classification_builtins(str(datasets_root))
    try:
        with pytest.raises(DatasetNotFoundError) as e:
            DatasetCatalog.get("imagenet_train")
        msg = str(e.value)
        assert str(datasets_root / "imagenet" / "train") in msg and "<wnid>" in msg and "RESNET_DET_DATASETS" in msg
        with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
            DatasetCatalog.get("cifar10_train")
    finally:
        register_classification_builtins()


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return make_classification_set(str(tmp_path_factory.mktemp("cls") / "set"), num_classes=3,
                                   train_per_class=6, val_per_class=3, image_size=32, seed=0)


def _cfg(tmp_path, root, **kw):
    from resnet_det.classification.data import load_image_folder

    for split in ("train", "val"):
        name = f"tiny_{split}_{abs(hash(str(root))) % 10**6}"
        if name not in DatasetCatalog:
            DatasetCatalog.register(name, lambda s=split: load_image_folder(os.path.join(root, s))[0])
    tag = abs(hash(str(root))) % 10**6
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "Classifier", "MODEL.CLASSIFIER.NUM_CLASSES", 3,
                         "INPUT.CROP_SIZE", 24, "INPUT.SCALE_RANGE", (28, 36), "INPUT.TEST_RESIZE", 28,
                         "DATASETS.TRAIN", (f"tiny_train_{tag}",), "DATASETS.TEST", (f"tiny_val_{tag}",),
                         "SOLVER.IMS_PER_BATCH", 4, "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path),
                         "SEED", 3])
    cfg.merge_from_list([x for kv in kw.items() for x in kv])
    return cfg, (f"tiny_train_{tag}", f"tiny_val_{tag}")


def test_image_folder_labels_follow_sorted_class_names(tiny_set, tmp_path):
    from resnet_det.classification.data import load_image_folder

    dicts, classes = load_image_folder(os.path.join(tiny_set, "train"))
    assert classes == sorted(classes) and len(dicts) == 18
    for d in dicts:
        assert os.path.basename(os.path.dirname(d["file_name"])) == classes[d["label"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_resumes_exactly(tiny_set, tmp_path, workers):
    cfg, _ = _cfg(tmp_path, tiny_set, **{"DATALOADER.NUM_WORKERS": workers})
    fresh = iter(build_classification_train_loader(cfg))
    first = [next(fresh) for _ in range(7)]  # 28 items: crosses the 18-image epoch boundary
    assert isinstance(first[0], tuple)  # what the trainer's non-finite report expects of a non-list batch
    images, labels = first[0]
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    resumed = iter(build_classification_train_loader(cfg, start_iter=5))
    for k in (5, 6):
        x, y = next(resumed)
        assert torch.equal(x, first[k][0]) and torch.equal(y, first[k][1])
    # Another seed gives another stream (the augmentation is not constant).
    cfg2, _ = _cfg(tmp_path, tiny_set, SEED=4)
    assert not torch.equal(next(iter(build_classification_train_loader(cfg2)))[0], images)
    # An epoch holds every image once.
    cfg1, _ = _cfg(tmp_path, tiny_set, **{"SOLVER.IMS_PER_BATCH": 18})
    assert sorted(next(iter(build_classification_train_loader(cfg1)))[1].tolist()) == [0] * 6 + [1] * 6 + [2] * 6


def test_test_loader_shapes_per_protocol(tiny_set, tmp_path):
    cfg, (_, val) = _cfg(tmp_path, tiny_set, **{"SOLVER.IMS_PER_BATCH": 20})
    x, y = next(iter(build_classification_test_loader(cfg, val, "center")))
    assert x.shape == (9, 3, 24, 24) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    loader = build_classification_test_loader(cfg, val, "10crop")
    x, y = next(iter(loader))
    assert x.shape == (2, 10, 3, 24, 24) and len(loader) == 5
    x, _ = next(iter(build_classification_test_loader(cfg, val, "multiscale")))
    assert x.shape == (1, 3, 32, 32)


def test_per_pixel_mean_image(tiny_set, tmp_path):
    from resnet_det.classification.data import load_image_folder

    cfg, _ = _cfg(tmp_path, tiny_set)
    mean = compute_mean_image(cfg)
    dicts, _ = load_image_folder(os.path.join(tiny_set, "train"))
    expected = np.mean([center_crop(to_chw(resize_shorter(read_image(d["file_name"]), 28)), 24).numpy()
                        for d in dicts], axis=0)
    np.testing.assert_allclose(mean, expected, rtol=1e-5)
    cached = [f for f in os.listdir(tmp_path) if f.startswith("mean_image_")]
    assert len(cached) == 1
    np.testing.assert_array_equal(compute_mean_image(cfg), mean)  # read back from the cache
