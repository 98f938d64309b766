"""Multi-process launch: one process per GPU (NCCL), or CPU processes (gloo); torchrun works too."""
from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..utils.errors import ConfigError, UserInputError, user_message

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", args=(), timeout_minutes: int = 30) -> None:
    """Run `main_func(*args)` in num_gpus_per_machine x num_machines processes.

    Under torchrun (WORLD_SIZE set), joins the group it describes instead of spawning.
    """
    if "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ:
        _init_group("env://", int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ["LOCAL_RANK"]), timeout_minutes)
        try:
            return main_func(*args)
        finally:
            dist.destroy_process_group()
    world_size = num_gpus_per_machine * num_machines
    if world_size <= 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ConfigError("--dist-url auto only works on one machine; give tcp://HOST:PORT of rank 0")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    # A worker's user error (bad data, weights, config) travels back as its message and is raised here
    # once, as the same paragraph a single-process run prints; torch would show it as a child traceback.
    user_errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.start_processes(_worker, nprocs=num_gpus_per_machine, start_method="spawn",
                           args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
                                 timeout_minutes, user_errors))
    except Exception:
        if not user_errors.empty():
            raise UserInputError(user_errors.get()) from None
        raise


def _init_group(url: str, rank: int, world_size: int, local_rank: int, timeout_minutes: int) -> None:
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() > local_rank
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method=url, world_size=world_size,
                            rank=rank, timeout=timedelta(minutes=timeout_minutes))


def _worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout_minutes,
            user_errors):
    rank = machine_rank * per_machine + local_rank
    _init_group(dist_url, rank, world_size, local_rank, timeout_minutes)
    try:
        main_func(*args)
    except UserInputError as e:
        user_errors.put(user_message(e)[:20000])  # short: a full pipe would block this exit
        raise SystemExit(2) from None  # not an Exception: torch's wrapper records no traceback for it
    finally:
        dist.destroy_process_group()
