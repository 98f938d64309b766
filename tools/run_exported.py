#!/usr/bin/env python
"""Run an exported model (tools/export_model.py) on an image and draw what it finds.

    python tools/run_exported.py --model out/export/model.onnx --input img.jpg --output out.jpg

The metadata JSON beside the model gives the input convention (BGR/RGB, size rules) and the class
names; only numpy, OpenCV and onnxruntime or torch.jit are needed at run time. Detectors: boxes
are drawn with the visualizer and listed on stdout. Classifiers: the top-5 classes are printed and
the top-1 written on the image.
"""
import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_det.export import ExportedModel  # noqa: E402
from resnet_det.utils.visualizer import draw_instances, read_image  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="FILE", help="DIR/model.onnx or DIR/model.ts")
    p.add_argument("--input", required=True, metavar="IMG")
    p.add_argument("--output", metavar="IMG", help="where to write the drawing (default: do not draw)")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw detections scoring at least this")
    return p


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    model = ExportedModel(args.model)
    image = read_image(args.input)
    out = model.predict(image)
    names = model.class_names
    if model.meta["model_type"] == "detector":
        boxes, scores, classes = out["boxes"], out["scores"], out["classes"]
        keep = scores >= args.score_thresh
        print(f"{int(keep.sum())} of {len(scores)} detections score >= {args.score_thresh}")
        for b, s, c in zip(boxes[keep], scores[keep], classes[keep]):
            print(f"  {names[int(c)]:<16} {s:.3f}  [{b[0]:.1f}, {b[1]:.1f}, {b[2]:.1f}, {b[3]:.1f}]")
        drawn = draw_instances(image, boxes, scores, classes, names, score_thresh=args.score_thresh)
    else:
        prob = _softmax(out["logits"].astype(np.float64))[0]
        top = np.argsort(-prob)[:5]
        for rank, c in enumerate(top, 1):
            print(f"  top-{rank}: {names[int(c)]:<16} {prob[c]:.3f}")
        drawn = image.copy()
        cv2.putText(drawn, f"{names[int(top[0])]} {prob[top[0]]:.0%}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (255, 255, 255), 1, cv2.LINE_AA)
    if args.output:
        folder = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(folder, exist_ok=True)
        if not cv2.imwrite(args.output, drawn):
            raise ValueError(f"--output {args.output!r}: OpenCV could not write it (unknown extension?)")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
