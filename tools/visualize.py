#!/usr/bin/env python
"""tools/predict.py under its older name: the same options, the same outputs.

    python tools/visualize.py --config-file C --input photos/ --output vis/ MODEL.WEIGHTS m.pth
    python tools/visualize.py --config-file C --dataset coco_2017_val --output vis/ --show-gt MODEL.WEIGHTS m.pth

See `python tools/predict.py --help` for files, globs, videos, --webcam, --output-json and --batch-size.
"""
import os
import runpy
import sys

_PREDICT = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "predict.py"))
main = _PREDICT["main"]  # importable as tools/predict.py's main (the tests load tools by file)

if __name__ == "__main__":
    _PREDICT["exit_on_user_error"](main, None, os.path.basename(sys.argv[0]))
