"""The body of tools/train_net.py: evaluate only, or train then evaluate and draw predictions."""
from __future__ import annotations

import logging
import os

from ..utils import comm
from ..utils.errors import ConfigError
from ..utils.events import MetricsWriter
from .trainer import flatten_results

logger = logging.getLogger("resnet_det")


def run_detection(cfg, args, trainer_cls) -> dict:
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise ConfigError("--eval-only needs MODEL.WEIGHTS path/to/model.pth (a trained checkpoint)")
        from .inference import load_for_inference

        model = load_for_inference(cfg, build=trainer_cls.build_model)  # in TEST.PRECISION
        results = trainer_cls.test(cfg, model)
        record_eval_only(cfg, results, **({"precision": cfg.TEST.PRECISION} if cfg.TEST.PRECISION != "fp32" else {}))
        return results
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process() and not trainer.interrupted:
        draw_outputs(cfg, trainer.eval_model, results)  # the weights evaluated (the EMA's when on)
    return results


def record_eval_only(cfg, results: dict, **extra) -> None:
    """Append an --eval-only result to OUTPUT_DIR/metrics.json (iteration -1)."""
    if comm.is_main_process():
        writer = MetricsWriter(cfg.OUTPUT_DIR, enable_tensorboard=False)
        writer.write(-1, {"eval_only": True, "weights": cfg.MODEL.WEIGHTS, **extra, **flatten_results(results)})
        writer.close()


# Drawings are enlarged to at least this shorter side: on the 200-320 pixel demo images a label would
# otherwise be a few pixels tall. vis/summary.png shows every panel at one height.
VIS_MIN_SIZE = 512
VIS_SUMMARY_HEIGHT = 420


def draw_outputs(cfg, model, results: dict | None = None) -> list[str]:
    """Draw VIS.NUM_IMAGES test images as prediction | ground-truth panels (vis/<name>), all of them
    in one grid (vis/summary.png, titled with ``results``' AP when given), and plot the training
    curves (metrics.png); returns the written paths."""
    paths = []
    if cfg.VIS.NUM_IMAGES > 0 and cfg.DATASETS.TEST:
        import cv2

        from ..data import DatasetCatalog, MetadataCatalog
        from ..utils.visualizer import image_grid, visualize_images
        from .predictor import ModelPredictor

        name = cfg.DATASETS.TEST[0]
        dicts = DatasetCatalog.get(name)[: cfg.VIS.NUM_IMAGES]
        classes = list(MetadataCatalog.get(name).thing_classes)
        predictor = ModelPredictor(model, cfg.INPUT.FORMAT, classes)
        vis_dir = os.path.join(cfg.OUTPUT_DIR, "vis")
        panels = visualize_images(predictor, dicts, vis_dir, class_names=classes, score_thresh=cfg.VIS.SCORE_THRESH,
                                  side_by_side_gt=True, progress=False, min_size=VIS_MIN_SIZE)
        title = f"{name}: predictions scoring >= {cfg.VIS.SCORE_THRESH:g} (left), ground truth (right)"
        bbox = (results or {}).get("bbox", {})
        if "AP50" in bbox and "AP" in bbox:
            title += f"; box AP50 {bbox['AP50']:.1f}, AP {bbox['AP']:.1f}"
        summary = os.path.join(vis_dir, "summary.png")
        if not cv2.imwrite(summary, image_grid([cv2.imread(p) for p in panels], cols=2, title=title,
                                                    height=VIS_SUMMARY_HEIGHT)):
            raise OSError(f"could not write {summary!r} (is the output folder writable?)")
        paths += panels + [summary]
    metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if os.path.isfile(metrics):
        from ..utils.plot import plot_metrics

        paths.append(plot_metrics(cfg.OUTPUT_DIR))
    for p in paths:
        logger.info("Wrote %s", p)
    return paths
