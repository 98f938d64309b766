#!/usr/bin/env python
"""Learning-curve sweep for the demo recipe: runs train_net with several override sets in parallel
and prints AP50 at each evaluation. Used to choose configs/demo/frcnn_r18_fpn_shapes.yaml.

    python benchmarks/demo_sweep.py --device cuda --output /tmp/sweep   # on a GPU machine
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "demo", "frcnn_r18_fpn_shapes.yaml")
VARIANTS = {
    "base": [],
    "lr0.04": ["SOLVER.BASE_LR", "0.04"],
    "gn": ["MODEL.RESNETS.NORM", "GN"],
    "ms224-288": ["INPUT.MIN_SIZE_TRAIN", "(224, 256, 288)", "INPUT.MIN_SIZE_TEST", "256",
                  "MODEL.FPN.OUT_CHANNELS", "128", "MODEL.ROI_BOX_HEAD.FC_DIM", "256"],
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--output", default="/tmp/demo_sweep")
    p.add_argument("--max-iter", type=int, default=1600)
    p.add_argument("--eval-period", type=int, default=400)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    a = p.parse_args()
    procs = {}
    t0 = time.time()
    for name in a.variants:
        out = os.path.join(a.output, name)
        steps = f"({int(a.max_iter * 0.75)}, {int(a.max_iter * 0.92)})"
        cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", CONFIG,
               "MODEL.DEVICE", a.device, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", str(a.max_iter),
               "SOLVER.STEPS", steps, "TEST.EVAL_PERIOD", str(a.eval_period), "VIS.NUM_IMAGES", "0",
               *VARIANTS[name]]
        os.makedirs(out, exist_ok=True)
        procs[name] = subprocess.Popen(cmd, stdout=open(os.path.join(out, "stdout.txt"), "w"),
                                       stderr=subprocess.STDOUT)
    rows = {}
    for name, proc in procs.items():
        proc.wait()
        lines = [json.loads(x) for x in open(os.path.join(a.output, name, "metrics.json"))]
        rows[name] = [(x["iteration"] + 1, round(x["bbox/AP50"], 1), round(x["bbox/AP"], 1))
                      for x in lines if "bbox/AP50" in x]
        print(name, "rc", proc.returncode, rows[name], flush=True)
    print(f"total {time.time() - t0:.0f}s")
    with open(os.path.join(a.output, "sweep.json"), "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main()
