"""tools/predict.py (and its alias tools/visualize.py): inputs of every kind, saved predictions, skipped
files, video in -> video out, batched prediction, and user mistakes -> one paragraph, exit status 2."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from engine_utils import REPO, run_tool
from resnet_det.data.sources import expand_inputs, open_video
from resnet_det.utils.errors import MissingFileError

TINY_YAML = ("MODEL:\n  DEVICE: cpu\n  RESNETS:\n    DEPTH: 18\n    RES2_OUT_CHANNELS: 64\n"
             "  ROI_HEADS:\n    NUM_CLASSES: 3\n  RPN:\n    POST_NMS_TOPK_TEST: 20\n"
             "INPUT:\n  MIN_SIZE_TEST: 64\n  MAX_SIZE_TEST: 96\n")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """photos/{a.png, sub/b.jpg, sub/deeper/c.png, notes.txt, broken.png}, clip.avi (5 frames, 80x64, 7 fps),
    bad.mp4 (not a video), and the tiny config."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    (root / "photos" / "sub" / "deeper").mkdir(parents=True)
    for rel, hw in (("a.png", (64, 80)), ("sub/b.jpg", (72, 60)), ("sub/deeper/c.png", (50, 90))):
        cv2.imwrite(str(root / "photos" / rel), rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    (root / "photos" / "notes.txt").write_text("not an image")
    (root / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 7.0, (80, 64))
    assert writer.isOpened()
    for i in range(5):
        writer.write(np.full((64, 80, 3), 40 * i, np.uint8))
    writer.release()
    (root / "bad.mp4").write_bytes(os.urandom(2000))
    (root / "tiny.yaml").write_text(TINY_YAML)
    return root


def test_expand_inputs_files_globs_folders_videos(inputs):
    found = expand_inputs([str(inputs / "photos"), str(inputs / "clip.avi")])
    names = [os.path.relpath(s.path, inputs) for s in found]
    # recursive, sorted per folder, image extensions only (notes.txt left out), each path once
    assert names == ["photos/a.png", "photos/broken.png", "photos/sub/b.jpg", "photos/sub/deeper/c.png", "clip.avi"]
    assert [s.kind for s in found] == ["image"] * 4 + ["video"]
    globbed = expand_inputs([str(inputs / "photos" / "**" / "*.png"), str(inputs / "photos" / "a.png")])
    assert [os.path.basename(s.path) for s in globbed] == ["a.png", "broken.png", "c.png"]
    with pytest.raises(MissingFileError, match=r"nope\.jpg.*no such file.*\*\.gif.*matches no"):
        expand_inputs([str(inputs / "nope.jpg"), str(inputs / "photos" / "*.gif"), str(inputs / "clip.avi")])


def test_predict_folder_and_video_with_json(inputs, tmp_path, capsys):
    out, js = tmp_path / "vis", tmp_path / "preds.json"
    code, stdout, stderr = run_tool("predict",
        ["--config-file", str(inputs / "tiny.yaml"), "--input", str(inputs / "photos"), str(inputs / "clip.avi"),
         "--output", str(out), "--output-json", str(js), "--confidence-threshold", "0.0", "--batch-size", "2",
         "--num-workers", "1", "MODEL.WEIGHTS", ""], capsys)
    assert code == 0, stderr[-3000:]
    # drawn images: the original size, one per readable image
    for name, hw in (("a.png", (64, 80)), ("b.jpg", (72, 60)), ("c.png", (50, 90))):
        assert cv2.imread(str(out / name)).shape[:2] == hw
    assert not (out / "broken.png").exists()
    # the video comes back as a video with the input's frame count, size and fps
    cap = open_video(str(out / "clip.mp4"))
    assert cap is not None
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (80, 64)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(7.0)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    # the corrupt image is named and counted; the progress bar reports img/s
    assert "skipped 1 unreadable input(s)" in stdout and "broken.png" in stdout
    assert "predicted 8 images" in stdout
    assert "img/s" in stderr
    # COCO results whose image ids the sidecar maps to file names (frames as "<video>#<index>")
    results = json.loads(js.read_text())
    side = json.loads((tmp_path / "preds.images.json").read_text())
    files = {im["id"]: im["file_name"] for im in side["images"]}
    assert sorted(os.path.basename(f) for f in files.values()) == sorted(
        ["a.png", "b.jpg", "c.png"] + [f"clip.avi#{i}" for i in range(5)])
    assert [c["id"] for c in side["categories"]] == [1, 2, 3]
    assert results and {r["image_id"] for r in results} <= set(files)
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} and r["category_id"] in (1, 2, 3)
               for r in results)
    sizes = {im["id"]: (im["height"], im["width"]) for im in side["images"]}
    for r in results:  # boxes (xywh) in the original image's pixels
        h, w = sizes[r["image_id"]]
        x, y, bw, bh = r["bbox"]
        assert -1e-3 <= x and x + bw <= w + 1e-3 and -1e-3 <= y and y + bh <= h + 1e-3


@pytest.mark.parametrize("case", ["missing", "corrupt_video_only", "only_unreadable", "webcam"])
def test_bad_inputs_exit_2_with_one_paragraph(inputs, tmp_path, capsys, case):
    base = ["--config-file", str(inputs / "tiny.yaml"), "--output", str(tmp_path / "o"), "MODEL.WEIGHTS", ""]
    argv, needles = {
        "missing": (["--input", str(inputs / "photos" / "a.png"), str(tmp_path / "gone.jpg")], ["gone.jpg", "no such"]),
        "corrupt_video_only": (["--input", str(inputs / "bad.mp4")], ["bad.mp4", "none of the inputs could be read"]),
        "only_unreadable": (["--input", str(inputs / "photos" / "broken.png")], ["broken.png", "skipped 1"]),
        "webcam": (["--webcam", "7"], ["--webcam", "index 7"]),
    }[case]
    if case == "webcam" and os.path.exists("/dev/video7"):
        pytest.skip("this machine has a camera at index 7")
    code, _, stderr = run_tool("predict", argv + base, capsys)
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    message = stderr[stderr.rindex("error: "):].strip()
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_predict_batch_matches_single_images(inputs):
    from resnet_det.config import get_cfg
    from resnet_det.engine import DefaultPredictor

    cfg = get_cfg()
    cfg.merge_from_file(str(inputs / "tiny.yaml"))
    cfg.merge_from_list(["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    predictor = DefaultPredictor(cfg)
    rng = np.random.default_rng(1)
    same = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(3)]
    batched = predictor.predict_batch(same)
    for img, out in zip(same, batched):
        one = predictor(img)["instances"]
        assert len(one["boxes"]) > 0
        torch.testing.assert_close(out["instances"]["boxes"], one["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(out["instances"]["scores"], one["scores"], atol=1e-4, rtol=1e-4)
    mixed = predictor.predict_batch([same[0], rng.integers(0, 256, (40, 100, 3), dtype=np.uint8)])
    assert len(mixed) == 2 and (mixed[1]["instances"]["boxes"][:, 2] <= 100 + 1e-3).all()
    assert predictor.predict_batch([]) == []


def test_visualize_is_an_alias_of_predict(inputs, tmp_path):
    res = subprocess.run([sys.executable, os.path.join(REPO, "tools", "visualize.py"), "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--output-json" in res.stdout and "--webcam" in res.stdout
    assert res.stdout.startswith("usage: visualize.py")
