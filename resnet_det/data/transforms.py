"""Dataset dict -> model input (docs/CONTRACTS.md): decode, training augmentations, boxes to tensors.

Resizing and normalisation happen inside the model (torchvision's GeneralizedRCNNTransform), so a test
image stays at its original size here and predictions come back in original pixels. Training images go
through INPUT.AUGMENTATIONS (data/augment.py; by default a random flip only).
"""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import torch

from ..utils.errors import ConfigError, DataError
from .augment import Augmentations

logger = logging.getLogger(__name__)

SKIPPED_IMAGES_FILE = "skipped_images.txt"


class BadImageError(DataError):
    """An image file that is missing, truncated, not an image, or not the size its annotation says."""


def _looks_truncated(data: bytes) -> bool:
    # libjpeg decodes a cut-off JPEG with only a warning (grey bottom rows); a complete one ends
    # with the EOI marker FFD9, possibly followed by padding.
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data.rstrip(b"\x00")[-64:]
    # A PNG ends with its IEND chunk; libpng usually refuses a truncated file, this catches the rest.
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-16:]
    return False


def read_image(file_name: str) -> np.ndarray:
    """Decode a file to a BGR uint8 HxWx3 array; BadImageError naming the file otherwise."""
    try:
        with open(file_name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImageError(f"{file_name}: cannot read the image ({e.strerror or e})") from None
    if not data:
        raise BadImageError(f"{file_name}: the image file is empty")
    if _looks_truncated(data):
        raise BadImageError(f"{file_name}: the image file is truncated (an interrupted download or copy?)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BadImageError(f"{file_name}: not a decodable image ({len(data)} bytes)")
    return img


class DatasetMapper:
    """Callable: dataset dict -> model input dict, or None for a bad image under policy "skip".

    Args:
        cfg: reads INPUT.FORMAT, INPUT.AUGMENTATIONS (and their keys), DATALOADER.ON_BAD_IMAGE, OUTPUT_DIR.
        is_train: augment (INPUT.AUGMENTATIONS) and drop crowd boxes (they are "ignore" regions, not
            targets). A cropped or rescaled training image keeps the dict's original height/width
            (the loader groups batches by them and replays that grouping on --resume).
    Example::

        mapper = DatasetMapper(cfg, is_train=False)
        x = mapper(DatasetCatalog.get("shapes_val")[0])
        print(x["image"].shape, x["boxes"].shape)   # torch.Size([3, H, W]) torch.Size([N, 4])
    """

    def __init__(self, cfg, is_train: bool = True):
        self.is_train = is_train
        self.image_format = cfg.INPUT.FORMAT
        self.augment = Augmentations(cfg) if is_train else None
        self.on_bad_image = cfg.DATALOADER.ON_BAD_IMAGE
        if self.image_format not in ("BGR", "RGB"):
            raise ConfigError(f"INPUT.FORMAT={self.image_format!r}: expected one of BGR, RGB")
        if self.on_bad_image not in ("error", "skip"):
            raise ConfigError(f"DATALOADER.ON_BAD_IMAGE={self.on_bad_image!r}: expected one of error, skip")
        self.output_dir = cfg.OUTPUT_DIR
        self.num_skipped = 0  # in this process; skipped_images.txt has the total over workers
        self._rng = np.random.default_rng()

    def __call__(self, dataset_dict: dict, rng: np.random.Generator | None = None) -> dict | None:
        """``rng`` (the loaders pass one per stream position) makes the augmentations reproducible."""
        try:
            img = read_image(dataset_dict["file_name"])
            h, w = img.shape[:2]
            if (h, w) != (dataset_dict["height"], dataset_dict["width"]):
                raise BadImageError(f"{dataset_dict['file_name']}: the image is {w}x{h} (WxH) but its "
                                    f"annotation says {dataset_dict['width']}x{dataset_dict['height']}")
        except BadImageError as e:
            if self.on_bad_image == "error":
                raise BadImageError(f"{e}. Fix or remove the file, or set DATALOADER.ON_BAD_IMAGE skip "
                                    f"to log such files to OUTPUT_DIR/{SKIPPED_IMAGES_FILE} and go on.") from None
            self._record_skip(dataset_dict["file_name"], str(e))
            return None

        anns = dataset_dict.get("annotations", [])
        if self.is_train:
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes = torch.as_tensor(np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4))
        classes = torch.as_tensor(np.array([a["category_id"] for a in anns], np.int64))
        if self.augment is None:
            image = torch.from_numpy(np.ascontiguousarray((img if self.image_format == "BGR" else img[:, :, ::-1])
                                                          .transpose(2, 0, 1)))
        else:  # the augmentations take RGB (the photometric ones need to know which channel is which)
            image = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))
            image, boxes, classes = self.augment(image, boxes, classes, rng or self._rng)
            image = image.flip(0).contiguous() if self.image_format == "BGR" else image.contiguous()
        out = {"image": image,
               "height": h, "width": w, "image_id": dataset_dict["image_id"],
               "file_name": dataset_dict["file_name"],
               "boxes": boxes, "classes": classes}
        return out

    def _record_skip(self, file_name: str, reason: str) -> None:
        self.num_skipped += 1
        logger.warning("skipping bad image (%d so far in this process): %s", self.num_skipped, reason)
        os.makedirs(self.output_dir, exist_ok=True)
        # One short append per line: O_APPEND keeps lines from several workers whole.
        with open(os.path.join(self.output_dir, SKIPPED_IMAGES_FILE), "a", encoding="utf-8") as f:
            f.write(f"{file_name}\t{reason}\n")


def read_skipped_images(output_dir: str) -> list[str]:
    """Distinct file names in ``<output_dir>/skipped_images.txt`` (for metrics and exact resume)."""
    path = os.path.join(output_dir, SKIPPED_IMAGES_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return list(dict.fromkeys(line.split("\t", 1)[0] for line in f if line.strip()))
