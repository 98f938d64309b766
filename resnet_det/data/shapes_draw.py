"""The one drawing path of the generated data sets (detection, classification, localization).

A scene is a textured, noisy background, distractor blobs and strokes that belong to no class, and
shapes of random colour (colour never tells the class), size, rotation and stretch, placed so that a
later shape may occlude an earlier one by at most ``max_occlusion`` of its area. Boxes are the extent
of each shape's *visible* pixels, XYXY in pixel-edge coordinates (0 <= x0 < x1 <= width).
All randomness comes from the ``numpy.random.Generator`` passed in, so a seed fixes every pixel.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# Shape kinds; the detection demo uses the first five, the classification set all ten.
SHAPE_KINDS = ("circle", "square", "triangle", "star", "cross",
               "ring", "crescent", "arrow", "hexagon", "bar")


def _regular(n: int, radius: float = 1.0, start: float = -math.pi / 2) -> np.ndarray:
    a = start + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(a), np.sin(a)], 1) * radius


def _star() -> np.ndarray:
    pts = _regular(10)
    pts[1::2] *= 0.45  # inner vertices
    return pts


# Unit polygons (radius ~1) of the polygonal kinds; circle, ring and crescent are drawn as discs.
_POLYGONS = {
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * 0.8,
    "triangle": _regular(3),
    "star": _star(),
    "cross": np.array([[-1, -.33], [-.33, -.33], [-.33, -1], [.33, -1], [.33, -.33], [1, -.33],
                       [1, .33], [.33, .33], [.33, 1], [-.33, 1], [-.33, .33], [-1, .33]], np.float64),
    "arrow": np.array([[-1, -.25], [.2, -.25], [.2, -.6], [1, 0], [.2, .6], [.2, .25], [-1, .25]], np.float64),
    "hexagon": _regular(6, start=0.0),
    "bar": np.array([[-1, -.28], [1, -.28], [1, .28], [-1, .28]], np.float64),
}


def _place(unit: np.ndarray, cx, cy, r, angle, stretch) -> np.ndarray:
    """Stretch, rotate, scale and move unit points; int32 for cv2 drawing."""
    pts = unit * np.array(stretch) * r
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    return np.round(pts + [cx, cy]).astype(np.int32)


def shape_mask(kind: str, height: int, width: int, cx: float, cy: float, r: float,
               angle: float = 0.0, stretch=(1.0, 1.0)) -> np.ndarray:
    """Binary uint8 mask (height, width) of one shape of radius ``r`` centred at (cx, cy)."""
    mask = np.zeros((height, width), np.uint8)
    if kind in _POLYGONS:
        cv2.fillPoly(mask, [_place(_POLYGONS[kind], cx, cy, r, angle, stretch)], 1)
        return mask
    axes = (max(1, round(r * stretch[0])), max(1, round(r * stretch[1])))
    deg = math.degrees(angle)
    cv2.ellipse(mask, (round(cx), round(cy)), axes, deg, 0, 360, 1, -1)
    if kind == "ring":
        inner = (max(1, round(axes[0] * .55)), max(1, round(axes[1] * .55)))
        cv2.ellipse(mask, (round(cx), round(cy)), inner, deg, 0, 360, 0, -1)
    elif kind == "crescent":
        ox, oy = cx + .5 * r * math.cos(angle), cy + .5 * r * math.sin(angle)
        cv2.ellipse(mask, (round(ox), round(oy)), (round(axes[0] * .85), round(axes[1] * .85)), deg, 0, 360, 0, -1)
    elif kind != "circle":
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")
    return mask


def blob_mask(rng: np.random.Generator, height: int, width: int, cx, cy, r) -> np.ndarray:
    """An irregular blob (radius modulated by a few random harmonics): a distractor of no class."""
    a = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    rad = np.ones_like(a)
    for k in (2, 3, 5):
        rad += rng.uniform(0.08, 0.22) * np.sin(k * a + rng.uniform(0, 2 * math.pi))
    pts = np.stack([cx + r * rad * np.cos(a), cy + r * rad * np.sin(a)], 1)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float32 BGR background: a base colour, a low-frequency colour field and a texture."""
    img = np.empty((height, width, 3), np.float32)
    img[:] = rng.uniform(40, 215, 3)
    field = rng.normal(0, 1, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.float32)
    img += cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 40)
    texture = rng.integers(0, 4)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if texture == 1:  # stripes at a random angle and period
        t = rng.uniform(0, math.pi)
        wave = np.sin(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / rng.uniform(6, 30))
        img += (wave * rng.uniform(8, 30))[..., None]
    elif texture == 2:  # checker
        p = int(rng.integers(6, 24))
        img += (((xx // p + yy // p) % 2) * rng.uniform(10, 35) - 15)[..., None]
    elif texture == 3:  # speckle: blurred coarse noise
        speck = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 1.5)
        img += (speck * rng.uniform(20, 45))[..., None]
    return img


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Fill mask with a colour plus a random linear shading gradient (objects are not flat)."""
    x, y, w, h = cv2.boundingRect(mask)  # work on the mask's box only (speed)
    if w == 0:
        return
    ys, xs = np.nonzero(mask[y:y + h, x:x + w])
    ys, xs = ys + y, xs + x
    gx, gy = rng.uniform(-1, 1, 2) * rng.uniform(0, 40) / max(1.0, float(np.ptp(xs) + np.ptp(ys)))
    shade = (xs - xs.mean()) * gx + (ys - ys.mean()) * gy
    img[ys, xs] = colour + shade[:, None]


def _contrasting_colour(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A random colour far enough from the background under the mask to be visible."""
    under = img[mask.astype(bool)].mean(0) if mask.any() else img.reshape(-1, 3).mean(0)
    best, best_d = None, -1.0
    for _ in range(8):
        c = rng.uniform(0, 255, 3)
        d = float(np.abs(c - under).sum())
        if d > 120:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _box(mask: np.ndarray) -> list[float]:
    x, y, w, h = cv2.boundingRect(mask)
    return [float(x), float(y), float(x + w), float(y + h)]


def render_scene(rng: np.random.Generator, height: int, width: int, kinds, n_objects: int,
                 size_range=(0.06, 0.4), n_distractors: int = 0, max_occlusion: float = 0.5,
                 min_area: int = 36, center_jitter: float | None = None):
    """Draw one image. Returns (BGR uint8 image, [(kind_index, [x0, y0, x1, y1]), ...]).

    Args:
        kinds: shape kinds to draw from (index = class); n_objects: how many to try to place.
        size_range: shape radius as a fraction of the shorter image side, sampled log-uniformly.
        n_distractors: blobs and strokes that are not objects.
        center_jitter: None places shapes anywhere (they may be cut by the border); a fraction
            keeps the centre within that fraction of the image centre (classification crops).
    """
    img = background(rng, height, width)
    short = min(height, width)
    for _ in range(n_distractors):  # blobs under the objects, so they never hide one
        r = short * math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
        m = blob_mask(rng, height, width, rng.uniform(0, width), rng.uniform(0, height), r)
        _paint(img, m, _contrasting_colour(rng, img, m), rng)
    full_area, visible, labels = [], [], []
    for _ in range(n_objects):
        k = int(rng.integers(len(kinds)))
        for _attempt in range(15):
            r = short * math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
            if center_jitter is None:
                cx, cy = rng.uniform(0.3 * r, width - 0.3 * r), rng.uniform(0.3 * r, height - 0.3 * r)
            else:
                cx, cy = (np.array([width, height]) * (0.5 + rng.uniform(-center_jitter, center_jitter, 2)))
            m = shape_mask(kinds[k], height, width, cx, cy, r, rng.uniform(0, 2 * math.pi),
                           tuple(rng.uniform(0.85, 1.15, 2)))
            area = int(np.count_nonzero(m))
            if area < min_area:
                continue
            # A later shape occludes earlier ones: keep each earlier shape at least partly visible.
            x, y, w, h = cv2.boundingRect(m)
            box, mb = (slice(y, y + h), slice(x, x + w)), m[y:y + h, x:x + w]
            hidden = [np.count_nonzero(v[box] & mb) for v in visible]
            if all(np.count_nonzero(v) - hid >= (1 - max_occlusion) * fa
                   for v, hid, fa in zip(visible, hidden, full_area)):
                break
        else:
            continue
        _paint(img, m, _contrasting_colour(rng, img, m), rng)
        for v in visible:
            v[box] &= 1 - mb
        visible.append(m)
        full_area.append(area)
        labels.append(k)
    for _ in range(int(rng.integers(0, 3)) if n_distractors else 0):  # thin strokes across everything
        p = rng.uniform(0, 1, 4) * [width, height, width, height]
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])),
                 rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 3)))
    img += rng.normal(0, rng.uniform(2, 10), img.shape).astype(np.float32)
    if rng.uniform() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.0))
    out = np.clip(img, 0, 255).astype(np.uint8)
    # Strokes are 1-2 px wide and leave boxes unchanged; occlusion by later shapes does not.
    return out, [(k, _box(v)) for k, v in zip(labels, visible)]
