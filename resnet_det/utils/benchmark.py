"""Timing and memory helpers for side-by-side benchmarks (tools/benchmark.py).

Timings of several implementations are interleaved (A B C, C B A, A B C, ...) so that load from other
processes, thermal drift or a background job hits every implementation alike; we report medians after
warm-up; on a GPU the device is synchronised before the clock starts and before it stops. Peak memory:
on GPU `torch.cuda.max_memory_allocated` over one more call of each case (`cuda_step_memory`); on CPU
Python's tracemalloc does not see torch's allocations, so each case runs in a fresh child process (forked
from a server that has only imported torch) and we read the kernel's high-water mark of resident memory
(`ru_maxrss`). `profile_step` writes torch.profiler's top ops and the calls that make the host wait.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from typing import Callable, Sequence

import torch

__all__ = ["pretrained_like_norms", "machine_info", "gpu_driver_version", "synchronize", "interleaved_times",
           "summarize", "rss_mb", "peak_rss_mb", "measure_peak_memory", "cuda_step_memory", "compare_outputs",
           "markdown_table", "run_group", "profile_step", "ratio", "report_markdown"]


def pretrained_like_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every FrozenBN / BatchNorm2d non-trivial, ImageNet-like statistics and affine values, in place.

    Random-init norms are the identity: BN folding would pass a test by doing nothing, and random-weight
    RPN scores are near-ties whose order float rounding can flip. Benchmarks and tests use this instead.
    """
    from torchvision.ops import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.3)
                m.weight.copy_(torch.rand(n, generator=g) + 0.2)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def machine_info(device: torch.device) -> dict:
    """The machine and versions a result belongs to."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torchvision

    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "mkldnn": torch.backends.mkldnn.is_available(), "device": str(device)}
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", driver=gpu_driver_version(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    tf32_conv=torch.backends.cudnn.allow_tf32, tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def gpu_driver_version() -> str | None:
    """The NVIDIA driver version (nvidia-smi, else NVML), or None where neither answers."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # NVML missing or unusable: the report says "driver None"
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict[str, Callable[[], object]], *, warmup: int, iters: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in alternating order after `warmup` calls each."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
        synchronize(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(iters):
        for name in names if r % 2 == 0 else reversed(names):
            synchronize(device)
            t0 = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(times: list[float]) -> dict:
    """Median and spread (min, max, inter-quartile range when there are enough samples)."""
    out = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}
    if len(times) >= 4:
        q = statistics.quantiles(times, n=4)
        out["iqr_s"] = q[2] - q[0]
    return out


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """High-water mark of resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


def _probe(build, spec, threads: int, steps: int, conn) -> None:
    try:
        torch.set_num_threads(threads)
        step = build(spec)
        resident = rss_mb()  # model, optimizer and inputs, before the measured steps
        for _ in range(steps):
            step()
        conn.send({"rss_setup_mb": resident, "rss_peak_mb": peak_rss_mb(),
                   "step_peak_over_setup_mb": peak_rss_mb() - resident})
    except Exception as e:  # reported in the results, not fatal to the whole benchmark
        conn.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        conn.close()


_CONTEXT = None


def _context(preload: Sequence[str] = ()):
    """A fork server that has imported torch (and `preload`, named by the caller: utils imports nothing
    of ours): children start fast and own a fresh ru_maxrss. One server per process: the first call's
    `preload` is the one it keeps."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in mp.get_all_start_methods():
            _CONTEXT = mp.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["torch", "torchvision", *preload])
        else:
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


def measure_peak_memory(build: Callable, spec, *, device: torch.device, threads: int, steps: int = 2,
                        preload: Sequence[str] = ()) -> dict:
    """Peak memory of `build(spec)()` (a step function) run `steps` times.

    `build` must be a module-level function (it is pickled by name for the child process on CPU);
    `preload`: modules the CPU children's fork server imports once (e.g. the package `build` needs).
    CUDA: in this process, as `cuda_step_memory` (one measured call). CPU: resident memory of a child
    process after building (`rss_setup_mb`), its high-water mark (`rss_peak_mb`) and their difference
    (`step_peak_over_setup_mb`, what the steps add on top of weights and inputs).
    """
    if device.type == "cuda":
        before = _allocated(device)
        step = build(spec)
        step()  # lazy state (cudnn workspaces, optimizer buffers) is part of the case's own memory
        out = cuda_step_memory(step, device, _allocated(device) - before)
        del step
        torch.cuda.empty_cache()
        return out
    ctx = _context(preload)
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_probe, args=(build, spec, threads, steps, child))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = {"error": "the probe process died (out of memory?)"}
    proc.join()
    return result


def compare_outputs(ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict:
    """How far `out` is from `ref`, key by key: the largest absolute difference, and the largest
    relative L2 error ||out - ref|| / ||ref|| (robust where a tensor is mostly near zero, as gradients
    of early layers are). `elements` counts what was compared (0 means nothing was: no detections)."""
    if not ref or set(ref) != set(out) or any(ref[k].shape != out[k].shape for k in ref):
        shapes = {k: (tuple(ref[k].shape) if k in ref else None, tuple(out[k].shape) if k in out else None)
                  for k in sorted(set(ref) | set(out))}
        return {"comparable": False, "shapes": shapes}
    abs_diff, rel = 0.0, 0.0
    for k in ref:
        a, b = ref[k].detach().double().cpu(), out[k].detach().double().cpu()
        if a.numel():
            abs_diff = max(abs_diff, (a - b).abs().max().item())
            rel = max(rel, ((a - b).norm() / a.norm().clamp_min(1e-30)).item())
    return {"comparable": True, "max_abs_diff": abs_diff, "max_rel_l2": rel,
            "elements": sum(v.numel() for v in ref.values())}


def matched_detections(ref: dict, out: dict, *, min_iou: float = 0.9, min_score: float = 0.5) -> float:
    """The fraction of ref's detections scoring above min_score that one of out's detections (each
    used once, same class) overlaps with IoU >= min_iou; greedy in ref's order (by score). Dicts hold
    boxes (N, 4) XYXY, scores and classes (or pred_classes). 1.0 when ref has none above min_score."""
    from torchvision.ops import box_iou

    def cls(d):
        return d["classes"] if "classes" in d else d["pred_classes"]

    keep = ref["scores"] > min_score
    rb, rc = ref["boxes"][keep].float(), cls(ref)[keep]
    if len(rb) == 0:
        return 1.0
    if len(out["boxes"]) == 0:
        return 0.0
    iou = box_iou(rb, out["boxes"].float())
    iou = torch.where(rc[:, None] == cls(out)[None, :], iou, torch.zeros(()))
    used, hits = set(), 0
    for i in range(len(rb)):
        for j in iou[i].argsort(descending=True).tolist():
            if iou[i, j] < min_iou:
                break
            if j not in used:
                used.add(j)
                hits += 1
                break
    return hits / len(rb)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Rows of dicts as a Markdown table; columns are (key, header); floats get 3 significant digits."""
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def run_group(name: str, section: str, builder: Callable, specs: list[dict], images: int, *,
              device: torch.device, warmup: int, iters: int, threads: int, memory: bool = True,
              preload: Sequence[str] = ()) -> list[dict]:
    """One comparison: build every implementation (`builder(spec)` -> object with `step()` via
    `__call__` and `check()` -> dict of tensors), compare outputs with the first, time them
    interleaved, then measure each one's peak memory. Returns one row per spec.

    CUDA: every case stays resident; each one's own memory (`cuda_setup_mb`: weights, inputs, and the
    optimizer state and workspaces its first call creates) is what its building and first call left
    allocated, and `step_peak_over_setup_mb` is how far one more call raises `max_memory_allocated`
    above what was allocated before it. CPU: a child process per case (`measure_peak_memory`, with `preload`)."""
    cuda = device.type == "cuda"
    cases, setup = {}, {}
    for s in specs:
        before = _allocated(device)
        cases[s["impl"]] = builder(s)
        if cuda and memory:
            cases[s["impl"]]()
            setup[s["impl"]] = _allocated(device) - before
    ref_impl = specs[0]["impl"]
    ref = cases[ref_impl].check()
    checks = {}
    for impl, c in cases.items():
        out = c.check()
        checks[impl] = compare_outputs(ref, out)
        if "boxes" in ref and "scores" in ref:  # detections: also how many of the reference's are found again
            checks[impl]["matched_iou90"] = matched_detections(ref, out)
    times = interleaved_times(cases, warmup=warmup, iters=iters, device=device)
    mem = {impl: cuda_step_memory(c, device, setup[impl]) for impl, c in cases.items()} if cuda and memory else {}
    del cases
    if cuda:
        torch.cuda.empty_cache()
    ref_median = summarize(times[ref_impl])["median_s"]
    rows = []
    for s in specs:
        st = summarize(times[s["impl"]])
        row = {"group": name, "section": section, "impl": s["impl"], "images_per_step": images, **st,
               "images_per_s": images / st["median_s"], "ms_per_image": 1000 * st["median_s"] / images,
               "reference": ref_impl, "check": checks[s["impl"]]}
        row["speedup"] = ref_median / st["median_s"]
        if memory:
            row["memory"] = mem[s["impl"]] if cuda else measure_peak_memory(builder, s, device=device,
                                                                            threads=threads, preload=preload)
        rows.append(row)
    return rows


def _allocated(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    synchronize(device)
    return torch.cuda.memory_allocated(device)


def cuda_step_memory(step: Callable, device: torch.device, setup_bytes: int) -> dict:
    """One more call of `step` with the peak counter reset: how far it rises above what was allocated
    before the call (other resident cases included in both), plus the case's own resident memory."""
    base = _allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    over = torch.cuda.max_memory_allocated(device) - base
    return {"cuda_setup_mb": setup_bytes / 2**20, "step_peak_over_setup_mb": over / 2**20,
            "cuda_peak_mb": (setup_bytes + over) / 2**20}


def profile_step(step: Callable, device: torch.device, *, warmup: int = 2, steps: int = 2, rows: int = 30) -> str:
    """torch.profiler over `steps` calls of `step` after `warmup`: the top ops by self device time on
    CUDA (self CPU time on CPU), and per step the calls that make the host wait for the device
    (`aten::_local_scalar_dense` is every `.item()` / `float(tensor)` / `if tensor:`; `aten::nonzero`
    and boolean-mask indexing size their output on the host; `cudaStreamSynchronize` /
    `cudaDeviceSynchronize` and device-to-host copies wait as well)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    events = prof.key_averages()
    counts = {e.key: e.count for e in events}
    waits = ["aten::_local_scalar_dense", "aten::nonzero", "aten::item", "cudaStreamSynchronize",
             "cudaDeviceSynchronize", "cudaMemcpy", "Memcpy DtoH (Device -> Pinned)",
             "Memcpy DtoH (Device -> Pageable)"]
    lines = [f"calls per step that wait for the device (over {steps} steps):"]
    lines += [f"  {k}: {counts[k] / steps:g}" for k in waits if k in counts]
    table = None
    for key in (["self_device_time_total", "self_cuda_time_total"] if device.type == "cuda" else []) + \
            ["self_cpu_time_total"]:
        try:
            table = events.table(sort_by=key, row_limit=rows)
            lines.append(f"top {rows} ops by {key}:")
            break
        except Exception:  # older/newer profilers name the device column differently
            continue
    return "\n".join(lines + [table or ""])


def ratio(rows: list[dict], group_prefix: str, impl: str, ref: str = "torchvision", exact: bool = False
          ) -> float | None:
    """Median time of `ref` over that of `impl` in the first group whose name starts with the prefix
    (or, with `exact`, is the name)."""
    sel = {r["impl"]: r["median_s"] for r in rows
           if (r["group"] == group_prefix if exact else r["group"].startswith(group_prefix))}
    return sel[ref] / sel[impl] if impl in sel and ref in sel else None


def report_markdown(report: dict) -> str:
    """The report of tools/benchmark.py as Markdown: machine, command, one table, loader, ratios."""
    m = report["machine"]
    gpu = (f", GPU {m['gpu']} ({m.get('gpu_memory_gb')} GB, compute capability {m.get('capability')}, driver "
           f"{m.get('driver')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}, TF32 convs {m.get('tf32_conv')} / "
           f"matmuls {m.get('tf32_matmul')})" if "gpu" in m else "")
    lines = [f"Machine: {m['cpu']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}){gpu}; torch "
             f"{m['torch']}, torchvision {m['torchvision']}, python {m['python']}; device {m['device']}.", "",
             f"Command: `{report['command']}`", ""]
    if report.get("skipped"):
        lines += [f"Not run (time budget): {', '.join(report['skipped'])}", ""]
    for r in report["results"]:
        mem = r.get("memory", {})
        r["peak_mb"] = mem.get("cuda_peak_mb", mem.get("rss_peak_mb"))
        r["step_mb"] = mem.get("step_peak_over_setup_mb")
        r["diff"] = r["check"].get("max_rel_l2")
    cols = [("group", "case"), ("impl", "implementation"), ("median_s", "median s/step"),
            ("images_per_s", "images/s"), ("ms_per_image", "ms/image"), ("speedup", "speed-up vs first"),
            ("diff", "max rel. diff vs first"), ("peak_mb", "peak MB"), ("step_mb", "step MB over setup")]
    lines += [markdown_table(report["results"], cols), ""]
    if report.get("data"):
        lines += ["Training loader (shapes demo set) vs the model's step rate:", "",
                  markdown_table(report["data"], [("workers", "workers"), ("images_per_s", "loader images/s"),
                                                  ("pin_memory", "pinned")]), ""]
        lines += [f"Loader starves the demo model: {report['data_starved']}", ""]
    if report.get("loader"):
        lo = report["loader"]
        lines += [f"Training loader on {lo['images']} generated {lo['image_size']} JPEGs ({lo['config']}: "
                  f"{lo['workers']} workers, pin_memory {lo['pin_memory_config']} -> batches pinned: "
                  f"{lo['pinned']}, non_blocking copies to {m['device']}): **{lo['images_per_s']:.1f} images/s** "
                  f"at batch {lo['batch']}; the model's training step ({lo.get('model_group')}, "
                  f"{lo.get('model_impl')}): {_num(lo.get('model_images_per_s'))} images/s; loader keeps up: "
                  f"{lo.get('keeps_up')}", ""]
    if report.get("targets"):
        shown = [{**t, "value": "n/a" if t["value"] is None else f"{t['value']:.2f}x", "target": f">= {t['target']}x",
                  "met": {True: "yes", False: "NO"}.get(t["met"], "n/a")} for t in report["targets"]]
        cols = [("name", "ratio"), ("group", "case"), ("impl", "ours"), ("ref", "against"), ("value", "this run"),
                ("target", "target"), ("met", "met")]
        lines += ["Targets (ratios of median step times in one run):", "", markdown_table(shown, cols), ""]
    if report.get("headline"):
        lines += ["Headline ratios (higher is faster for ours):", ""]
        lines += [f"- {k}: {'n/a' if v is None else f'{v:.2f}x'}" for k, v in report["headline"].items()]
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"
