"""Index samplers for the detection loaders (detectron2's TrainingSampler,
RepeatFactorTrainingSampler and InferenceSampler ideas).

The training stream is a function of (seed, position) alone: epoch e is the permutation drawn from
seed (seed, e), so any position can be reached without replaying the ones before it, and every
rank takes every world_size-th position of the one global stream (disjoint shards, same epochs).
"""
from __future__ import annotations

import bisect
import itertools
import logging
import math

import numpy as np
import torch

from ..utils import comm

logger = logging.getLogger(__name__)


class TrainingSampler:
    """Infinite, seeded stream of data set indices, reshuffled each epoch and sharded by rank.

    ``indices(start)`` yields ``(position, index)`` for this rank's positions start, start + 1, ...;
    position p of rank r is position r + p * world_size of the global stream. A negative ``seed``
    (cfg.SEED < 0) draws one that every rank agrees on (a collective: every rank builds its sampler).
    """

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty data set, got size {size}")
        if seed < 0:
            seed = comm.shared_random_seed()
            logger.info("SEED < 0: the train loader uses seed %d", seed)
        self.size, self.shuffle, self.seed = size, shuffle, int(seed)
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        self._cache: tuple[int, torch.Tensor] | None = None

    def _epoch(self, epoch: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != epoch:
            if self.shuffle:
                key = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
                g = torch.Generator().manual_seed(key)
                order = torch.randperm(self.size, generator=g)
            else:
                order = torch.arange(self.size)
            self._cache = (epoch, order)
        return self._cache[1]

    def _locate(self, g: int) -> tuple[int, int]:
        """(epoch, offset in it) of global stream position ``g``."""
        return divmod(g, self.size)

    def indices(self, start: int = 0):
        for pos in itertools.count(start):
            epoch, offset = self._locate(self.rank + pos * self.world_size)
            yield pos, int(self._epoch(epoch)[offset])

    def __iter__(self):
        return (idx for _, idx in self.indices(0))


def repeat_factors_from_category_frequency(dataset_dicts: list[dict], repeat_thresh: float) -> torch.Tensor:
    """detectron2's repeat factors (LVIS paper, Gupta et al. 2019, Sec. 4): with f(c) the fraction of
    images that contain category c, r(c) = max(1, sqrt(t / f(c))), and an image's factor is the
    largest r(c) over the categories it contains (1 for an image without annotations)."""
    per_image = [{a["category_id"] for a in d.get("annotations", [])} for d in dataset_dicts]
    images_with: dict[int, int] = {}
    for cats in per_image:
        for c in cats:
            images_with[c] = images_with.get(c, 0) + 1
    n = len(dataset_dicts)
    rep = {c: max(1.0, math.sqrt(repeat_thresh / (k / n))) for c, k in images_with.items()}
    return torch.tensor([max((rep[c] for c in cats), default=1.0) for cats in per_image], dtype=torch.float32)


class RepeatFactorTrainingSampler(TrainingSampler):
    """TrainingSampler whose epoch e holds image i floor(r_i) times, plus once more with probability
    frac(r_i) (stochastic rounding drawn from seed (seed, e)), shuffled: detectron2's
    RepeatFactorTrainingSampler, on this module's (seed, position) stream, so resume and DDP shards
    behave as TrainingSampler's. Epochs differ in length; their lengths are drawn once and cached.

    Args:
        repeat_factors: one float >= 1 per image (repeat_factors_from_category_frequency).
    """

    def __init__(self, repeat_factors, seed: int = 0, rank: int | None = None, world_size: int | None = None):
        factors = torch.as_tensor(repeat_factors, dtype=torch.float32)
        super().__init__(len(factors), shuffle=True, seed=seed, rank=rank, world_size=world_size)
        self._int_part = torch.trunc(factors)
        self._frac_part = factors - self._int_part
        self._ends: list[int] = []  # cumulative epoch lengths: epoch e covers [ends[e-1], ends[e])

    def _generator(self, epoch: int) -> torch.Generator:
        key = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        return torch.Generator().manual_seed(key)

    def _counts(self, g: torch.Generator) -> torch.Tensor:
        return (self._int_part + (torch.rand(len(self._frac_part), generator=g) < self._frac_part)).long()

    def _epoch(self, epoch: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != epoch:
            g = self._generator(epoch)
            expanded = torch.repeat_interleave(torch.arange(self.size), self._counts(g))
            self._cache = (epoch, expanded[torch.randperm(len(expanded), generator=g)])
        return self._cache[1]

    def _locate(self, g: int) -> tuple[int, int]:
        while not self._ends or self._ends[-1] <= g:
            length = int(self._counts(self._generator(len(self._ends))).sum())  # the same draws as _epoch's
            self._ends.append((self._ends[-1] if self._ends else 0) + length)
        epoch = bisect.bisect_right(self._ends, g)
        return epoch, g - (self._ends[epoch - 1] if epoch else 0)


class InferenceSampler(torch.utils.data.Sampler):
    """Each index once, in order; rank r gets the r-th contiguous shard (sizes differ by at most 1)."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None):
        rank = comm.get_rank() if rank is None else rank
        world_size = comm.get_world_size() if world_size is None else world_size
        per, extra = divmod(size, world_size)
        begin = rank * per + min(rank, extra)
        self._range = range(begin, begin + per + (rank < extra))

    def __iter__(self):
        return iter(self._range)

    def __len__(self) -> int:
        return len(self._range)
