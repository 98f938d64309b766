"""resnet_det.utils.comm, the one home of rank / world-size questions: alone (no process group) and in
two gloo processes, where the evaluators' gather, the shared random seed and the samplers' shards meet."""
import json
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from resnet_det.data.samplers import InferenceSampler, TrainingSampler
from resnet_det.utils import comm


def test_single_process_answers():
    assert (comm.get_rank(), comm.get_world_size(), comm.is_main_process()) == (0, 1, True)
    assert comm.all_gather({"a": 1}) == [{"a": 1}]
    assert comm.gather_to_main((1, 2)) == [1, 2]
    assert comm.all_ranks_true(torch.tensor(True)) and not comm.all_ranks_true(torch.tensor(False))
    assert TrainingSampler(5, seed=-1).seed >= 0  # a negative seed draws one
    assert (TrainingSampler(5).rank, TrainingSampler(5).world_size, len(InferenceSampler(5))) == (0, 1, 5)


def _worker(rank, store, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        sampler = TrainingSampler(10, seed=-1)  # no rank / world given: the process group's
        res = {"rank": comm.get_rank(), "world": comm.get_world_size(), "main": comm.is_main_process(),
               "gathered": comm.gather_to_main([f"r{rank}a", f"r{rank}b"]),
               "seed": comm.shared_random_seed(), "sampler": [sampler.seed, sampler.rank, sampler.world_size],
               "shard": list(InferenceSampler(5)),
               "all_true": comm.all_ranks_true(torch.tensor(rank == 0))}
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


def test_two_processes(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert [(r["rank"], r["world"], r["main"]) for r in (r0, r1)] == [(0, 2, True), (1, 2, False)]
    assert r0["gathered"] == ["r0a", "r0b", "r1a", "r1b"] and r1["gathered"] is None  # rank order, on rank 0
    assert r0["seed"] == r1["seed"]  # drawn once, agreed by both
    assert r0["sampler"][0] == r1["sampler"][0] and [r0["sampler"][1:], r1["sampler"][1:]] == [[0, 2], [1, 2]]
    assert (r0["shard"], r1["shard"]) == ([0, 1, 2], [3, 4])
    assert not r0["all_true"] and not r1["all_true"]  # True on rank 0 only
