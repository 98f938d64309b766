"""A fixed, deterministic colour per class id for drawing boxes (BGR, like OpenCV).

Colours are generated rather than listed: hues step by the golden ratio so that neighbouring ids
(often related classes) land far apart on the colour wheel, and saturation/value cycle so that
ids whose hues happen to come close still differ. Near-white is never produced because white is
reserved for ground-truth overlays, and near-black never because it would vanish on dark images.
"""
from __future__ import annotations

import colorsys
from functools import lru_cache

_GOLDEN = 0.6180339887498949  # hue step: the most irrational fraction spreads hues most evenly
_SATURATIONS = (0.9, 0.65, 1.0)
_VALUES = (0.95, 0.8, 0.7, 1.0)

# Ground truth is drawn in this colour so it never collides with a class colour (see above).
GT_COLOR = (255, 255, 255)


@lru_cache(maxsize=None)
def class_color(class_id: int) -> tuple[int, int, int]:
    """The BGR colour (ints in 0..255) for contiguous class id ``class_id`` (>= 0).

    The same id always gets the same colour, in every process and on every run.
    """
    if int(class_id) != class_id or class_id < 0:
        raise ValueError(f"class_id={class_id!r}: expected a non-negative integer class id")
    i = int(class_id)
    hue = (i * _GOLDEN) % 1.0
    sat = _SATURATIONS[i % len(_SATURATIONS)]
    val = _VALUES[(i // len(_SATURATIONS)) % len(_VALUES)]
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (int(round(b * 255)), int(round(g * 255)), int(round(r * 255)))


def colormap(num_classes: int) -> list[tuple[int, int, int]]:
    """The colours of ids ``0..num_classes-1`` (BGR)."""
    return [class_color(i) for i in range(num_classes)]


def text_color_for(background_bgr) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background_bgr`` (ITU-R BT.601 luma)."""
    b, g, r = (float(c) for c in background_bgr)
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    return (0, 0, 0) if luma > 140 else (255, 255, 255)
