"""The INT8 ONNX twin (resnet_det/export/quantize.py) against the PyTorch INT8 detector: agreement and time.

detectron2's R50-FPN config with tests/seeded_weights.py weights scaled as tests/test_precision.py scales
them (varied, well-separated detections), on matplotlib's grace_hopper.jpg resized to 480x640; both INT8
models calibrated on the same two other views of it (mirrored, shifted crop). Times: median of ITERS calls,
interleaved, at `torch.set_num_threads(THREADS)` / ORT intra_op_num_threads=THREADS.

    PYTHONPATH=. python benchmarks/bench_int8_onnx.py [--iters 5] [--threads 2]
"""
import argparse
import os
import statistics
import sys
import tempfile

import cv2
import torch
from matplotlib import cbook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from test_precision import calibration_views, seeded_photo_detector  # noqa: E402

from resnet_det.engine.inference import load_for_inference  # noqa: E402
from resnet_det.engine.predictor import ModelPredictor  # noqa: E402
from resnet_det.export import preprocess  # noqa: E402
from resnet_det.export.quantize import export_int8_onnx  # noqa: E402
from resnet_det.utils.benchmark import interleaved_times, matched_detections  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    tmp = tempfile.mkdtemp()
    cfg = seeded_photo_detector(os.path.join(tmp, "w.pkl"), "INPUT.MIN_SIZE_TEST", 480, "INPUT.MAX_SIZE_TEST", 640,
                                "TEST.PRECISION", "int8", "MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE", 100)
    image = cv2.resize(cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), (640, 480))
    batches = calibration_views(image, cfg)
    _, meta = export_int8_onnx(cfg, tmp, image, batches=batches)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = args.threads
    sessions = {name: ort.InferenceSession(os.path.join(tmp, f), so, providers=["CPUExecutionProvider"])
                for name, f in (("ort fp32", "model.onnx"), ("ort int8 (QDQ)", "model_int8.onnx"))}
    array = preprocess(image, meta)
    pt = ModelPredictor(load_for_inference(cfg, calibration=batches), cfg.INPUT.FORMAT, ["x"])
    fp32 = cfg.clone()
    fp32.defrost()
    fp32.TEST.PRECISION = "fp32"
    pt32 = ModelPredictor(load_for_inference(fp32), cfg.INPUT.FORMAT, ["x"])
    ref = pt(image)["instances"]
    outs = {n: dict(zip(("boxes", "scores", "classes"), map(torch.as_tensor, s.run(None, {"image": array}))))
            for n, s in sessions.items()}
    print(f"PyTorch INT8: {(ref['scores'] > 0.5).sum().item()} detections above 0.5")
    for n, o in outs.items():
        print(f"{n} vs PyTorch INT8: matched_iou90 {matched_detections(ref, o):.3f}")
    fns = {"pytorch fp32": lambda: pt32(image), "pytorch int8": lambda: pt(image),
           **{n: (lambda s=s: s.run(None, {"image": array})) for n, s in sessions.items()}}
    times = interleaved_times(fns, warmup=1, iters=args.iters, device=torch.device("cpu"))
    for n, t in times.items():
        print(f"{n}: median {statistics.median(t):.3f} s (min {min(t):.3f}, max {max(t):.3f})")


if __name__ == "__main__":
    main()
