"""Detection data loaders (detectron2 style): batches are lists of model-input dicts.

Train: TrainingSampler positions -> (in workers) DatasetMapper -> (in the main process) bad images
dropped, aspect-ratio grouping, batches of IMS_PER_BATCH // world_size. Workers map every
num_workers-th position and the DataLoader hands their outputs back round-robin, so the main
process sees the positions in order whatever the worker count; the flip of position p uses a
generator seeded by (seed, rank, p). Hence the stream depends on the seed only, and a loader built
with ``start_iter=k`` replays the grouping on the annotation sizes (no image decoding) to yield
exactly batches k, k+1, ... of a fresh loader.
"""
from __future__ import annotations

import itertools
import logging
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .catalog import DatasetCatalog, MetadataCatalog
from .samplers import (InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler,
                       repeat_factors_from_category_frequency)
from .store import SerializedList
from .transforms import DatasetMapper, read_skipped_images
from ..utils import comm
from ..utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def get_detection_dataset_dicts(names, filter_empty: bool = True) -> list[dict]:
    """Concatenate registered data sets; with ``filter_empty`` drop images without a non-crowd box."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ConfigError("no data set names given (set DATASETS.TRAIN / DATASETS.TEST, e.g. "
                          "DATASETS.TRAIN \"('shapes_train',)\")")
    dicts, classes = [], None
    for name in names:
        part = DatasetCatalog.get(name)
        if not part:
            raise DataError(f"data set {name!r} has no images")
        these = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and these is not None and list(these) != list(classes):
            raise ConfigError(f"data sets {names[0]!r} and {name!r} have different thing_classes "
                              f"({list(classes)} vs {list(these)}); they cannot be trained together")
        classes = classes if classes is not None else these
        dicts.extend(part)
    if filter_empty:
        before = len(dicts)
        dicts = [d for d in dicts if any(not a.get("iscrowd", 0) for a in d.get("annotations", []))]
        if before - len(dicts):
            logger.info("removed %d of %d images without (non-crowd) annotations", before - len(dicts), before)
        if not dicts:
            raise DataError(f"no image of {names} has a non-crowd annotation "
                            f"(DATALOADER.FILTER_EMPTY_ANNOTATIONS removed all {before})")
    return dicts


def _aspect_key(d: dict) -> int:
    # detectron2's AspectRatioGroupedDataset: bucket 0 if w > h else 1, so squares go with portraits.
    return 0 if d["width"] > d["height"] else 1


class _Batcher:
    """Collects items into batches; with grouping, one bucket per orientation (detectron2's
    AspectRatioGroupedDataset), so a batch pads little when the model stacks it."""

    def __init__(self, batch_size: int, grouping: bool):
        self.batch_size, self.grouping = batch_size, grouping
        self.buckets: dict[int, list] = {}

    def push(self, item, aspect_key: int):
        bucket = self.buckets.setdefault(aspect_key if self.grouping else 0, [])
        bucket.append(item)
        if len(bucket) == self.batch_size:
            batch = bucket[:]
            bucket.clear()
            return batch
        return None


class _MappedStream(IterableDataset):
    """Yields (position, index, mapped dict or None) for the prefix items and then the sampler's
    positions from ``start``; worker w of W takes items w, w + W, ..."""

    def __init__(self, dicts, mapper, sampler: TrainingSampler, prefix: list, start: int):
        self.dicts, self.mapper, self.sampler = dicts, mapper, sampler
        self.prefix, self.start = prefix, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = itertools.chain(self.prefix, self.sampler.indices(self.start))
        for pos, idx in itertools.islice(stream, wid, None, nw):
            rng = np.random.default_rng([self.sampler.seed, self.sampler.rank, pos])
            yield pos, idx, self.mapper(self.dicts[idx], rng)


def _fast_forward(dicts, sampler, batcher: _Batcher, start_iter: int, bad_files: set):
    """Replay the grouping of ``start_iter`` batches on annotation sizes: returns the items still
    waiting in the buckets (position order) and the next sampler position."""
    if start_iter <= 0:
        return [], 0
    emitted = 0
    for pos, idx in sampler.indices(0):
        if dicts[idx]["file_name"] in bad_files:  # skipped when the first run met them
            continue
        if batcher.push((pos, idx), _aspect_key(dicts[idx])) is not None:
            emitted += 1
            if emitted == start_iter:
                pending = sorted(itertools.chain.from_iterable(batcher.buckets.values()))
                batcher.buckets.clear()
                return pending, pos + 1
    raise AssertionError("unreachable: the training stream is infinite")


class TrainLoader:
    """Infinite iterable of batches (lists of model-input dicts); see build_detection_train_loader."""

    def __init__(self, dicts, mapper, sampler, batch_size, grouping, num_workers, pin_memory,
                 start_iter, bad_files):
        self.dicts, self.mapper, self.sampler = dicts, mapper, sampler
        self.batch_size, self.grouping = batch_size, grouping
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.start_iter, self.bad_files = start_iter, bad_files

    def __iter__(self) -> Iterator[list[dict]]:
        batcher = _Batcher(self.batch_size, self.grouping)
        prefix, start = _fast_forward(self.dicts, self.sampler, batcher, self.start_iter, self.bad_files)
        stream = _MappedStream(self.dicts, self.mapper, self.sampler, prefix, start)
        # A private generator: DataLoader draws its worker base seed from it, not from torch's
        # global RNG, whose state a resumed run restores (the draw would shift it).
        generator = torch.Generator().manual_seed(self.sampler.seed + self.start_iter)
        loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                            collate_fn=_identity, pin_memory=self.pin_memory,
                            worker_init_fn=_seed_worker, generator=generator)
        for _pos, _idx, out in loader:
            if out is None:  # a bad image under ON_BAD_IMAGE=skip; the mapper logged it
                continue
            batch = batcher.push(out, _aspect_key(out))
            if batch is not None:
                yield batch


def _identity(x):
    return x


def _seed_worker(worker_id: int) -> None:
    # The mapper draws from the per-position generator; this only pins any other library randomness.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


def build_detection_train_loader(cfg, mapper=None, start_iter: int = 0, dataset: list | None = None):
    """Infinite loader of training batches of ``SOLVER.IMS_PER_BATCH // world_size`` images.

    Args:
        mapper: default ``DatasetMapper(cfg, is_train=True)``.
        start_iter: resume point: the first batch yielded is batch ``start_iter`` of a fresh loader.
        dataset: dataset dicts to use instead of ``cfg.DATASETS.TRAIN``.
    Example::

        batch = next(iter(build_detection_train_loader(cfg)))
        print(len(batch), batch[0]["image"].shape)
    """
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH={total} must be divisible by the number of processes ({world})")
    if dataset is None:
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    dataset = SerializedList(dataset)  # shared by forked workers, not copied (data/store.py)
    sampler = build_train_sampler(cfg, dataset)
    bad = set(read_skipped_images(cfg.OUTPUT_DIR)) if start_iter > 0 else set()
    return TrainLoader(dataset, mapper or DatasetMapper(cfg, is_train=True), sampler, total // world,
                       cfg.DATALOADER.ASPECT_RATIO_GROUPING, cfg.DATALOADER.NUM_WORKERS,
                       bool(cfg.DATALOADER.PIN_MEMORY) and _trains_on_cuda(cfg), start_iter, bad)


def build_train_sampler(cfg, dataset: list[dict]) -> TrainingSampler:
    """DATALOADER.SAMPLER_TRAIN over ``dataset`` (its dicts), seeded by SEED."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    logger.info("Using training sampler %s", name)
    if name == "RepeatFactorTrainingSampler":
        factors = repeat_factors_from_category_frequency(dataset, cfg.DATALOADER.REPEAT_THRESHOLD)
        logger.info("Repeat factors (DATALOADER.REPEAT_THRESHOLD %g): %d of %d images repeated, an epoch "
                    "is %.1f images on average", cfg.DATALOADER.REPEAT_THRESHOLD, int((factors > 1).sum()),
                    len(factors), float(factors.sum()))
        return RepeatFactorTrainingSampler(factors, seed=cfg.SEED)
    if name == "TrainingSampler":
        return TrainingSampler(len(dataset), shuffle=True, seed=cfg.SEED)
    raise ConfigError(f"DATALOADER.SAMPLER_TRAIN={name!r}: expected TrainingSampler or RepeatFactorTrainingSampler")


def _trains_on_cuda(cfg) -> bool:
    """Pinned batches only help host-to-GPU copies: MODEL.DEVICE cuda[:N], or auto with a GPU present."""
    device = str(cfg.MODEL.DEVICE)
    return torch.cuda.is_available() and (device.startswith("cuda") or device == "auto")


class _MapDataset(Dataset):
    def __init__(self, dicts, mapper):
        self.dicts, self.mapper = dicts, mapper

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        return self.mapper(self.dicts[i])


class TestLoader:
    """Batches (lists) of model-input dicts, each image of this rank's shard once, in order."""

    def __init__(self, loader: DataLoader, size: int):
        self.loader, self.size = loader, size

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        for batch in self.loader:
            batch = [x for x in batch if x is not None]  # bad images under ON_BAD_IMAGE=skip
            if batch:
                yield batch


def build_detection_test_loader(cfg, dataset_name, mapper=None) -> TestLoader:
    """Sequential loader over ``dataset_name`` (a name or list of names): batches of TEST.IMS_PER_BATCH
    images (per process), no flip, this rank's contiguous shard (InferenceSampler: every image on
    exactly one rank); ``len()`` is the number of batches. DATALOADER.NUM_WORKERS workers decode the
    next batches while the model runs on this one."""
    dicts = SerializedList(get_detection_dataset_dicts(dataset_name, filter_empty=False))
    sampler = InferenceSampler(len(dicts))
    loader = DataLoader(_MapDataset(dicts, mapper or DatasetMapper(cfg, is_train=False)),
                        batch_size=cfg.TEST.IMS_PER_BATCH, sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                        collate_fn=_identity, generator=torch.Generator().manual_seed(0))  # global RNG untouched
    return TestLoader(loader, len(loader))
