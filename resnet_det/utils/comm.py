"""torch.distributed helpers that also work when no process group exists (detectron2's utils/comm).

Every rank / world-size question in resnet_det is asked here; without an initialised process group
the answers are those of a single process (rank 0 of 1) and the collectives return at once.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather(obj) -> list:
    """Every rank's `obj` (any picklable), in rank order; ``all_gather_object`` works for gloo and NCCL alike."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(items: list) -> list | None:
    """Every rank's ``items`` concatenated in rank order on rank 0; None on the other ranks.

    A collective: every rank must call it. The copies the gather leaves on ranks > 0 are dropped
    right away. Without a process group it returns ``items`` (as a list).
    """
    parts = all_gather(list(items))
    return [x for part in parts for x in part] if is_main_process() else None


def shared_random_seed() -> int:
    """A random seed drawn on rank 0 and the same on every rank (a collective: every rank calls it).

    Fresh entropy, so the global numpy RNG (seeded by SEED elsewhere) is neither read nor advanced."""
    return all_gather(int(np.random.SeedSequence().generate_state(1)[0] >> 1))[0]


def all_ranks_true(flag: torch.Tensor) -> bool:
    """Whether the 0-d bool tensor `flag` is True on every rank: one all-reduce (MIN), one host sync.

    For decisions every rank must take alike (e.g. skipping a step before backward, whose gradient
    all-reduce would otherwise wait forever for the ranks that skipped)."""
    if get_world_size() > 1:
        flag = flag.to(torch.int32)  # NCCL and gloo reduce integers, not bools
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)
