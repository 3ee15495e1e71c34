"""Per-task state of one (method, seed) text-cl run, so ``--resume`` continues after a kill exactly.

Layout, one folder per method and seed: ``<out>/state/<method>_seed<s>/``

* ``task<t>.safetensors`` — the adapters after task ``t`` (:mod:`moram_ref.torch.checkpoint`: sha256 per
  tensor, written atomically; its metadata names the method, the seed and ``t``); none for ``zero_shot``,
  which trains nothing.
* ``progress.json`` — method, seed, the tasks and a fingerprint of their data, how many tasks are done,
  the accuracy rows so far, the probes and timings, torch's thread count per task (``threads``: the
  numbers depend on it, so a resumed pair continues on its last one, :func:`recorded_threads`), and the
  two random states a later task depends on:
  the NumPy generator that draws the batches and the torch generator that draws the fresh atoms (adapter
  dropout is reseeded per step, :mod:`..seeding`). The optimiser and its schedule start afresh at every
  task, so nothing else carries over.

Writes go checkpoint first, then ``progress.json`` (atomically): a kill between the two leaves the
previous consistent pair, and the resumed run repeats that one task. A resumed run therefore gives the
same matrices, bit for bit, as the uninterrupted one (``tests/test_textcl_resume.py``).

:func:`check` reads and validates a record without touching a model: ``text-cl --resume`` calls it for
every (method, seed) before any work, so a damaged, foreign (another method, seed, sequence) or stale
(the task data changed) record stops the run at once, with a :class:`StateError` naming the file.

A record from a run with other training settings is foreign too: ``progress.json`` and every checkpoint's
metadata (``extra["settings"]``) hold the settings that shape the record (:data:`SHAPING`, as
``config.json`` names them, the encoder by its folder's name), and :func:`check`, given the current ones,
refuses a record whose settings differ (``--lr 0.002 recorded, 0.5 now``): without it, a state folder copied in
from another run (into a run to ``--resume``, or between ``text-cl-merge`` parts, whose own ``config.json``
do agree) would continue or be merged as a silent mix of two runs. Recorded: ``--steps``, ``--batch``,
``--lr``, ``--adapt-layers``, ``--placement``, ``--max-length``, ``--eval-split`` (they decide the
training and the accuracy rows), the MoRAM flags ``--atoms-per-task``, ``--top-k``, ``--temperature``,
``--threshold`` (a checkpoint's configuration is also compared whole, but ``progress.json`` and
``zero_shot``, which has no checkpoint, need them named), and the encoder (``--model-path``, compared by
its folder's name, the packaged one as ``all-MiniLM-L6-v2``: its absolute folder differs between
machines). The same list for every method, ``zero_shot`` included: a folder from a run with other
settings is another run's even where a setting does not act on it. Not recorded, each for a reason:

* ``--methods``, ``--seeds``: run-wide, they differ between merge parts; the record names its own method
  and seed, which are compared.
* ``--sequence``, ``--tasks``: the record names its tasks, which are compared.
* ``--data-root``, ``--max-train``, ``--max-test``: they act through the task data, which is compared by
  its fingerprint (:func:`data_fingerprint`); the folder itself differs between machines.
* ``--out``, ``--no-plots``, ``--resume``: where and how a run is written, not what it trains.
* Constants without a flag (:class:`~.train.TrainSettings`' ``logit_scale``, ``olora_lambda``,
  ``probe_per_task``): only a change of the code changes them.

The encoder is also compared by its content: records hold ``encoder_sha256``
(:func:`encoder_fingerprint`, over the files of its folder that transformers reads: configuration,
tokenizer, weights), so two folders of one name holding other weights are told apart (the refusal then
says to restore the encoder, not to delete the records); a record written before it held that field is
compared by the folder's name only.

A record written before records held their settings (``progress.json`` or a checkpoint without the field, as
the long runs of ``docs/results.md``) is checked without its settings: every other check still applies,
and a resumed run records them from its next task on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from moram_ref.experiments import rundir
from moram_ref.experiments.cliargs import UsageError
from moram_ref.experiments.threads import MAX_THREADS, is_count

PROGRESS = "progress.json"
GENERATOR_STATE_BYTES = 5056  # torch.Generator().get_state() on the CPU (mt19937)
SHAPING = ("steps", "batch", "lr", "adapt_layers", "placement", "max_length", "eval_split", "atoms_per_task",
           "top_k", "temperature", "threshold", "model_path")  # the settings a record holds (module docstring)
DEFAULT_ENCODER = "all-MiniLM-L6-v2"  # the packaged encoder's name (no --model-path)
ENCODER_KEY = "encoder_sha256"  # beside SHAPING in a record; absent from records written before 2026-11-30
# the files transformers reads to build a model and its tokenizer (weights: *.safetensors, pytorch_model*.bin)
ENCODER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model",
                 "sentencepiece.bpe.model", "model.safetensors.index.json", "pytorch_model.bin.index.json")
ENCODER_ADVICE = ("the records are sound, the encoder is not the one they were made with: restore the encoder "
                  "folder's files (or, for text-cl --resume and the analyses, pass --model-path with that encoder)")
_fingerprints: dict[tuple, str] = {}  # (folder, its files' names, sizes, mtimes) → sha256: hashed once


class StateError(UsageError):
    """A recorded state that cannot be resumed from: the message names the file and says what to do
    (a :class:`~moram_ref.experiments.cliargs.UsageError`: the CLI prints it as one line, exit status 2).
    ``path`` and ``why`` hold the file and what is wrong with it, for a caller with other advice; ``advice``
    is set where the cause is known to lie outside the records (:data:`ENCODER_ADVICE`), else None."""

    def __init__(self, path: Path, why: str, advice: str | None = None) -> None:
        self.path, self.why, self.advice = Path(path), why, advice
        super().__init__(f"{path}: {why}; " + (advice or f"delete {self.path.parent} to rerun that method and seed "
                                                         "from its first task (the other records are kept)"))


def folder(out: Path, method: str, seed: int) -> Path:
    """``<out>/state/<method>_seed<seed>``."""
    return Path(out) / "state" / f"{method}_seed{seed}"


def encoder_name(model_path) -> str:
    """What names the encoder in a record: its folder's name (``model_path``), or the packaged one's."""
    return Path(model_path).name if model_path else DEFAULT_ENCODER


def _is_weights(name: str) -> bool:
    return name.endswith(".safetensors") or (name.startswith("pytorch_model") and name.endswith(".bin"))


def _encoder_folder(model_path) -> Path:
    """``model_path``, or the packaged MiniLM's folder when it is None."""
    if model_path is not None:
        return Path(model_path)
    from moram_ref.experiments.textcl.encoder import default_model_path  # noqa: PLC0415

    return default_model_path()


def encoder_files(model_path) -> list[Path]:
    """The files of the encoder folder ``model_path`` that transformers reads (:data:`ENCODER_FILES` and the
    weights), in name order, links included (a broken one too: reading it fails). ``model_path`` None: the
    packaged MiniLM."""
    return sorted((p for p in _encoder_folder(model_path).iterdir()
                   if (p.name in ENCODER_FILES or _is_weights(p.name)) and (p.is_symlink() or p.is_file())),
                  key=lambda p: p.name)


def encoder_fingerprint(model_path) -> str:
    """sha256 (hex) over the names, lengths and bytes of :func:`encoder_files` (configuration, tokenizer,
    weights; a README, a licence or sentence-transformers' own files do not count). OSError naming the file
    (``filename``) if one cannot be read. A folder is hashed once per process while its files' sizes and
    modification times stay the same (the MiniLM's 91 MB: about 0.1 s on an idle core)."""
    files = encoder_files(model_path)
    try:
        stats = [p.stat() for p in files]
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, exc.filename) from None
    key = tuple((str(p.resolve()), st.st_size, st.st_mtime_ns) for p, st in zip(files, stats))
    if key not in _fingerprints:
        h = hashlib.sha256()
        for p, st in zip(files, stats):
            h.update(f"{p.name}\0{st.st_size}\0".encode())  # name and length: files cannot run together
            try:
                with open(p, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        h.update(chunk)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(p)) from None
        _fingerprints[key] = h.hexdigest()
    return _fingerprints[key]


def check_encoder(model_path, flag: str = "--model-path") -> str:
    """:func:`encoder_fingerprint` of an encoder folder that holds weights and whose files can all be read;
    UsageError naming ``flag``, the folder or file, and why, otherwise. ``model_path`` None: the packaged
    MiniLM."""
    model_path = _encoder_folder(model_path)
    try:
        files = encoder_files(model_path)
        if not any(_is_weights(p.name) for p in files):
            raise UsageError(f"{flag}: {model_path} holds no weights file (model.safetensors or pytorch_model.bin)")
        return encoder_fingerprint(model_path)
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {exc.filename or model_path} ({exc.strerror})") from None


def shaping(settings: dict) -> dict:
    """The settings that shape a (method, seed) record (:data:`SHAPING`), picked from a run's settings
    (``run.settings_of``, as ``config.json`` records them), the encoder by :func:`encoder_name`, and the
    encoder's :func:`encoder_fingerprint` (:data:`ENCODER_KEY`). KeyError if a setting is missing; OSError
    if the encoder folder cannot be read."""
    picked = {k: settings[k] for k in SHAPING}
    picked[ENCODER_KEY] = encoder_fingerprint(picked["model_path"])
    picked["model_path"] = encoder_name(picked["model_path"])
    return rundir.jsonable(picked)


def _differences(recorded, current: dict, now: str = "now") -> str:
    """``"--lr 0.002 recorded, 0.5 now; …"`` for the settings of :data:`SHAPING` that differ ("" if none);
    ``now`` names where ``current`` comes from."""
    diff = [f"--{k.replace('_', '-')} {json.dumps(recorded.get(k))} recorded, {json.dumps(current.get(k))} {now}"
            for k in SHAPING if recorded.get(k, "<absent>") != current.get(k, "<absent>")]
    if ENCODER_KEY in recorded and recorded[ENCODER_KEY] != current.get(ENCODER_KEY):  # absent: an older record
        diff.append(f"the encoder's files (--model-path) differ: sha256 {str(recorded[ENCODER_KEY])[:12]}… recorded, "
                    f"{str(current.get(ENCODER_KEY))[:12]}… {now}")
    return "; ".join(diff)


def data_fingerprint(tasks: list) -> str:
    """sha256 over every task's name, labels, prompts and texts with their labels (train, val, test)."""
    h = hashlib.sha256()
    for t in tasks:
        parts = [t.name, t.labels, t.prompts]
        for split in ("train", "val", "test"):
            parts += [getattr(t, f"{split}_text"), np.asarray(getattr(t, f"{split}_y")).tolist()]
        h.update(json.dumps(parts).encode())
    return h.hexdigest()


def save(where: Path, tasks_done: int, model, config, method: str, seed: int, fingerprint: str, settings: dict,
         gen, rng: np.random.Generator, union: np.ndarray, own: np.ndarray, out: dict, names: list[str]) -> None:
    """Record the state after ``tasks_done`` tasks (``model`` None: nothing attached, ``zero_shot``);
    ``settings``: the run's :func:`shaping` settings, recorded in ``progress.json`` and the checkpoint."""
    where.mkdir(parents=True, exist_ok=True)
    if model is not None:
        from moram_ref.torch import checkpoint  # noqa: PLC0415

        checkpoint.save(model, where / f"task{tasks_done}.safetensors", config, tasks_done, method,
                        extra={"seed": seed, "data": fingerprint, "settings": settings})
    record = {
        "method": method, "seed": seed, "tasks": names, "data": fingerprint, "settings": settings,
        "tasks_done": tasks_done,
        "union": union[:tasks_done].tolist(), "own": own[:tasks_done].tolist(),
        "trainable_per_task": out["trainable_per_task"], "seconds_per_task": out["seconds_per_task"],
        "n99": out["n99"], "activation": {k: {n: np.asarray(w).tolist() for n, w in v.items()}
                                          for k, v in out["activation"].items()},
        "threads": out["threads"],
        "numpy_rng": rng.bit_generator.state,
        "torch_generator": bytes(gen.get_state().numpy()).hex(),
    }
    rundir.write_json(where / PROGRESS, record)


def _fail(path: Path, why: str) -> StateError:
    return StateError(path, why)


def _reason(exc: Exception, path: Path) -> str:
    """A checkpoint error's message without the path :func:`_fail` puts in front of it."""
    return str(exc).replace(f"checkpoint {path} ", "", 1).replace(f"checkpoint {path}: ", "", 1)


def check(where: Path, method: str, seed: int, names: list[str], fingerprint: str, config=None,
          settings: dict | None = None, now: str = "now") -> dict | None:
    """The validated record of ``where`` (None if there is none); StateError naming the file otherwise.

    Validated: ``progress.json`` (method, seed, tasks, the data's ``fingerprint``, every field) and every
    checkpoint it counts as done (each tensor against its sha256, written for this method, task and seed,
    and with ``config``, a :class:`~moram_ref.config.MoRAMConfig`, if given). With ``settings`` (the run's
    :func:`shaping` settings), the settings recorded in ``progress.json`` and in each of those checkpoints
    must equal them (the StateError names each that differs: ``--lr 0.002 recorded, 0.5 now``, ``now`` naming
    where ``settings`` come from); a file written before settings were recorded is checked without them
    (module docstring). A file where ``where`` or its ``state`` folder goes is a StateError too (the run would
    meet it only when saving its first task)."""
    for held in (where.parent, where):
        if held.exists() and not held.is_dir():
            raise StateError(held, "is not a folder (the run keeps each method and seed's records in a folder "
                                   "there)", advice="move or delete it")
    path = where / PROGRESS
    if path.exists() and not path.is_file():
        raise StateError(path, "is not a file", advice="move or delete it")
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(path, f"cannot be read ({exc})") from None
    if not isinstance(record, dict):
        raise _fail(path, f"holds a {type(record).__name__}, not a progress record")
    unrecorded = [k for k in ("method", "seed", "tasks", "data") if k not in record]
    if unrecorded:  # e.g. a record of an early version, which named neither its seed nor its data
        raise _fail(path, f"records no {', '.join(unrecorded)} (written by an earlier moram-ref text-cl, or not by "
                          "it), so it cannot be checked against this run")
    if (record.get("method"), record.get("seed"), record.get("tasks")) != (method, seed, names):
        raise _fail(path, f"records method {record.get('method')!r}, seed {record.get('seed')!r} on tasks "
                          f"{record.get('tasks')}, not {method!r}, seed {seed} on {names}")
    if record.get("data") != fingerprint:
        raise _fail(path, "the task data under --data-root (as read with --max-train and --max-test) differs from "
                          "the data this record was written with")
    _check_settings(path, record, settings, now)
    done = record.get("tasks_done")
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= len(names):
        raise _fail(path, f"tasks_done must be an integer in [0, {len(names)}], got {done!r}")
    n = len(names)
    try:
        for key in ("union", "own"):
            rows = np.asarray(record[key], dtype=float)
            if rows.shape != (done, n) or not np.isfinite(rows).all():
                raise ValueError(f"{key} must be {done} finite rows of {n}, got shape {rows.shape}")
        for key in ("trainable_per_task", "seconds_per_task", "n99"):
            if not isinstance(record[key], list):
                raise ValueError(f"{key} must be a list")
        if not isinstance(record["activation"], dict) or not all(isinstance(v, dict)
                                                                 for v in record["activation"].values()):
            raise ValueError("activation must map stages to {task: weights}")
        threads = record.get("threads", [None] * done)  # absent: written before thread counts were recorded
        if not isinstance(threads, list) or len(threads) != done or not all(t is None or is_count(t) for t in threads):
            raise ValueError(f"threads must list {done} thread count(s) (integers from 1 to {MAX_THREADS}), "
                             f"got {json.dumps(threads)}")
        np.random.default_rng().bit_generator.state = record["numpy_rng"]  # raises on a malformed state
        raw = bytes.fromhex(record["torch_generator"])
        if len(raw) != GENERATOR_STATE_BYTES:
            raise ValueError(f"torch_generator holds {len(raw)} bytes, not {GENERATOR_STATE_BYTES}")
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f"is malformed ({type(exc).__name__}: {exc})") from None
    if method != "zero_shot":
        from moram_ref.torch import checkpoint  # noqa: PLC0415

        for t in range(1, done + 1):  # every one: text-cl-routing reads them all, a merge copies them all
            ckpt = where / f"task{t}.safetensors"
            if not ckpt.is_file():
                raise _fail(ckpt, "is missing (progress.json says the task is done)" if not os.path.lexists(ckpt)
                            else "is not a readable file (a folder, a broken or looping link, or a device)")
            try:
                meta = checkpoint.verify(ckpt, config)
            except checkpoint.CheckpointError as exc:
                raise _fail(ckpt, _reason(exc, ckpt)) from None
            found = (meta.get("method"), meta.get("tasks_done"), meta.get("extra", {}).get("seed"),
                     meta.get("extra", {}).get("data"))
            if found != (method, t, seed, fingerprint):
                raise _fail(ckpt, f"was written for method {found[0]!r}, task {found[1]!r}, seed {found[2]!r} "
                                  f"(or other data), not {method!r}, task {t}, seed {seed}")
            _check_settings(ckpt, meta.get("extra", {}), settings, now)
    return record


def _check_settings(path: Path, record: dict, settings: dict | None, now: str = "now") -> None:
    """``record["settings"]`` (absent: an older record, accepted) equals ``settings`` (None: not compared)."""
    if settings is None or "settings" not in record:
        return
    recorded = record["settings"]
    if not isinstance(recorded, dict):
        raise _fail(path, f"is malformed (settings must map settings to values, got {type(recorded).__name__})")
    current = rundir.jsonable(settings)
    diff = _differences(recorded, current, now)
    if diff and not _differences(recorded, {**current, ENCODER_KEY: recorded.get(ENCODER_KEY)}, now):
        raise StateError(path, f"was written by a run with other settings ({diff})", ENCODER_ADVICE)
    if diff:
        raise _fail(path, f"was written by a run with other settings ({diff})")


def load(record: dict[str, Any] | None, where: Path, model, config, method: str, gen, rng: np.random.Generator,
         union: np.ndarray, own: np.ndarray, out: dict) -> int:
    """Restore a record validated by :func:`check` into ``model``, ``gen``, ``rng``, the rows and ``out``;
    returns the number of tasks done (0 for None)."""
    if record is None:
        return 0
    import torch  # noqa: PLC0415

    from moram_ref.torch import checkpoint  # noqa: PLC0415

    done = record["tasks_done"]
    if model is not None and done:
        try:
            checkpoint.load(model, where / f"task{done}.safetensors", config, method)
        except checkpoint.CheckpointError as exc:
            raise _fail(where / f"task{done}.safetensors", _reason(exc, where / f"task{done}.safetensors")) from None
    union[:done], own[:done] = np.array(record["union"]).reshape(done, -1), np.array(record["own"]).reshape(done, -1)
    out["trainable_per_task"][:] = record["trainable_per_task"]
    out["seconds_per_task"][:] = record["seconds_per_task"]
    out["n99"][:] = record["n99"]
    out["threads"][:] = record.get("threads", [None] * done)
    out["activation"].update({k: {n: np.array(w, dtype=np.float32) for n, w in v.items()}
                              for k, v in record["activation"].items()})
    rng.bit_generator.state = record["numpy_rng"]
    gen.set_state(torch.frombuffer(bytearray.fromhex(record["torch_generator"]), dtype=torch.uint8).clone())
    return done


def recorded_threads(where: Path) -> int | None:
    """The thread count the last recorded task in ``where`` ran on (its ``progress.json``, validated by
    :func:`check` before); None if there is no record, no task done, or the record predates thread counts.
    A resumed pair continues on it: another count gives other numbers (docs/results.md, "Threads and
    reproducibility")."""
    record = _validated(where)
    threads = record.get("threads") if record.get("tasks_done") else None
    return threads[-1] if threads else None


def tasks_done(where: Path) -> int:
    """How many tasks the record in ``where`` counts as done (validated by :func:`check` before); 0 if none."""
    done = _validated(where).get("tasks_done", 0)
    return done if isinstance(done, int) and not isinstance(done, bool) else 0


def _validated(where: Path) -> dict:
    """``where``'s ``progress.json``, which :func:`check` validated before; ``{}`` if there is none."""
    try:
        record = json.loads((where / PROGRESS).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
