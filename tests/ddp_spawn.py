"""Start test processes for multi-process (gloo) tests, failing instead of hanging when a collective waits forever."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch


def spawn(fn, args, nprocs: int = 2, timeout: float = 300, done: Path | None = None) -> None:
    """``torch.multiprocessing.spawn(fn, args, nprocs)``; the test fails if they are not done within ``timeout`` s.

    ``done``: a folder where each process writes ``done<rank>`` once its work and the final barrier are over.
    A process that then dies in the process group's teardown (gloo's C++ destructors can abort under heavy
    load: "terminate called without an active exception") has finished everything the test checks, so that
    death is tolerated; any death before every marker exists fails the test as before."""
    ctx = torch.multiprocessing.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ctx.join(timeout=5):
                return
        except torch.multiprocessing.ProcessExitedException:
            if done is not None and all((done / f"done{r}").is_file() for r in range(nprocs)):
                for p in ctx.processes:
                    p.join(timeout=30)
                return
            raise
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs} processes did not finish within {timeout} s (a collective hangs)")
