#!/usr/bin/env python
"""Draw loss / lr / evaluation curves from a training OUTPUT_DIR's metrics.json into a PNG.

    python tools/plot_metrics.py output/frcnn_r18_fpn_shapes [--output curves.png] [--smooth 20]
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_det.utils.plot import plot_metrics  # noqa: E402


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="training output folder (or a metrics.json file)")
    parser.add_argument("--output", default=None, help="PNG to write (default: OUTPUT_DIR/metrics.png)")
    parser.add_argument("--smooth", type=int, default=20, help="median window for the loss curves (1: raw)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        png = plot_metrics(args.output_dir, args.output, smooth_window=args.smooth)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    print(png)
    return png


if __name__ == "__main__":
    main()
