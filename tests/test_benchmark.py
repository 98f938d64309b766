"""The benchmark harness: helpers against hand-made cases, and a smoke run of tools/benchmark.py in
--quick --tiny mode (keys and equal-output checks only; no timing is asserted)."""
import functools
import json
import operator
import os
import subprocess
import sys

import pytest
import torch

from resnet_det.utils.benchmark import (compare_outputs, interleaved_times, markdown_table, measure_peak_memory,
                                        ratio, summarize)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_interleaved_order_and_counts():
    calls = []
    fns = {name: functools.partial(calls.append, name) for name in "ABC"}
    times = interleaved_times(fns, warmup=1, iters=3, device=torch.device("cpu"))
    assert {k: len(v) for k, v in times.items()} == {"A": 3, "B": 3, "C": 3}
    # Warm-up once each, then A B C / C B A / A B C so drift hits every implementation alike.
    assert "".join(calls) == "ABC" + "ABC" + "CBA" + "ABC"


def test_summarize_and_ratio():
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert s["median_s"] == 2.5 and s["min_s"] == 1.0 and s["max_s"] == 10.0 and s["n"] == 4
    rows = [{"group": "R50 forward 224px", "impl": "torchvision", "median_s": 3.0},
            {"group": "R50 forward 224px", "impl": "ours+fast", "median_s": 2.0},
            {"group": "R50 forward_backward 224px", "impl": "ours+fast", "median_s": 9.0}]
    assert ratio(rows, "R50 forward ", "ours+fast") == 1.5
    assert ratio(rows, "R50 forward_backward", "ours+fast") is None  # no torchvision row there


def test_compare_outputs():
    ref = {"a": torch.tensor([1.0, -2.0]), "b": torch.zeros(0, 4)}
    same = compare_outputs(ref, {"a": torch.tensor([1.0, -2.0]), "b": torch.zeros(0, 4)})
    assert same == {"comparable": True, "max_abs_diff": 0.0, "max_rel_l2": 0.0, "elements": 2}
    off = compare_outputs(ref, {"a": torch.tensor([1.0, -2.5]), "b": torch.zeros(0, 4)})
    assert off["max_abs_diff"] == pytest.approx(0.5)
    assert off["max_rel_l2"] == pytest.approx(0.5 / 5 ** 0.5)
    assert not compare_outputs(ref, {"a": torch.zeros(3), "b": torch.zeros(0, 4)})["comparable"]


def test_markdown_table():
    text = markdown_table([{"x": 1.23456, "y": "a"}, {"x": 12345.6}], [("x", "X"), ("y", "Y")])
    assert text.splitlines() == ["| X | Y |", "|---|---|", "| 1.23 | a |", "| 12,346 |  |"]


def test_peak_memory_of_a_child_process_sees_a_large_allocation():
    # torch.ones(48 Mi floats) writes 192 MiB: the child's high-water mark must rise by about that much.
    spec = {"step": functools.partial(torch.ones, 48 * 2**20)}
    mem = measure_peak_memory(operator.itemgetter("step"), spec, device=torch.device("cpu"), threads=1, steps=1)
    assert "error" not in mem, mem
    assert 150 < mem["step_peak_over_setup_mb"] < 400
    assert mem["rss_peak_mb"] >= mem["rss_setup_mb"] + 150


def test_smoke_quick_tiny(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--quick", "--tiny",
                           "--threads", "1", "--output", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("Machine:")
    assert {"cpu", "cpu_count", "torch_threads", "torch", "torchvision", "device"} <= set(report["machine"])
    assert report["machine"]["torch_threads"] == 1
    sections = {r["section"] for r in report["results"]}
    assert sections == {"backbone", "detector", "demo"}
    groups = {r["group"] for r in report["results"]}
    assert {"R18 forward 64px", "R18 forward_backward 64px"} <= groups
    assert any(g.startswith("R50-FPN inference") for g in groups) and any(g.startswith("R101-C4 train") for g in groups)
    for r in report["results"]:
        assert {"impl", "median_s", "images_per_s", "speedup", "check", "memory"} <= set(r), r
        assert r["median_s"] > 0 and "error" not in r["memory"], r
        assert r["memory"]["rss_peak_mb"] > 0
        if r["section"] != "demo":
            # Every implementation computes the same function as the group's first (within float rounding).
            # Gradients at 64 px with folding + channels_last differ by ~5e-3 in the stem/res2 (open, see
            # benchmarks/RESULTS.md); outputs, losses and every other case agree to ~1e-6.
            tol = 1e-2 if r["group"].startswith("R18 forward_backward") else 1e-3
            assert r["check"]["comparable"] and r["check"]["max_rel_l2"] < tol, r
    tv_vs_ours = [r for r in report["results"] if r["group"].startswith("R50-FPN") and r["impl"] == "ours+fast"]
    assert len(tv_vs_ours) == 2 and all(r["reference"] == "torchvision" for r in tv_vs_ours)
    assert all(r["check"]["elements"] > 0 for r in tv_vs_ours)  # detections / losses were really compared
    assert {d["workers"] for d in report["data"]} >= {0} and report["data_model_images_per_s"] > 0
    assert isinstance(report["data_starved"], bool)
    assert set(report["headline"]) >= {"detector_inference_ours_fast_vs_torchvision",
                                       "detector_train_ours_fast_vs_torchvision"}


def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--device", "cuda",
                           "--output", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr
