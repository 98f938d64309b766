"""Draw predicted and ground-truth boxes on BGR images with OpenCV, and run a predictor over files.

Conventions (docs/CONTRACTS.md): images are uint8 HxWx3 BGR as ``cv2.imread`` returns them, boxes
are XYXY in original pixels, class ids are contiguous 0..K-1 indexing ``thing_classes``.
Every function returns a new image; inputs are never modified.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

from .colormap import GT_COLOR, class_color, text_color_for
from .errors import DataError, MissingFileError

logger = logging.getLogger(__name__)

__all__ = [
    "DrawStyle", "default_style", "draw_boxes", "label_rect", "label_layout", "draw_instances", "draw_dataset_dict",
    "side_by_side", "image_grid", "list_images", "read_image", "unique_output_path", "visualize_images",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MIN_FONT_SCALE = 0.3  # below this Hershey glyphs stop being legible


@dataclass(frozen=True)
class DrawStyle:
    """Sizes that scale with the image so drawings look alike on 128 px and 1333 px images."""

    line_thickness: int
    font_scale: float
    font_thickness: int
    pad: int  # pixels between label text and the edge of its filled background


def default_style(height: int, width: int) -> DrawStyle:
    """Line width ~1 px per 320 px of image 'diameter' (sqrt of area), font scaled alike."""
    diameter = math.sqrt(height * width)
    font_scale = min(1.0, max(0.35, diameter / 1200.0))
    return DrawStyle(line_thickness=max(1, int(round(diameter / 320.0))), font_scale=font_scale,
                     font_thickness=1 if font_scale < 0.7 else 2, pad=max(1, int(round(diameter / 400.0))))


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what}: expected a numpy uint8 HxWx3 BGR array (cv2.imread), "
                        f"got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what}: expected dtype uint8 (0-255 BGR as from cv2.imread), got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])  # drop alpha: we draw opaque colours
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what}: expected shape HxWx3 (BGR), got {image.shape}")
    return image.copy()


def _as_numpy(x, name: str, dtype) -> np.ndarray:
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensors, possibly on GPU
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=dtype)
    if name.endswith("boxes"):
        arr = arr.reshape(-1, 4) if arr.size == 0 else arr
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"{name}: expected shape (N, 4) XYXY, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: contains NaN or inf coordinates")
    elif arr.ndim != 1:
        arr = arr.reshape(-1)
    return arr


def _label_text(class_id: int, class_names: Sequence[str] | None, score: float | None) -> str:
    if class_names is None:
        name = str(class_id)
    elif 0 <= class_id < len(class_names):
        name = class_names[class_id]
    else:
        raise ValueError(f"class id {class_id} has no name: class_names has {len(class_names)} entries; "
                         "check that MODEL.ROI_HEADS.NUM_CLASSES matches the dataset's thing_classes")
    return name if score is None else f"{name} {score * 100:.0f}%"


def _fit_text(text: str, width: int, height: int, style: DrawStyle):
    """Shrink, then truncate, ``text`` until its label fits in the image; None if nothing fits."""
    scale = style.font_scale
    while True:
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, style.font_thickness)
        lw, lh = tw + 2 * style.pad, th + base + 2 * style.pad
        if lw <= width and lh <= height:
            return text, scale, (lw, lh), (th, base)
        if scale > _MIN_FONT_SCALE:
            scale = max(_MIN_FONT_SCALE, scale * 0.85)
        elif len(text) > 1 and lh <= height:  # still too wide at the smallest legible size
            text = text[:-1]
        else:
            return None


def label_rect(label_size: tuple[int, int], box: Sequence[int], image_hw: tuple[int, int]):
    """Where a label of ``label_size`` = (w, h) goes for the (clipped, int) ``box``: (x0, y0, x1, y1).

    Above the box's top-left corner when there is room, else just inside the box's top edge; then
    shifted so the whole rectangle lies in the image (x1 <= W, y1 <= H, half-open).
    """
    lw, lh = label_size
    height, width = image_hw
    x0, y0 = int(box[0]), int(box[1])
    y = y0 - lh if y0 - lh >= 0 else y0
    x = min(max(x0, 0), width - lw)
    y = min(max(y, 0), height - lh)
    return (max(x, 0), max(y, 0), max(x, 0) + lw, max(y, 0) + lh)


def label_layout(text: str, box: Sequence[int], image_hw: tuple[int, int], style: DrawStyle | None = None):
    """How ``text`` is drawn for ``box``: (rect (x0, y0, x1, y1) half-open, text, font scale, text height).

    The text may come back shrunk or truncated so that it fits; None when not even one glyph fits.
    """
    style = style or default_style(*image_hw)
    fitted = _fit_text(text, image_hw[1], image_hw[0], style)
    if fitted is None:
        return None
    text, scale, size, (th, _) = fitted
    return label_rect(size, box, image_hw), text, scale, th


def _dashed_rectangle(img, p0, p1, color, thickness, dash: int):
    x0, y0 = p0
    x1, y1 = p1
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)),
                               ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))
        for s in range(0, length + 1, 2 * dash):  # dash on, dash off
            e = min(s + dash - 1, length)
            t0, t1 = s / max(length, 1), e / max(length, 1)
            cv2.line(img, (round(ax + (bx - ax) * t0), round(ay + (by - ay) * t0)),
                     (round(ax + (bx - ax) * t1), round(ay + (by - ay) * t1)), color, thickness, cv2.LINE_8)


def _clip_boxes(boxes: np.ndarray, height: int, width: int):
    """Round to pixel centres and clip to the image; also return which boxes still have an area."""
    b = np.round(boxes).astype(np.int64)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width - 1)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height - 1)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # boxes entirely outside collapse to a line
    return b, keep


def _draw_boxes(img, boxes, colors, labels, style: DrawStyle, dashed: bool = False):
    """Draw all outlines first, then all labels, so no outline crosses a label's text."""
    height, width = img.shape[:2]
    clipped, keep = _clip_boxes(boxes, height, width)
    for (x0, y0, x1, y1), color, k in zip(clipped.tolist(), colors, keep):
        if not k:
            continue
        if dashed:
            _dashed_rectangle(img, (x0, y0), (x1, y1), color, style.line_thickness,
                              dash=max(3, 4 * style.line_thickness))
        else:
            cv2.rectangle(img, (x0, y0), (x1, y1), color, style.line_thickness, cv2.LINE_8)
    for box, color, text, k in zip(clipped.tolist(), colors, labels, keep):
        if not k or not text:
            continue
        layout = label_layout(text, box, (height, width), style)
        if layout is None:  # image smaller than one glyph: a label cannot stay inside it
            continue
        (lx0, ly0, lx1, ly1), text, scale, th = layout
        cv2.rectangle(img, (lx0, ly0), (lx1 - 1, ly1 - 1), color, cv2.FILLED)
        cv2.putText(img, text, (lx0 + style.pad, ly0 + style.pad + th), _FONT, scale,
                    text_color_for(color), style.font_thickness, cv2.LINE_AA)
    return img


def draw_boxes(image_bgr: np.ndarray, boxes, colors: Sequence, labels: Sequence | None = None,
               dashed: bool = False) -> np.ndarray:
    """Boxes (XYXY, (N, 4)) in the given BGR ``colors`` with optional ``labels`` (None: no label), on a
    copy of the image, sized like every other drawing here; ``dashed`` for boxes that mark something
    absent (ground truth, misses)."""
    img = _check_image(image_bgr)
    boxes = _as_numpy(boxes, "boxes", np.float64).reshape(-1, 4)
    labels = list(labels) if labels is not None else [None] * len(boxes)
    if len(colors) != len(boxes) or len(labels) != len(boxes):
        raise ValueError(f"draw_boxes: {len(boxes)} boxes, {len(colors)} colors, {len(labels)} labels")
    return _draw_boxes(img, boxes, list(colors), labels, default_style(*img.shape[:2]), dashed=dashed)


def draw_instances(image_bgr: np.ndarray, boxes, scores, classes, class_names: Sequence[str] | None,
                   score_thresh: float = 0.5, gt_boxes=None, gt_classes=None) -> np.ndarray:
    """Draw predictions (boxes XYXY (N,4), scores (N,) or None, classes (N,)) on a copy of the image.

    Each class has its own colour (``colormap.class_color``); labels read "name 97%" on a filled
    background and stay inside the image. Predictions scoring below ``score_thresh`` are skipped.
    Ground truth, when given, is drawn first as dashed white boxes, named on a white label when
    ``gt_classes`` is given (a matching prediction's label covers it). With nothing to
    draw the result is an unmodified copy. Example::

        out = draw_instances(cv2.imread("a.jpg"), [[10, 20, 50, 60]], [0.97], [0], ["cat"])
    """
    img = _check_image(image_bgr)
    style = default_style(*img.shape[:2])
    boxes = _as_numpy(boxes, "boxes", np.float64)
    classes = _as_numpy(classes, "classes", np.int64)
    scores = _as_numpy(scores, "scores", np.float64)
    if classes is None or len(classes) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(f"draw_instances: got {len(boxes)} boxes, "
                         f"{None if classes is None else len(classes)} classes and "
                         f"{None if scores is None else len(scores)} scores; they must have equal lengths")
    if gt_boxes is not None:
        gt_boxes = _as_numpy(gt_boxes, "gt_boxes", np.float64)
        gt_labels = [None] * len(gt_boxes)
        if gt_classes is not None:
            gt_classes = _as_numpy(gt_classes, "gt_classes", np.int64)
            if len(gt_classes) != len(gt_boxes):
                raise ValueError(f"draw_instances: {len(gt_boxes)} gt_boxes but {len(gt_classes)} gt_classes")
            gt_labels = [_label_text(int(c), class_names, None) for c in gt_classes]
        _draw_boxes(img, gt_boxes, [GT_COLOR] * len(gt_boxes), gt_labels, style, dashed=True)
    if scores is not None:
        keep = scores >= score_thresh
        # Lowest score first, so the most confident box and label end up on top.
        order = np.argsort(scores[keep], kind="stable")
        boxes, classes, scores = boxes[keep][order], classes[keep][order], scores[keep][order]
    labels = [_label_text(int(c), class_names, None if scores is None else float(s))
              for c, s in zip(classes, scores if scores is not None else [None] * len(classes))]
    return _draw_boxes(img, boxes, [class_color(int(c)) for c in classes], labels, style)


def draw_dataset_dict(image: np.ndarray | None, dataset_dict: dict,
                      class_names: Sequence[str] | None) -> np.ndarray:
    """Draw a dataset dict's ground truth (solid class-coloured boxes named by class; crowd dashed).

    ``image`` None reads ``dataset_dict["file_name"]``.
    """
    img = read_image(dataset_dict["file_name"]) if image is None else _check_image(image)
    style = default_style(*img.shape[:2])
    anns = dataset_dict.get("annotations", [])
    for crowd in (False, True):
        sel = [a for a in anns if bool(a.get("iscrowd", 0)) == crowd]
        if not sel:
            continue
        boxes = _as_numpy([a["bbox"] for a in sel], f"{dataset_dict.get('file_name')}: annotation boxes",
                          np.float64)
        cls = [int(a["category_id"]) for a in sel]
        _draw_boxes(img, boxes, [class_color(c) for c in cls],
                    [_label_text(c, class_names, None) for c in cls], style, dashed=crowd)
    return img


def side_by_side(pred_img: np.ndarray, gt_img: np.ndarray, titles=("prediction", "ground truth"),
                 gap: int = 4) -> np.ndarray:
    """Two images next to each other (bottom-padded to one height), with an optional title strip."""
    a, b = _check_image(pred_img, "pred_img"), _check_image(gt_img, "gt_img")
    height = max(a.shape[0], b.shape[0])
    pad = [np.pad(x, ((0, height - x.shape[0]), (0, 0), (0, 0))) for x in (a, b)]
    out = np.concatenate([pad[0], np.full((height, gap, 3), 128, np.uint8), pad[1]], axis=1)
    if not titles:
        return out
    style = default_style(height, out.shape[1] // 2)
    return _with_title_strip(out, style, list(zip(titles, (0, a.shape[1] + gap))), margin=style.pad)


def image_grid(images: Sequence[np.ndarray], cols: int, gap: int = 4, title: str | None = None,
               height: int | None = None) -> np.ndarray:
    """Tile images row by row, ``cols`` per row, each cell padded (bottom/right, black) to the
    largest image, ``gap`` grey pixels between cells; ``title`` adds a strip of white text on top.
    ``height`` first resizes every image to that height (aspect kept), so mixed sizes tile evenly."""
    if not images or cols < 1:
        raise ValueError(f"image_grid: need at least one image and cols >= 1 (got {len(images)} images, cols={cols})")
    imgs = [_check_image(x, f"images[{i}]") for i, x in enumerate(images)]
    if height:
        imgs = [cv2.resize(x, (max(1, round(x.shape[1] * height / x.shape[0])), height),
                           interpolation=cv2.INTER_AREA if x.shape[0] > height else cv2.INTER_LINEAR) for x in imgs]
    ch, cw = max(x.shape[0] for x in imgs), max(x.shape[1] for x in imgs)
    cols = min(cols, len(imgs))
    rows = -(-len(imgs) // cols)
    out = np.full((rows * ch + (rows - 1) * gap, cols * cw + (cols - 1) * gap, 3), 128, np.uint8)
    for i, x in enumerate(imgs):
        y0, x0 = (i // cols) * (ch + gap), (i % cols) * (cw + gap)
        out[y0:y0 + ch, x0:x0 + cw] = 0
        out[y0:y0 + x.shape[0], x0:x0 + x.shape[1]] = x
    if not title:
        return out
    style = default_style(ch, cw)
    return _with_title_strip(out, style, [(title, 0)], margin=2 * style.pad)


def _with_title_strip(img: np.ndarray, style: DrawStyle, titles: list, margin: int) -> np.ndarray:
    """``img`` under a black strip with white ``(text, x)`` titles, ``margin`` pixels around the text."""
    (_, th), base = cv2.getTextSize("Ag", _FONT, style.font_scale, style.font_thickness)
    strip = np.zeros((th + base + 2 * margin, img.shape[1], 3), np.uint8)
    for text, x in titles:
        cv2.putText(strip, text, (x + margin, margin + th), _FONT, style.font_scale, (255, 255, 255),
                    style.font_thickness, cv2.LINE_AA)
    return np.concatenate([strip, img], axis=0)


def _upscaled(img: np.ndarray, item, min_size: int):
    """``img`` (and a dataset dict's boxes) enlarged so the shorter side is >= ``min_size``, and the factor:
    labels drawn on a 200-pixel image would be a few pixels tall."""
    scale = min_size / min(img.shape[:2]) if min_size else 1.0
    if scale <= 1.0:
        return img, item, 1.0
    img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_LINEAR)
    if isinstance(item, dict):
        item = {**item, "annotations": [{**a, "bbox": [v * scale for v in a["bbox"]]}
                                        for a in item.get("annotations", [])]}
    return img, item, scale


def read_image(path: str) -> np.ndarray:
    """``cv2.imread`` (BGR uint8) that raises a clear error instead of returning None."""
    if not os.path.isfile(path):
        raise MissingFileError(f"image {path!r} does not exist")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"image {path!r} could not be decoded by OpenCV (not an image, or corrupt)")
    return img


def list_images(path: str) -> list[str]:
    """One image file, or the image files (by extension, sorted) directly inside a folder."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise MissingFileError(f"--input {path!r}: no such file or folder")
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise DataError(f"--input {path!r}: folder has no images with extensions "
                        f"{', '.join(IMAGE_EXTENSIONS)}")
    return files


def _instances_numpy(output):
    """(boxes, scores, classes) from a predictor output: {"instances": dict or Instances-like}."""
    inst = output["instances"] if isinstance(output, dict) and "instances" in output else output

    def get(k):
        return inst[k] if isinstance(inst, dict) else getattr(inst, k)

    return (_as_numpy(get("boxes"), "boxes", np.float64), _as_numpy(get("scores"), "scores", np.float64),
            _as_numpy(get("pred_classes"), "pred_classes", np.int64))


def unique_output_path(output_dir: str, src: str, used: set) -> str:
    stem, ext = os.path.splitext(os.path.basename(src))
    ext = ext.lower() if ext.lower() in (".jpg", ".jpeg", ".png") else ".png"
    name, n = stem + ext, 1
    while name in used:  # dataset images from different folders may share a basename
        name, n = f"{stem}_{n}{ext}", n + 1
    used.add(name)
    return os.path.join(output_dir, name)


def visualize_images(predictor, inputs: Iterable, output_dir: str, class_names: Sequence[str] | None = None,
                     score_thresh: float = 0.5, show_gt: bool = False, side_by_side_gt: bool = False,
                     progress: bool = True, min_size: int = 0) -> list[str]:
    """Run ``predictor`` (BGR ndarray -> {"instances": ...}) on each input and write the drawings.

    Args:
        inputs: image paths, or dataset dicts (docs/CONTRACTS.md) whose annotations ``show_gt``
            overlays (dashed white) and ``side_by_side_gt`` draws in a second panel.
        class_names: defaults to the predictor's ``class_names`` / ``metadata.thing_classes``.
        min_size: draw on a copy enlarged to this shorter side (0: original size), so that labels on
            small images stay legible; the predictor always sees the original image.
    Returns the written file paths, one per input, in input order.
    """
    inputs = list(inputs)
    if (show_gt or side_by_side_gt) and not all(isinstance(x, dict) for x in inputs):
        raise ValueError("show_gt/side-by-side need ground truth: pass dataset dicts (tools/visualize.py "
                         "--dataset NAME), not plain image paths")
    if class_names is None:
        class_names = getattr(predictor, "class_names", None) or getattr(
            getattr(predictor, "metadata", None), "thing_classes", None)
    os.makedirs(output_dir, exist_ok=True)
    it = inputs
    if progress and len(inputs) > 1:
        from tqdm import tqdm

        it = tqdm(inputs, desc="visualize", unit="img")
    written, used = [], set()
    for item in it:
        path = item["file_name"] if isinstance(item, dict) else item
        img = read_image(path)
        boxes, scores, classes = _instances_numpy(predictor(img))
        img, item, scale = _upscaled(img, item, min_size)
        boxes = boxes * scale
        gt_boxes = gt_classes = None
        if show_gt and not side_by_side_gt:
            anns = item.get("annotations", [])
            gt_boxes, gt_classes = [a["bbox"] for a in anns], [a["category_id"] for a in anns]
        vis = draw_instances(img, boxes, scores, classes, class_names, score_thresh,
                             gt_boxes=gt_boxes, gt_classes=gt_classes)
        if side_by_side_gt:
            vis = side_by_side(vis, draw_dataset_dict(img, item, class_names))
        out = unique_output_path(output_dir, path, used)
        if not cv2.imwrite(out, vis):
            raise OSError(f"could not write {out!r} (is the output folder writable?)")
        written.append(out)
    logger.info("wrote %d drawn images to %s", len(written), output_dir)
    return written
