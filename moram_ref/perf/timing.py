"""Timing and memory: medians over interleaved repetitions, CUDA events on a GPU, wall clock on a CPU."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

import torch


def quiet_cuda_home_notice() -> None:
    """Silence torch's "No CUDA runtime is found, using CUDA_HOME=…" warning, which ``torch.compile`` on a
    CPU prints where a CUDA toolkit is installed without a GPU: it says nothing about the figures. For the
    benchmark entry points only (it sets the level of one torch logger)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def is_cuda(device: str | torch.device) -> bool:
    return str(device).startswith("cuda")


def sync(device: str | torch.device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def median_seconds(fns: dict[str, Callable[[], object]], repeat: int, device: str | torch.device = "cpu",
                   warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of every function, the calls interleaved so that drifts hit all alike.

    On CUDA each call sits between two CUDA events (the GPU's own clock; the host does not wait
    between calls), read after one synchronisation per repetition; on a CPU, ``time.perf_counter``.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat!r}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        if is_cuda(device):
            events = {}
            for name, fn in fns.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events[name] = (start, end)
            torch.cuda.synchronize()
            for name, (start, end) in events.items():
                times[name].append(start.elapsed_time(end) / 1e3)
        else:
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_memory_gib(fn: Callable[[], object], device: str | torch.device) -> float | None:
    """Peak GPU memory (GiB) allocated while ``fn`` runs once; ``None`` on a CPU (not tracked there)."""
    if not is_cuda(device):
        fn()
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated() / 2**30


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None when either is missing (a case that did not run)."""
    return None if num is None or den is None or den == 0 else num / den
