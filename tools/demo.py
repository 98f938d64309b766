#!/usr/bin/env python
"""`make demo`: the paper's pipeline in miniature on generated data, in about ten minutes on 2 CPU cores.

1. Pretrain ResNet-18 on the generated shapes classification set (configs/demo/cls_r18_pretrain_demo.yaml;
   the "ImageNet" step, Sec. 3.4).
2. Fine-tune the R18-FPN Faster R-CNN from that backbone on the generated shapes detection set
   (configs/demo/frcnn_r18_fpn_shapes_pretrained.yaml, MODEL.WEIGHTS hand-off; Appendix A in miniature).
   With --no-pretrain the detector trains from scratch (configs/demo/frcnn_r18_fpn_shapes.yaml).
3. Evaluate COCO box AP on shapes_val, draw predictions next to the ground truth
   (vis/*.jpg and vis/summary.png) and the training curves (metrics.png).

    python tools/demo.py [--output output/demo] [--no-pretrain] [--pretrain-opts KEY VALUE ...]
                         [--det-opts KEY VALUE ...]

The same two stages by hand:

    python tools/pretrain_net.py --config-file configs/demo/cls_r18_pretrain_demo.yaml OUTPUT_DIR output/demo/pretrain
    python tools/train_net.py --config-file configs/demo/frcnn_r18_fpn_shapes_pretrained.yaml \\
        MODEL.WEIGHTS output/demo/pretrain/model_final.pth

Both configs use MODEL.DEVICE "auto" (CUDA when present). Measured numbers: benchmarks/DEMO.md.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_det.classification import run_classification  # noqa: E402
from resnet_det.engine import Trainer, default_setup  # noqa: E402
from resnet_det.engine.defaults import launch_tool, setup_cfg_or_exit  # noqa: E402
from resnet_det.engine.run import run_detection  # noqa: E402
from resnet_det.engine.trainer import resolve_device  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_CONFIG = os.path.join(REPO, "configs", "demo", "cls_r18_pretrain_demo.yaml")
DETECTOR_CONFIG = os.path.join(REPO, "configs", "demo", "frcnn_r18_fpn_shapes_pretrained.yaml")
SCRATCH_CONFIG = os.path.join(REPO, "configs", "demo", "frcnn_r18_fpn_shapes.yaml")


# The demo is one process: launch_tool's fields, for the tool and for each stage.
ONE_PROCESS = dict(num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")


def _stage_args(config_file: str, opts: list) -> argparse.Namespace:
    """The arguments tools/train_net.py would get for one stage."""
    return argparse.Namespace(config_file=config_file, opts=opts, resume=False, eval_only=False, **ONE_PROCESS)


def main(args) -> dict:
    start = time.perf_counter()
    weights = ""
    if not args.no_pretrain:
        pre = _stage_args(PRETRAIN_CONFIG, ["OUTPUT_DIR", os.path.join(args.output, "pretrain"), *args.pretrain_opts])
        cfg = setup_cfg_or_exit(pre)
        default_setup(cfg, pre)
        run_classification(cfg, pre)
        weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    pretrain_s = time.perf_counter() - start
    det_config = SCRATCH_CONFIG if args.no_pretrain else DETECTOR_CONFIG
    det = _stage_args(det_config, ["OUTPUT_DIR", args.output, "MODEL.WEIGHTS", weights, *args.det_opts])
    cfg = setup_cfg_or_exit(det)
    default_setup(cfg, det)
    results = run_detection(cfg, det, Trainer)
    print_summary(cfg, results, weights, pretrain_s, time.perf_counter() - start)
    return results


def print_summary(cfg, results: dict, weights: str, pretrain_s: float, total_s: float) -> None:
    """The last lines of the demo: where everything is and what the AP is."""
    out = cfg.OUTPUT_DIR
    bbox = results.get("bbox", {})
    per_class = ", ".join(f"{k[3:]} {v:.1f}" for k, v in bbox.items() if k.startswith("AP-"))
    lines = ["", f"Demo finished in {total_s / 60:.1f} min ({pretrain_s / 60:.1f} min pretraining, "
             f"{cfg.SOLVER.MAX_ITER} detector iterations on {resolve_device(cfg).type}).",
             f"  box AP on {', '.join(cfg.DATASETS.TEST)}: AP50 {bbox.get('AP50', float('nan')):.1f}, "
             f"AP {bbox.get('AP', float('nan')):.1f}, AP75 {bbox.get('AP75', float('nan')):.1f}"
             + (f" (per class: {per_class})" if per_class else "")]
    vis = os.path.join(out, "vis", "summary.png")
    if os.path.isfile(vis):
        lines.append(f"  pictures:   {vis} (and one prediction | ground truth panel per image in "
                     f"{os.path.dirname(vis)}/)")
    lines.append(f"  curves:     {os.path.join(out, 'metrics.png')} (numbers: {os.path.join(out, 'metrics.json')})")
    lines.append(f"  checkpoint: {os.path.join(out, 'model_final.pth')}"
                 + (f" (backbone pretrained in {weights})" if weights else " (trained from scratch)"))
    print("\n".join(lines), flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/demo", help="detector OUTPUT_DIR; pretraining goes to OUTPUT/pretrain")
    p.add_argument("--no-pretrain", action="store_true", help="train the detector from random init")
    p.add_argument("--pretrain-opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="overrides of configs/demo/cls_r18_pretrain_demo.yaml")
    p.add_argument("--det-opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="overrides of the detector config (frcnn_r18_fpn_shapes_pretrained.yaml, "
                   "or frcnn_r18_fpn_shapes.yaml with --no-pretrain)")
    return argparse.Namespace(**vars(p.parse_args(argv)), **ONE_PROCESS)


if __name__ == "__main__":
    launch_tool(main, parse_args())
