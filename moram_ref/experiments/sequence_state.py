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

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from moram_ref.config import MoRAMConfig
from moram_ref.torch import checkpoint


def fresh(n_tasks: int) -> dict[str, Any]:
    """The record of a method that has done nothing yet: no task, an ``n_tasks × n_tasks`` matrix of NaN."""
    return {"tasks_done": 0, "matrix": [[math.nan] * n_tasks for _ in range(n_tasks)], "train": []}


def read(path: Path, n_tasks: int, trained: bool | None = None, full_rows: bool = False) -> dict[str, Any]:
    """``progress.json`` at ``path``, checked: an object with ``tasks_done`` (an int from 0 to ``n_tasks``),
    ``matrix`` (``n_tasks`` rows of ``n_tasks`` accuracies in percent, 0 to 100, or null for "not evaluated";
    row ``i`` < ``tasks_done`` holds numbers up to its diagonal, what OP and BWT read, or with ``full_rows`` in
    every column, what the CLIP track evaluates after each task and its Transfer and Average read) and
    ``train`` (a list of objects, one per task trained: with ``trained`` given, ``tasks_done`` of them for a
    method that trains, none for ``zero_shot``); the CLIP track's probes, where present, are ``n99`` (a list) and
    ``maps`` (an object). Raises ``CheckpointError`` naming the file and what is wrong."""

    def bad(why: str) -> checkpoint.CheckpointError:
        return checkpoint.CheckpointError(f"{path} {why}; it records which tasks are done: restore it or start a "
                                          "fresh run")

    if not path.is_file():
        raise bad("is not a readable file (a folder, a broken link or a device)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise bad(f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
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
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v is None and (i >= done or (j > i and not full_rows)):
                continue
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
                raise bad(f"has matrix[{i}][{j}] = {json.dumps(v)}, not an accuracy from 0 to 100"
                          + (f" (task {i + 1} is done: its row is needed)" if v is None else ""))
    train = record["train"]
    if not isinstance(train, list) or not all(isinstance(entry, dict) for entry in train):
        raise bad(f"has train {json.dumps(train)[:80]}, not a list of JSON objects (one per task trained)")
    if trained is not None and len(train) != (done if trained else 0):
        raise bad(f"has {len(train)} train record(s) for tasks_done {done} ("
                  + ("one per task trained)" if trained else "zero_shot trains nothing, so none)"))
    for key, kind in (("n99", list), ("maps", dict)):
        if key in record and not isinstance(record[key], kind):
            raise bad(f"has {key} {type(record[key]).__name__}, not a {'list' if kind is list else 'JSON object'}")
    vouched = record.get("checkpoints", {})
    if not (isinstance(vouched, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in vouched.items())):
        raise bad(f"has checkpoints {json.dumps(vouched)[:80]}, not an object of file digests")
    return record


def vouch(progress: dict[str, Any], path: Path) -> None:
    """Record in ``progress`` the sha256 of the checkpoint just written at ``path`` (under ``checkpoints``, by
    file name): :func:`check_run` then refuses a ``progress.json`` beside checkpoints it was not written with
    (one copied from another run would report that run's accuracies over these checkpoints)."""
    progress.setdefault("checkpoints", {})[path.name] = file_digest(path)


def finished_matrix(folder: Path, n_tasks: int, trained: bool, full_rows: bool = False) -> list[list] | None:
    """The accuracy matrix recorded in ``folder/progress.json`` when it says all ``n_tasks`` tasks are done (as
    :func:`read` checks it), else ``None``: ``--resume`` of a finished method writes its results from it without
    loading the model."""
    path = Path(folder) / "progress.json"
    if not path.is_file():
        return None
    record = read(path, n_tasks, trained, full_rows)
    return record["matrix"] if record["tasks_done"] == n_tasks else None


def resumed_line(method: str, tasks_done: int | None, n_tasks: int, folder: Path | None = None,
                 model_loaded: bool = True) -> str:
    """The line ``--resume`` prints for a method whose record (in ``folder``) says ``tasks_done`` of ``n_tasks``
    are done; ``tasks_done`` None: it has no record there (stopped before its first task was saved, or the file
    was removed), so it starts from task 1. ``model_loaded`` False: the caller wrote a finished method's results
    without loading the model (:func:`finished_matrix`), and the line says so."""
    if tasks_done is None:
        return f"{method}: nothing recorded in {folder} yet: it starts from task 1"
    if tasks_done >= n_tasks:
        return (f"{method}: all tasks ({n_tasks} of {n_tasks}) were already done; nothing left to train (the "
                f"results are written again from progress.json{'' if model_loaded else ', without loading the model'})")
    return f"{method}: resumed after task {tasks_done} of {n_tasks}"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checkpoints(folder: Path, upto: int, config: MoRAMConfig, method: str, seed: int | None = None) -> None:
    """Every checkpoint ``folder/task<t>.safetensors``, ``t`` = 1 … ``upto``, exists, reads back whole
    (checksums), and was written by ``method`` with ``config`` after task ``t``
    (:func:`~moram_ref.torch.checkpoint.verify`) and, where it records one (:func:`extra`), with ``seed``;
    ``CheckpointError`` naming the first that is not."""
    for t in range(1, upto + 1):
        path = folder / f"task{t}.safetensors"
        meta = checkpoint.verify(path, config, method, tasks_done=t)
        recorded = meta.get("extra", {}).get("seed")
        if seed is not None and recorded is not None and recorded != seed:
            raise checkpoint.CheckpointError(f"checkpoint {path} was written by a run with --seed {recorded!r}, "
                                             f"not {seed} (a file copied from another run?)")


def extra(seed: int) -> dict[str, Any]:
    """What a CLIP or LLM checkpoint records about its run beyond method, config and task: the seed."""
    return {"seed": seed}


def check_run(out: Path, methods: list[str], n_tasks: int, config: MoRAMConfig, eval_only: bool,
              seed: int | None = None, full_rows: bool = False) -> None:
    """``--resume`` or ``--eval-only`` of a CLIP or LLM run in ``out``, before any work: for every method, its
    ``progress.json`` (where there is one) reads back (:func:`read`) and, but for ``zero_shot``, the
    checkpoints a run will load are whole and in their places (:func:`check_checkpoints`: with ``eval_only``
    all ``n_tasks``, else those of the tasks done) and the files ``progress.json`` was written with
    (:func:`vouch`). ``CheckpointError`` naming the first file that is not."""
    for method in methods:
        places = [Path(out) / method / sub for sub in ("", "checkpoints", "manifests")]
        places += [Path(out) / method / "checkpoints" / f"task{t}.safetensors" for t in range(1, n_tasks + 1)]
        for place in places:  # what the run writes into must not be in the way (found now, not after training)
            if place.suffix and place.is_dir() or not place.suffix and place.exists() and not place.is_dir():
                raise checkpoint.CheckpointError(f"{place} is {'a folder' if place.suffix else 'not a folder'}: the "
                                                 f"run writes {'a file' if place.suffix else 'into a folder'} there; "
                                                 "move it away")
        path = Path(out) / method / "progress.json"
        record = read(path, n_tasks, method != "zero_shot", full_rows) if os.path.lexists(path) else {}
        done = record.get("tasks_done", 0)
        if method != "zero_shot":
            folder = Path(out) / method / "checkpoints"
            check_checkpoints(folder, n_tasks if eval_only else done, config, method, seed)
            for name, digest in record.get("checkpoints", {}).items():  # (records written before hold none)
                if (folder / name).is_file() and file_digest(folder / name) != digest:
                    raise checkpoint.CheckpointError(
                        f"{path} was not written with {folder / name}: it vouches for another file of that name "
                        "(a progress.json or checkpoint copied from another run?); restore the run's own files or "
                        "start a fresh run")
