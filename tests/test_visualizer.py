"""Box drawing: pixels read back from disk, labels inside the frame, colours, and tools/visualize.py."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from resnet_det.utils.colormap import GT_COLOR, class_color, colormap
from resnet_det.utils.visualizer import (
    default_style, draw_dataset_dict, draw_instances, image_grid, label_layout, side_by_side, visualize_images,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _roundtrip(tmp_path, img, name="out.png"):
    """Write as PNG (lossless) and read back, so the test sees what a user opens."""
    path = str(tmp_path / name)
    assert cv2.imwrite(path, img)
    back = cv2.imread(path, cv2.IMREAD_COLOR)
    assert back is not None
    return back


def _outline_mask(hw, box, t):
    """Pixels within the stroke of a rectangle of thickness t drawn on integer corners ``box``."""
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w]
    x0, y0, x1, y1 = box
    r = t // 2 + (0 if t == 1 else 1)  # cv2 spreads a thick line about half its width each side
    near_v = ((np.abs(xs - x0) <= r) | (np.abs(xs - x1) <= r)) & (ys >= y0 - r) & (ys <= y1 + r)
    near_h = ((np.abs(ys - y0) <= r) | (np.abs(ys - y1) <= r)) & (xs >= x0 - r) & (xs <= x1 + r)
    return near_v | near_h


def _rect_mask(hw, rect):
    m = np.zeros(hw, bool)
    x0, y0, x1, y1 = rect
    m[y0:y1, x0:x1] = True
    return m


def test_box_lands_on_its_outline_pixels(tmp_path):
    img = np.zeros((100, 120, 3), np.uint8)
    box = (10, 40, 50, 80)
    out = _roundtrip(tmp_path, draw_instances(img, [box], [0.9], [0], ["a"]))
    style = default_style(100, 120)
    assert style.line_thickness == 1
    rect, text, _, _ = label_layout("a 90%", box, (100, 120), style)
    assert text == "a 90%" and rect[3] == box[1]  # room above: the label sits on the top edge
    color = np.array(class_color(0))
    outline = np.zeros((100, 120), bool)
    outline[40:81, [10, 50]] = True
    outline[[40, 80], 10:51] = True
    # Every outline pixel has the class colour, exactly (LINE_8, PNG is lossless).
    assert (out[outline] == color).all()
    changed = (out != 0).any(axis=2)
    # Nothing else changed except the label's rectangle.
    assert not (changed & ~outline & ~_rect_mask((100, 120), rect)).any()
    assert changed[_rect_mask((100, 120), rect)].all()  # the label background is filled


def test_thick_lines_stay_near_the_box_on_large_images(tmp_path):
    img = np.zeros((480, 640, 3), np.uint8)
    box = (100, 200, 400, 350)
    out = _roundtrip(tmp_path, draw_instances(img, [box], None, [2], ["a", "b", "person"]))
    style = default_style(480, 640)
    assert style.line_thickness >= 2  # scaled with image size
    rect = label_layout("person", box, (480, 640), style)[0]
    changed = (out != 0).any(axis=2)
    allowed = _outline_mask((480, 640), box, style.line_thickness) | _rect_mask((480, 640), rect)
    assert changed.any() and not (changed & ~allowed).any()
    for y, x in ((275, 100), (275, 400), (350, 250), (200, 350)):  # the middle of each side
        assert (out[y, x] == class_color(2)).all()
    assert not changed[210:340, 110:390].any()  # the interior stays untouched


W, H = 128, 96
EDGE_BOXES = [
    (0, 0, 30, 20), (97, 0, 127, 20), (0, 75, 30, 95), (97, 75, 127, 95),  # the four corners
    (50, 0, 80, 20), (0, 40, 30, 60), (97, 40, 127, 60), (50, 75, 80, 95),  # the four edges
    (-50, -50, 20, 20), (110, 80, 200, 200), (-5, -5, 200, 200),  # partly outside / whole frame
]


@pytest.mark.parametrize("box", EDGE_BOXES)
@pytest.mark.parametrize("name", ["cat", "a very long class name indeed"])
def test_labels_stay_inside_the_image(tmp_path, box, name):
    img = np.full((H, W, 3), 128, np.uint8)
    out = _roundtrip(tmp_path, draw_instances(img, [box], [0.97], [5], [""] * 5 + [name]))
    clipped = tuple(int(np.clip(v, 0, (W if i % 2 == 0 else H) - 1)) for i, v in enumerate(box))
    layout = label_layout(f"{name} 97%", clipped, (H, W))
    assert layout is not None
    rect, text, _, _ = layout
    assert 0 <= rect[0] < rect[2] <= W and 0 <= rect[1] < rect[3] <= H
    lh = rect[3] - rect[1]
    # Above the box when there is room, else just inside its top edge (not over the frame's top).
    assert rect[1] == (clipped[1] - lh if clipped[1] >= lh else min(clipped[1], H - lh))
    color = np.array(class_color(5))
    inside = _rect_mask((H, W), rect)
    # The drawn label really is that rectangle: filled, with text in it...
    label_px = out[inside]
    text_px = (label_px != color).any(axis=1)
    assert 0.02 < text_px.mean() < 0.8
    # ...and the glyphs never touch the rectangle's border (so none is cut by the image frame).
    ys, xs = np.nonzero(inside & (out != color).any(axis=2))
    assert ys.min() > rect[1] and ys.max() < rect[3] - 1 and xs.min() > rect[0] and xs.max() < rect[2] - 1
    changed = (out != 128).any(axis=2)
    assert not (changed & ~inside & ~_outline_mask((H, W), clipped, 1)).any()
    if len(name) > 20:  # too wide for 128 px even at the smallest font: truncated, not overflowing
        assert len(text) < len(f"{name} 97%")


def test_partly_outside_box_is_clipped_to_the_frame():
    out = draw_instances(np.zeros((64, 64, 3), np.uint8), [[-10.4, 30, 20, 90]], [1.0], [1], None)
    color = class_color(1)
    assert (out[40, 0] == color).all() and (out[40, 20] == color).all()  # left edge moved to column 0
    assert (out[63, 10] == color).all()  # bottom edge moved to the last row
    # A box entirely outside draws nothing.
    img = np.zeros((64, 64, 3), np.uint8)
    assert np.array_equal(draw_instances(img, [[70, 70, 90, 90]], [1.0], [1], None), img)


def test_empty_predictions_give_an_unmodified_copy():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    before = img.copy()
    for boxes, scores, classes in [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)),
                                   (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)),
                                   ([[1, 1, 20, 20]], [0.2], [0])]:  # everything below the threshold
        out = draw_instances(img, boxes, scores, classes, ["x"], score_thresh=0.5)
        assert np.array_equal(out, img) and not np.shares_memory(out, img)
    draw_instances(img, [[1, 1, 20, 20]], [0.9], [0], ["x"])
    assert np.array_equal(img, before)  # the input is never drawn on


def test_class_colours_are_distinct_and_deterministic():
    cols = colormap(100)
    assert len(set(cols)) == 100 and GT_COLOR not in cols
    arr = np.array(cols, float)
    # Neighbouring ids (often similar classes) must be easy to tell apart.
    assert np.linalg.norm(arr[1:] - arr[:-1], axis=1).min() > 80
    assert arr.max(axis=1).min() >= 170  # no near-black colour that would vanish on dark images
    code = "from resnet_det.utils.colormap import colormap; print(colormap(100))"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str(cols)  # same colours in a fresh process
    out = draw_instances(np.zeros((64, 64, 3), np.uint8), [[5, 30, 25, 60], [35, 30, 60, 60]], None, [0, 1], None)
    assert (out[45, 5] == class_color(0)).all() and (out[45, 35] == class_color(1)).all()
    with pytest.raises(ValueError, match="class_id"):
        class_color(-1)


def test_bad_inputs_name_the_problem():
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="class id 3 has no name"):
        draw_instances(img, [[1, 1, 9, 9]], [0.9], [3], ["a", "b"])
    with pytest.raises(ValueError, match="equal lengths"):
        draw_instances(img, [[1, 1, 9, 9]], [0.9, 0.8], [0], ["a"])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        draw_instances(img, [[1, 1, 9]], [0.9], [0], ["a"])
    with pytest.raises(ValueError, match="uint8"):
        draw_instances(img.astype(np.float32), [], [], [], None)


def test_ground_truth_overlay_is_dashed_white_and_side_by_side():
    img = np.zeros((80, 100, 3), np.uint8)
    out = draw_instances(img, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), None, gt_boxes=[[10, 10, 90, 70]])
    top = out[10, 10:91]
    white = (top == GT_COLOR).all(axis=1)
    assert 0.3 < white.mean() < 0.9  # dashes and gaps along the top edge
    assert not (out[11:70, 11:90] != 0).any()
    named = draw_instances(img, [], [], [], ["a", "b"], gt_boxes=[[10, 30, 90, 70]], gt_classes=[1])
    x0, y0, x1, y1 = label_layout("b", (10, 30, 90, 70), (80, 100))[0]
    assert y1 == 30 and 0.5 < (named[y0:y1, x0:x1] == 255).all(axis=2).mean() < 1  # white "b" label above
    d = {"file_name": "x.png", "annotations": [{"bbox": [10, 30, 40, 60], "category_id": 1, "iscrowd": 0}]}
    gt = draw_dataset_dict(img, d, ["a", "b"])
    assert (gt[45, 10] == class_color(1)).all() and (gt[45, 40] == class_color(1)).all()
    both = side_by_side(out, gt, gap=4)
    assert both.shape[1] == 204 and both.shape[0] > 80  # a title strip on top
    assert side_by_side(out, gt[:50], titles=None).shape == (80, 204, 3)


class _FakePredictor:
    """The DefaultPredictor interface (docs/CONTRACTS.md model output), with fixed boxes."""
    class_names = ["circle", "square"]

    def __init__(self):
        self.seen = []

    def __call__(self, image):
        self.seen.append(image.shape)
        return {"instances": {"boxes": torch.tensor([[4.0, 20.0, 40.0, 50.0], [0.0, 0.0, 5.0, 5.0]]),
                              "scores": torch.tensor([0.9, 0.1]),
                              "pred_classes": torch.tensor([1, 0])}}


def test_visualize_images_writes_one_drawing_per_input(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    paths = [str(src / "im0.png"), str(src / "im1.jpg")]
    for p in paths:
        cv2.imwrite(p, np.zeros((60, 70, 3), np.uint8))
    pred = _FakePredictor()
    written = visualize_images(pred, paths, str(tmp_path / "out"), progress=False)
    assert [os.path.basename(p) for p in written] == ["im0.png", "im1.jpg"] and pred.seen == [(60, 70, 3)] * 2
    drawn = cv2.imread(written[0])  # PNG in, PNG out: exact pixels
    assert (drawn[35, 4] == class_color(1)).all() and (drawn[35, 40] == class_color(1)).all()
    assert not drawn[1:4, 1:4].any()  # the 0.1-score box is below the default threshold
    assert cv2.imread(written[1]).shape == (60, 70, 3)
    dicts = [{"file_name": p, "image_id": i, "annotations": [{"bbox": [30, 10, 60, 40], "category_id": 0,
                                                               "iscrowd": 0}]} for i, p in enumerate(paths)]
    over = visualize_images(pred, dicts, str(tmp_path / "gt"), show_gt=True, progress=False)
    assert (cv2.imread(over[0])[10, 30:61] == 255).all(axis=1).any()  # dashed white GT top edge (PNG)
    both = visualize_images(pred, dicts, str(tmp_path / "sbs"), side_by_side_gt=True, progress=False)
    assert cv2.imread(both[0]).shape[1] > 140
    with pytest.raises(ValueError, match="dataset dicts"):
        visualize_images(pred, paths, str(tmp_path / "x"), show_gt=True)


def test_visualize_tool_on_a_folder(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(src / f"img{i}.png"), rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("MODEL:\n  DEVICE: cpu\n  RESNETS:\n    DEPTH: 18\n    RES2_OUT_CHANNELS: 64\n"
                   "  ROI_HEADS:\n    NUM_CLASSES: 3\n  RPN:\n    POST_NMS_TOPK_TEST: 20\n"
                   "INPUT:\n  MIN_SIZE_TEST: 64\n  MAX_SIZE_TEST: 96\n")
    out = tmp_path / "vis"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "visualize.py"), "--config-file", str(cfg),
                          "--input", str(src), "--output", str(out), "--confidence-threshold", "0.0",
                          "MODEL.WEIGHTS", ""], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for i in range(2):
        drawn = cv2.imread(str(out / f"img{i}.png"))
        assert drawn is not None and drawn.shape == (64, 80, 3)


def test_image_grid_tiles_rows_pads_cells_and_adds_a_title():
    a = np.full((20, 30, 3), 50, np.uint8)
    b = np.full((10, 40, 3), 200, np.uint8)
    grid = image_grid([a, b, a], cols=2, gap=2, title=None)
    assert grid.shape == (2 * 20 + 2, 2 * 40 + 2, 3)  # cells are the largest image: 20 x 40
    assert (grid[:20, :30] == 50).all() and (grid[:20, 30:40] == 0).all()  # padded right, black
    assert (grid[:10, 42:82] == 200).all() and (grid[10:20, 42:82] == 0).all()  # padded below
    assert (grid[20:22] == 128).all() and (grid[22:42, :30] == 50).all()  # grey gap, second row
    assert (grid[22:42, 42:] == 128).all()  # no third cell in the second row: background
    titled = image_grid([a, b], cols=2, title="AP50 80.0")
    assert titled.shape[0] > 20 and titled.shape[1] == 84 and titled[: titled.shape[0] - 20].any()
    even = image_grid([a, b], cols=1, gap=0, height=30)  # 20x30 -> 30x45, 10x40 -> 30x120
    assert even.shape == (60, 120, 3) and (even[:30, :45] == 50).all() and (even[:30, 45:] == 0).all()
    assert (even[30:, :] == 200).all()
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([], cols=2)


def test_visualize_images_enlarges_small_images_and_scales_boxes(tmp_path):
    path = str(tmp_path / "small.png")
    cv2.imwrite(path, np.zeros((60, 70, 3), np.uint8))
    pred = _FakePredictor()
    d = {"file_name": path, "image_id": 0, "annotations": [{"bbox": [30, 10, 60, 40], "category_id": 0,
                                                            "iscrowd": 0}]}
    [out] = visualize_images(pred, [d], str(tmp_path / "big"), show_gt=True, progress=False, min_size=120)
    drawn = cv2.imread(out)
    assert pred.seen == [(60, 70, 3)] and drawn.shape == (120, 140, 3)  # the model saw the original
    assert (drawn[70, 8] == class_color(1)).all() and (drawn[70, 80] == class_color(1)).all()  # 2x box
    assert (drawn[20, 60:121] == 255).all(axis=1).any()  # the 2x dashed ground-truth top edge
    [same] = visualize_images(pred, [path], str(tmp_path / "same"), progress=False, min_size=50)
    assert cv2.imread(same).shape == (60, 70, 3)  # never shrinks
