"""Timing primitives: warm-up, medians of repeats, device events on GPU."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def time_fn(fn: Callable[[], object], device: str | torch.device, warmup: int = 3, repeats: int = 10) -> dict:
    """Median wall time (seconds) of ``fn()``: CUDA events on GPU, perf_counter after a full sync elsewhere."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def profile_kernels(fn: Callable[[], object], repeats: int = 3, unit: str = "call") -> dict:
    """Every GPU kernel of ``repeats`` calls of ``fn`` (after one warm call), from torch.profiler, most device
    time first (``{"kernel", "ms_per_<unit>", "calls_per_<unit>"}`` each), and ``busy_ms_per_<unit>``: their
    device time summed. Against the wall time of a call, that sum says how much of it the GPU was working
    (the rest is launch and host-side work, or waiting)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    kernels = [{"kernel": e.key[:90], f"ms_per_{unit}": e.device_time_total / repeats / 1e3, f"calls_per_{unit}": e.count / repeats}
               for e in rows if e.device_time_total > 0]
    return {"kernels": kernels, f"busy_ms_per_{unit}": sum(k[f"ms_per_{unit}"] for k in kernels)}


def top_kernels(fn: Callable[[], object], n: int = 10, repeats: int = 3, unit: str = "call") -> list[dict]:
    """The ``n`` GPU kernels with the most device time over ``repeats`` calls of ``fn`` (``profile_kernels``)."""
    return profile_kernels(fn, repeats, unit)["kernels"][:n]


def matmul_peak(device: str, n: int = 8192, dtype=torch.bfloat16, repeats: int = 20) -> float:
    """Measured dense matmul rate (FLOP/s) on random data, the ceiling achieved TFLOP/s is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    r = time_fn(lambda: a @ b, device, warmup=5, repeats=repeats)
    return 2 * n**3 / r["median_s"]


def time_cut(times_s: list[float], times_full_s: list[float]) -> dict:
    """The time cut of a schedule against full depth from interleaved runs (run i of each timed back to back):
    ``cut_pct`` = 1 - median(time) / median(full), the per-run cuts' range, and ``measurable``: False where the
    per-run cuts spread wider than the cut itself, i.e. the machine's noise is larger than the effect (a
    loaded CPU), so that no number is reported as a speed-up. With one run the spread is unknown (True)."""
    rounds = [100 * (1 - b / a) for a, b in zip(times_full_s, times_s)]
    cut = 100 * (1 - statistics.median(times_s) / statistics.median(times_full_s))
    lo, hi = min(rounds), max(rounds)
    return {"cut_pct": cut, "per_run_min_pct": lo, "per_run_max_pct": hi, "measurable": hi - lo <= abs(cut)}

