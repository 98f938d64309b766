"""Box-aware training augmentations: one list built from INPUT.AUGMENTATIONS, on torchvision.transforms.v2.

Names (applied in the order listed; INPUT.* keys in config/defaults.py):
    RandomFlip          horizontal flip with INPUT.RANDOM_FLIP_PROB
    RandomCrop          detectron2's INPUT.CROP (relative / relative_range / absolute / absolute_range)
    LargeScaleJitter    INPUT.LSJ: v2.ScaleJitter to SCALE_RANGE x IMAGE_SIZE, then a fixed IMAGE_SIZE
                        crop, padded where the image is smaller (the model then skips its own resize)
    RandomIoUCrop       SSD's crop (v2.RandomIoUCrop; INPUT.IOU_CROP)
    PhotometricDistort  brightness / contrast / saturation / hue (v2.RandomPhotometricDistort; INPUT.PHOTOMETRIC)

Images go through the list as RGB uint8 ``tv_tensors.Image`` with ``tv_tensors.BoundingBoxes`` (XYXY) and
labels; After a crop, ``v2.SanitizeBoundingBoxes`` drops boxes it made empty (< 1 px).

Randomness: v2 transforms draw from torch's global generator. Each call forks it and seeds it from the
mapper's per-(seed, rank, stream position) numpy generator, so a position's augmentation is the same in
any worker and after --resume, and the global RNG is left as it was. The flip's coin is drawn first from
that numpy generator, as the mapper did before this list existed, so the default list (RandomFlip only)
gives bit-identical training streams.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..config.validate import check_augmentations

GEOMETRIC = ("RandomCrop", "LargeScaleJitter", "RandomIoUCrop")  # transforms that can empty a box
LSJ_PAD_VALUE = 128  # detectron2's FixedSizeCrop pad value


def augmentation_names(cfg) -> list[str]:
    """INPUT.AUGMENTATIONS, with RandomCrop put first when detectron2's INPUT.CROP.ENABLED asks for it
    (detectron2 inserts its crop before the other augmentations)."""
    names = list(cfg.INPUT.AUGMENTATIONS)
    if cfg.INPUT.CROP.ENABLED and "RandomCrop" not in names:
        names.insert(0, "RandomCrop")
    return names


class D2RandomCrop(v2.Transform):
    """detectron2's RandomCrop (INPUT.CROP): the crop size is a rule on each image's size, which
    v2.RandomCrop (one fixed size) has no form for; the crop itself is v2's F.crop (boxes clamped)."""

    def __init__(self, crop_type: str, size):
        super().__init__()
        self.crop_type, self.size = crop_type, tuple(float(s) for s in size)

    def crop_size(self, h: int, w: int) -> tuple[int, int]:
        """detectron2's RandomCrop.get_crop_size, drawing from torch's generator."""
        t, (a, b) = self.crop_type, self.size
        if t == "relative":
            return int(h * a + 0.5), int(w * b + 0.5)
        if t == "relative_range":
            r = torch.rand(2).tolist()
            ch, cw = a + r[0] * (1 - a), b + r[1] * (1 - b)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if t == "absolute":
            return min(int(a), h), min(int(b), w)
        lo, hi = int(a), int(b)  # absolute_range
        ch = int(torch.randint(min(h, lo), min(h, hi) + 1, ()))
        cw = int(torch.randint(min(w, lo), min(w, hi) + 1, ()))
        return ch, cw

    def make_params(self, flat_inputs):
        h, w = v2.query_size(flat_inputs)
        ch, cw = self.crop_size(h, w)
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return dict(top=top, left=left, height=ch, width=cw)

    def transform(self, inpt, params):
        return self._call_kernel(F.crop, inpt, **params)


def _photometric(cfg) -> v2.Transform:
    p = cfg.INPUT.PHOTOMETRIC
    return v2.RandomPhotometricDistort(brightness=tuple(p.BRIGHTNESS), contrast=tuple(p.CONTRAST),
                                       saturation=tuple(p.SATURATION), hue=tuple(p.HUE), p=float(p.PROB))


def _build(name: str, cfg) -> v2.Transform | None:
    i = cfg.INPUT
    if name == "RandomCrop":
        return D2RandomCrop(i.CROP.TYPE, i.CROP.SIZE)
    if name == "LargeScaleJitter":
        s = int(i.LSJ.IMAGE_SIZE)
        # v2.RandomCrop's pad_if_needed places a smaller image at a random offset in the fixed canvas
        # (detectron2's FixedSizeCrop pads bottom/right only); both give fixed-size inputs.
        return v2.Compose([v2.ScaleJitter((s, s), scale_range=tuple(i.LSJ.SCALE_RANGE), antialias=True),
                           v2.RandomCrop((s, s), pad_if_needed=True,
                                         fill={tv_tensors.Image: LSJ_PAD_VALUE, "others": 0})])
    if name == "RandomIoUCrop":
        return v2.RandomIoUCrop(min_scale=float(i.IOU_CROP.MIN_SCALE),
                                sampler_options=[float(o) for o in i.IOU_CROP.SAMPLER_OPTIONS])
    if name == "PhotometricDistort":
        return _photometric(cfg)
    return None  # RandomFlip: see Augmentations.__call__


class Augmentations:
    """Callable (image, boxes, classes, rng) -> (image, boxes, classes) for training.

    Args:
        cfg: reads INPUT.AUGMENTATIONS (validated), INPUT.RANDOM_FLIP_PROB and the keys of each name.
    ``image`` is an RGB uint8 CHW tensor, ``boxes`` float32 (N, 4) XYXY, ``classes`` int64 (N,).
    Example::

        aug = Augmentations(cfg)
        img, boxes, classes = aug(img, boxes, classes, np.random.default_rng(0))
    """

    def __init__(self, cfg):
        check_augmentations(cfg)
        self.names = augmentation_names(cfg)
        self.flip_prob = float(cfg.INPUT.RANDOM_FLIP_PROB) if "RandomFlip" in self.names else 0.0
        self.steps = [(n, _build(n, cfg)) for n in self.names]
        self.uses_torch_rng = any(t is not None for _, t in self.steps)
        # Boxes a crop cut to < 1 px go; without a crop the boxes are the data set's, kept as they are.
        self.crops = any(n in self.names for n in GEOMETRIC)
        self.sanitize = v2.SanitizeBoundingBoxes()

    def __repr__(self) -> str:
        return f"Augmentations({', '.join(self.names)})"

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor,
                 rng: np.random.Generator):
        # The coin first: the mapper drew it this way before the list existed (default stream unchanged).
        flip = self.flip_prob > 0 and rng.uniform() < self.flip_prob
        sample = {"image": tv_tensors.Image(image),
                  "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:])),
                  "labels": classes}
        with contextlib.ExitStack() as stack:
            if self.uses_torch_rng:
                seed = int(rng.integers(2**63))
                stack.enter_context(torch.random.fork_rng(devices=[]))
                torch.manual_seed(seed)
            for name, t in self.steps:
                if name == "RandomFlip":
                    if flip:
                        sample = {**sample, "image": F.horizontal_flip(sample["image"]),
                                  "boxes": F.horizontal_flip(sample["boxes"])}
                elif name != "RandomIoUCrop" or len(sample["boxes"]):  # the IoU crop needs a box to aim at
                    sample = t(sample)
        if self.crops:
            sample = self.sanitize(sample)
        return (sample["image"].as_subclass(torch.Tensor), sample["boxes"].as_subclass(torch.Tensor),
                sample["labels"])
