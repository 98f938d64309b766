"""The evaluator interface and the inference loop that feeds it (docs/CONTRACTS.md, "Evaluators").

An evaluator sees every batch through ``process(inputs, outputs)`` and computes its metrics in
``evaluate()``. In a distributed run each process sees its shard of the data; evaluators gather what
they collected to rank 0 with ``utils.comm.gather_to_main``, only rank 0 computes metrics, and the other ranks
return ``{}``. Every rank must call ``evaluate()``, because the gather is a collective operation.
"""
from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterable, Sequence

import torch
from tabulate import tabulate

from ..utils.comm import get_world_size

logger = logging.getLogger(__name__)

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "format_table"]


def unique_images(records: list, image_id, who: str) -> list:
    """``records`` with one entry per image id (the first), warning about the repeats.

    A sampler that pads shards to equal length (torch's DistributedSampler) feeds some images twice;
    evaluating both copies would count their detections twice (extra false positives).
    """
    seen, out, dup = set(), [], 0
    for r in records:
        key = image_id(r)
        if key is not None and key in seen:
            dup += 1
            continue
        seen.add(key)
        out.append(r)
    if dup:
        logger.warning("%s: %d image(s) were processed more than once (a padding sampler?); keeping the first "
                       "copy of each", who, dup)
    return out


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], floatfmt: str = ".3f") -> str:
    """The evaluators' plain-text tables: tabulate's "pipe" format (Markdown-compatible)."""
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=floatfmt, numalign="left")


# ---------------------------------------------------------------------------------------------
# evaluator interface
# ---------------------------------------------------------------------------------------------
class DatasetEvaluator:
    """Base class: ``reset()`` before a pass, ``process()`` per batch, ``evaluate()`` once at the end.

    ``evaluate()`` returns ``{task: {metric: value}}`` (e.g. ``{"bbox": {"AP": 37.2, ...}}``) in percent,
    or ``{}`` on ranks other than 0 in a distributed run.
    """

    def reset(self) -> None:
        pass

    def process(self, inputs: Any, outputs: Any) -> None:
        pass

    def evaluate(self) -> dict:
        return {}


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators on the same batches and merges their result dicts.

    Two evaluators reporting the same top-level key is an error: one would silently hide the other.
    """

    def __init__(self, evaluators: Iterable[DatasetEvaluator]):
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self._evaluators:
            e.reset()

    def process(self, inputs, outputs) -> None:
        for e in self._evaluators:
            e.process(inputs, outputs)

    def evaluate(self) -> dict:
        results: OrderedDict = OrderedDict()
        for e in self._evaluators:
            for k, v in (e.evaluate() or {}).items():
                if k in results:
                    raise KeyError(f"two evaluators both report {k!r} ({type(e).__name__} and an earlier "
                                   f"one); give each task its own key")
                results[k] = v
        return results


# ---------------------------------------------------------------------------------------------
# the inference loop
# ---------------------------------------------------------------------------------------------
def split_batch(batch: Any) -> tuple[Any, int]:
    """(what to pass to the model, number of images) for one loader batch.

    Two batch kinds exist: detection loaders yield a list of per-image dicts (CONTRACTS.md, "Model
    input") passed to the model as is; classification loaders yield ``(images, labels)`` tensors, of
    which only ``images`` (N, C, H, W) or (N, crops, C, H, W) goes to the model.
    """
    if (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)
            and isinstance(batch[1], torch.Tensor)):
        return batch[0], int(batch[0].shape[0])
    if isinstance(batch, torch.Tensor):
        return batch, int(batch.shape[0])
    return batch, len(batch)


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """Eval mode for the duration, then the model's previous mode (training may continue after)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _sync():
    # CUDA kernels run asynchronously; without a sync the timer measures only the launch.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def inference_on_dataset(model: torch.nn.Module, data_loader: Iterable,
                         evaluator: DatasetEvaluator | Sequence[DatasetEvaluator] | None,
                         log_every: int = 100, num_warmup: int = 5) -> dict:
    """Run ``model`` on every batch of ``data_loader`` and return ``evaluator.evaluate()``.

    The model runs in eval mode under ``torch.inference_mode`` (its mode is restored afterwards).
    Progress with an ETA is logged about every ``log_every`` images; the first ``num_warmup`` batches
    are left out of the per-image timing (allocator and cuDNN warm-up would inflate it).
    In a distributed run every rank calls this on its shard; results come back on rank 0, ``{}`` elsewhere.
    """
    if log_every < 1:
        raise ValueError(f"inference_on_dataset: log_every={log_every}; expected a positive number of images")
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif not isinstance(evaluator, DatasetEvaluator):
        evaluator = DatasetEvaluators(evaluator)
    try:
        total_batches = len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        total_batches = None  # an iterable without len(): no ETA
    logger.info("Start inference on %s batches (%d process(es))",
                total_batches if total_batches is not None else "an unknown number of", get_world_size())

    evaluator.reset()
    if total_batches is not None:  # keep at least one timed batch
        num_warmup = min(num_warmup, max(total_batches - 1, 0))
    n_images = n_timed = 0
    compute_time = 0.0
    next_log = log_every
    start = timed_start = time.perf_counter()
    with _eval_mode(model), torch.inference_mode():
        for idx, batch in enumerate(data_loader):
            if idx == num_warmup:
                timed_start, n_timed, compute_time = time.perf_counter(), 0, 0.0
            model_input, n = split_batch(batch)
            _sync()
            t0 = time.perf_counter()
            outputs = model(model_input)
            _sync()
            compute_time += time.perf_counter() - t0
            evaluator.process(batch, outputs)
            n_images += n
            n_timed += n if idx >= num_warmup else 0
            if n_images >= next_log or (total_batches is not None and idx + 1 == total_batches):
                next_log = (n_images // log_every + 1) * log_every
                _log_progress(idx + 1, total_batches, n_images, start, timed_start, n_timed)

    total = time.perf_counter() - start
    # Fewer batches than the warm-up (a loader without len()): time them all rather than none.
    per_img = (time.perf_counter() - timed_start) / n_timed if n_timed else total / max(n_images, 1)
    logger.info("Total inference time: %s for %d images (%.4f s / img per process, %d process(es))",
                datetime.timedelta(seconds=int(total)), n_images, per_img, get_world_size())
    logger.info("Total pure model time: %s (%.4f s / img per process)",
                datetime.timedelta(seconds=int(compute_time)), compute_time / max(n_timed or n_images, 1))
    results = evaluator.evaluate()
    # Callers may do `for k, v in results.items()` on every rank.
    return results if results is not None else {}


def _log_progress(done_batches, total_batches, n_images, start, timed_start, n_timed):
    elapsed = time.perf_counter() - start
    if total_batches is None:
        logger.info("Inference done %d batches (%d images), %.1f s", done_batches, n_images, elapsed)
        return
    # Steady-state speed from the timed window (after warm-up) when it has seen images.
    per_img = (time.perf_counter() - timed_start) / n_timed if n_timed else elapsed / max(n_images, 1)
    imgs_per_batch = n_images / max(done_batches, 1)
    remaining = per_img * imgs_per_batch * (total_batches - done_batches)
    eta = datetime.timedelta(seconds=int(remaining))
    logger.info("Inference done %d/%d batches (%d images), %.1f s elapsed, ETA=%s",
                done_batches, total_batches, n_images, elapsed, eta)
