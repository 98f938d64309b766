"""torch.distributed helpers that also work when no process group exists."""
from __future__ import annotations

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
    """Every rank's `obj` (any picklable), in rank order."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_ranks_true(flag: torch.Tensor) -> bool:
    """Whether the 0-d bool tensor `flag` is True on every rank: one all-reduce (MIN), one host sync.

    For decisions every rank must take alike (e.g. skipping a step before backward, whose gradient
    all-reduce would otherwise wait forever for the ranks that skipped)."""
    if get_world_size() > 1:
        flag = flag.to(torch.int32)  # NCCL and gloo reduce integers, not bools
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)
