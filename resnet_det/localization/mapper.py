"""Dataset dict -> Localizer input: the detection mapper, plus the ImageNet scale + crop at training.

Training follows the paper's classification augmentation (Sec. 3.4, reused for localization in
Appendix C): shorter side random in INPUT.SCALE_RANGE, a random INPUT.CROP_SIZE square crop, a flip.
Boxes follow the pixels and are clipped to the crop; a box with less than MIN_VISIBLE of its area
left in the crop is dropped (the image keeps its class label for the classification loss). At test
time the image stays at its original size, as for the detector: the Localizer resizes it itself and
returns boxes in original pixels, which is the frame the ground truth of the evaluator is in.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from ..data import DatasetMapper

# Fraction of a box's (scaled) area that must stay inside the crop for it to remain a target.
MIN_VISIBLE = 0.3


def image_label(dataset_dict: dict) -> int:
    """The image's class: ``"label"`` (the ILSVRC readers set it), else its first box's class."""
    if "label" in dataset_dict:
        return int(dataset_dict["label"])
    anns = dataset_dict.get("annotations", [])
    if not anns:
        raise ValueError(f"{dataset_dict.get('file_name')}: no 'label' and no annotations; a localization "
                         "image needs its class")
    return int(anns[0]["category_id"])


def scale_and_crop(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, short_side: int, crop: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize HxWxC ``image`` to shorter side ``short_side``, take a random ``crop`` x ``crop`` window;
    returns the crop, the boxes in its frame (clipped; mostly cut-off ones dropped) and their classes."""
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    nw, nh = max(crop, round(w * scale)), max(crop, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, (nw, nh), interpolation=interp)
    x = int(rng.integers(0, nw - crop + 1))
    y = int(rng.integers(0, nh - crop + 1))
    image = image[y:y + crop, x:x + crop]
    b = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32) - np.array([x, y, x, y], np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    b = b.clip(0, crop)
    visible = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = (visible > 0) & (visible >= MIN_VISIBLE * np.maximum(area, 1e-6))
    return np.ascontiguousarray(image), b[keep].astype(np.float32), classes[keep]


class LocalizationMapper:
    """Callable like DatasetMapper (``mapper(dataset_dict, rng)``), adding ``"label"`` (int) and, at
    training, the scale + crop above. Draws only from ``rng``, so the loaders' streams stay exactly
    resumable. Returns None for a bad image under DATALOADER.ON_BAD_IMAGE skip."""

    def __init__(self, cfg, is_train: bool = True):
        self.base = DatasetMapper(cfg, is_train=is_train)
        self.is_train = is_train
        lo, hi = (int(v) for v in cfg.INPUT.SCALE_RANGE)
        self.scale_range, self.crop = (lo, hi), int(cfg.INPUT.CROP_SIZE)
        if not 0 < lo <= hi:
            raise ValueError(f"INPUT.SCALE_RANGE={tuple(cfg.INPUT.SCALE_RANGE)}: expected (low, high) with "
                             "0 < low <= high, e.g. (256, 480)")
        if is_train and lo < self.crop:
            raise ValueError(f"INPUT.SCALE_RANGE={tuple(cfg.INPUT.SCALE_RANGE)} starts below INPUT.CROP_SIZE="
                             f"{self.crop}: the shorter side must be at least the crop (Sec. 3.4: [256, 480], 224)")
        self._rng = np.random.default_rng()

    def __call__(self, dataset_dict: dict, rng: np.random.Generator | None = None) -> dict | None:
        rng = rng if rng is not None else self._rng
        out = self.base(dataset_dict, rng)
        if out is None:
            return None
        out["label"] = image_label(dataset_dict)
        if self.is_train:
            img = np.ascontiguousarray(out["image"].permute(1, 2, 0).numpy())
            short = int(rng.integers(self.scale_range[0], self.scale_range[1] + 1))
            img, boxes, classes = scale_and_crop(img, out["boxes"].numpy(), out["classes"].numpy(), short,
                                                 self.crop, rng)
            out["image"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
            out["boxes"], out["classes"] = torch.from_numpy(boxes), torch.from_numpy(classes)
        return out
