"""How much each INT8 design choice costs or saves, on the seeded R50-FPN photo case of tests/test_precision.py.

detectron2's R50-FPN config with seeded weights (tests/test_precision.py: seeded_photo_detector) on
matplotlib's grace_hopper.jpg at the config's 800-pixel test size, calibrated on the two other views
the test uses. For each scheme: the backbone's signal-to-quantization-noise (dB, P2..P6 against the fp32
model's, same input) and the fraction of fp32's detections above 0.5 found again (same class, IoU >= 0.9)
on the photo (top 100 as DETECTIONS_PER_IMAGE 100 keeps; all, as the test counts) and on three more views
(two crops, half size: the fraction moves by a few points between views, so read the mean). Floors
that are not quantization at all: the photo re-encoded as JPEG (quality 95) and bf16.

    PYTHONPATH=. python benchmarks/bench_int8_accuracy.py [--threads 2]

The schemes patch modeling/precision.py's module-level choices (ENGINE, _vnni, equalize_activations,
_qconfig_mapping); the shipped one is "onednn fused + equalized".
"""
import argparse
import copy
import os
import sys
import tempfile
import time
from contextlib import contextmanager

import cv2
import numpy as np
import torch
from matplotlib import cbook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from test_precision import calibration_views, seeded_photo_detector, top  # noqa: E402

from resnet_det.engine.inference import load_for_inference  # noqa: E402
from resnet_det.engine.predictor import ModelPredictor  # noqa: E402
from resnet_det.modeling import precision as P  # noqa: E402
from resnet_det.utils.benchmark import markdown_table, matched_detections  # noqa: E402
from resnet_det.utils.compat import cpu_has_native_bf16  # noqa: E402


def reduce_range_qconfig():
    """torch.ao's own answer to the int16 overflow without VNNI: 7-bit activations, 8-bit weights."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    return get_default_qconfig_mapping(P.ENGINE).set_global(QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)))


SCHEMES = {  # name: attributes of modeling/precision.py to set
    "x86 (torch.ao default patterns)": {"ENGINE": "x86", "equalize_activations": lambda model, batches: model},
    "x86 + equalized": {"ENGINE": "x86"},
    "onednn fused": {"equalize_activations": lambda model, batches: model},
    "onednn fused + equalized (shipped)": {},
    "shipped, no VNNI: 7-bit weights": {"_vnni": lambda: False},
    "no VNNI, 7-bit activations instead (reduce_range)": {"_vnni": lambda: False, "_qconfig_mapping": reduce_range_qconfig},
}


@contextmanager
def patched(attrs: dict):
    saved = {k: getattr(P, k) for k in attrs}
    for k, v in attrs.items():
        setattr(P, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(P, k, v)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = seeded_photo_detector(os.path.join(tempfile.mkdtemp(), "w.pkl"))
    photo = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    views = {"photo": photo, "crop 1": photo[:400, :350], "crop 2": photo[100:, 50:], "half": photo[::2, ::2].copy()}
    batches = calibration_views(photo, cfg)
    fp32 = load_for_inference(cfg)

    def run(model, transform=lambda v: v):
        pred = ModelPredictor(model, cfg.INPUT.FORMAT, ["x"])
        return {k: pred(transform(v))["instances"] for k, v in views.items()}
    refs = run(fp32)
    _, ref_feats = run_photo_feats(fp32, cfg, photo)

    rows = []

    def row(name, model, transform=lambda v: v, seconds=None):
        outs = run(model, transform)
        _, feats = run_photo_feats(model, cfg, transform(photo))
        sqnr = [10 * torch.log10(ref_feats[k].pow(2).mean() / (ref_feats[k] - feats[k].float()).pow(2).mean()).item()
                for k in ref_feats]
        fracs = {k: matched_detections(refs[k], outs[k]) for k in views}
        rows.append({"scheme": name, "sqnr": " / ".join(f"{x:.1f}" for x in sqnr),
                     "top100": matched_detections(top(refs["photo"], 100), top(outs["photo"], 100)),
                     "photo": fracs["photo"], **{k: fracs[k] for k in list(views)[1:]},
                     "mean": float(np.mean(list(fracs.values()))), "s": seconds})
        print(rows[-1], flush=True)

    def jpeg(v):
        return cv2.imdecode(cv2.imencode(".jpg", v, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], cv2.IMREAD_COLOR)

    row("fp32, the photo as JPEG q95 (not quantization)", fp32, jpeg)
    if cpu_has_native_bf16():
        row("bf16", load_for_inference(with_precision(cfg, "bf16")))
    for name, attrs in SCHEMES.items():
        with patched(attrs):
            t = time.perf_counter()
            model = load_for_inference(with_precision(cfg, "int8"), calibration=batches)
            seconds = time.perf_counter() - t
            row(name, model, seconds=seconds)
    print(markdown_table(rows, [("scheme", "scheme"), ("sqnr", "SQNR P2/P3/P4/P5/P6 dB"), ("top100", "photo, top 100"),
                                ("photo", "photo, all"), ("crop 1", "crop 1"), ("crop 2", "crop 2"), ("half", "half size"),
                                ("mean", "mean of 4 views"), ("s", "calibration s")]))


def run_photo_feats(model, cfg, image):
    feats = {}
    hook = model.backbone.register_forward_hook(lambda m, a, out: feats.update({k: v.detach().clone() for k, v in out.items()}))
    out = ModelPredictor(model, cfg.INPUT.FORMAT, ["x"])(image)["instances"]
    hook.remove()
    return out, feats


def with_precision(cfg, precision):
    cfg = copy.deepcopy(cfg)
    cfg.defrost()
    cfg.TEST.PRECISION = precision
    return cfg


if __name__ == "__main__":
    main()
