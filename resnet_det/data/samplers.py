"""Index samplers for the detection loaders (detectron2's TrainingSampler / InferenceSampler ideas).

The training stream is a function of (seed, position) alone: epoch e is the permutation drawn from
seed (seed, e), so any position can be reached without replaying the ones before it, and every
rank takes every world_size-th position of the one global stream (disjoint shards, same epochs).
"""
from __future__ import annotations

import itertools
import logging

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

    def indices(self, start: int = 0):
        for pos in itertools.count(start):
            g = self.rank + pos * self.world_size
            yield pos, int(self._epoch(g // self.size)[g % self.size])

    def __iter__(self):
        return (idx for _, idx in self.indices(0))


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
