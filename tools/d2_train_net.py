#!/usr/bin/env python
"""detectron2's training entry point with resnet_det's backbones registered.

    python tools/d2_train_net.py --config-file configs/detectron2/faster_rcnn_R_50_C4_coco.yaml \
        --num-gpus 8 [--eval-only] [--resume] [KEY VALUE ...]

The same flow as detectron2's tools/train_net.py (which its pip package does not ship): detectron2's
argument parser, get_cfg, DefaultTrainer and launch, plus three lines: importing the plugin (at module
level, so spawned workers register the backbones and resnet_det's data sets too),
add_resnet_det_config before merging, choose_d2_device after it (the CPU where there is no CUDA, as our
train_net does; MODEL.DEVICE wins), and registering the config's data sets that resnet_det knows
(shapes_*, coco_*/voc_* under $RESNET_DET_DATASETS, your own) when detectron2 does not.
Without detectron2 installed it prints one paragraph on how to install it (also for --help) and exits
(0 for --help, 2 otherwise), without a traceback.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import resnet_det.integrations.detectron2  # noqa: E402,F401  registers build_resnet_det_*backbone
except ImportError as e:  # detectron2 is optional; its message says how to install it
    if "needs detectron2" not in str(e):
        raise
    asked_for_help = any(a in ("-h", "--help") for a in sys.argv[1:])
    print(f"{os.path.basename(__file__)}: " + " ".join(str(e).split()), file=sys.stdout if asked_for_help else sys.stderr)
    sys.exit(0 if asked_for_help else 2)
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator  # noqa: E402

from resnet_det.integrations import add_resnet_det_config, choose_d2_device  # noqa: E402
from resnet_det.integrations.detectron2 import register_resnet_det_datasets  # noqa: E402


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        kind = MetadataCatalog.get(dataset_name).evaluator_type
        if kind == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        if kind == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        raise ValueError(f"DATASETS.TEST {dataset_name!r}: no evaluator for evaluator_type {kind!r} "
                         "(this wrapper knows 'coco' and 'pascal_voc')")


def setup(args):
    cfg = get_cfg()
    add_resnet_det_config(cfg)  # MODEL.RESNETS.{SHORTCUT, PLAIN, ZERO_INIT_RESIDUAL}
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    choose_d2_device(cfg, args.opts)  # detectron2's default "cuda" fails on a CPU-only machine
    register_resnet_det_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))  # registered since import
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                             resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
