"""Run folders (``--out``): one owner at a time, settings recorded, resumes checked, files written whole.

Every command that writes ``--out`` (``demo``, ``text-cl``, ``clip``, ``llm``) goes through
:func:`check` (read-only: may this run use the folder?) and then :func:`open_run` (lock it, record
the settings). The rules:

* **One run at a time.** ``<out>/.lock`` is locked (``fcntl.flock``) for the whole run and holds the
  owner's pid; the OS releases the lock when the process ends, crash included. A second run into the
  same folder stops with "in use by pid N" before touching anything. A run that fails before writing
  anything removes the folder it made, lock file included; a run that locked that file in the meantime
  finds it gone and locks the folder made anew (:func:`open_run`).
* **Settings recorded.** ``<out>/config.json`` holds ``{"command", "settings", "info"}``: ``settings``
  are every flag that shapes the results (model, data, sample caps, seeds, learning rate, methods, …;
  not runtime-only ones such as ``--device`` or ``--workers``, which the command lists), ``info`` is
  what the run found (task sizes, torch's thread count: :mod:`.threads`) and is never compared.
* **A resume must match.** ``--resume`` / ``--eval-only`` need a folder that holds a run of the same
  command with the same settings; every difference is listed (flag, recorded value, new value). A fresh
  run may reuse a folder only if it is empty or holds a run with the same settings (a re-run); a folder
  with other settings, or with files but no ``config.json``, is refused. On any refusal nothing in the
  folder changes, byte for byte.

JSON (:func:`dumps`, used by every result writer): strict JSON (``allow_nan=False``); an undefined
number (NaN, e.g. a matrix entry not evaluated) is written as ``null``, ±inf as ``null`` too; NumPy
arrays and scalars become lists and numbers, paths strings. Files are written atomically
(:func:`write_text`: a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import atexit
import csv
import errno
import fcntl
import io
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from moram_ref.experiments.cliargs import FOLDER_LOCK, UsageError, open_lock, unique_keys  # noqa: F401 (rundir.unique_keys)

CONFIG = "config.json"
LOCK = FOLDER_LOCK


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: NaN/±inf → None, NumPy → Python, tuples → lists, paths → str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # NumPy arrays and scalars
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def dumps(obj: Any) -> str:
    """Strict JSON text of ``obj`` (see the module docstring for the encoding of undefined numbers)."""
    return json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n"


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically: readers see the old file or the new one, never a part.

    Raises:
        OSError: the file system refused (same errno and subclass), naming ``path`` rather than the hidden
            temporary file beside it; ``path`` is then as before.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, f"could not write {path} ({exc.strerror})") from exc
        raise


MAX_RESULTS_BYTES = 256 * 2**20  # a results or record file read whole: the largest run's files are a few MiB


def read_results_text(path: Path) -> str:
    """A results/record file's text: only a regular file (a FIFO would block, a device never end) of at most
    :data:`MAX_RESULTS_BYTES`. ``ValueError`` says which rule it broke; ``OSError`` as reading raises it."""
    if not path.is_file():
        raise ValueError("not a regular file" if path.exists() or path.is_symlink() else "no such file")
    size = path.stat().st_size
    if size > MAX_RESULTS_BYTES:
        raise ValueError(f"{size} bytes: more than a results file holds ({MAX_RESULTS_BYTES} at most)")
    return path.read_text()


def umask() -> int:
    """The process's file-creation mask (os.umask can only be read by setting it: set to 0 and back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """:func:`dumps` then :func:`write_text`."""
    write_text(path, dumps(obj))


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_stop_requested = threading.Event()


def request_stop() -> None:
    """Note that a stop signal arrived (the CLI's handler calls it before raising ``KeyboardInterrupt``), so
    that an interrupt Python swallows — one raised inside a garbage-collection or fork callback is only
    reported as "Exception ignored" — still stops the command: :func:`publish` refuses, and the CLI ends
    with "interrupted", exit status 130."""
    _stop_requested.set()


def stop_requested() -> bool:
    """Whether a stop signal arrived since :func:`clear_stop`."""
    return _stop_requested.is_set()


_published_while_held: list[Path] = []  # folders whose outputs were all published while a stop was held
_opened: list[Path] = []  # run folders this command opened to write into (open_run), in order


def clear_stop() -> None:
    _stop_requested.clear()
    _published_while_held.clear()
    _opened.clear()


def opened_runs() -> list[Path]:
    """The run folders :func:`open_run` has opened for writing (a run recorded there) since :func:`clear_stop`:
    where an interrupted command left work that its ``--resume`` continues (the CLI says so)."""
    return list(_opened)


def published_while_held() -> list[Path]:
    """The folders :func:`publish` replaced whole while holding a stop signal that then ended the command:
    their outputs are complete and new (the CLI says so beside "interrupted"). Emptied by :func:`clear_stop`."""
    return list(_published_while_held)


def quiet_swallowed_interrupts(unraisable) -> None:
    """A ``sys.unraisablehook`` for a command that handles stop signals: an interrupt raised inside a callback
    Python cannot propagate from (garbage collection, an import lock's, fork) was noted by
    :func:`request_stop` and ends the command at its next check, so no traceback is printed for it. Nor for a
    DataLoader worker that the same stop signal ended (SIGTERM or SIGINT to the process group: ``--workers``),
    which torch reports as a ``RuntimeError`` while the loader shuts down. Anything else goes to Python's own
    hook."""
    if stop_requested() and (issubclass(unraisable.exc_type, KeyboardInterrupt) or _worker_stopped(unraisable)):
        return
    sys.__unraisablehook__(unraisable)


def _worker_stopped(unraisable) -> bool:
    """Torch's report of a DataLoader worker ended by a signal ("DataLoader worker (pid N) is killed by signal")."""
    return (issubclass(unraisable.exc_type, RuntimeError) and "DataLoader worker" in str(unraisable.exc_value)
            and "killed by signal" in str(unraisable.exc_value))


def exit_after_a_stop(status: int) -> None:
    """End the process with ``status`` (130 after "interrupted") after a stop signal, never by the signal itself.

    CPython marks a ``KeyboardInterrupt`` that leaves Python source run from C (``PyRun_String``; pybind11 runs
    some while torch is imported) as unhandled, even when the command then catches it; a process started with
    ``python -m`` so marked kills itself with SIGINT once it has shut down (exit status -2, also after a
    SIGTERM), whatever the command returned (a console script, run as a file, exits normally). So here the
    ``atexit`` functions run and the standard streams are flushed, as at a normal exit, and the process ends
    with ``os._exit``: what that skips is tearing the modules down and waiting for threads that are not
    daemons (the commands start none). The caller ignores the stop signals before (``moram_ref.cli.entry``,
    ``moram_ref.gpu_check``).
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed or full stream: its refusal was reported already, if it mattered
            pass
    os._exit(status)


def check_stop() -> None:
    """Raise ``KeyboardInterrupt`` if a stop was noted (:func:`request_stop`): called before every step
    that changes a run folder and between the long phases of a command."""
    if _stop_requested.is_set():
        raise KeyboardInterrupt


@contextmanager
def uninterrupted(on_held: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then deliver them: for the few renames that
    replace a command's outputs together, so an interrupt leaves either all old or all new files.

    The signals are held at the Python level (a handler that only records them), not with a thread's
    signal mask: the kernel hands a process-directed signal (Ctrl-C, ``kill``) to any thread that does not
    block it (a BLAS or torch worker), and Python would then run the real handler in the main thread in
    the middle of the block. A recorded signal is raised again once the previous handlers are back, so it
    acts exactly as it would have (``KeyboardInterrupt``, the CLI's handler, the default action, or
    nothing if it was ignored). ``on_held`` is called, before that, if a signal was held and the block
    ended normally. Outside the main thread, where Python never runs signal handlers, this is a plain block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in STOP_SIGNALS}
    completed = False
    try:
        yield
        completed = True
    finally:
        for sig, handler in previous.items():  # None: a handler set outside Python; the default stands in
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if arrived and completed and on_held is not None:
            on_held()
        for sig in dict.fromkeys(arrived):  # each held signal once, in the order it came
            signal.raise_signal(sig)


@contextmanager
def staging(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden folder inside ``out`` (``.staging-*``) where a command writes its outputs; removed with
    whatever is left in it when the block ends (after :func:`publish`, nothing is). Outputs written there and
    published together never leave a folder with some new files beside old or missing ones (figures
    without their ``results.json``). Call it only while holding ``out``'s lock (:func:`open_run`): staging
    folders that a killed run left behind are removed first."""
    check_stop()
    for left in Path(out).glob(".staging-*"):
        shutil.rmtree(left, ignore_errors=True)
    stage = None
    try:
        with uninterrupted():  # an interrupt right after the folder is made is delivered inside the try
            try:
                stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
            except OSError as exc:
                raise OSError(exc.errno, f"could not create a folder for the outputs in {out} ({exc.strerror})") \
                    from None
        yield stage
    finally:
        if stage is not None:
            with uninterrupted():  # an interrupt here would leave the stage (and the replaced files in it)
                shutil.rmtree(stage, ignore_errors=True)


def _renames(moves: list[tuple[Path, Path]], out: Path, verb: str) -> None:
    """``os.replace`` every ``(source, target)`` in order; on an ``OSError`` undo those done, in reverse
    and best effort, then raise an ``OSError`` of the same errno that names the file of ``out`` concerned
    (not a hidden staging path) and says whether ``out`` is as before. Call it under :func:`uninterrupted`."""
    done: list[tuple[Path, Path]] = []
    try:
        for source, target in moves:
            os.replace(source, target)
            done.append((source, target))
    except OSError as exc:
        as_before = True
        for undo_source, undo_target in reversed(done):
            try:
                os.replace(undo_target, undo_source)
            except OSError:
                as_before = False
        name = next((p for p in (source, target) if Path(p).parent == out), Path(target)).name
        state = "every file there is as before" if as_before else "some files could not be put back"
        raise OSError(exc.errno, f"{out}: could not {verb} {name} ({exc.strerror}); {state}") from exc


def publish(stage: Path, out: str | os.PathLike, stale: tuple[str, ...] = ()) -> list[str]:
    """Move every file of ``stage`` into ``out``, replacing files of the same name, and remove the files of
    ``out`` that match a ``stale`` glob pattern but were not staged (figures a run with ``--no-plots`` does
    not redraw); returns the names moved, sorted.

    All or nothing: everything happens under :func:`uninterrupted`, JSON files last; on an ``OSError`` (a
    read-only folder, a full disk) every step taken is undone, best effort, and the error is raised. A folder
    where a file goes is refused before any step (``IsADirectoryError``): it is never moved aside and deleted.
    Raises ``KeyboardInterrupt`` without touching ``out`` if a stop was requested (:func:`request_stop`)
    but swallowed on its way. Only a kill (SIGKILL, power) inside the renames can leave a mix.
    """
    check_stop()
    out = Path(out)
    names = sorted((p.name for p in stage.iterdir() if p.is_file()), key=lambda n: (n.endswith(".json"), n))
    for name in names:  # a folder there would be moved aside with the replaced files, and deleted with them
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise IsADirectoryError(errno.EISDIR, f"{out}: could not write {name}: a folder of that name is there "
                                                  "(nothing was replaced); move it away and run again (with "
                                                  "--resume, where the command has it: the work done is kept)")
    gone = sorted({p for pattern in stale for p in out.glob(pattern) if p.is_file() and p.name not in names})
    aside = Path(tempfile.mkdtemp(prefix=".previous-", dir=stage))  # the replaced files, until the stage goes
    moves: list[tuple[Path, Path]] = []
    for name in names:
        if (out / name).exists():
            moves.append((out / name, aside / name))
        moves.append((stage / name, out / name))
    moves += [(path, aside / path.name) for path in gone]
    with uninterrupted(on_held=lambda: _published_while_held.append(out)):
        _renames(moves, out, "replace")
    return names


def remove(out: str | os.PathLike, patterns: tuple[str, ...]) -> list[str]:
    """Remove what matches the glob ``patterns`` in ``out`` (files and folders), all or nothing: a fresh
    re-run clears the earlier run's outputs and state at once, so neither an interrupt (held, under
    :func:`uninterrupted`) nor a file-system refusal (every move undone, then the ``OSError`` raised) can
    leave results beside the state of another run. Everything is first moved into a hidden
    ``.removing-*`` folder of ``out``, then deleted (what cannot be deleted stays there, out of the way,
    and goes with the next removal). Returns the names removed, sorted."""
    check_stop()
    out = Path(out)
    found = sorted({p for pattern in patterns for p in out.glob(pattern)})
    if not found:
        return []
    for left in out.glob(".removing-*"):
        shutil.rmtree(left, ignore_errors=True)
    with uninterrupted():
        trash = Path(tempfile.mkdtemp(prefix=".removing-", dir=out))
        try:
            _renames([(path, trash / path.name) for path in found], out, "remove")
        finally:
            shutil.rmtree(trash, ignore_errors=True)  # the removed files, or nothing if all was undone
    return [p.name for p in found]


def clear_earlier(out: str | os.PathLike, patterns: tuple[str, ...], log: Callable[[str], Any] | None) -> None:
    """A fresh run (not ``--resume``/``--eval-only``) into a folder that holds an earlier run with the same
    settings starts from scratch: the earlier run's outputs and state (``patterns``, see :func:`remove`) go
    first, all or nothing, so an interrupted re-run never leaves old results beside new progress. ``log``
    (optional) is told what was removed."""
    removed = remove(out, patterns)
    if removed and log is not None:
        log(f"a fresh run into {out}: removed the earlier run's {', '.join(removed)} (--resume continues a run "
            "instead of starting it again)")


def write_csv(path: str | os.PathLike, rows: list[list]) -> None:
    """Write ``rows`` as CSV, atomically."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    write_text(path, buffer.getvalue())


def _flag(key: str) -> str:
    """The flag a setting comes from; ``<flag>_sha256``: the content of the file that flag names."""
    if key.endswith("_sha256"):
        return _flag(key.removesuffix("_sha256")) + " (the file's sha256)"
    return "--" + key.replace("_", "-")


def differences(recorded: dict, settings: dict) -> list[str]:
    """``"--flag: recorded R, now N"`` for every setting that differs (both as JSON values; an unset flag: "not
    given"). A file digest (``<key>_sha256``) that the record lacks is not compared: records written before
    digests were kept. Where both hold the digest, the file's path (``<key>``) is not compared: the content
    decides, so a file moved or renamed since (same content) is accepted."""
    new = jsonable(settings)
    by_content = {k.removesuffix("_sha256") for k in recorded if k.endswith("_sha256") and k in new}
    keys = sorted((set(recorded) | {k for k in new if not (k.endswith("_sha256") and k not in recorded)}) - by_content)
    return [f"{_flag(k)}: recorded {_shown(recorded.get(k))}, now {_shown(new.get(k))}"
            for k in keys if recorded.get(k, "<absent>") != new.get(k, "<absent>")]


def _shown(value: Any) -> str:
    """A setting as a message gives it: its JSON, or "not given" for a flag left unset (None)."""
    return "not given" if value is None else json.dumps(value)


def _holder(out: Path) -> str | None:
    """The pid holding ``out``'s lock (as text), or None when nobody holds it."""
    lock = out / LOCK
    if not lock.is_file():
        return None
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "?"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def check(out: Path, command: str, settings: dict, *, resume: bool = False, eval_only: bool = False,
          arg: str = "--out") -> dict | None:
    """May a ``command`` run with ``settings`` use ``out``? Reads only; raises :class:`UsageError`.
    ``arg``: how the command names the folder, for the messages (a reading command passes its argument).

    Returns the recorded ``config.json`` content when the folder holds a run (else None).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{arg}: {out} exists and is not a folder")
    if not out.is_dir():
        if resume or eval_only:
            raise UsageError(f"{_folder_arg(resume, eval_only, arg)}: no run folder at {out}")
        return None
    holder = _holder(out)
    if holder is not None:
        raise UsageError(_in_use(out, holder, arg))
    return _check_record(out, command, settings, resume, eval_only, arg)


def _folder_arg(resume: bool, eval_only: bool, arg: str) -> str:
    if arg != "--out":
        return arg
    return "--resume" if resume else "--eval-only" if eval_only else "--out"


def _in_use(out: Path, holder: str, arg: str) -> str:
    return (f"{arg}: {out} is in use by another run (pid {holder}); wait for it"
            + (" or choose another --out" if arg == "--out" else ""))


def _check_record(out: Path, command: str, settings: dict, resume: bool, eval_only: bool,
                  arg: str = "--out") -> dict | None:
    """The folder's contents against this run: a record of the same command and settings, or nothing."""
    flag = _folder_arg(resume, eval_only, arg)
    config_path = out / CONFIG
    if not config_path.is_file():
        if resume or eval_only:
            raise UsageError(f"{flag}: {out} holds no run ({CONFIG} missing)")
        others = sorted(p.name for p in out.iterdir() if p.name != LOCK)
        if others:
            raise UsageError(f"--out: {out} is not empty and holds no moram-ref run (no {CONFIG}; found "
                             f"{', '.join(others[:3])}{' …' if len(others) > 3 else ''}); choose a new or empty folder")
        return None
    try:
        recorded = json.loads(config_path.read_text())
        recorded_command, recorded_settings = recorded["command"], recorded["settings"]
        if not isinstance(recorded_command, str) or not isinstance(recorded_settings, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"--out: {config_path} is not a moram-ref run record (unreadable, or no "
                         "'command'/'settings'); choose another --out") from None
    if recorded_command != command:
        raise UsageError(f"{flag}: {out} holds a {recorded_command!r} run, not {command!r}; choose another --out")
    diff = differences(recorded_settings, settings)
    if diff:
        how = ("settings differ from the recorded run" if resume or eval_only else
               "holds a run with other settings (remove it or choose another --out)")
        raise UsageError(f"{flag}: {out} {how}: " + "; ".join(diff))
    return recorded


class RunFolder:
    """An open, locked run folder (see :func:`open_run`)."""

    def __init__(self, path: Path, lock_file):
        self.path = path
        self._lock = lock_file

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None


@contextmanager
def open_run(out: Path, command: str, settings: dict, *, resume: bool = False, eval_only: bool = False,
             info: dict | None = None, primary: bool = True, arg: str = "--out",
             reads_only: bool = False) -> Iterator[RunFolder]:
    """Lock ``out`` for this run and record ``settings`` (after :func:`check`, repeated under the lock).
    ``arg``: how the command's users name the folder (its flag or positional argument), for the messages.

    A folder whose lock file cannot be opened for writing (a read-only mount) is refused with an
    ``OSError`` naming it, unless ``reads_only`` (the command only reads it, e.g. a part of
    ``text-cl-merge``): then its existing lock is taken shared, which still waits for no one and fails
    if a run holds it, and a folder without a lock file is read unlocked (no run can be writing it:
    every run creates the lock file first).

    ``primary=False`` (a non-zero ``torchrun`` rank) takes no lock and writes nothing: rank 0 owns the folder.
    ``config.json`` is (re)written for a fresh run; a resume or an evaluation leaves the matching record as it is.
    """
    out = Path(out)
    if not primary:
        yield RunFolder(out, None)
        return
    check_stop()
    check(out, command, settings, resume=resume, eval_only=eval_only, arg=arg)
    for _ in range(LOCK_ATTEMPTS):
        new = not out.exists() and not out.is_symlink()  # this command makes the folder (a user's own one stays)
        was_empty = out.is_dir() and next(out.iterdir(), None) is None
        made = out  # the outermost folder this command makes (--out a/b/c with only a there: a/b)
        while new and not made.parent.exists() and made.parent != made:
            made = made.parent
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(exc.errno, f"{arg}: could not create the folder {out} ({exc.strerror})") from None
        try:
            fh = open_lock(out / LOCK, arg)
        except OSError as exc:  # a read-only folder or file system: the command could write nothing there either
            if not reads_only:
                raise _unwritable(out, exc, f"on its lock file {LOCK}", arg, resume or eval_only) from None
            yield from _read_unwritable(out, command, settings, resume, eval_only, arg)
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise UsageError(_in_use(out, holder, arg)) from None
        if _is_file_at(fh, out / LOCK):
            break
        fh.close()  # a run that failed removed the folder, lock included, between our open and our lock: again
    else:
        raise UsageError(f"{arg}: {out} was removed {LOCK_ATTEMPTS} times while this run was taking its lock "
                         "(other runs failing into it?); try again")
    folder = RunFolder(out, fh)
    try:
        _check_record(out, command, settings, resume, eval_only, arg)  # again: another run may have written meanwhile
        if not reads_only:  # the lock file may be writable in a folder that is not (`chattr +i`): found now
            try:
                probe, name = tempfile.mkstemp(prefix=".write-check-", dir=out)
                os.close(probe)
                os.unlink(name)
            except OSError as exc:
                raise _unwritable(out, exc, "on a new file", arg, resume or eval_only) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        if not (resume or eval_only):  # a fresh run (or a re-run with the same settings) records itself
            write_json(out / CONFIG, {"command": command, "settings": settings, "info": info or {}})
        if not reads_only:
            _opened.append(out)
        yield folder
    except Exception:
        # failed before writing anything: no record is left to refuse the next run ("holds a run with other settings")
        if (new or was_empty) and _only_its_record(out):
            _remove_its_record(made if new else out, whole=new)
            if out in _opened:
                _opened.remove(out)
        raise
    finally:
        folder.close()


LOCK_ATTEMPTS = 3  # open_run's tries at locking a folder that runs failing into it remove meanwhile


def _is_file_at(fh, path: Path) -> bool:
    """Whether the open file ``fh`` is still the one at ``path`` (not removed, nor replaced, since it was opened)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fh.fileno())
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def _remove_its_record(out: Path, whole: bool) -> None:
    """Remove what a failed run wrote into ``out`` (its record, lock and empty folders, while the lock is still
    held): the folder itself, with the parents it made, if the run made it (``whole``), else only its contents."""
    if whole:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in sorted(out.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # the deepest first
        try:
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            pass


def _only_its_record(out: Path) -> bool:
    """Whether ``out`` holds nothing but the run's record and lock (and empty folders)."""
    return all(p.is_dir() and not p.is_symlink() or (p.parent == out and p.name in (CONFIG, LOCK))
               for p in out.rglob("*"))


def _unwritable(out: Path, exc: OSError, where: str, arg: str, existing_run: bool) -> OSError:
    """The refusal of a run folder the file system does not let this command write (``exc``)."""
    advice = ("choose another --out" if arg == "--out" and not existing_run else
              f"copy the run folder somewhere writable and give the copy as {arg}")
    return OSError(exc.errno, f"{arg}: {out} is not writable here ({exc.strerror}, {where}); this command writes "
                              f"into it: {advice}")


def _read_unwritable(out: Path, command: str, settings: dict, resume: bool, eval_only: bool,
                     arg: str) -> Iterator[RunFolder]:
    """:func:`open_run` for a folder that is only read and cannot be written: a shared lock, or none."""
    fh = open(out / LOCK) if (out / LOCK).is_file() else None
    if fh is not None:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = fh.read().strip() or "?"
            fh.close()
            raise UsageError(_in_use(out, holder, arg)) from None
    folder = RunFolder(out, fh)
    try:
        _check_record(out, command, settings, resume, eval_only, arg)
        yield folder
    finally:
        folder.close()


def require_checkpoints(out: Path, methods: list[str], n_tasks: int) -> None:
    """``--eval-only`` needs every task's checkpoint of every trained method under ``out``: UsageError
    naming the first missing file otherwise (checked before any work)."""

    for method in (m for m in methods if m != "zero_shot"):
        for t in range(n_tasks):
            path = Path(out) / method / "checkpoints" / f"task{t + 1}.safetensors"
            if not path.is_file():
                raise UsageError(f"--eval-only: no checkpoint {path} (train, or --resume, first)")
