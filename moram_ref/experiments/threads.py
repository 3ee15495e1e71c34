"""torch's CPU thread count, which the numbers depend on: recorded by a run, and kept by its resume.

Intel MKL, which PyTorch's x86 builds use for matrix products, picks a thread-dependent kernel for some
shapes, so a product can differ in its last bits between 1 and 2 threads (pytorch/pytorch#88718), and
training carries the difference on: MoRAM's hard routing turns it into other predictions
(docs/results.md, "Threads and reproducibility"; MKL's strict mode ``MKL_CBWR=AUTO,STRICT`` does not
remove it). A run therefore records the count it starts with (``config.json``'s ``info.threads``; a run
assembled by ``text-cl-merge`` also each method's part's, ``info.threads_by_method``), and ``--resume`` /
``--eval-only`` continue on it (:func:`pinned`), whatever the resuming process has, so a resumed run equals
the uninterrupted one on another machine of the same kind; a run from before the record continues on the
process's count and says so (:func:`continued`). The count is torch's
intra-op one (``OMP_NUM_THREADS``, or the cores); GPU kernels do not depend on it.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from moram_ref.experiments.cliargs import UsageError
from moram_ref.experiments.rundir import CONFIG
MAX_THREADS = 4096  # more than any CPU has: a recorded count above it is damage, not a machine


def current() -> int:
    """torch's intra-op thread count in this process."""
    import torch  # noqa: PLC0415

    return torch.get_num_threads()


def is_count(value) -> bool:
    """Whether ``value`` is a thread count a run can have recorded: an integer from 1 to :data:`MAX_THREADS`."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_THREADS


def cpu() -> str:
    """The CPU, as a results file records it beside the thread count (MKL also picks its code path by the
    CPU): ``"AMD EPYC (AVX-512)"`` from ``/proc/cpuinfo`` on Linux (model name, widest vector extension),
    else Python's ``platform.processor()`` or ``platform.machine()``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    name = model or platform.machine() or "unknown"
    return f"{name} ({isa})" if isa else name


def _info(out: Path, arg: str) -> tuple[Path, dict]:
    """``config.json``'s ``info`` of the run in ``out`` (``{}`` if it has none); UsageError if unreadable or
    not a map."""
    path = Path(out) / CONFIG
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{arg}: cannot read {path} ({exc})") from None
    if not isinstance(record, dict) or "info" not in record:
        return path, {}
    if not isinstance(record["info"], dict):
        raise UsageError(f"{arg}: {path} records info {json.dumps(record['info'])}, not a map (what the run found); "
                         "put back what the run wrote")
    return path, record["info"]


def _damaged(arg: str, path: Path, key: str, value, remedy: str) -> UsageError:
    return UsageError(f"{arg}: {path} records info.{key} {json.dumps(value)}, not a thread count (an integer from 1 "
                      f"to {MAX_THREADS}); put back the count the run started with, or {remedy}")


def started_on(out: Path, arg: str = "--out") -> int | None:
    """The thread count the run in ``out`` recorded when it started (``config.json``'s ``info.threads``);
    None if it recorded none (a run from before counts were recorded).

    Raises:
        UsageError: naming ``arg``, the file and the value, if ``info`` is not a map or ``info.threads`` is
            there but not a count (:func:`is_count`), or the file cannot be read.
    """
    path, info = _info(out, arg)
    if "threads" not in info:
        return None
    if not is_count(info["threads"]):
        raise _damaged(arg, path, "threads", info["threads"], "remove the key to continue on this process's count")
    return info["threads"]


def part_counts(out: Path, methods, arg: str = "--out") -> dict[str, int]:
    """``{method: thread count}`` of a run assembled by ``text-cl-merge`` (``info.threads_by_method``: the
    count each method's part started with); ``{}`` for any other run.

    Raises:
        UsageError: naming ``arg``, the file and the value, if the map is not one from the run's ``methods``
            to counts.
    """
    path, info = _info(out, arg)
    by_method = info.get("threads_by_method", {})
    if not isinstance(by_method, dict):
        raise UsageError(f"{arg}: {path} records info.threads_by_method {json.dumps(by_method)}, not a map from "
                         "methods to thread counts; put back what text-cl-merge wrote, or remove the key")
    unknown = sorted(set(by_method) - set(methods))
    if unknown:
        raise UsageError(f"{arg}: {path} records info.threads_by_method for {', '.join(unknown)}, not among the run's "
                         f"methods ({', '.join(methods)}); put back what text-cl-merge wrote, or remove the entry")
    for method, value in by_method.items():
        if not is_count(value):
            raise _damaged(arg, path, f"threads_by_method.{method}", value,
                           "remove the entry to continue on the run's own starting count")
    return dict(by_method)


def unrecorded(who: str, own: int, what: str = "the run") -> str:
    """What is said where nothing records the count to continue on: it continues on this process's ``own``."""
    return (f"{who}: {what} does not record the thread count it was made on (it predates the record); continuing on "
            f"this process's {own}: if it ran on another count, the numbers differ from an uninterrupted run's")


@contextmanager
def pinned(count: int | None, log: Callable[[str], None] | None = None, who: str = "",
           why: str = "the run started") -> Iterator[int]:
    """Run the block on ``count`` threads (None: this process's own), then put the process's count back.

    When ``count`` differs from the process's, ``log`` (if given) says so once: ``"<who>: on 1 thread(s), as
    <why> (this process has 2; another count gives other numbers)"``, adding that a count above the
    machine's cores is slower (not different). Yields the count in effect.
    """
    import torch  # noqa: PLC0415

    own = torch.get_num_threads()
    count = own if count is None else count
    if count != own and log is not None:
        cores = os.cpu_count() or count
        more = f"; more than this machine's {cores} cores: slower, the same numbers" if count > cores else ""
        log(f"{who + ': ' if who else ''}on {count} thread(s), as {why} (this process has {own}; another count "
            f"gives other numbers{more})")
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(own)


@contextmanager
def continued(count: int | None, log: Callable[[str], None] | None, who: str, why: str,
              what: str = "the run") -> Iterator[int]:
    """:func:`pinned` for work that continues a recorded run: on ``count``; where nothing recorded one (None),
    on this process's own, and ``log`` (if given) says so (:func:`unrecorded`, naming ``what``)."""
    if count is None and log is not None:
        log(unrecorded(who, current(), what))
    with pinned(count, log, who, why) as used:
        yield used
