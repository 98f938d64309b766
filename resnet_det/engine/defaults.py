"""What every tool does first: parse the standard arguments, build the config, set up the run."""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys

import numpy as np
import torch

from ..config import get_cfg, validate_cfg
from ..utils import comm
from ..utils.logger import setup_logger
from .solver import scale_schedule

logger = logging.getLogger("resnet_det")


def default_argument_parser(description: str = "resnet_det training") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example: python tools/train_net.py --config-file "
                                       "configs/frcnn_r101_coco.yaml SOLVER.IMS_PER_BATCH 8")
    p.add_argument("--config-file", required=True, metavar="FILE", help="path to a config yaml")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in OUTPUT_DIR")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS and exit")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="processes per machine (GPUs; on a CPU-only machine, CPU processes with gloo)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of rank 0; 'auto' = a free local port")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. SOLVER.BASE_LR 0.01 MODEL.WEIGHTS path.pth")
    return p


def setup_cfg(args, adopt_weights: bool = True):
    """Defaults <- config file <- KEY VALUE overrides <- weights' conventions; scaled; validated; frozen."""
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts))
    if adopt_weights and cfg.MODEL.WEIGHTS and not getattr(args, "resume", False):
        from .checkpoint import adopt_weight_conventions

        adopt_weight_conventions(cfg, cfg.MODEL.WEIGHTS)
    scale_schedule(cfg)
    validate_cfg(cfg)
    cfg.freeze()
    return cfg


def check_output_dir(output_dir: str) -> None:
    """Fail at start, not after hours, when OUTPUT_DIR cannot take a checkpoint."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".write_test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * (1 << 20))  # 1 MiB: a full disk fails here
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise UserInputError(f"OUTPUT_DIR {output_dir!r} is not writable ({e.strerror or e}). Free disk space, "
                             "fix permissions, or choose another folder with OUTPUT_DIR /path/to/dir.") from None


def seed_all(seed: int) -> int:
    if seed < 0:
        seed = int.from_bytes(os.urandom(2), "little")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def default_setup(cfg, args) -> None:
    """Output dir check, logging, environment line, seeds, and OUTPUT_DIR/config.yaml."""
    rank = comm.get_rank()
    if rank == 0:
        check_output_dir(cfg.OUTPUT_DIR)
    setup_logger(cfg.OUTPUT_DIR, rank)
    logger.info("Command: %s", " ".join(sys.argv))
    logger.info("torch %s, torchvision %s, world size %d, CUDA %s", torch.__version__,
                __import__("torchvision").__version__, comm.get_world_size(), torch.cuda.is_available())
    seed = seed_all(cfg.SEED + rank if cfg.SEED >= 0 else cfg.SEED)
    logger.info("Seed %d", seed)
    if rank == 0:
        path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(cfg.dump())
        logger.info("Full config saved to %s", path)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


class UserInputError(Exception):
    """A problem in what the user gave (config, paths); tools print it without a traceback."""


def launch_tool(main_func, args) -> None:
    """Run a tool's `main(args)` through `launch`, turning user errors (bad config keys or values,
    missing data sets or weights) into one message and exit status 2 instead of a traceback."""
    from .launch import launch

    try:
        launch(main_func, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))
    except (UserInputError, FileNotFoundError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def setup_cfg_or_exit(args, **kwargs):
    """setup_cfg, with config mistakes reported as UserInputError (no traceback)."""
    try:
        return setup_cfg(args, **kwargs)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise UserInputError(f"config error: {msg}") from None
