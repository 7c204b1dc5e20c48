"""The latency timer: forward time at batch 1, apart from data loading (SPEC section 6).

One timer for the test script's latency (``measure_latency``), and one interleaved comparison
(``interleaved``: the setups called in turn, so they share the machine's load) for the export,
benchmark.py and the scripts under benchmarks/.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def time_ms(
    fn: Callable[[], object], warmup: int, runs: int, device: torch.device | None = None
) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``fn``, after ``warmup`` untimed calls.

    On CUDA each run is timed with events after a synchronise, so queued work is not missed.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device is not None and device.type == "cuda":
            start, end = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return times


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (device work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each fn, the fns run in turn so they share the machine's load."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def measure_latency(
    model: nn.Module,
    size: tuple[int, int],
    device: torch.device,
    warmup: int = 10,
    runs: int = 50,
    channels_last: bool = False,
    in_channels: int = 3,
) -> dict[str, Any]:
    """Forward time at batch 1 (FP32, eval), apart from data loading: median of ``runs``."""
    model.eval()
    x = torch.rand(1, in_channels, *size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ms = statistics.median(time_ms(lambda: model(x), warmup, runs, device))
    return {
        "ms": ms,
        "fps": 1000.0 / ms,
        "runs": runs,
        "size": list(size),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
    }


def device_name(device: torch.device) -> str:
    """A readable device description for results (GPU model or CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
