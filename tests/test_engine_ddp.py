"""SOLVER.ON_NONFINITE skip under DDP: the skip is decided by all ranks together, so a non-finite
loss on one rank skips the same step everywhere instead of leaving the others waiting in all-reduce.
Two gloo processes on CPU, a tiny model, a 60 s process-group timeout so a regression fails fast."""
import json
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from resnet_det.config import get_cfg
from resnet_det.engine import Trainer
from resnet_det.utils import comm

NAN_LOSS_STEP, NAN_GRAD_STEP = 2, 4  # iterations where rank 1 alone sees a non-finite loss / gradient


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.step = -1

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        loss = F.mse_loss(self.fc(x).squeeze(1), y)
        self.step += 1
        if comm.get_rank() == 1 and self.step == NAN_LOSS_STEP:
            loss = loss * float("nan")
        if comm.get_rank() == 1 and self.step == NAN_GRAD_STEP:
            zero = self.fc.weight.sum() - self.fc.weight.sum().detach()
            loss = loss + 0.0 * torch.sqrt(zero)  # value finite (0), gradient 0 * inf = nan
        return {"loss_mse": loss}


class TinyTrainer(Trainer):
    @classmethod
    def build_model(cls, cfg):
        torch.manual_seed(0)
        return Tiny()

    @classmethod
    def build_train_loader(cls, cfg, start_iter=0):
        g = torch.Generator().manual_seed(comm.get_rank())
        while True:
            yield [{"x": torch.randn(4, generator=g), "y": torch.randn((), generator=g), "image_id": i}
                   for i in range(2)]

    def _nonfinite(self, it, batch, what, values):
        self.skipped_at.append([it, what])
        super()._nonfinite(it, batch, what, values)


def _worker(rank, store, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # a rank left waiting fails in 60 s, not 30 min
    try:
        torch.set_num_threads(1)
        cfg = get_cfg()
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", out_dir, "SOLVER.MAX_ITER", 6,
                             "SOLVER.WARMUP_ITERS", 0, "SOLVER.BASE_LR", 0.1, "SOLVER.ON_NONFINITE", "skip",
                             "SOLVER.CHECKPOINT_PERIOD", 1000, "LOG_PERIOD", 1, "DATASETS.TEST", "()"])
        trainer = TinyTrainer(cfg)
        trainer.skipped_at = []
        trainer.train()  # ends with check_ranks_in_sync: identical weights on both ranks
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"skipped_at": trainer.skipped_at, "nonfinite_skipped": trainer.nonfinite_skipped,
                       "weights": [p.tolist() for p in trainer.model.parameters()]}, f)
    finally:
        dist.destroy_process_group()


def test_nonfinite_on_one_rank_skips_the_same_step_on_all(tmp_path):
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.time() + 240
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-process run hung")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    expected = [[NAN_LOSS_STEP, "loss"], [NAN_GRAD_STEP, "gradient"]]
    assert r0["skipped_at"] == r1["skipped_at"] == expected
    assert r0["nonfinite_skipped"] == r1["nonfinite_skipped"] == 2
    assert r0["weights"] == r1["weights"]
    last = [json.loads(x) for x in open(tmp_path / "metrics.json")][-1]
    assert last["nonfinite_skipped"] == 2


def test_all_ranks_true_single_process():
    assert comm.all_ranks_true(torch.isfinite(torch.tensor(1.0)))
    assert not comm.all_ranks_true(torch.isfinite(torch.tensor(float("inf"))))
