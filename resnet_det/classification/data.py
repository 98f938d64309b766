"""Classification data sets (ImageNet folders, CIFAR-10 batches, the generated demo) and loaders.

Classification dataset dicts: ``{"file_name": str, "image_id": int, "label": int}``, plus
``"image"`` (HxWx3 uint8, RGB) for sets held in memory (CIFAR). Batches are ``(images, labels)``:
uint8 images (N, 3, S, S), or (N, 10, 3, S, S) for 10-crop testing, in INPUT.FORMAT order.

The train loader has the detection loader's guarantees: the stream is a function of the seed
alone (TrainingSampler epochs, one generator per stream position), so ``start_iter=k`` yields
exactly batches k, k+1, ... of a fresh loader, whatever the number of workers.
"""
from __future__ import annotations

import hashlib
import logging
import os

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..data.catalog import DatasetCatalog, DatasetNotFoundError, MetadataCatalog, datasets_root, unregister
from ..data.demo import make_classification_set
from ..data.samplers import InferenceSampler, TrainingSampler
from ..data.shapes_draw import SHAPE_KINDS
from ..data.store import SerializedList
from ..data.transforms import BadImageError, read_image
from ..utils import comm
from ..utils.errors import ConfigError, DataError
from ..utils.io import atomic_write
from .cifar import CIFAR10_CLASSES, CIFAR_LAYOUT, load_cifar10
from .transforms import TestTransform, TrainTransform

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
IMAGENET_LAYOUT = ("imagenet/{train,val}/<wnid>/*.JPEG: one folder per class (WordNet id) in each split, "
                   "ILSVRC2012 val images sorted into the same class folders")
# The embedded demo: 10 shape classes, 64x64 images, 100 train + 20 val per class (a few seconds
# to draw on first use). 64 px leaves room for the ImageNet-style scale augmentation and crop.
CLS_DEMO = {"num_classes": 10, "train_per_class": 100, "val_per_class": 20, "image_size": 64, "seed": 0}
# Images averaged for the per-pixel mean image of a large set (ImageNet): evenly spaced, enough
# for a stable mean without decoding 1.28M files.
MEAN_IMAGE_SAMPLES = 10000


# ---- readers ------------------------------------------------------------------------------------
def load_image_folder(dirname: str, name: str = "image folder") -> tuple[list[dict], list[str]]:
    """Dataset dicts of an ImageNet-style folder ``<dirname>/<class>/<image>`` and the sorted class names."""
    if not os.path.isdir(dirname):
        raise DatasetNotFoundError(name, [dirname], IMAGENET_LAYOUT)
    classes = sorted(e.name for e in os.scandir(dirname) if e.is_dir())
    dicts = []
    for label, cls in enumerate(classes):
        folder = os.path.join(dirname, cls)
        for f in sorted(os.listdir(folder)):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                dicts.append({"file_name": os.path.join(folder, f), "image_id": len(dicts), "label": label})
    if not dicts:
        raise DataError(f"data set {name!r}: {dirname} has no images in class sub-folders "
                        f"({len(classes)} folders found). Expected layout: {IMAGENET_LAYOUT}")
    return dicts, classes


def load_cifar_dicts(dirname: str, split: str, name: str) -> list[dict]:
    """Dataset dicts of split "train"/"val"/"trainval"/"test" of a cifar-10-batches-py folder, images held
    in memory (RGB); ``name`` is the data set named in errors."""
    if not os.path.isdir(dirname):
        raise DatasetNotFoundError(name, [dirname], CIFAR_LAYOUT)
    missing = [f for f in (["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)])
               if not os.path.isfile(os.path.join(dirname, f))]
    if missing:
        raise DatasetNotFoundError(name, [os.path.join(dirname, f) for f in missing], CIFAR_LAYOUT)
    images, labels = load_cifar10(dirname, split)
    return [{"file_name": f"{dirname}:{split}:{i}", "image_id": i, "label": int(labels[i]), "image": images[i]}
            for i in range(len(images))]


def register_classification_builtins(root: str | None = None) -> None:
    """(Re-)register imagenet_{train,val}, cifar10_{train,val,trainval,test} and cls_demo_{train,val}
    under ``root`` (default ``$RESNET_DET_DATASETS``); evaluator_type "classification"."""
    root = os.path.abspath(root) if root is not None else datasets_root()
    for split in ("train", "val"):
        name, folder = f"imagenet_{split}", os.path.join(root, "imagenet", split)
        unregister(name)
        DatasetCatalog.register(name, lambda folder=folder, name=name: load_image_folder(folder, name)[0])
        MetadataCatalog.get(name).set(evaluator_type="classification", dirname=folder)
    cifar_dir = os.path.join(root, "cifar-10-batches-py")
    for split in ("train", "val", "trainval", "test"):
        name = f"cifar10_{split}"
        unregister(name)
        DatasetCatalog.register(name, lambda split=split, name=name: load_cifar_dicts(cifar_dir, split, name))
        MetadataCatalog.get(name).set(evaluator_type="classification", dirname=cifar_dir,
                                      thing_classes=list(CIFAR10_CLASSES))
    demo_dir = os.path.join(root, "cls_demo")
    for split in ("train", "val"):
        name = f"cls_demo_{split}"
        unregister(name)

        def load(split=split, name=name):
            make_classification_set(demo_dir, **CLS_DEMO)  # drawn once; an existing folder is kept
            return load_image_folder(os.path.join(demo_dir, split), name)[0]

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(evaluator_type="classification", dirname=demo_dir,
                                      thing_classes=sorted(SHAPE_KINDS[:CLS_DEMO["num_classes"]]))  # folder order


def get_classification_dicts(names) -> list[dict]:
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ConfigError("no data set names given: set DATASETS.TRAIN / DATASETS.TEST, e.g. "
                          "DATASETS.TRAIN \"('cls_demo_train',)\"")
    dicts = []
    for name in names:
        part = DatasetCatalog.get(name)
        if not part:
            raise DataError(f"data set {name!r} has no images")
        if "label" not in part[0]:
            raise ConfigError(f"data set {name!r} has no 'label' in its dicts: it is not a classification set "
                              f"(evaluator_type {MetadataCatalog.get(name).get('evaluator_type')!r})")
        dicts.extend(part)
    return dicts


def load_image(d: dict, image_format: str) -> np.ndarray:
    """HxWx3 uint8 in ``image_format`` ("BGR"/"RGB") for a classification dict."""
    if "image" in d:  # in-memory sets (CIFAR) are RGB
        img = np.asarray(d["image"])
        return img[:, :, ::-1] if image_format == "BGR" else img
    img = read_image(d["file_name"])  # BGR
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if image_format == "RGB" else img


# ---- training stream ----------------------------------------------------------------------------
class _BatchStream(IterableDataset):
    """Batches start_iter, start_iter + 1, ...; worker w of W makes batches start_iter + w + kW, and
    the DataLoader takes one from each worker in turn, so the order is the same for any W."""

    def __init__(self, dicts, transform, image_format, sampler, batch_size, start_iter, on_bad_image):
        self.dicts, self.transform, self.image_format = dicts, transform, image_format
        self.sampler, self.batch_size, self.start_iter = sampler, batch_size, start_iter
        self.on_bad_image = on_bad_image

    def _item(self, pos: int, idx: int):
        rng = np.random.default_rng([self.sampler.seed, self.sampler.rank, pos])
        for attempt in range(len(self.dicts)):
            d = self.dicts[(idx + attempt) % len(self.dicts)]
            try:
                return self.transform(load_image(d, self.image_format), rng), d["label"]
            except BadImageError as e:
                if self.on_bad_image != "skip":
                    raise BadImageError(f"{e}. Set DATALOADER.ON_BAD_IMAGE skip to train on without it") from None
                # Deterministic substitute (the next image), so the stream stays reproducible.
                logger.warning("skipping a bad image, using the next one instead: %s", e)
        raise BadImageError("every image of the training set failed to load")

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start_iter + wid
        while True:
            items = [self._item(pos, idx) for pos, idx in
                     _take(self.sampler.indices(b * self.batch_size), self.batch_size)]
            images = torch.stack([x for x, _ in items])
            yield images, torch.tensor([y for _, y in items], dtype=torch.int64)
            b += nw


def _take(it, n: int):
    return [next(it) for _ in range(n)]


class ClassificationTrainLoader:
    """Infinite iterable of ``(images uint8 (B, 3, S, S), labels (B,))``, B = IMS_PER_BATCH // world size."""

    def __init__(self, stream: _BatchStream, num_workers: int):
        self.stream, self.num_workers = stream, num_workers

    def __iter__(self):
        # Batches stay (images, labels) tuples, which the trainer's non-finite report expects of
        # non-list batches: _keep instead of default_convert, and no pin_memory (both make lists).
        # Pinning would save little: the uint8 batches are 4x smaller than the float input.
        yield from DataLoader(self.stream, batch_size=None, num_workers=self.num_workers, collate_fn=_keep)


def _keep(batch):
    return batch


def build_classification_train_loader(cfg, start_iter: int = 0, dicts: list | None = None):
    """The training loader of the config's recipe (TrainTransform); batch ``start_iter`` first.

    Example::

        images, labels = next(iter(build_classification_train_loader(cfg)))
        print(images.shape, images.dtype, labels[:4])   # (B, 3, 224, 224) torch.uint8 ...
    """
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH={total} must be divisible by the number of processes ({world})")
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":  # repeat factors come from box categories
        raise ConfigError(f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r} applies to detection and "
                          "localization training; classification uses TrainingSampler (remove the setting)")
    dicts = SerializedList(get_classification_dicts(cfg.DATASETS.TRAIN) if dicts is None else dicts)
    sampler = TrainingSampler(len(dicts), shuffle=True, seed=cfg.SEED)
    stream = _BatchStream(dicts, TrainTransform(cfg), cfg.INPUT.FORMAT, sampler, total // world, start_iter,
                          cfg.DATALOADER.ON_BAD_IMAGE)
    return ClassificationTrainLoader(stream, cfg.DATALOADER.NUM_WORKERS)


# ---- testing ------------------------------------------------------------------------------------
class _TestSet(Dataset):
    def __init__(self, dicts, transform, image_format):
        self.dicts, self.transform, self.image_format = dicts, transform, image_format

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        d = self.dicts[i]
        return self.transform(load_image(d, self.image_format)), d["label"]


class ClassificationTestLoader:
    """This rank's shard, in order, as ``(images, labels)`` batches; ``len()`` = number of batches."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def build_classification_test_loader(cfg, dataset_name, protocol: str | None = None) -> ClassificationTestLoader:
    """Test batches for ``protocol`` (default TEST.CLS_PROTOCOL): center crops, 10 crops per image
    (batches of IMS_PER_BATCH // 10 images), or whole images one at a time for "multiscale"
    (images differ in size, and the model resizes each to every TEST.MULTISCALE_SIZES)."""
    dicts = SerializedList(get_classification_dicts(dataset_name))  # shared by forked workers
    transform = TestTransform(cfg, protocol)
    world = comm.get_world_size()
    per_rank = max(1, cfg.SOLVER.IMS_PER_BATCH // world)
    batch = {"center": per_rank, "10crop": max(1, per_rank // 10), "multiscale": 1}[transform.protocol]
    sampler = InferenceSampler(len(dicts))
    loader = DataLoader(_TestSet(dicts, transform, cfg.INPUT.FORMAT), batch_size=batch, sampler=sampler,
                        num_workers=cfg.DATALOADER.NUM_WORKERS)
    return ClassificationTestLoader(loader)


# ---- per-pixel mean (Sec. 3.4: "the per-pixel mean subtracted") ------------------------------------
def compute_mean_image(cfg, dicts: list[dict] | None = None, max_images: int = MEAN_IMAGE_SAMPLES) -> np.ndarray:
    """Mean (3, S, S) float32 image, S = INPUT.CROP_SIZE, in INPUT.FORMAT order, over the training
    images as the test transform sees them (shorter side TEST_RESIZE, center crop; CIFAR as is).

    Cached under OUTPUT_DIR by a key of DATASETS.TRAIN and the sizes, so resumed runs reuse it;
    not cached when ``dicts`` are given (they need not be DATASETS.TRAIN)."""
    cache = dicts is None
    key = repr((tuple(cfg.DATASETS.TRAIN), cfg.MODEL.CLASSIFIER.STYLE, cfg.INPUT.CROP_SIZE,
                cfg.INPUT.TEST_RESIZE, cfg.INPUT.FORMAT, max_images))
    path = os.path.join(cfg.OUTPUT_DIR, f"mean_image_{hashlib.sha1(key.encode()).hexdigest()[:10]}.npy")
    if cache and os.path.isfile(path):
        return np.load(path)
    dicts = get_classification_dicts(cfg.DATASETS.TRAIN) if dicts is None else dicts
    pick = np.linspace(0, len(dicts) - 1, min(max_images, len(dicts))).round().astype(int)
    size = int(cfg.INPUT.CROP_SIZE)
    center = TestTransform(cfg, "center")
    acc = np.zeros((3, size, size), np.float64)
    for i in pick:
        acc += center(load_image(dicts[i], cfg.INPUT.FORMAT)).numpy()
    mean = (acc / len(pick)).astype(np.float32)
    if not cache:
        return mean
    atomic_write(path, lambda tmp: np.save(tmp, mean))  # the temp name ends in .npy, so np.save keeps it
    logger.info("per-pixel mean image over %d training images -> %s", len(pick), path)
    return mean
