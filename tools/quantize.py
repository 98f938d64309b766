#!/usr/bin/env python
"""Calibrate a detector for INT8 once and write the calibrated checkpoint (TEST.PRECISION int8).

    python tools/quantize.py --config-file configs/demo/frcnn_r18_fpn_shapes.yaml --output out/int8 \\
        MODEL.WEIGHTS output/demo/model_final.pth [TEST.PRECISION_CALIB_IMAGES 64] [DATASETS.TRAIN "('shapes_train',)"]
    python tools/train_net.py --config-file C --eval-only TEST.PRECISION int8 MODEL.WEIGHTS out/int8/model_int8.pth

Post-training static quantization (modeling/precision.py) of the float weights in MODEL.WEIGHTS,
calibrated on TEST.PRECISION_CALIB_IMAGES images of DATASETS.TRAIN through the test-time mapper.
Writes DIR/model_int8.pth: the quantized state dict, the weights' input conventions and, in
meta["calibration"], the data sets and image count, and in meta["scheme"] the quantized engine and
bit widths. Loading it skips calibration; it runs only with TEST.PRECISION int8, the architecture of
the config it was made with, and (8-bit weights) on a CPU with VNNI.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_det.engine.defaults import exit_on_user_error, setup_cfg_or_exit  # noqa: E402
from resnet_det.utils.errors import ConfigError, WeightsError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the detector's yacs YAML config")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for model_int8.pth")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides; MODEL.WEIGHTS (the float weights) is required")
    args = p.parse_args(argv)
    args.opts = [*args.opts, "TEST.PRECISION", "int8"]
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = setup_cfg_or_exit(args)
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("tools/quantize.py needs MODEL.WEIGHTS path/to/model_final.pth (the float weights)")

    import torch

    from resnet_det.checkpoint.conventions import weights_meta
    from resnet_det.engine.inference import load_for_inference
    from resnet_det.modeling.precision import calibration_inputs, is_int8_checkpoint, save_int8

    if is_int8_checkpoint(cfg.MODEL.WEIGHTS):
        raise WeightsError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} is already a calibrated INT8 checkpoint; give the "
                           "float weights it was made from")
    batches = calibration_inputs(cfg)  # TEST.PRECISION_CALIB_IMAGES images of DATASETS.TRAIN (or all it has)
    model = load_for_inference(cfg, calibration=batches)
    calibration = {"datasets": list(cfg.DATASETS.TRAIN), "images": len(batches),
                   "mapper": "test-time (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)",
                   "flow": "torch.ao FX post-training static", "torch": str(torch.__version__),
                   "float_weights": os.path.abspath(cfg.MODEL.WEIGHTS)}
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "model_int8.pth")
    save_int8(model, path, weights_meta(cfg.MODEL.WEIGHTS), calibration)
    print(f"wrote {os.path.abspath(path)} (calibrated on {calibration['images']} images of "
          f"{', '.join(calibration['datasets'])}); run it with TEST.PRECISION int8 MODEL.WEIGHTS {path}")
    return path


if __name__ == "__main__":
    exit_on_user_error(main)  # user mistakes: one paragraph, exit status 2; bugs: a traceback
