"""Export the ResNet classifiers and Faster R-CNN detectors to TorchScript and ONNX, verified
against eager PyTorch (tools/export_model.py, tools/run_exported.py)."""
from .exporter import (DEFAULT_OPSET, FORMATS, ExportedModel, build_metadata, export_artifact, input_normalization,
                       metadata_path, preprocess, read_metadata, resize_center_crop)
from .pipeline import ExportMismatchError, export_model, format_report, verification_images, verify_exported
from .verify import Tolerance, compare_detections, compare_logits, generated_image
from .wrappers import (ClassifierExport, DetectorExport, build_eager_model, make_export_module,
                       model_type_of)

__all__ = [
    "DEFAULT_OPSET", "FORMATS", "ClassifierExport", "DetectorExport", "ExportMismatchError", "ExportedModel",
    "Tolerance", "build_eager_model", "build_metadata", "compare_detections", "compare_logits",
    "export_artifact", "export_model", "format_report", "generated_image", "input_normalization",
    "make_export_module", "metadata_path", "model_type_of", "preprocess", "read_metadata",
    "resize_center_crop", "verification_images", "verify_exported",
]
