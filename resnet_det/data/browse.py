"""Ground-truth drawings of a registered set, before and after the training augmentations (tools/browse_dataset.py)."""
from __future__ import annotations

import os

import cv2
import numpy as np

from ..utils.errors import UserInputError
from ..utils.visualizer import draw_dataset_dict, image_grid, side_by_side
from .catalog import DatasetCatalog, MetadataCatalog
from .transforms import BadImageError, DatasetMapper, read_image


def _augmented_dict(out: dict, image_format: str) -> tuple[np.ndarray, dict]:
    """A training mapper's output as a BGR image and a dataset dict to draw."""
    img = out["image"].permute(1, 2, 0).numpy()
    img = np.ascontiguousarray(img if image_format == "BGR" else img[:, :, ::-1])
    anns = [{"bbox": b, "category_id": int(c), "iscrowd": 0}
            for b, c in zip(out["boxes"].tolist(), out["classes"].tolist())]
    return img, {"file_name": out["file_name"], "annotations": anns}


def draw_dataset(cfg, name: str, output_dir: str, num: int = 16, augment: bool = False, cols: int = 4) -> dict:
    """Draw the first ``num`` images (0: all) of set ``name`` with their ground truth into ``output_dir``;
    with ``augment`` each drawing is original | augmented (DatasetMapper(cfg, is_train=True), image i
    drawn with the generator seeded (SEED, 0, i)). Returns {"written": [paths], "summary": path or None,
    "skipped": [reasons]}; an unreadable image or a set the loader refuses is skipped, not raised."""
    try:
        dicts = DatasetCatalog.get(name)
    except UserInputError as e:
        return {"written": [], "summary": None, "skipped": [f"{name}: {e}"]}
    dicts = dicts[:num] if num > 0 else dicts
    classes = MetadataCatalog.get(name).get("thing_classes")
    mapper = DatasetMapper(cfg, is_train=True) if augment else None
    written, panels, skipped = [], [], []
    for i, d in enumerate(dicts):
        try:
            original = draw_dataset_dict(read_image(d["file_name"]), d, classes)
            panel = original
            if mapper is not None:
                img, aug = _augmented_dict(mapper(d, np.random.default_rng([cfg.SEED, 0, i])), cfg.INPUT.FORMAT)
                panel = side_by_side(original, draw_dataset_dict(img, aug, classes), titles=("original", "augmented"))
        except (BadImageError, UserInputError) as e:
            skipped.append(f"image id {d.get('image_id')} ({d.get('file_name')}): {e}")
            continue
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        path = os.path.join(output_dir, f"{i:04d}_{stem}.jpg")
        cv2.imwrite(path, panel)
        written.append(path)
        panels.append(panel)
    summary = None
    if panels:
        title = f"{name}: {len(panels)} images, ground truth" + (" | after INPUT.AUGMENTATIONS" if augment else "")
        summary = os.path.join(output_dir, "summary.png")
        cv2.imwrite(summary, image_grid(panels, cols=max(1, cols // 2) if augment else cols,
                                        height=256, title=title))
    return {"written": written, "summary": summary, "skipped": skipped}
