#!/usr/bin/env python3
"""Everything issue 19 needs from a lent GPU, in one call of the device tool (benchmarks/RESULTS.md, "GPU").

Here, first (this machine reaches PyPI; the GPU machine reaches nothing):

    bash benchmarks/gpu_prepare.sh        # wheels the GPU image lacks (fvcore, iopath, yacs, termcolor,
                                          # pycocotools for its python 3.12) into .whl/, git-ignored

then one device call: command `python3 benchmarks/gpu_check.py`, carry [".whl"], timeout_s 600. It runs
with the device image's own python3 and torch (nothing is installed there but the carried wheels, into
a temporary folder) and writes into $OUT (at most 8 files come back):

    summary.md           what ran, pass/fail, the GPU table's targets, loader vs model, demo time and AP
    gpu_check.log        every step's output
    nvidia_smi.txt       the card, driver and clocks as found
    pytest_cuda.txt      `pytest -m cuda tests` (the cuda subset: tests/test_cuda.py)
    bench_results.md/.json, profile.txt   `tools/benchmark.py --device cuda --profile` (GPU plan)
    demo_metrics.json    the demo config (`make demo`) trained on CUDA: metrics.json with AP

Steps run in that order, each a subprocess with its own time limit, and no step starts past --budget
seconds (default 480, which leaves the rest of a 15-minute lease for starting the machine). The
benchmark writes its results after every group, so a step stopped at its limit still reports. A dry run
of every step on a CPU, at tiny sizes (tests/test_benchmark.py runs it):

    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_RESERVE_S = 150  # of the budget, kept for the demo after the benchmark
DEMO_CONFIG = os.path.join("configs", "demo", "frcnn_r18_fpn_shapes_pretrained.yaml")  # tools/demo.py's stage 2
# Tiny demo for the CPU dry run: a few iterations on a 12-image set at 96-128 px (detector stage), two
# pretraining iterations on a 20-image classification set.
TINY_PRETRAIN = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.REFERENCE_BATCH", "4",
                 "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0"]
TINY_DEMO = ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1000,)", "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "0",
             "SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(96,)",
             "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
             "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32", "VIS.NUM_IMAGES", "1",
             "DATALOADER.NUM_WORKERS", "0", "LOG_PERIOD", "1"]


class Run:
    """Steps as subprocesses under one time budget; all output into one log."""

    def __init__(self, out: str, budget_s: float, env: dict):
        self.out, self.budget_s, self.env, self.t0 = out, budget_s, env, time.monotonic()
        self.log = open(os.path.join(out, "gpu_check.log"), "a", encoding="utf-8")
        self.steps: list[dict] = []

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def step(self, name: str, cmd: list[str], limit_s: float, output: str | None = None) -> dict:
        """Run `cmd` (repo root as cwd) for at most min(limit_s, budget left); its output goes to the
        log and, if named, to $OUT/output. Returns the step's record."""
        rec = {"step": name, "command": " ".join(cmd)}
        limit = min(limit_s, self.left())
        if limit < 10:
            rec.update(status="not run (time budget)", seconds=0.0)
            self.steps.append(rec)
            return rec
        print(f"[gpu_check] {name} (limit {limit:.0f} s): {rec['command']}", flush=True)
        self.log.write(f"\n===== {name}: {rec['command']}\n")
        self.log.flush()
        t = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=limit)
            text, rc = proc.stdout + proc.stderr, proc.returncode
            rec["status"] = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired as e:
            text = _text(e.stdout) + _text(e.stderr)
            rc, rec["status"] = None, f"stopped at its {limit:.0f} s limit"
        rec.update(rc=rc, seconds=round(time.monotonic() - t, 1), tail=text[-1500:])
        self.log.write(text)
        self.log.flush()
        if output:
            with open(os.path.join(self.out, output), "w", encoding="utf-8") as f:
                f.write(text)
        self.steps.append(rec)
        return rec


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def install_carried_wheels(out_log, site: str) -> list[str]:
    """pip-install .whl/*.whl (carried with the call) into `site`, offline; returns the wheel names."""
    wheels = sorted(glob.glob(os.path.join(REPO, ".whl", "*.whl")))
    if wheels:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", site, *wheels]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out_log.write(f"\n===== install carried wheels: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return [os.path.basename(w) for w in wheels]


def pytest_summary(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    return lines[-1].strip("= ") if lines else "no pytest summary line"


def demo_results(output_dir: str) -> dict:
    """The last evaluation (bbox/AP, AP50) and the iterations run, from the demo's metrics.json."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in records if "bbox/AP" in r]
    out = {"iterations": max((r["iteration"] + 1 for r in records), default=0)}
    times = [r["time"] for r in records if "time" in r]
    if times:
        out["median_s_per_iter"] = sorted(times)[len(times) // 2]
    if evals:
        out.update({k: evals[-1][k] for k in ("iteration", "bbox/AP", "bbox/AP50") if k in evals[-1]})
    return out


def summary(run: Run, info: dict, bench: dict, demo: dict) -> str:
    lines = ["# GPU check (issue 19)", "", f"Machine: {info.get('machine', 'unknown')}", "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in run.steps]
    lines += ["", f"pytest -m cuda: {info.get('pytest', 'not run')}", ""]
    if bench:
        lines += ["Benchmark targets (tools/benchmark.py, one process, interleaved medians):", ""]
        for t in bench.get("targets", []):
            value = "n/a" if t["value"] is None else f"{t['value']:.2f}x"
            lines.append(f"- {t['name']} [{t['group']}: {t['impl']} vs {t['ref']}]: {value} (target >= "
                         f"{t['target']}x, met: {t['met']})")
        lo = bench.get("loader")
        if lo:
            lines.append(f"- loader: {lo['images_per_s']:.1f} images/s ({lo['workers']} workers, pinned "
                         f"{lo['pinned']}) vs training step {_num(lo.get('model_images_per_s'))} images/s "
                         f"({lo.get('model_impl')}, batch {lo['batch']}): keeps up {lo.get('keeps_up')}")
        if bench.get("skipped"):
            lines.append(f"- not run (time budget): {', '.join(bench['skipped'])}")
        lines.append("")
    if demo:
        data = "generating the data sets included" if demo.get("data_in_wall") else "data sets made before"
        lines.append(f"Demo (`make demo`: pretraining, then {DEMO_CONFIG}, on {info.get('device')}, {demo['status']}): "
                     f"{demo['wall_s']} s wall ({data}); detector {demo.get('iterations')} iterations, median "
                     f"{_num(demo.get('median_s_per_iter'))} s/iteration; bbox/AP50 {_num(demo.get('bbox/AP50'))}, "
                     f"bbox/AP {_num(demo.get('bbox/AP'))} at iteration {demo.get('iteration')}")
    else:
        lines.append("Demo: not run")
    return "\n".join(lines) + "\n"


def pytest_step(run: Run, py: str, target: str) -> str:
    # A module that fails to import there (other package versions) must not stop the cuda subset.
    rec = run.step("pytest -m cuda", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rA",
                                      "--continue-on-collection-errors", target], 150, output="pytest_cuda.txt")
    return pytest_summary(rec.get("tail", ""))


def benchmark_step(run: Run, py: str, args, work: str) -> None:
    """The GPU table: the target groups first, then the rest as far as the time allows. It leaves
    DEMO_RESERVE_S of the budget for the demo and stops starting groups a minute before its own limit
    (the loader and the profile come after the groups)."""
    bench_dir = os.path.join(work, "bench")
    limit = max(60.0, min(240.0, run.left() - DEMO_RESERVE_S))
    cmd = [py, os.path.join("tools", "benchmark.py"), "--device", args.device, "--plan", "gpu", "--profile",
           "--output", bench_dir, "--max-minutes", f"{max(0.5, (limit - 60) / 60):.2f}"]
    if args.tiny:
        cmd += ["--tiny", "--targets-only", "--threads", "1", "--sections", "detector", "loader", "--warmup", "0",
                "--no-memory"]
    run.step("benchmark", cmd, limit)
    for src, dst in (("results.json", "bench_results.json"), ("results.md", "bench_results.md"),
                     ("profile.txt", "profile.txt")):
        if os.path.isfile(os.path.join(bench_dir, src)):
            shutil.copy(os.path.join(bench_dir, src), os.path.join(run.out, dst))


def demo_step(run: Run, py: str, args, work: str) -> dict:
    """`make demo` (tools/demo.py: pretraining, then the detector fine-tuned from it; MODEL.DEVICE auto picks
    the GPU; the data sets are generated on first use, inside the timed run, as for a user). Returns its
    wall time and the detector's AP."""
    datasets, demo_out = os.path.join(work, "datasets"), os.path.join(work, "demo")
    run.env = dict(run.env, RESNET_DET_DATASETS=datasets)
    pre, det = [], []
    if args.device != "cuda":
        pre, det = ["MODEL.DEVICE", args.device], ["MODEL.DEVICE", args.device]
    if args.tiny:
        run.step("demo data (tiny)", [py, "-c", "from resnet_det.data import generate_shapes_dataset, "
                                      "make_classification_set; "
                                      f"generate_shapes_dataset({os.path.join(datasets, 'shapes')!r}, "
                                      "num_train=12, num_val=4); "
                                      f"make_classification_set({os.path.join(datasets, 'cls_demo')!r}, "
                                      "num_classes=10, train_per_class=2, val_per_class=1, image_size=64)"], 120)
        pre, det = pre + TINY_PRETRAIN, det + TINY_DEMO
    cmd = [py, os.path.join("tools", "demo.py"), "--output", demo_out, "--pretrain-opts", *pre, "--det-opts", *det]
    rec = run.step("demo", cmd, 240)
    if os.path.isfile(os.path.join(demo_out, "metrics.json")):
        shutil.copy(os.path.join(demo_out, "metrics.json"), os.path.join(run.out, "demo_metrics.json"))
    return {**demo_results(demo_out), "wall_s": rec["seconds"], "status": rec["status"], "data_in_wall": not args.tiny}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of every step, not a measurement")
    p.add_argument("--budget", type=float, default=480, help="seconds after which no step starts")
    p.add_argument("--pytest-target", default="tests", help="what `pytest -m cuda` collects")
    p.add_argument("--skip", nargs="+", default=[], choices=["pytest", "benchmark", "demo"],
                   help="steps to leave out (the test suite's dry run leaves out those it covers elsewhere)")
    args = p.parse_args(argv)
    if not args.out:
        p.error("--out is required where $OUT is not set")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu_check-")
    run = Run(args.out, args.budget, dict(os.environ, PYTHONUNBUFFERED="1"))
    site = os.path.join(work, "site")
    wheels = install_carried_wheels(run.log, site)
    run.env["PYTHONPATH"] = os.pathsep.join(x for x in (REPO, site, os.environ.get("PYTHONPATH")) if x)
    py = sys.executable
    # The machine as found, and whether everything imports (no point in the rest otherwise).
    if shutil.which("nvidia-smi"):
        run.step("nvidia-smi", ["nvidia-smi"], 30, output="nvidia_smi.txt")
    probe = ("import torch, torchvision, fvcore, pycocotools, cv2, resnet_det.evaluation, resnet_det.modeling; "
             f"d = torch.device({args.device!r}); print('torch', torch.__version__, 'torchvision', "
             "torchvision.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpu', "
             f"torch.cuda.get_device_name(d) if d.type == 'cuda' else None, 'carried wheels', {wheels!r})")
    rec = run.step("imports", [py, "-c", probe], 120)
    info = {"device": args.device, "machine": (rec.get("tail", "").strip().splitlines() or ["?"])[-1]}
    demo = {}
    if rec.get("rc") != 0:
        print("[gpu_check] imports failed: run `bash benchmarks/gpu_prepare.sh` here and carry .whl", flush=True)
    else:
        if "pytest" not in args.skip:
            info["pytest"] = pytest_step(run, py, args.pytest_target)
        if "benchmark" not in args.skip:
            benchmark_step(run, py, args, work)
        if "demo" not in args.skip:
            demo = demo_step(run, py, args, work)
    bench_json = os.path.join(args.out, "bench_results.json")
    bench = json.load(open(bench_json, encoding="utf-8")) if os.path.isfile(bench_json) else {}
    text = summary(run, info, bench, demo)
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    run.log.close()
    print(text)
    if os.path.isfile(os.path.join(args.out, "bench_results.md")):
        print(open(os.path.join(args.out, "bench_results.md"), encoding="utf-8").read()[-6000:])
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["status"] == "ok" for s in run.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
