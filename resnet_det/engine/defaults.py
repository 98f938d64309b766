"""What every tool does first: parse the standard arguments, build the config, set up the run."""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys

import numpy as np
import torch

from ..checkpoint import adopt_weight_conventions, restore_run_conventions
from ..config import get_cfg, validate_cfg
from ..utils import comm
from ..utils.errors import ConfigError, UserInputError, user_message
from ..utils.io import atomic_write_text
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
    """Defaults <- config file <- KEY VALUE overrides <- input convention; scaled; validated; frozen.

    The input convention (INPUT.FORMAT, MODEL.PIXEL_MEAN/STD, MODEL.RESNETS.STRIDE_IN_1X1) is, with
    `--resume` and a checkpoint in OUTPUT_DIR, the one the interrupted run used; otherwise the one
    MODEL.WEIGHTS records (checkpoint/conventions.py).
    """
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts))
    if adopt_weights:
        resume = getattr(args, "resume", False) and not getattr(args, "eval_only", False)
        if not (resume and restore_run_conventions(cfg, args.opts)) and cfg.MODEL.WEIGHTS:
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
        path = atomic_write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
        logger.info("Full config saved to %s", path)
    configure_backends(cfg)


def configure_backends(cfg) -> None:
    """Process-wide switches: cudnn.benchmark (CUDNN_BENCHMARK) picks the fastest conv algorithms
    per input shape on GPU; with many distinct shapes (multi-scale training) the search can cost more
    than it saves, hence a switch."""
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)


USER_ERROR_EXIT = 2  # as argparse: the command was wrong, not the program


def report_user_error(error: UserInputError) -> None:
    """Print a user error as the one paragraph the tools show (no traceback)."""
    print(f"\nerror: {user_message(error)}", file=sys.stderr)


def exit_on_user_error(fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)`; a UserInputError (bad config key or value, missing or malformed
    data set, missing or unreadable weights, a bad path) becomes one paragraph on stderr and exit
    status 2. Any other exception is a bug and propagates with its traceback."""
    try:
        return fn(*args, **kwargs)
    except UserInputError as e:
        report_user_error(e)
        raise SystemExit(USER_ERROR_EXIT) from None


def launch_tool(main_func, args) -> None:
    """Run a tool's `main(args)` through `launch` (user errors raised in spawned workers reach this
    process as the same UserInputError), with exit_on_user_error around it."""
    from .launch import launch

    exit_on_user_error(launch, main_func, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url,
                       args=(args,))


def setup_cfg_or_exit(args, **kwargs):
    """setup_cfg, with the KeyError/ValueError of merging and validating the config (unknown key,
    wrong type, impossible value) reported as UserInputError (no traceback)."""
    try:
        return setup_cfg(args, **kwargs)
    except UserInputError:
        raise
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise ConfigError(f"config error: {msg}") from None
