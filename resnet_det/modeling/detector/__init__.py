from .heads import FastRCNNPredictor, FCHead, Res5ROIHead, ROIPool
from .rcnn import FasterRCNN, ResizeNormalize, build_model, inputs_to_device, parameter_table

__all__ = ["FasterRCNN", "ResizeNormalize", "build_model", "inputs_to_device", "parameter_table",
           "FastRCNNPredictor", "FCHead", "Res5ROIHead", "ROIPool"]
