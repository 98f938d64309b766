"""Training curves from metrics.json: robust parsing, a real PNG, clear errors."""
import json
import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from resnet_det.utils.plot import load_metrics, metric_series, plot_metrics, smooth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_metrics(folder, truncated=True):
    """A detection-like log: losses every 20 iterations, AP every 100, and a half-written last line."""
    rng = np.random.default_rng(0)
    lines = []
    for it in range(19, 400, 20):
        rec = {"iteration": it, "lr": 0.02 * min(1.0, (it + 1) / 100), "time": 0.3, "data_time": 0.01}
        for k, base in (("loss_cls", 0.7), ("loss_box_reg", 0.4), ("loss_rpn_cls", 0.2), ("loss_rpn_loc", 0.1)):
            if not (k == "loss_rpn_loc" and it == 59):  # a key missing from one line
                rec[k] = base * np.exp(-it / 300) + 0.05 * base * rng.random()
        rec["total_loss"] = sum(v for k, v in rec.items() if k.startswith("loss"))
        if it % 100 == 99:
            rec.update({"bbox/AP": it / 20, "bbox/AP50": it / 10, "bbox/AP-circle": 1.0})
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n"
    if truncated:
        text += '{"iteration": 419, "total_loss": 0.5, "loss_c'  # killed mid-write
    path = os.path.join(folder, "metrics.json")
    with open(path, "w") as f:
        f.write(text)
    return path


def test_load_skips_a_truncated_last_line_with_a_warning(tmp_path, caplog):
    path = _write_metrics(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        recs = load_metrics(str(tmp_path))
    assert len(recs) == 20 and recs[-1]["iteration"] == 399
    assert "metrics.json:21" in caplog.text and "truncated" in caplog.text
    assert load_metrics(path) == recs  # the file itself works too


def test_series_handle_missing_keys_resumes_and_nonfinite(tmp_path):
    recs = [{"iteration": 0, "loss_cls": 1.0}, {"iteration": 10, "loss_cls": float("nan"), "lr": 0.1},
            {"iteration": 20, "loss_cls": 0.5, "bbox/AP": 3.0},
            {"iteration": 10, "loss_cls": 0.8}]  # a resumed run re-logs iteration 10: the later line wins
    s = metric_series(recs)
    assert s["loss_cls"][0].tolist() == [0, 10, 20] and s["loss_cls"][1].tolist() == [1.0, 0.8, 0.5]
    assert s["lr"][0].tolist() == [10] and s["bbox/AP"][1].tolist() == [3.0]


def test_smooth_is_a_trailing_median():
    v = np.array([1.0, 1.0, 100.0, 1.0, 1.0])
    assert smooth(v, 3).tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]  # a one-step spike is removed
    assert smooth(v, 1).tolist() == v.tolist()
    assert smooth(np.array([3.0, 1.0, 2.0]), 2).tolist() == [3.0, 2.0, 1.5]


def test_plot_writes_a_readable_png(tmp_path):
    _write_metrics(str(tmp_path))
    png = plot_metrics(str(tmp_path))
    assert png == os.path.join(str(tmp_path), "metrics.png") and os.path.getsize(png) > 0
    img = cv2.imread(png)
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 200
    assert img.std() > 10  # something was drawn, not a blank canvas
    # Three panels (losses, lr, bbox) in a 2x2 grid: the bottom-right quarter stays empty white.
    h, w = img.shape[:2]
    assert (img[int(h * 0.6):, int(w * 0.6):] > 250).all()
    other = plot_metrics(str(tmp_path / "metrics.json"), str(tmp_path / "sub" / "c.png"))
    assert cv2.imread(other) is not None


def test_classification_metrics_without_losses_still_plot(tmp_path):
    with open(tmp_path / "metrics.json", "w") as f:
        for it in range(0, 50, 10):
            f.write(json.dumps({"iteration": it, "top1_err": 50 - it / 2, "top5_err": 20 - it / 5}) + "\n")
    assert cv2.imread(plot_metrics(str(tmp_path))) is not None


def test_missing_or_empty_metrics_are_clear_errors(tmp_path):
    missing = tmp_path / "no_run"
    with pytest.raises(FileNotFoundError, match=str(missing / "metrics.json")):
        plot_metrics(str(missing))
    (tmp_path / "metrics.json").write_text('{"iteration": 1, "loss_c\n')
    with pytest.raises(ValueError, match="no usable lines"):
        plot_metrics(str(tmp_path))


def test_plot_metrics_tool(tmp_path):
    _write_metrics(str(tmp_path))
    out = tmp_path / "curves.png"
    tool = os.path.join(ROOT, "tools", "plot_metrics.py")
    res = subprocess.run([sys.executable, tool, str(tmp_path), "--output", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out) and cv2.imread(str(out)) is not None
    res = subprocess.run([sys.executable, tool, str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "metrics.json" in res.stderr and "does not exist" in res.stderr
