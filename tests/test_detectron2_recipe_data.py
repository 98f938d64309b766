"""The data side of detectron2's training recipe under the configs in configs/detectron2_zoo/ (issue 23,
item 3): the training resize (ResizeShortestEdge with MIN_SIZE_TRAIN_SAMPLING "choice" or "range",
MAX_SIZE_TRAIN, detectron2's rounding), the flip, FILTER_EMPTY_ANNOTATIONS, aspect-ratio grouping and the
per-process batch of IMS_PER_BATCH / --num-gpus. Many samples are drawn from our training path and compared
with detectron2's arithmetic, copied below as the oracle.
"""
import math
import os

import cv2
import numpy as np
import pytest
import torch

from resnet_det.config import get_cfg, validate_cfg
from resnet_det.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from resnet_det.data.catalog import DatasetCatalog
from resnet_det.modeling.detector.rcnn import ResizeNormalize
from resnet_det.utils import comm
from resnet_det.utils.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def d2_get_output_shape(oldh: int, oldw: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
    """Copied from detectron2 (commit 02b5c4e2) detectron2/data/transforms/augmentation_impl.py,
    ResizeShortestEdge.get_output_shape: the oracle for the resized size and its rounding."""
    h, w = oldh, oldw
    size = short_edge_length * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    neww = int(neww + 0.5)
    newh = int(newh + 0.5)
    return (newh, neww)


def zoo_cfg(*opts, name="faster_rcnn_R_50_FPN_1x.yaml"):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "detectron2_zoo", name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


# Shapes that exercise the rounding (non-integer scaled sides), the MAX_SIZE_TRAIN cap (a long image),
# portrait, landscape and square.
SHAPES = [(480, 640), (427, 640), (640, 427), (333, 1000), (500, 500), (375, 500), (301, 997)]


def drawn_sizes(cfg, shape, n: int) -> list[tuple[int, int]]:
    transform = ResizeNormalize(cfg, 32).train()
    image = torch.zeros(1, *shape)  # one channel: only the size matters here
    return [tuple(transform.resize(image)[0].shape[-2:]) for _ in range(n)]


@pytest.mark.parametrize("name", ["faster_rcnn_R_50_FPN_1x.yaml", "faster_rcnn_R_101_C4_3x.yaml"])
def test_training_resize_draws_detectron2s_sizes_with_its_rounding(name):
    """ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, "choice"): the short side is one of
    MIN_SIZE_TRAIN, each equally likely; every size drawn is detectron2's, and all of them are drawn."""
    cfg = zoo_cfg(name=name)
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    torch.manual_seed(0)
    shorts = list(cfg.INPUT.MIN_SIZE_TRAIN)
    for shape in SHAPES:
        expected = {d2_get_output_shape(*shape, s, cfg.INPUT.MAX_SIZE_TRAIN): s for s in shorts}
        sizes = drawn_sizes(cfg, shape, 20 * len(shorts))
        assert set(sizes) == set(expected), (shape, set(sizes) ^ set(expected))
        if len(expected) == len(shorts):  # distinct sizes: each short side drawn about 1 / len of the time
            counts = np.array([sizes.count(k) for k in expected])
            n, p = len(sizes), 1 / len(shorts)
            assert (np.abs(counts - n * p) < 5 * math.sqrt(n * p * (1 - p))).all(), counts


def test_training_resize_range_sampling_draws_every_integer_in_the_range():
    """MIN_SIZE_TRAIN_SAMPLING "range" (detectron2: np.random.randint(min, max + 1)): every short side in
    [min, max], each equally likely, sizes by detectron2's arithmetic."""
    cfg = zoo_cfg("INPUT.MIN_SIZE_TRAIN", (640, 660), "INPUT.MIN_SIZE_TRAIN_SAMPLING", "range")
    validate_cfg(cfg)
    torch.manual_seed(0)
    shape = (427, 640)
    expected = {d2_get_output_shape(*shape, s, cfg.INPUT.MAX_SIZE_TRAIN) for s in range(640, 661)}
    sizes = drawn_sizes(cfg, shape, 400)
    assert set(sizes) == expected
    counts = np.array([sizes.count(k) for k in expected])
    assert (np.abs(counts - 400 / 21) < 5 * math.sqrt(400 / 21 * (20 / 21))).all(), counts


def test_range_sampling_needs_two_sizes_and_a_known_mode():
    with pytest.raises(ConfigError, match=r"INPUT.MIN_SIZE_TRAIN=.*two sizes.*MIN_SIZE_TRAIN_SAMPLING range"):
        validate_cfg(zoo_cfg("INPUT.MIN_SIZE_TRAIN_SAMPLING", "range"))  # the zoo's six sizes
    with pytest.raises(ConfigError, match=r"INPUT.MIN_SIZE_TRAIN_SAMPLING='uniform'"):
        validate_cfg(zoo_cfg("INPUT.MIN_SIZE_TRAIN_SAMPLING", "uniform"))


def write_image(path, h, w) -> str:
    cv2.imwrite(str(path), np.full((h, w, 3), 127, np.uint8))
    return str(path)


def test_flip_probability_is_one_half(tmp_path):
    """detectron2's RandomFlip() (prob 0.5, horizontal) in the zoo configs: over 2000 positions of the
    training stream, as many flips as a fair coin gives (binomial, 5 sigma), boxes mirrored x -> w - x."""
    cfg = zoo_cfg()
    assert cfg.INPUT.RANDOM_FLIP_PROB == 0.5
    mapper = DatasetMapper(cfg, is_train=True)
    d = {"file_name": write_image(tmp_path / "a.png", 8, 10), "height": 8, "width": 10, "image_id": 1,
         "annotations": [{"bbox": [1.0, 2.0, 4.0, 6.0], "category_id": 0}]}
    n, flips = 2000, 0
    for pos in range(n):
        boxes = mapper(d, np.random.default_rng([cfg.SEED, 0, pos]))["boxes"].tolist()
        assert boxes in ([[1.0, 2.0, 4.0, 6.0]], [[6.0, 2.0, 9.0, 6.0]])
        flips += boxes == [[6.0, 2.0, 9.0, 6.0]]
    assert abs(flips - n / 2) < 5 * math.sqrt(n / 4), flips


def register(name, dicts):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)


def test_filter_empty_annotations_as_detectron2():
    """detectron2's filter_images_with_only_crowd_annotations: an image is kept when one of its annotations
    is not a crowd; images without annotations or with crowds only go (FILTER_EMPTY_ANNOTATIONS True)."""
    box = {"bbox": [0.0, 0.0, 4.0, 4.0], "category_id": 0}
    dicts = [{"file_name": f"{i}.png", "image_id": i, "height": 8, "width": 8, "annotations": anns}
             for i, anns in enumerate([[box], [], [{**box, "iscrowd": 1}], [{**box, "iscrowd": 1}, box]])]
    register("_recipe_filter", dicts)
    assert zoo_cfg().DATALOADER.FILTER_EMPTY_ANNOTATIONS is True
    assert [d["image_id"] for d in get_detection_dataset_dicts(["_recipe_filter"], True)] == [0, 3]
    assert [d["image_id"] for d in get_detection_dataset_dicts(["_recipe_filter"], False)] == [0, 1, 2, 3]


def sizes_only_mapper(d, rng=None):
    return {"image_id": d["image_id"], "height": d["height"], "width": d["width"]}


def batches(cfg, dicts, n):
    loader = iter(build_detection_train_loader(cfg, mapper=sizes_only_mapper, dataset=dicts))
    return [next(loader) for _ in range(n)]


def test_aspect_ratio_grouping_as_detectron2():
    """detectron2's AspectRatioGroupedDataset: bucket 0 if w > h else 1, so a square image is batched with
    portrait ones, never with landscape ones."""
    shapes = [(8, 12), (12, 8), (10, 10)] * 10  # landscape, portrait, square
    dicts = [{"file_name": f"{i}.png", "image_id": i, "height": h, "width": w} for i, (h, w) in enumerate(shapes)]
    cfg = zoo_cfg("SOLVER.IMS_PER_BATCH", 4, "DATALOADER.NUM_WORKERS", 0)
    assert cfg.DATALOADER.ASPECT_RATIO_GROUPING is True
    seen_square_with_portrait = False
    for batch in batches(cfg, dicts, 60):
        buckets = {0 if x["width"] > x["height"] else 1 for x in batch}
        assert len(buckets) == 1, [(x["height"], x["width"]) for x in batch]
        kinds = {(x["width"] > x["height"]) - (x["width"] < x["height"]) for x in batch}
        seen_square_with_portrait |= kinds == {0, -1}
    assert seen_square_with_portrait


@pytest.mark.parametrize("num_gpus, per_gpu", [(1, 16), (2, 8), (8, 2)])
def test_ims_per_batch_is_split_over_gpus(monkeypatch, num_gpus, per_gpu):
    """SOLVER.IMS_PER_BATCH is the total over all processes (detectron2's build_batch_data_loader:
    IMS_PER_BATCH // world size per process); it must divide evenly."""
    monkeypatch.setattr(comm, "get_world_size", lambda: num_gpus)
    monkeypatch.setattr(comm, "get_rank", lambda: num_gpus - 1)
    dicts = [{"file_name": f"{i}.png", "image_id": i, "height": 8, "width": 12} for i in range(40)]
    cfg = zoo_cfg("DATALOADER.NUM_WORKERS", 0)
    assert cfg.SOLVER.IMS_PER_BATCH == 16
    assert [len(b) for b in batches(cfg, dicts, 3)] == [per_gpu] * 3
    if num_gpus > 1:
        with pytest.raises(ConfigError, match=r"SOLVER.IMS_PER_BATCH=.*divisible"):
            build_detection_train_loader(zoo_cfg("SOLVER.IMS_PER_BATCH", 16 * num_gpus + 1), dataset=dicts)
