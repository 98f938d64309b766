"""Top-k classification accuracy and error (the paper's Tables 2-4 report top-1 and top-5 error, %)."""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..utils.comm import gather_to_main
from .evaluator import DatasetEvaluator, format_table

logger = logging.getLogger(__name__)

__all__ = ["topk_errors", "topk_correct", "ClassificationEvaluator"]


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, num_classes), got shape {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be (N,) with N={logits.shape[0]} to match the logits, got shape "
                         f"{tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1} (the logits have {logits.shape[1]} "
                         f"classes); got values {labels.min().item()}..{labels.max().item()}")


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the k highest scores, for each k.

    A k at or above the number of classes counts every sample as correct (every class is "in the top k").
    Ties are broken by ``torch.topk``'s order.
    """
    _check(logits, labels)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (N, kmax), best first
    hit = top == labels[:, None]
    return {k: int(hit[:, :min(k, kmax)].any(dim=1).sum()) for k in ks}


def topk_errors(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k error in percent for each k: 100 * (1 - fraction of samples with the label in the top k)."""
    n = labels.shape[0]
    if n == 0:
        raise ValueError("topk_errors: no samples (empty labels)")
    return {k: 100.0 * (n - c) / n for k, c in topk_correct(logits, labels, ks).items()}


def _labels_from(inputs) -> torch.Tensor:
    """Labels of a batch: ``(images, labels)``, a labels tensor, or a list of dicts with "label"."""
    if isinstance(inputs, (tuple, list)) and len(inputs) == 2 and all(isinstance(x, torch.Tensor) for x in inputs):
        return inputs[1]
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (list, tuple)) and all(isinstance(x, dict) and "label" in x for x in inputs):
        return torch.as_tensor([int(x["label"]) for x in inputs])
    raise TypeError("ClassificationEvaluator: expected inputs (images, labels), a labels tensor, or a list of "
                    f"dicts with 'label'; got {type(inputs).__name__}")


def _scores_from(outputs) -> torch.Tensor:
    """(N, C) scores of a batch: logits (N, C); (N, crops, C) logits are averaged as softmax over crops."""
    if isinstance(outputs, (list, tuple)) and all(isinstance(x, dict) and "logits" in x for x in outputs):
        outputs = torch.stack([x["logits"] for x in outputs])
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"ClassificationEvaluator: expected logits (N, C) or (N, crops, C), or a list of dicts "
                        f"with 'logits'; got {type(outputs).__name__}")
    if outputs.dim() == 3:
        # Multi-crop testing (10-crop, Sec. 3.4) averages the crops' softmax scores.
        return outputs.float().softmax(dim=-1).mean(dim=1)
    return outputs


class ClassificationEvaluator(DatasetEvaluator):
    """Top-k accuracy and error (percent) over a data set.

    ``process(inputs, outputs)``: ``inputs`` is a loader batch ``(images, labels)`` (or labels, or
    dicts with "label"); ``outputs`` are the model's logits (N, C), or (N, crops, C) for multi-crop
    testing. ``evaluate()`` returns ``{"top1_acc", "top5_acc", "top1_err", "top5_err"}`` (one pair per k
    in ``ks``) at the top level, which is how TEST.BEST_METRIC names them ("top1_acc").
    """

    def __init__(self, ks: Sequence[int] = (1, 5), distributed: bool = True):
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ClassificationEvaluator: ks must be positive integers, got {tuple(ks)}")
        self._ks = tuple(int(k) for k in ks)
        self._distributed = distributed
        self.reset()

    def reset(self) -> None:
        self._counts: list[tuple[int, dict[int, int]]] = []  # (batch size, {k: correct}) per batch

    def process(self, inputs, outputs) -> None:
        labels = _labels_from(inputs).detach().cpu().long()
        scores = _scores_from(outputs).detach().cpu()
        self._counts.append((labels.shape[0], topk_correct(scores, labels, self._ks)))

    def evaluate(self) -> dict:
        counts = gather_to_main(self._counts) if self._distributed else self._counts
        if counts is None:
            return {}
        n = sum(b for b, _ in counts)
        if n == 0:
            logger.warning("ClassificationEvaluator: process() saw no samples; nothing to evaluate")
            return {}
        res = {}
        for k in self._ks:
            acc = 100.0 * sum(c[k] for _, c in counts) / n
            res[f"top{k}_acc"], res[f"top{k}_err"] = acc, 100.0 - acc
        logger.info("Classification on %d images (%%):\n%s", n,
                    format_table([[res[k] for k in res]], list(res), floatfmt=".2f"))
        return res
