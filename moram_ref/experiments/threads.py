"""torch's CPU thread count, which the numbers depend on: recorded by a run, and kept by its resume.

Intel MKL, which PyTorch's x86 builds use for matrix products, picks a thread-dependent kernel for some
shapes, so a product can differ in its last bits between 1 and 2 threads (pytorch/pytorch#88718), and
training carries the difference on: MoRAM's hard routing turns it into other predictions
(docs/results.md, "Threads and reproducibility"; MKL's strict mode ``MKL_CBWR=AUTO,STRICT`` does not
remove it). A run therefore records the count it starts with (``config.json``'s ``info.threads``), and
``--resume`` / ``--eval-only`` continue on it (:func:`pinned`), whatever the resuming process has, so a
resumed run equals the uninterrupted one on another machine of the same kind. The count is torch's
intra-op one (``OMP_NUM_THREADS``, or the cores); GPU kernels do not depend on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CONFIG = "config.json"  # rundir.CONFIG (not imported: rundir must not need torch, and this module neither)


def current() -> int:
    """torch's intra-op thread count in this process."""
    import torch  # noqa: PLC0415

    return torch.get_num_threads()


def started_on(out: Path) -> int | None:
    """The thread count the run in ``out`` recorded when it started (``config.json``'s ``info.threads``);
    None if it recorded none (a run from before counts were recorded) or the file cannot be read."""
    try:
        threads = json.loads((Path(out) / CONFIG).read_text()).get("info", {}).get("threads")
    except (OSError, ValueError, AttributeError):
        return None
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1 else None


@contextmanager
def pinned(count: int | None, log: Callable[[str], None] | None = None, who: str = "",
           why: str = "the run started") -> Iterator[int]:
    """Run the block on ``count`` threads (None: this process's own), then put the process's count back.

    When ``count`` differs from the process's, ``log`` (if given) says so once: ``"<who>: on 1 thread(s), as
    <why> (this process has 2; another count gives other numbers)"``. Yields the count in effect.
    """
    import torch  # noqa: PLC0415

    own = torch.get_num_threads()
    count = own if count is None else count
    if count != own and log is not None:
        log(f"{who + ': ' if who else ''}on {count} thread(s), as {why} (this process has {own}; another count "
            "gives other numbers)")
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(own)
