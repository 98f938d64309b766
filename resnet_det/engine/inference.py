"""The one loader of a detector for inference: build, load MODEL.WEIGHTS, run in TEST.PRECISION.

DefaultPredictor, --eval-only (engine/run.py), tools/visualize.py and tools/quantize.py all go
through `load_for_inference`, so the precision switch means the same everywhere.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from ..checkpoint import load_model_weights
from ..utils.errors import ConfigError, WeightsError
from .trainer import resolve_device

logger = logging.getLogger("resnet_det")

__all__ = ["load_for_inference", "inference_device"]


def inference_device(cfg) -> torch.device:
    """MODEL.DEVICE, except that TEST.PRECISION int8 runs on the CPU (MODEL.DEVICE auto picks it)."""
    if cfg.TEST.PRECISION == "int8":
        if cfg.MODEL.DEVICE not in ("auto", "cpu"):
            raise ConfigError(f"TEST.PRECISION int8 with MODEL.DEVICE={cfg.MODEL.DEVICE!r}: INT8 runs on the CPU "
                              "(x86 quantized kernels); set MODEL.DEVICE cpu, or TEST.PRECISION bf16 on a GPU")
        return torch.device("cpu")
    return resolve_device(cfg)


def load_for_inference(cfg, build: Callable | None = None, calibration: list | None = None):
    """The detector of `cfg` with MODEL.WEIGHTS loaded, in eval mode, in TEST.PRECISION.

    MODEL.WEIGHTS may be float weights (any format the loader reads; int8 then calibrates on
    TEST.PRECISION_CALIB_IMAGES images of DATASETS.TRAIN, or on `calibration`, a list of input batches)
    or, for TEST.PRECISION int8 only, a calibrated checkpoint from tools/quantize.py. `build(cfg)`
    builds the float model (default modeling.detector.build_model; --eval-only passes its trainer's).
    """
    from ..modeling.precision import apply_precision, is_int8_checkpoint, load_int8

    if build is None:
        from ..modeling.detector import build_model as build
    weights, precision = cfg.MODEL.WEIGHTS, cfg.TEST.PRECISION
    quantized = bool(weights) and is_int8_checkpoint(weights)
    if quantized and precision != "int8":
        raise WeightsError(f"MODEL.WEIGHTS {weights} is a calibrated INT8 checkpoint (tools/quantize.py) but "
                           f"TEST.PRECISION is {precision!r}: add TEST.PRECISION int8, or give the float weights "
                           "it was quantized from")
    device = inference_device(cfg)
    model = build(cfg).to(device).eval()
    if quantized:
        model = load_int8(model, weights, channels_last=cfg.MODEL.CHANNELS_LAST)
        logger.info("Loaded the calibrated INT8 detector %s", weights)
    else:
        if weights:
            load_model_weights(model, weights, use_ema=True)  # a training checkpoint's EMA, if it has one
        model = apply_precision(model, cfg, calibration)
        if precision != "fp32":
            logger.info("Inference precision: TEST.PRECISION %s", precision)
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        from ..modeling.detector import maybe_wrap_tta

        model = maybe_wrap_tta(cfg, model)  # TEST.AUG.ENABLED: every size and the flip, merged per class
    return model.eval()
