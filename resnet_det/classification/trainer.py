"""Classification pretraining on the detection engine: the same loop, checkpoints, exact resume,
metrics file and DDP, with the classifier, its loaders and the top-1/top-5 evaluator plugged in."""
from __future__ import annotations

import logging

import torch

from ..checkpoint import read_weights, unwrap_model
from ..engine.run import record_eval_only
from ..engine.trainer import Trainer, resolve_device
from ..evaluation import ClassificationEvaluator
from ..utils import comm
from ..utils.errors import ConfigError
from .data import build_classification_test_loader, build_classification_train_loader, compute_mean_image
from .model import build_classifier, load_classifier_weights

logger = logging.getLogger("resnet_det")


class ClassificationTrainer(Trainer):
    """``Trainer`` for MODEL.META_ARCHITECTURE "Classifier" (configs/imagenet, configs/cifar10).

    Checkpoints hold the net under ``net.`` (torchvision names) and a meta record with the input
    conventions; with INPUT.MEAN_MODE per_pixel the record's pixel_mean is the mean image's
    per-channel average (what a detector fine-tuned from it subtracts) and ``mean_image`` the image.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        mean_image = unwrap_model(self.model).mean_image
        if mean_image is not None:
            self.checkpointer.meta = {**self.checkpointer.meta, **mean_image_meta(mean_image)}

    @classmethod
    def build_model(cls, cfg):
        mean = compute_mean_image(cfg) if cfg.INPUT.MEAN_MODE == "per_pixel" else None
        return build_classifier(cfg, mean)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        return build_classification_train_loader(cfg, start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_classification_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str):
        return ClassificationEvaluator(ks=(1, 5))

    @staticmethod
    def weights_meta(cfg) -> dict:
        meta = Trainer.weights_meta(cfg)
        meta.update(classifier_style=cfg.MODEL.CLASSIFIER.STYLE, num_classes=cfg.MODEL.CLASSIFIER.NUM_CLASSES,
                    mean_mode=cfg.INPUT.MEAN_MODE)
        return meta

    def load_initial_weights(self, path: str) -> None:
        load_classifier_weights(unwrap_model(self.model), path)


def mean_image_meta(mean_image: torch.Tensor) -> dict:
    mean_image = mean_image.detach().cpu().float()
    return {"pixel_mean": [float(v) for v in mean_image.mean(dim=(1, 2))], "mean_image": mean_image}


def build_eval_model(cfg, weights: str, require_all: bool = False, use_ema: bool = False):
    """The classifier of ``weights`` for evaluation (and export): its recorded mean image if it has
    one. ``require_all``: refuse weights that do not fill the net exactly (load_classifier_weights).
    ``use_ema``: a training checkpoint's weights EMA (MODEL_EMA) where it holds one (--eval-only).
    A checkpoint whose recorded INPUT.MEAN_MODE contradicts the config is refused: the net would see
    inputs normalised otherwise than in training."""
    _, meta = read_weights(weights)
    trained = meta.get("mean_mode")
    if trained is not None and trained != cfg.INPUT.MEAN_MODE:
        raise ConfigError(f"MODEL.WEIGHTS {weights} was trained with INPUT.MEAN_MODE {trained}, the config says "
                         f"INPUT.MEAN_MODE={cfg.INPUT.MEAN_MODE!r}: the net would see inputs normalised "
                         f"otherwise than in training; set INPUT.MEAN_MODE {trained}")
    mean = None
    if cfg.INPUT.MEAN_MODE == "per_pixel":
        mean = meta.get("mean_image")
        if mean is None:
            logger.info("MODEL.WEIGHTS records no mean image; computing it from DATASETS.TRAIN")
            mean = compute_mean_image(cfg)
    model = build_classifier(cfg, mean).to(resolve_device(cfg))
    load_classifier_weights(model, weights, require_all=require_all, use_ema=use_ema)
    return model


def run_classification(cfg, args) -> dict:
    """The body of tools/pretrain_net.py: evaluate MODEL.WEIGHTS, or train (resuming) then evaluate."""
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ConfigError("--eval-only needs MODEL.WEIGHTS path/to/model_final.pth (a pretraining checkpoint)")
        # a checkpoint's EMA where it holds one (MODEL_EMA), as training evaluated
        results = ClassificationTrainer.test(cfg, build_eval_model(cfg, cfg.MODEL.WEIGHTS, use_ema=True))
        record_eval_only(cfg, results, protocol=cfg.TEST.CLS_PROTOCOL)
        return results
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process() and not trainer.interrupted:
        import os

        from ..utils.plot import plot_metrics

        if os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "metrics.json")):
            logger.info("Wrote %s", plot_metrics(cfg.OUTPUT_DIR))
    return results
