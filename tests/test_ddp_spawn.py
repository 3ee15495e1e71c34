"""The multi-process test helper: a teardown crash after the work is tolerated, any earlier death is not."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ddp_spawn import spawn  # noqa: E402


def _worker(rank: int, folder: str, mark_first: bool) -> None:
    if mark_first:
        (Path(folder) / f"done{rank}").touch()
    if rank == 1:
        for _ in range(600):  # rank 0's work is over too (as after the final barrier)
            if not mark_first or (Path(folder) / "done0").is_file():
                break
            time.sleep(0.05)
        os.abort()  # as gloo's destructors do under load: SIGABRT


def test_an_abort_after_every_process_is_done_is_tolerated(tmp_path):
    spawn(_worker, (str(tmp_path), True), done=tmp_path)


def test_an_abort_before_the_work_is_done_fails(tmp_path):
    with pytest.raises(torch.multiprocessing.ProcessExitedException):
        spawn(_worker, (str(tmp_path), False), done=tmp_path)
