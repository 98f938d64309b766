"""One logging setup for the tools: terminal + OUTPUT_DIR/log.txt, quieter on non-main ranks."""
from __future__ import annotations

import logging
import os
import sys


def setup_logger(output_dir: str | None = None, rank: int = 0, name: str = "resnet_det") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fname = "log.txt" if rank == 0 else f"log.rank{rank}.txt"
        fh = logging.FileHandler(os.path.join(output_dir, fname))
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger
