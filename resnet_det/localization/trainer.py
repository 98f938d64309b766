"""LocalizerTrainer: the engine's Trainer (checkpoints, exact resume, logs, evaluation, best model)
with the Localizer, the ILSVRC localization loaders and the localization error (Appendix C)."""
from __future__ import annotations

import logging

from ..checkpoint import load_model_weights
from ..engine import Trainer
from ..utils.errors import ConfigError
from .model import build_localizer

logger = logging.getLogger("resnet_det.train")


def check_num_classes(cfg, dataset_names) -> None:
    """MODEL.CLASSIFIER.NUM_CLASSES must equal the data set's class count (class ids index the fc)."""
    from ..data import MetadataCatalog

    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.CLASSIFIER.NUM_CLASSES:
            raise ConfigError(f"MODEL.CLASSIFIER.NUM_CLASSES={cfg.MODEL.CLASSIFIER.NUM_CLASSES} but data set "
                              f"{name!r} has {len(classes)} classes; set MODEL.CLASSIFIER.NUM_CLASSES {len(classes)}")


class LocalizerTrainer(Trainer):
    """Trains MODEL.META_ARCHITECTURE "Localizer" on DATASETS.TRAIN (ILSVRC-style localization sets).

    Example::
        cfg = setup_cfg(args)            # e.g. configs/demo/loc_R-18_demo.yaml
        trainer = LocalizerTrainer(cfg)
        trainer.resume_or_load(resume=False)   # MODEL.WEIGHTS: a classification or Localizer checkpoint
        trainer.train()                  # -> {"loc": {"top1_loc_err": .., "top5_loc_err": .., ...}}
    """

    @classmethod
    def build_model(cls, cfg):
        return build_localizer(cfg)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        # The detection loader, with the localization mapper: its stream depends on (SEED, position)
        # only, so a loader built with start_iter=k yields exactly batches k, k+1, ... of a fresh one.
        from ..data import build_detection_train_loader, get_detection_dataset_dicts
        from .mapper import LocalizationMapper

        dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        return build_detection_train_loader(cfg, mapper=LocalizationMapper(cfg, is_train=True),
                                            start_iter=start_iter, dataset=dicts)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        from ..data import build_detection_test_loader
        from .mapper import LocalizationMapper

        loader = build_detection_test_loader(cfg, dataset_name, mapper=LocalizationMapper(cfg, is_train=False))
        check_num_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str):
        from ..evaluation import LocalizationEvaluator

        return LocalizationEvaluator(k=(1, 5))

    def load_initial_weights(self, path: str) -> None:
        """MODEL.WEIGHTS: a Localizer checkpoint loads whole; classification weights (any naming) fill
        `net`, an fc of another class count and the per-class head keep their initialisation
        (checkpoint.load_model_weights; the report is kept in `weights_report`)."""
        self.weights_report = load_model_weights(self.model, path)
