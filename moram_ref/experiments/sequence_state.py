"""What one method's folder of a CLIP or LLM run records between tasks, read back for ``--resume`` and
``--eval-only``: ``progress.json`` (tasks done, the accuracy matrix so far, per-task training info) and the
per-task checkpoints it vouches for. Torch only (checkpoints).

Everything is checked before any work, and a damaged folder is named in one line
(:class:`~moram_ref.torch.checkpoint.CheckpointError`, which the CLI prints with exit status 2): a
``progress.json`` of the wrong shape, a checkpoint missing, damaged, written by another method or
configuration, or written after another task than the slot it sits in (a file copied into another
task's place would otherwise be loaded and give other results without a word).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moram_ref.config import MoRAMConfig
from moram_ref.torch import checkpoint


def fresh(n_tasks: int) -> dict[str, Any]:
    """The record of a method that has done nothing yet: no task, an ``n_tasks × n_tasks`` matrix of NaN."""
    return {"tasks_done": 0, "matrix": [[math.nan] * n_tasks for _ in range(n_tasks)], "train": []}


def read(path: Path, n_tasks: int) -> dict[str, Any]:
    """``progress.json`` at ``path``, checked: an object with ``tasks_done`` (an int from 0 to ``n_tasks``),
    ``matrix`` (``n_tasks`` rows of ``n_tasks`` numbers or null, null for "not evaluated") and ``train``
    (a list, one entry per task trained). Raises ``CheckpointError`` naming the file and what is wrong."""

    def bad(why: str) -> checkpoint.CheckpointError:
        return checkpoint.CheckpointError(f"{path} {why}; it records which tasks are done: restore it or start a "
                                          "fresh run")

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise bad(f"cannot be read ({exc})") from None
    if not isinstance(record, dict):
        raise bad(f"must hold a JSON object, got {type(record).__name__}")
    missing = [k for k in ("tasks_done", "matrix", "train") if k not in record]
    if missing:
        raise bad(f"lacks {', '.join(missing)}")
    done = record["tasks_done"]
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= n_tasks:
        raise bad(f"has tasks_done {json.dumps(done)}, not an integer from 0 to {n_tasks} (the run's task count)")
    matrix = record["matrix"]
    if not (isinstance(matrix, list) and len(matrix) == n_tasks
            and all(isinstance(row, list) and len(row) == n_tasks for row in matrix)):
        raise bad(f"has a matrix that is not {n_tasks} rows of {n_tasks} entries")
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for row in matrix for v in row):
        raise bad("has a matrix entry that is neither a number nor null")
    if not isinstance(record["train"], list):
        raise bad(f"has train {type(record['train']).__name__}, not a list")
    return record


def check_checkpoints(folder: Path, upto: int, config: MoRAMConfig, method: str) -> None:
    """Every checkpoint ``folder/task<t>.safetensors``, ``t`` = 1 … ``upto``, exists, reads back whole
    (checksums), and was written by ``method`` with ``config`` after task ``t``
    (:func:`~moram_ref.torch.checkpoint.verify`); ``CheckpointError`` naming the first that is not."""
    for t in range(1, upto + 1):
        checkpoint.verify(folder / f"task{t}.safetensors", config, method, tasks_done=t)


def check_run(out: Path, methods: list[str], n_tasks: int, config: MoRAMConfig, eval_only: bool) -> None:
    """``--resume`` or ``--eval-only`` of a CLIP or LLM run in ``out``, before any work: for every method but
    ``zero_shot``, its ``progress.json`` (where there is one) reads back (:func:`read`) and the checkpoints a
    run will load are whole and in their places (:func:`check_checkpoints`: with ``eval_only`` all
    ``n_tasks``, else those of the tasks done). ``CheckpointError`` naming the first file that is not."""
    for method in methods:
        if method == "zero_shot":
            continue
        path = Path(out) / method / "progress.json"
        done = read(path, n_tasks)["tasks_done"] if path.is_file() else 0
        check_checkpoints(Path(out) / method / "checkpoints", n_tasks if eval_only else done, config, method)
