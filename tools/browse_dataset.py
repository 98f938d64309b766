#!/usr/bin/env python
"""Look at a data set's ground truth, no model needed, and check its annotations.

    python tools/browse_dataset.py --config-file configs/demo/frcnn_r18_fpn_shapes.yaml --output browse/
    python tools/browse_dataset.py --config-file C --dataset my_train --augment --num 12 --output browse/ \\
        INPUT.AUGMENTATIONS "('RandomCrop', 'RandomFlip', 'PhotometricDistort')"

Writes to --output: one drawing per image (with --augment: original | augmented, the training
augmentations of INPUT.AUGMENTATIONS as the loader applies them), summary.png (all drawings in one grid),
report.txt (images, boxes per class, box size / aspect statistics and every problem found: boxes outside
the image, zero or negative size, unknown category ids, duplicate image ids, missing files, each with the
image id and file) and stats.png (the histograms). The data set defaults to the config's first
DATASETS.TRAIN; any registered name works (COCO json sets are checked on the raw json).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_det.engine.defaults import exit_on_user_error, setup_cfg_or_exit  # noqa: E402
from resnet_det.utils.errors import ConfigError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="yacs YAML config (configs/...)")
    p.add_argument("--dataset", metavar="NAME", help="a registered data set (default: the first DATASETS.TRAIN)")
    p.add_argument("--augment", action="store_true", help="also draw each image after the training augmentations")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for drawings, summary.png, report.txt, stats.png")
    p.add_argument("--num", type=int, default=16, help="draw the first N images (0: all; default 16)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. INPUT.AUGMENTATIONS \"('RandomCrop', 'RandomFlip')\"")
    args = p.parse_args(argv)
    if args.num < 0:
        p.error(f"--num={args.num}: expected 0 (all) or a positive number of images")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = setup_cfg_or_exit(args, adopt_weights=False)
    name = args.dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None)
    if not name:
        raise ConfigError(f"{args.config_file}: DATASETS.TRAIN is empty; name the set with --dataset NAME")

    from resnet_det.data import MetadataCatalog
    from resnet_det.data.browse import draw_dataset
    from resnet_det.data.health import dataset_health

    MetadataCatalog.get(name)  # an unknown name: one paragraph listing the registered ones
    os.makedirs(args.output, exist_ok=True)
    report = dataset_health(name)
    with open(os.path.join(args.output, "report.txt"), "w", encoding="utf-8") as f:
        f.write(report.text() + "\n")
    report.plot(os.path.join(args.output, "stats.png"))
    print(report.text(max_per_kind=10))
    drawn = draw_dataset(cfg, name, args.output, num=args.num, augment=args.augment)
    print(f"\nwrote {len(drawn['written'])} drawings, {drawn['summary'] or 'no summary (nothing drawn)'}, "
          f"report.txt and stats.png to {os.path.abspath(args.output)}")
    for line in drawn["skipped"]:
        print(f"  not drawn: {line}")
    return {"report": report, **drawn}


if __name__ == "__main__":
    exit_on_user_error(main)  # user mistakes: one paragraph, exit status 2; bugs: a traceback
