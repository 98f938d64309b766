"""The body of tools/train_net.py: evaluate only, or train then evaluate and draw predictions."""
from __future__ import annotations

import logging
import os

from ..checkpoint import load_model_weights
from ..utils import comm
from ..utils.errors import ConfigError
from ..utils.events import MetricsWriter
from .trainer import flatten_results

logger = logging.getLogger("resnet_det")


def run_detection(cfg, args, trainer_cls) -> dict:
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ConfigError("--eval-only needs MODEL.WEIGHTS path/to/model.pth (a trained checkpoint)")
        model = trainer_cls.build_model(cfg)
        from .trainer import resolve_device

        model.to(resolve_device(cfg))
        load_model_weights(model, cfg.MODEL.WEIGHTS)
        results = trainer_cls.test(cfg, model)
        record_eval_only(cfg, results)
        return results
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process() and not trainer._stop.is_set():
        draw_outputs(cfg, trainer.model)
    return results


def record_eval_only(cfg, results: dict, **extra) -> None:
    """Append an --eval-only result to OUTPUT_DIR/metrics.json (iteration -1)."""
    if comm.is_main_process():
        writer = MetricsWriter(cfg.OUTPUT_DIR, enable_tensorboard=False)
        writer.write(-1, {"eval_only": True, "weights": cfg.MODEL.WEIGHTS, **extra, **flatten_results(results)})
        writer.close()


def draw_outputs(cfg, model) -> list[str]:
    """Draw predictions on VIS.NUM_IMAGES test images and plot the training curves; print paths."""
    paths = []
    if cfg.VIS.NUM_IMAGES > 0 and cfg.DATASETS.TEST:
        from ..data import DatasetCatalog, MetadataCatalog
        from ..utils.visualizer import visualize_images
        from .predictor import ModelPredictor

        name = cfg.DATASETS.TEST[0]
        dicts = DatasetCatalog.get(name)[: cfg.VIS.NUM_IMAGES]
        classes = list(MetadataCatalog.get(name).thing_classes)
        predictor = ModelPredictor(model, cfg.INPUT.FORMAT, classes)
        paths += visualize_images(predictor, dicts, os.path.join(cfg.OUTPUT_DIR, "vis"), class_names=classes,
                                  score_thresh=cfg.VIS.SCORE_THRESH, show_gt=True, progress=False)
    metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if os.path.isfile(metrics):
        from ..utils.plot import plot_metrics

        paths.append(plot_metrics(cfg.OUTPUT_DIR))
    for p in paths:
        logger.info("Wrote %s", p)
    return paths
