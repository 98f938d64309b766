from .heads import FastRCNNPredictor, FCHead, Res5ROIHead, ROIPool
from .tta import DetectorWithTTA, maybe_wrap_tta
from .rcnn import FasterRCNN, ResizeNormalize, build_model, inputs_to_device, parameter_table

__all__ = ["DetectorWithTTA", "maybe_wrap_tta", "FasterRCNN", "ResizeNormalize", "build_model", "inputs_to_device", "parameter_table",
           "FastRCNNPredictor", "FCHead", "Res5ROIHead", "ROIPool"]
