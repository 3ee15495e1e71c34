"""Start test processes for multi-process (gloo) tests, failing instead of hanging when a collective waits forever."""

from __future__ import annotations

import time

import pytest
import torch


def spawn(fn, args, nprocs: int = 2, timeout: float = 300) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)``; the test fails if they are not done within ``timeout`` s."""
    ctx = torch.multiprocessing.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs} processes did not finish within {timeout} s (a collective hangs)")
