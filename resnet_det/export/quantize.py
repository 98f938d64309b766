"""The INT8 deployment twin: the exported fp32 ONNX detector quantized with ONNX Runtime's
`quantize_static` (QDQ format, per-channel int8 weights, uint8 activations), calibrated on the same
TEST.PRECISION_CALIB_IMAGES images (modeling.precision.calibration_inputs) as the PyTorch INT8 model.
The float model it quantizes (model.onnx) has its residual streams equalized on those images first, as
the PyTorch INT8 path does: the same function up to float rounding (verified like any export).

Only Conv, MatMul and Gemm are quantized (the backbone, FPN, RPN head convs and the box head's fc
layers, as in PyTorch's INT8 path); RoIAlign, NMS, TopK, box decoding and the resize stay float,
which keeps ORT's calibration from recording ranges of index and box tensors that have no use in INT8.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import numpy as np

from ..utils.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["INT8_ONNX", "OP_TYPES_TO_QUANTIZE", "calibration_arrays", "export_int8_onnx", "quantize_onnx"]

OP_TYPES_TO_QUANTIZE = ["Conv", "MatMul", "Gemm"]
INT8_ONNX = "model_int8.onnx"  # written next to the fp32 model.onnx


def calibration_arrays(batches: Iterable[list[dict]]) -> list[np.ndarray]:
    """The exported detector's input (uint8 CHW, INPUT.FORMAT order) for each image of each batch of
    mapper outputs ({"image": uint8 CHW tensor in INPUT.FORMAT order, ...}): what the PyTorch INT8
    model's observers see, the graph resizing it to INPUT.MIN/MAX_SIZE_TEST as the eager model does."""
    return [np.ascontiguousarray(d["image"].cpu().numpy().astype(np.uint8)) for batch in batches for d in batch]


def quantize_onnx(model_path: str, out_path: str, calibration_batches: Iterable[list[dict]],
                  input_name: str = "image") -> str:
    """Quantize the exported fp32 detector `model_path` into `out_path` (QDQ), calibrated on
    `calibration_batches` (lists of mapper outputs, e.g. `calibration_inputs(cfg)`). Returns out_path."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    arrays = calibration_arrays(calibration_batches)
    if not arrays:
        raise ConfigError("INT8 ONNX export: no calibration images (TEST.PRECISION_CALIB_IMAGES images of "
                          "DATASETS.TRAIN); set DATASETS.TRAIN to a data set with images")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(arrays)

        def get_next(self):
            a = next(self._it, None)
            return None if a is None else {input_name: a}

    quantize_static(model_path, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=OP_TYPES_TO_QUANTIZE, calibrate_method=CalibrationMethod.MinMax,
                    calibration_providers=["CPUExecutionProvider"])
    logger.info("INT8 ONNX: %s quantized (QDQ, per-channel) on %d calibration images -> %s",
                os.path.basename(model_path), len(arrays), out_path)
    return out_path


def export_int8_onnx(cfg, output_dir: str, sample=None, opset: int | None = None, tol=None,
                     batches: list | None = None) -> tuple[str, dict]:
    """TEST.PRECISION int8 + ONNX: export and verify the fp32 detector (OUTPUT/model.onnx, as for fp32),
    then quantize it into OUTPUT/model_int8.onnx calibrated on `batches` (default: the PyTorch INT8
    path's `calibration_inputs(cfg)`); its metadata is the fp32 model's plus "precision" and "quantization".
    Returns (INT8 artifact path, its metadata)."""
    from ..modeling.fusion import materialize_folds
    from ..modeling.precision import calibration_inputs, equalize_activations, is_int8_checkpoint
    from ..utils.errors import WeightsError
    from .exporter import DEFAULT_OPSET, write_metadata
    from .pipeline import export_model
    from .verify import Tolerance
    from .wrappers import build_eager_model, model_type_of

    if model_type_of(cfg) != "detector":
        raise ConfigError("TEST.PRECISION int8 export: the INT8 ONNX twin is built for detectors; export "
                          "classifiers with TEST.PRECISION fp32")
    if cfg.MODEL.WEIGHTS and is_int8_checkpoint(cfg.MODEL.WEIGHTS):
        raise WeightsError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} is a calibrated PyTorch INT8 checkpoint: the INT8 "
                           "ONNX model is quantized from the exported float model; give the float weights")
    batches = calibration_inputs(cfg) if batches is None else batches
    fp32 = cfg.clone()
    fp32.defrost()
    fp32.TEST.PRECISION = "fp32"
    fp32.freeze()
    # The float model ORT quantizes has its residual streams equalized as the PyTorch INT8 path has
    # (the same function up to rounding; its 8-bit activations lose less).
    eager = build_eager_model(fp32)
    materialize_folds(eager)
    equalize_activations(eager, batches)
    path, meta = export_model(fp32, "onnx", output_dir, sample, DEFAULT_OPSET if opset is None else opset,
                              Tolerance() if tol is None else tol, model=eager)
    out = quantize_onnx(path, os.path.join(output_dir, INT8_ONNX), batches)
    meta = {**meta, "file": os.path.basename(out), "precision": "int8",
            "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                             "per_channel": True, "activations": "uint8", "weights": "int8",
                             "op_types": OP_TYPES_TO_QUANTIZE, "calibration_images": len(calibration_arrays(batches)),
                             "equalized": "residual and FPN streams (modeling.precision.equalize_activations)",
                             "from": os.path.basename(path)},
            "verification": {**meta["verification"], "of": os.path.basename(path)}}
    write_metadata(meta, out)
    return out, meta
