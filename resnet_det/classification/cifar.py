"""CIFAR-10's "python version" batches (cifar-10-batches-py/), read directly.

Each of data_batch_1..5 and test_batch is a pickle (written by Python 2's cPickle) of a dict:
``data`` uint8 (10000, 3072) with the R, G, B planes of a 32x32 image per row, ``labels`` (10000
ints 0..9), ``batch_label``, ``filenames``; batches.meta has ``label_names``. Python 3 reads the
Python 2 strings as bytes (encoding="bytes"), so keys may be bytes or str; both are accepted.

torchvision.datasets.CIFAR10 reads the same files to the same arrays (tested), but we keep this reader:
torchvision accepts only files whose md5 matches the published archive (no stand-in or re-packed data,
such as the tests' generated batches), reads str keys only, unpickles without restriction, and has no
validation split; Sec. 4.2's 45k/5k split is ours.
"""
from __future__ import annotations

import functools
import os
import pickle

import numpy as np

from ..utils.errors import ConfigError, DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CIFAR_LAYOUT = ("cifar-10-batches-py/{data_batch_1 .. data_batch_5, test_batch, batches.meta}: the "
                "'CIFAR-10 python version' archive (cifar-10-python.tar.gz) unpacked")
# Sec. 4.2: 45k images train, 5k validate; we hold out the last 5k of the 50k training images.
NUM_VAL = 5000
# batches.meta label_names, in label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Pickle can run code; these batches only need numpy arrays, lists, strings and numbers.
_SAFE = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
         ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
         ("__builtin__", "object"), ("builtins", "object")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR batch holds only arrays and lists")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = module.replace("numpy.core", "numpy._core", 1)  # a numpy 1.x pickle on numpy 2
        return super().find_class(module, name)


def _field(d: dict, key: str, path: str):
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise DataError(f"{path}: not a CIFAR batch: no {key!r} entry (keys: {sorted(map(str, d))}). "
                    f"Expected layout: {CIFAR_LAYOUT}")


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3) RGB, labels int64 (N,)) of one batch file."""
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as a CIFAR-10 python batch ({e}); re-extract "
                        f"cifar-10-python.tar.gz. Expected layout: {CIFAR_LAYOUT}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    data = np.asarray(_field(d, "data", path))
    labels = np.asarray(_field(d, "labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}; a CIFAR batch has uint8 (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    # Rows are channel planes (R, G, B), each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_label_names(dirname: str) -> list[str]:
    path = os.path.join(dirname, META_FILE)
    if not os.path.isfile(path):
        return list(CIFAR10_CLASSES)
    with open(path, "rb") as f:
        meta = _BatchUnpickler(f, encoding="bytes").load()
    names = _field(meta, "label_names", path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


@functools.lru_cache(maxsize=4)
def _load(dirname: str, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(os.path.join(dirname, f)) for f in files]
    images = np.concatenate([p[0] for p in parts])
    images.setflags(write=False)  # shared by every caller of the cache
    return images, np.concatenate([p[1] for p in parts])


def load_cifar10(dirname: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) RGB uint8 and labels of split "train" (first 45k of the training
    batches), "val" (the last 5k), "trainval" (all 50k) or "test" (test_batch)."""
    if split == "test":
        return _load(os.path.abspath(dirname), (TEST_FILE,))
    if split not in ("train", "val", "trainval"):
        raise ConfigError(f"CIFAR-10 split {split!r}: expected train, val, trainval or test")
    images, labels = _load(os.path.abspath(dirname), TRAIN_FILES)
    if split == "trainval":
        return images, labels
    if len(images) <= NUM_VAL:
        raise DataError(f"{dirname}: only {len(images)} training images; the 45k/5k split needs more than {NUM_VAL}")
    cut = len(images) - NUM_VAL
    return (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])


def write_cifar_batch(path: str, images: np.ndarray, labels, batch_label: str = "generated") -> None:
    """Write (N, 32, 32, 3) RGB uint8 images in the batch format (bytes keys, as Python 2's files
    read in Python 3). For tests and CIFAR-shaped stand-in data."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"expected images (N, 32, 32, 3), got {images.shape}")
    d = {b"batch_label": batch_label.encode(), b"labels": [int(x) for x in labels],
         b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
         b"filenames": [f"{i:05d}.png".encode() for i in range(len(images))]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def write_cifar_meta(dirname: str, label_names) -> None:
    with open(os.path.join(dirname, META_FILE), "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in label_names], b"num_cases_per_batch": 10000,
                     b"num_vis": 3072}, f, protocol=2)
