"""tools/demo.py, what `make demo` runs: classification pretraining -> detector fine-tuning from it
(MODEL.WEIGHTS) -> COCO evaluation -> drawings and curves, on tiny data for a few iterations. The AP of
the full schedule is measured (benchmarks/DEMO.md), not asserted here."""
import os
import re
import subprocess
import sys

import cv2

from resnet_det.data import make_classification_set
from resnet_det.engine.run import VIS_MIN_SIZE, VIS_SUMMARY_HEIGHT

from engine_utils import REPO, TINY_OPTS, make_tiny_shapes


def test_demo_pretrains_finetunes_evaluates_and_draws(tmp_path):
    root = tmp_path / "datasets"
    make_tiny_shapes(str(root))
    # A tiny cls_demo where the catalog looks for it (an existing folder is used as it is).
    make_classification_set(str(root / "cls_demo"), num_classes=10, train_per_class=2, val_per_class=1,
                            image_size=64)
    out = tmp_path / "demo"
    pre = ["MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.REFERENCE_BATCH",
           "4", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0"]
    det = [*TINY_OPTS, "SOLVER.MAX_ITER", "2", "VIS.NUM_IMAGES", "2"]
    env = {**os.environ, "RESNET_DET_DATASETS": str(root), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "demo.py"), "--output", str(out),
                        "--pretrain-opts", *pre, "--det-opts", *det], env=env, capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    pretrained = out / "pretrain" / "model_final.pth"
    log = (out / "log.txt").read_text()
    loaded = rf"Loaded \d+ of the model's \d+ tensors from {re.escape(str(pretrained))}"
    assert pretrained.is_file() and re.search(loaded, log)
    assert "top1_err" in (out / "pretrain" / "metrics.json").read_text()
    # The last lines say where the pictures, curves and checkpoint are, and what the AP is.
    tail = r.stdout.strip().splitlines()[-4:]
    assert tail[0].lstrip().startswith("box AP on shapes_val: AP50 ") and "per class: circle" in tail[0]
    for line, path in zip(tail[1:], ("vis/summary.png", "metrics.png", "model_final.pth")):
        assert str(out / path) in line and (out / path).is_file(), (line, path)
    # Two prediction | ground-truth panels (the tiny images enlarged) side by side in one summary row,
    # under a title strip.
    panels = sorted(p for p in os.listdir(out / "vis") if p != "summary.png")
    assert len(panels) == 2
    panel = cv2.imread(str(out / "vis" / panels[0]))
    assert panel.shape[0] > VIS_MIN_SIZE and panel.shape[1] > 2 * VIS_MIN_SIZE
    summary = cv2.imread(str(out / "vis" / "summary.png"))
    assert VIS_SUMMARY_HEIGHT < summary.shape[0] < 2 * VIS_SUMMARY_HEIGHT and summary.shape[1] > 2 * VIS_SUMMARY_HEIGHT
