"""DefaultPredictor: one BGR numpy image in, boxes in original pixels out."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from ..checkpoint import adopt_weight_conventions


class ModelPredictor:
    """Runs an already built (possibly training) model on one BGR numpy image, in eval mode."""

    def __init__(self, model, input_format: str, class_names: list[str]):
        self.model, self.input_format, self.class_names = model, input_format, list(class_names)

    @property
    def metadata(self):
        return SimpleNamespace(thing_classes=self.class_names)

    def __call__(self, image_bgr: np.ndarray) -> dict:
        return self.predict_batch([image_bgr])[0]

    @torch.inference_mode()
    def predict_batch(self, images_bgr: list) -> list[dict]:
        """Several BGR images (sizes may differ) through the model in one forward; one output each."""
        inputs = []
        for image_bgr in images_bgr:
            if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
                raise ValueError(f"expected an HxWx3 BGR uint8 image, got {getattr(image_bgr, 'shape', type(image_bgr))}")
            if self.input_format == "RGB":
                image_bgr = image_bgr[:, :, ::-1]
            h, w = image_bgr.shape[:2]
            image = torch.as_tensor(np.ascontiguousarray(image_bgr.transpose(2, 0, 1)))
            inputs.append({"image": image, "height": h, "width": w})
        if not inputs:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            outs = self.model(inputs)
        finally:
            self.model.train(was_training)
        return [{"instances": {k: v.cpu() for k, v in out["instances"].items()}} for out in outs]


class DefaultPredictor(ModelPredictor):
    """Builds the model from `cfg`, loads MODEL.WEIGHTS, and runs single images.

    Example::
        predictor = DefaultPredictor(cfg)
        out = predictor(cv2.imread("input.jpg"))       # BGR, HxWx3 uint8
        out["instances"]["boxes"], out["instances"]["scores"], out["instances"]["pred_classes"]
        [predictor.class_names[c] for c in out["instances"]["pred_classes"]]
    """

    def __init__(self, cfg):
        from .inference import load_for_inference

        self.cfg = cfg.clone()
        if cfg.MODEL.WEIGHTS:  # build for the input convention the weights were trained with
            self.cfg.defrost()
            adopt_weight_conventions(self.cfg, cfg.MODEL.WEIGHTS)
            self.cfg.freeze()
        model = load_for_inference(self.cfg)  # in TEST.PRECISION (modeling/precision.py)
        super().__init__(model, self.cfg.INPUT.FORMAT, self._class_names(cfg))

    @staticmethod
    def _class_names(cfg) -> list[str]:
        names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
        if names:
            from ..data import MetadataCatalog

            classes = MetadataCatalog.get(names[0]).get("thing_classes", None)
            if classes:
                return list(classes)
        return [f"class{i}" for i in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)]

