"""Per-step cost of the hook dispatch (engine/hooks.py) on the Trainer's hot path.

Times the after_step calls of the built-in hooks (PeriodicWriter, PeriodicCheckpointer, EvalHook;
MODEL_EMA off) on an iteration where none of them writes, evaluates or saves: what every training step
pays for the hooks. Compare with a training step of the demo model (tens to hundreds of ms on CPU).

    PYTHONPATH=$PWD python benchmarks/hook_overhead.py
"""
import tempfile
import timeit

import torch

from resnet_det.config import get_cfg
from resnet_det.engine import Trainer


class _Linear(Trainer):
    @classmethod
    def build_model(cls, cfg):
        return torch.nn.Linear(2, 1)


def main(n: int = 200_000) -> None:
    cfg = get_cfg()
    with tempfile.TemporaryDirectory() as out:
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", 10**9,
                             "LOG_PERIOD", 10**8, "SOLVER.CHECKPOINT_PERIOD", 10**8, "TEST.EVAL_PERIOD", 10**8])
        trainer = _Linear(cfg)
        trainer.writer = object()  # rank 0: PeriodicWriter does its period check (and writes nothing here)
        trainer.iter = 12345
        after = [h for h in trainer.hooks if h.overrides("after_step")]

        def step():
            for h in after:
                h.after_step()

        best = min(timeit.repeat(step, number=n, repeat=5)) / n
        print(f"{len(after)} built-in hooks ({', '.join(type(h).__name__ for h in after)}): "
              f"{best * 1e6:.2f} us per step (best of 5 x {n} calls, torch {torch.__version__})")


if __name__ == "__main__":
    main()
