"""Training metrics: JSON lines a user can plot, TensorBoard when installed, a terminal line."""
from __future__ import annotations

import datetime
import json
import logging
import os
import time

logger = logging.getLogger("resnet_det.train")


class MetricsWriter:
    """Appends one JSON object per call to OUTPUT_DIR/metrics.json (flushed at once, so a killed
    run loses at most the line being written) and mirrors scalars to TensorBoard if available."""

    def __init__(self, output_dir: str, enable_tensorboard: bool = True):
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, "metrics.json")
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if enable_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(output_dir)
            except Exception:  # tensorboard is optional
                self._tb = None

    def write(self, iteration: int, metrics: dict) -> None:
        record = {"iteration": iteration, **{k: _py(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, iteration)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _py(v):
    return v.item() if hasattr(v, "item") else v


class ProgressPrinter:
    """iteration, ETA, losses, lr, time/iter, data time on one terminal line."""

    def __init__(self, max_iter: int, start_iter: int):
        self.max_iter, self._start_iter, self._start = max_iter, start_iter, time.perf_counter()

    def eta(self, iteration: int) -> str:
        done = iteration + 1 - self._start_iter
        if done <= 0:
            return "?"
        per_iter = (time.perf_counter() - self._start) / done
        return str(datetime.timedelta(seconds=int(per_iter * (self.max_iter - iteration - 1))))

    def log(self, iteration: int, metrics: dict) -> None:
        losses = "  ".join(f"{k}: {v:.4g}" for k, v in metrics.items() if "loss" in k)
        extras = "  ".join(f"{k}: {metrics[k]:.4g}" for k in ("time", "data_time") if k in metrics)
        logger.info("eta: %s  iter: %d/%d  %s  %s  lr: %.3g", self.eta(iteration), iteration + 1,
                    self.max_iter, losses, extras, metrics.get("lr", float("nan")))
