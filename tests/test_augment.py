"""Training augmentations (data/augment.py): boxes follow the pixels for every transform, the default
stream is the pre-augmentation one bit for bit, exact resume and worker independence with all of them
on, LSJ's fixed-size images reach the model unresized, and config mistakes name the key."""
import itertools
import os

import numpy as np
import pytest
import torch

from resnet_det.config import get_cfg, validate_cfg
from resnet_det.config.validate import AUGMENTATIONS
from resnet_det.data import DatasetMapper, build_detection_train_loader
from resnet_det.data.augment import Augmentations
from resnet_det.data.catalog import DatasetCatalog
from resnet_det.data.transforms import read_image
from resnet_det.utils.errors import ConfigError

from engine_utils import registered_shapes, tiny_cfg

ALL = ("RandomCrop", "RandomIoUCrop", "LargeScaleJitter", "PhotometricDistort", "RandomFlip")
# Saturated, far-apart colours on black; LSJ pads with grey 128, which is far from all of them.
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    with registered_shapes(str(tmp_path_factory.mktemp("ds") / "shapes"), "ta_shapes", 12, 2, 3) as root:
        yield root


def _cfg(tmp_path=None, **kw):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("ta_shapes",)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path or "unused")
    cfg.merge_from_list([x for kv in kw.items() for x in kv])  # dotted keys, yacs' own type checks
    return cfg


def _rect_image(rng, h=120, w=160):
    """Black image with up to 6 solid rectangles 4+ px apart; their boxes (pixel edges) and labels = colour index."""
    img = np.zeros((h, w, 3), np.uint8)
    boxes, taken = [], np.zeros((h, w), bool)
    for i in range(len(COLORS)):
        for _ in range(20):
            bw, bh = int(rng.integers(6, 50)), int(rng.integers(6, 50))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            if not taken[max(0, y0 - 4):y0 + bh + 4, max(0, x0 - 4):x0 + bw + 4].any():
                taken[y0:y0 + bh, x0:x0 + bw] = True
                img[y0:y0 + bh, x0:x0 + bw] = COLORS[i]
                boxes.append((i, [x0, y0, x0 + bw, y0 + bh]))
                break
    labels = torch.tensor([i for i, _ in boxes])
    return torch.from_numpy(img.transpose(2, 0, 1).copy()), torch.tensor([b for _, b in boxes], dtype=torch.float32), labels


def _pixel_box(image, color, photometric_ref=None):
    """Bounding box (pixel edges) of the pixels nearer to ``color`` than to black/grey/other colours."""
    img = image.permute(1, 2, 0).numpy().astype(np.int32)
    if photometric_ref is not None:  # pointwise colour change: the rectangle is where its new colour is
        mask = (img == photometric_ref).all(-1)
    else:
        refs = np.array(COLORS + [(0, 0, 0), (128, 128, 128)])
        d = ((img[:, :, None, :] - refs[None, None]) ** 2).sum(-1)
        mask = d.argmin(-1) == COLORS.index(tuple(color))
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


AUG_SETTINGS = {
    "RandomFlip": {"INPUT.RANDOM_FLIP_PROB": 1.0},
    "RandomCrop": {"INPUT.CROP.TYPE": "relative_range", "INPUT.CROP.SIZE": (0.4, 0.4)},
    "LargeScaleJitter": {"INPUT.LSJ.IMAGE_SIZE": 128, "INPUT.LSJ.SCALE_RANGE": (0.5, 2.0)},
    "RandomIoUCrop": {"INPUT.IOU_CROP.SAMPLER_OPTIONS": (0.0, 0.1, 0.3)},  # never 'no crop'
    "PhotometricDistort": {"INPUT.PHOTOMETRIC.PROB": 1.0},
}


@pytest.mark.parametrize("names", [(n,) for n in AUGMENTATIONS]
                         + [("RandomCrop", "RandomIoUCrop", "LargeScaleJitter", "RandomFlip")])
def test_boxes_enclose_exactly_their_rectangles(names):
    """Every box after augmentation is the bounding box of its rectangle's pixels, within 1 px."""
    kw = {"INPUT.AUGMENTATIONS": names}
    for n in names:
        kw.update(AUG_SETTINGS[n])
    aug = Augmentations(_cfg(**kw))
    changed = 0
    for seed in range(12):
        image, boxes, labels = _rect_image(np.random.default_rng(seed))
        out_img, out_boxes, out_labels = aug(image, boxes, labels, np.random.default_rng([9, seed]))
        assert out_img.dtype == torch.uint8 and out_boxes.dtype == torch.float32 and len(out_boxes) == len(out_labels)
        changed += out_img.shape != image.shape or not torch.equal(out_img, image)
        if names == ("PhotometricDistort",):
            assert torch.equal(out_boxes, boxes) and out_img.shape == image.shape
        for i, box in zip(out_labels.tolist(), out_boxes.numpy()):
            ref = out_img[:, int(boxes[labels == i][0, 1]), int(boxes[labels == i][0, 0])].numpy() \
                if names == ("PhotometricDistort",) else None
            pix = _pixel_box(out_img, COLORS[i], ref)
            assert pix is not None, (names, seed, i, box)
            assert np.abs(pix - box).max() <= 1.0, (names, seed, i, box, pix)
        # A rectangle whose box was dropped (cropped away) leaves at most a sliver of pixels; SSD's IoU
        # crop also drops boxes whose centre it cut off (torchvision's and SSD's rule).
        for i in set(labels.tolist()) - set(out_labels.tolist()) if "RandomIoUCrop" not in names else ():
            pix = _pixel_box(out_img, COLORS[i]) if names != ("PhotometricDistort",) else None
            assert pix is None or min(pix[2] - pix[0], pix[3] - pix[1]) <= 2, (names, seed, i, pix)
    assert changed >= 6, f"{names} changed only {changed} of 12 images"


def _legacy_map(d, fmt, rng, flip_prob=0.5):
    """The mapper before INPUT.AUGMENTATIONS (commit a060fda), as the oracle of the default stream."""
    img = read_image(d["file_name"])
    w = img.shape[1]
    anns = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
    boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    if rng.uniform() < flip_prob:
        img = img[:, ::-1]
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    if fmt == "RGB":
        img = img[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), torch.from_numpy(boxes)


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_default_list_gives_the_old_stream(shapes, fmt):
    cfg = _cfg(**{"INPUT.FORMAT": fmt})
    assert tuple(cfg.INPUT.AUGMENTATIONS) == ("RandomFlip",)
    mapper = DatasetMapper(cfg, is_train=True)
    flips = 0
    for pos, d in enumerate(DatasetCatalog.get("ta_shapes")):
        out = mapper(d, np.random.default_rng([0, 0, pos]))
        img, boxes = _legacy_map(d, fmt, np.random.default_rng([0, 0, pos]))
        assert torch.equal(out["image"], img) and torch.equal(out["boxes"], boxes)
        flips += not torch.equal(out["boxes"], torch.tensor([a["bbox"] for a in d["annotations"]]))
    assert 0 < flips < len(DatasetCatalog.get("ta_shapes"))


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_all_augmentations_resume_exactly_in_any_worker(shapes, tmp_path):
    kw = {"INPUT.AUGMENTATIONS": ALL, "INPUT.LSJ.IMAGE_SIZE": 96, "SEED": 4}
    cfg = _cfg(tmp_path, **kw)
    before = torch.random.get_rng_state()
    fresh = _take(build_detection_train_loader(cfg), 8)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left as it was
    assert {tuple(x["image"].shape) for b in fresh for x in b} == {(3, 96, 96)}
    resumed = _take(build_detection_train_loader(cfg, start_iter=3), 5)
    cfg.DATALOADER.NUM_WORKERS = 2
    workers = _take(build_detection_train_loader(cfg), 8)
    torch.manual_seed(123)  # the augmentations must not depend on the global RNG either
    again = _take(build_detection_train_loader(cfg), 8)
    for other, offset in ((resumed, 3), (workers, 0), (again, 0)):
        for b1, b2 in zip(fresh[offset:], other):
            for x, y in zip(b1, b2):
                assert x["image_id"] == y["image_id"]
                assert torch.equal(x["image"], y["image"]) and torch.equal(x["boxes"], y["boxes"])
                assert torch.equal(x["classes"], y["classes"])
    plain = _take(build_detection_train_loader(_cfg(tmp_path, SEED=4)), 8)
    assert any(x["image"].shape != y["image"].shape for b1, b2 in zip(fresh, plain) for x, y in zip(b1, b2))


def test_training_resume_equals_uninterrupted_with_augmentations(shapes_root, tmp_path):
    from resnet_det.engine import Trainer
    from resnet_det.engine.defaults import seed_all

    def train(out, resume=False, max_iter=4):
        cfg = tiny_cfg(out, "SOLVER.MAX_ITER", max_iter, "SOLVER.CHECKPOINT_PERIOD", 2, "DATASETS.TEST", "()",
                       "SEED", 3, "INPUT.AUGMENTATIONS", str(ALL), "INPUT.LSJ.IMAGE_SIZE", 96)
        validate_cfg(cfg)
        seed_all(cfg.SEED)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=resume)
        trainer.train()
        return trainer

    full = train(str(tmp_path / "full"))
    part = str(tmp_path / "part")
    train(part)
    for name in ("model_final.pth", "model_0000003.pth"):
        if os.path.exists(os.path.join(part, name)):
            os.remove(os.path.join(part, name))
    with open(os.path.join(part, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    resumed = train(part, resume=True)
    assert resumed.start_iter == 2
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lsj_images_reach_the_model_unresized():
    from resnet_det.modeling.detector.rcnn import build_model

    cfg = tiny_cfg("unused", "INPUT.AUGMENTATIONS", "('LargeScaleJitter',)", "INPUT.LSJ.IMAGE_SIZE", 160)
    model = build_model(cfg).train()
    images = [torch.rand(3, 160, 160) * 255]
    out, _ = model.transform(images, [{"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([1])}])
    assert out.image_sizes == [(160, 160)]  # MIN_SIZE_TRAIN 96 would have shrunk it
    assert model.eval().transform(images)[0].image_sizes != [(160, 160)]  # test images still resized
    plain = build_model(tiny_cfg("unused")).train()
    assert plain.transform(images)[0].image_sizes == [(96, 96)]


@pytest.mark.parametrize("key,value,needle", [
    ("INPUT.AUGMENTATIONS", ("RandomFlip", "Mosaic"), "'Mosaic'"),
    ("INPUT.AUGMENTATIONS", ("RandomFlip", "RandomFlip"), "twice"),
    ("INPUT.AUGMENTATIONS", ("LargeScaleJitter", "RandomIoUCrop"), "before LargeScaleJitter"),
    ("INPUT.CROP.TYPE", "relative_rnage", "relative_range"),
    ("INPUT.CROP.SIZE", (1.5, 0.5), "INPUT.CROP.SIZE"),
    ("INPUT.LSJ.SCALE_RANGE", (2.0, 0.1), "INPUT.LSJ.SCALE_RANGE"),
    ("INPUT.PHOTOMETRIC.HUE", (-0.7, 0.1), "INPUT.PHOTOMETRIC.HUE"),
])
def test_bad_augmentation_config_names_the_key(key, value, needle):
    cfg = _cfg(**{key: value})
    with pytest.raises(ConfigError, match=needle):
        validate_cfg(cfg)
    with pytest.raises(ConfigError, match=needle):
        DatasetMapper(cfg, is_train=True)


def test_crop_enabled_puts_detectron2_crop_first():
    cfg = _cfg(**{"INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute", "INPUT.CROP.SIZE": (40, 50)})
    aug = Augmentations(cfg)
    assert aug.names == ["RandomCrop", "RandomFlip"]
    image, boxes, labels = _rect_image(np.random.default_rng(0))
    out, _, _ = aug(image, boxes, labels, np.random.default_rng(1))
    assert tuple(out.shape) == (3, 40, 50)


def test_crop_sizes_follow_detectron2_rules():
    """detectron2's RandomCrop.get_crop_size (data/transforms/augmentation_impl.py) on a 100x200 image."""
    from resnet_det.data.augment import D2RandomCrop

    assert D2RandomCrop("relative", (0.5, 0.25)).crop_size(100, 200) == (50, 50)  # int(h * 0.5 + 0.5)
    assert D2RandomCrop("absolute", (40, 500)).crop_size(100, 200) == (40, 200)  # capped at the image
    torch.manual_seed(0)
    rel = [D2RandomCrop("relative_range", (0.3, 0.6)).crop_size(100, 200) for _ in range(200)]
    assert min(h for h, _ in rel) >= 30 and max(h for h, _ in rel) <= 100 and min(w for _, w in rel) >= 120
    assert len({h for h, _ in rel}) > 20  # drawn, not fixed
    ab = [D2RandomCrop("absolute_range", (60, 150)).crop_size(100, 200) for _ in range(200)]
    assert {h for h, _ in ab} == set(range(60, 101)) and {w for _, w in ab} <= set(range(60, 151))
