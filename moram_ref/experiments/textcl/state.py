"""Per-task state of one (method, seed) text-cl run, so ``--resume`` continues after a kill exactly.

Layout, one folder per method and seed: ``<out>/state/<method>_seed<s>/``

* ``task<t>.safetensors`` — the adapters after task ``t`` (:mod:`moram_ref.torch.checkpoint`: sha256 per
  tensor, written atomically); none for ``zero_shot``, which trains nothing.
* ``progress.json`` — how many tasks are done, the accuracy rows so far, the probes and timings, and the
  two random states a later task depends on: the NumPy generator that draws the batches and the torch
  generator that draws the fresh atoms (adapter dropout is reseeded per step, :mod:`..seeding`). The
  optimiser and its schedule start afresh at every task, so nothing else carries over.

Writes go checkpoint first, then ``progress.json`` (atomically): a kill between the two leaves the
previous consistent pair, and the resumed run repeats that one task. A resumed run therefore gives the
same matrices, bit for bit, as the uninterrupted one (``tests/test_textcl_resume.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.experiments import rundir
from moram_ref.torch import checkpoint

PROGRESS = "progress.json"


def folder(out: Path, method: str, seed: int) -> Path:
    """``<out>/state/<method>_seed<seed>``."""
    return Path(out) / "state" / f"{method}_seed{seed}"


def save(where: Path, tasks_done: int, model: torch.nn.Module | None, config: MoRAMConfig, method: str,
         gen: torch.Generator, rng: np.random.Generator, union: np.ndarray, own: np.ndarray, out: dict,
         names: list[str]) -> None:
    """Record the state after ``tasks_done`` tasks (``model`` None: nothing attached, ``zero_shot``)."""
    where.mkdir(parents=True, exist_ok=True)
    if model is not None:
        checkpoint.save(model, where / f"task{tasks_done}.safetensors", config, tasks_done, method)
    record = {
        "method": method, "tasks": names, "tasks_done": tasks_done,
        "union": union[:tasks_done].tolist(), "own": own[:tasks_done].tolist(),
        "trainable_per_task": out["trainable_per_task"], "seconds_per_task": out["seconds_per_task"],
        "n99": out["n99"], "activation": {k: {n: np.asarray(w).tolist() for n, w in v.items()}
                                          for k, v in out["activation"].items()},
        "numpy_rng": rng.bit_generator.state,
        "torch_generator": bytes(gen.get_state().numpy()).hex(),
    }
    rundir.write_json(where / PROGRESS, record)


def load(where: Path, model: torch.nn.Module | None, config: MoRAMConfig, method: str, names: list[str],
         gen: torch.Generator, rng: np.random.Generator, union: np.ndarray, own: np.ndarray, out: dict) -> int:
    """Restore the recorded state into ``model``, ``gen``, ``rng``, the rows and ``out``; returns the
    number of tasks done (0 if nothing is recorded). Raises ``checkpoint.CheckpointError`` naming the file
    when the record is unreadable or belongs to another sequence or method."""
    path = where / PROGRESS
    if not path.is_file():
        return 0
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"{path} cannot be read ({exc}); delete {where} to rerun that "
                                         "method and seed from its first task") from None
    if record.get("method") != method or record.get("tasks") != names:
        raise checkpoint.CheckpointError(f"{path} records method {record.get('method')!r} on tasks "
                                         f"{record.get('tasks')}, not {method!r} on {names}")
    done = int(record["tasks_done"])
    if model is not None and done:
        checkpoint.load(model, where / f"task{done}.safetensors", config, method)
    union[:done], own[:done] = np.array(record["union"]), np.array(record["own"])
    out["trainable_per_task"][:] = record["trainable_per_task"]
    out["seconds_per_task"][:] = record["seconds_per_task"]
    out["n99"][:] = record["n99"]
    out["activation"].update({k: {n: np.array(w, dtype=np.float32) for n, w in v.items()}
                              for k, v in record["activation"].items()})
    rng.bit_generator.state = record["numpy_rng"]
    gen.set_state(torch.frombuffer(bytearray.fromhex(record["torch_generator"]), dtype=torch.uint8).clone())
    return done
