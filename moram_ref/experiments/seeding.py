"""Reproducible randomness for the training loops, independent of what ran before in the process.

Adapter dropout draws from torch's global generator (``nn.functional.dropout`` takes no generator).
The loops therefore run each task inside :func:`private_rng` (the caller's generator state is saved
and restored) and reseed the global generator before every micro-batch with :func:`seed_for` of
``(seed, task, epoch, step, micro-batch)``. The dropout masks of a micro-batch then depend on those
numbers alone: a run resumed after a kill, or one whose evaluation drew random numbers in between,
trains exactly as the uninterrupted run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from non-negative integers (``numpy.random.SeedSequence`` mixing)."""
    if any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in parts):
        raise ValueError(f"seed parts must be non-negative ints, got {parts!r}")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextlib.contextmanager
def private_rng(device: torch.device | str) -> Iterator[None]:
    """Inside, torch's global generators (CPU, and the CUDA device ``device`` if it is one) may be
    reseeded freely; on exit they are back in the state they had on entry."""
    device = torch.device(device)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def reseed(*parts: int) -> None:
    """Seed torch's global generators (all devices) with :func:`seed_for` of ``parts``."""
    torch.manual_seed(seed_for(*parts))
