"""Command-line input checks shared by every ``moram-ref`` sub-command: argparse types that reject a bad
value as it is parsed, a parser whose errors are one line, and :class:`UsageError` for the checks that
need several flags or the files on disk (run before any work starts, nothing written).

Every message names the flag (or file), the value and what is allowed; ``moram_ref.cli`` prints it as
``moram-ref <command>: error: <message>`` and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import fcntl
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable


class UsageError(ValueError):
    """Bad command-line input (a flag, a combination of flags, or an input file); the message is one line."""


def one_line(message: str) -> str:
    """``message`` on one line, as the CLI prints errors: each line break, with the blanks around it, becomes one
    space; blanks inside a line stay as they are (a value quoted in the message may hold several)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class _HelpWithDefaults(argparse.HelpFormatter):
    """Help that names every flag's default: a help text that does not say it gets ``(default X)`` appended
    (lists as their items; no default, None or a switch's False: nothing added)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or any(default is x for x in (None, False, argparse.SUPPRESS))
                or default == []):  # identity: a default of 0 is shown
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default {shown.replace('%', '%%')})"


class DescribedHelp(argparse.RawDescriptionHelpFormatter, _HelpWithDefaults):
    """:class:`_HelpWithDefaults` for a module run as a script (``python -m moram_ref.bench``): its
    description (the module docstring) kept with its own line breaks."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a single line on stderr (exit status 2), no usage block, whose
    help names every flag's default, and which takes no abbreviated flag (a typo is refused, not guessed)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpWithDefaults)
        kwargs.setdefault("allow_abbrev", False)  # `--shot 4` is a typo, not --shots: refused, never guessed
        super().__init__(*args, **kwargs)

    _probing = False  # True while parse_args looks for unknown flags (required arguments switched off)

    def print_help(self, file=None):  # noqa: ANN001, D102
        if self._probing:
            raise _HelpAsked
        super().print_help(file)

    def error(self, message: str):  # noqa: D102  (argparse's hook)
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, D102
        # argparse reports flags no command knows from the top parser ("moram-ref: error: unrecognized
        # arguments"), and only once every required argument was given; here a flag nobody knows is named
        # first (a typo in `--data-roo` is the error, not the --data-root it seems to lack), with its command
        parsers = list(_parsers(self))
        required = [a for p in parsers for a in p._actions if a.required]
        for action in required:
            action.required = False
        for parser in parsers:
            parser._probing = True  # a --help now would show the required flags as optional: asked again below
        try:
            parsed, extras = self.parse_known_args(args, namespace)
        except _HelpAsked:
            extras = []
        finally:
            for action in required:
                action.required = True
            for parser in parsers:
                parser._probing = False
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command and not self.prog.endswith(f" {command}") else self.prog
            self.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)}\n")
        return super().parse_args(args, namespace)


class _HelpAsked(Exception):
    """--help met while :meth:`Parser.parse_args` looks for unknown flags: the help is shown by the real parse."""


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-command's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _digits(text: str) -> str:
    """``text`` for ``int``/``float``, which also read ``1_0`` as 10: an underscore is refused (ValueError), so
    a typo such as ``--lr 1_0`` (for 1.0?) is not taken as 10."""
    if "_" in text:
        raise ValueError(text)
    return text


def _typed(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    parse.__name__ = name  # argparse shows it in "invalid <name> value"
    return parse


# Upper bounds on sizes, far above any real setting: a typo (10⁸ atoms, 10²⁰ shots) is refused by its flag
# instead of asking for tens of GB, overflowing a C integer, or forking processes without end.
MAX_ATOMS = 2**16  # --atoms-per-task, --top-k (the paper: 16 per task for CLIP, 8 for LLMs)
MAX_COUNT = 2**20  # sample counts per batch or task: --shots, --eval-batch
MAX_WORKERS = 1024  # data-loader worker processes
MAX_SEED = 2**32 - 1  # --seed: what every seeding API takes (the tracks derive per-task seeds as seed·1000 + t)


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[minimum, maximum]``."""
    allowed = f"an integer ≥ {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(_digits(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {value}")
        return value

    return _typed("integer", parse)


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
         nonzero: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite real number in the given (half-)open or closed interval."""
    if low is None and high is None:
        allowed = "a finite number"
    elif high is None:
        allowed = f"a finite number {'>' if low_open else '≥'} {low:g}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    allowed += " ≠ 0" if nonzero else ""

    def parse(text: str) -> float:
        try:
            value = float(_digits(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        bad = not math.isfinite(value) or (nonzero and value == 0)
        bad = bad or (low is not None and (value < low or (low_open and value == low)))
        bad = bad or (high is not None and (value > high or (high_open and value == high)))
        if bad:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text}")
        return value

    return _typed("number", parse)


# --lr's range: above about 3e37 torch's Adam/AdamW cannot convert the step to float32 (a raw RuntimeError);
# no run diverging from a large rate needs more than 1e30 to show it.
MAX_LR = 1e30


# --scale's range: far above it the update overflows float32 inside a matrix product (torch raises there);
# no run needs more than this, and at 1e30 training already stops naming the first non-finite gradient norm.
MAX_SCALE = 1e30


def learning_rate() -> Callable[[str], float]:
    """An argparse type for ``--lr``: a finite number in (0, :data:`MAX_LR`]."""
    return real(0, MAX_LR, low_open=True)


def model_name(text: str) -> str:
    """An argparse type for a model's name (open_clip's ``--model``): not empty, not blank (an empty name
    would fall back to the default model without a word) and without blanks at either end."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a model name, got " + ("an empty one" if not text
                                                                           else f"only blanks ({text!r})"))
    if text != text.strip():
        raise argparse.ArgumentTypeError(f"expected a model name without blanks at either end, got {text!r}")
    return text


def path_problem(text: str, what: str) -> str | None:
    """What makes ``text`` unusable as a ``what`` ('file' or 'folder') path, or ``None``: empty (which would read
    as the current folder), or not UTF-8 (a name in another encoding reaches Python as unpaired surrogates, which
    the run's JSON records, the tokenizer files and ``--resume`` cannot write back)."""
    if not text:
        return f"expected a {what} path, got an empty one"
    if not text.strip():
        return f"expected a {what} path, got only blanks ({text!r})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        return (f"'{shown}' is not valid UTF-8 (moram-ref records the paths it is given in UTF-8 JSON): rename it, "
                "or give another path")
    return None


def _path(text: str, what: str) -> Path:
    """``text`` as a path (``~`` expanded) after :func:`path_problem`'s checks (``ArgumentTypeError``)."""
    if why := path_problem(text, what):
        raise argparse.ArgumentTypeError(why)
    return Path(text).expanduser()


def broken_link(path: Path) -> str | None:
    """What is wrong with ``path`` or the nearest of its parents that is a symbolic link leading nowhere: a link
    to a missing target, or a loop of links (both of which ``Path.exists`` reports only as False); ``None`` when
    ``path`` and its parents are plain, or links that resolve."""
    for link in (path, *path.parents):
        if link.is_symlink() and not link.exists():
            if _loops(link):
                return f"{link} is a loop of symbolic links"
            target, end = os.readlink(link), os.path.realpath(link)
            via = "" if os.path.join(link.parent, target) == end else f", which leads to {end}"
            return f"{link} is a symbolic link to {target}{via}, which does not exist"
        if link.exists():
            return None
    return None


def _loops(link: Path) -> bool:
    """Whether following ``link`` never ends (a loop of symbolic links)."""
    try:
        os.stat(link)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def usable_path(flag: str, text: str, what: str = "file") -> Path:
    """``text`` checked as :func:`path_problem` and :func:`broken_link` do, for a path flag that argparse does
    not type (one that may also name something else, e.g. a hub model); :class:`UsageError` naming ``flag``."""
    if why := path_problem(text, what):
        raise UsageError(f"{flag}: {why}")
    path = Path(text).expanduser()
    if why := broken_link(path.absolute()):
        raise UsageError(f"{flag}: {why}")
    return path


def _missing(text: str, path: Path, what: str) -> str:
    """The message for a ``what`` ('folder' or 'file') at ``path`` that does not exist."""
    return broken_link(path) or f"{what} {text!r} does not exist"


def existing_dir(text: str) -> Path:
    """An argparse type: a folder that exists ('' is refused, not read as the current folder)."""
    path = _path(text, "folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing folder" if path.exists()
                                         else _missing(text, path, "folder"))
    return path


def existing_file(text: str) -> Path:
    """An argparse type: a file that exists."""
    path = _path(text, "file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file" if path.exists() else _missing(text, path, "file"))
    return path


def out_dir(text: str) -> Path:
    """An argparse type: a run folder to create or reuse; not a file, its nearest existing parent a folder,
    no symbolic link on the way that leads nowhere."""
    path = _path(text, "folder")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    trouble = broken_link(path.absolute())
    if trouble:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {trouble}")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {parent} is not a folder")
    return path


def out_file(text: str) -> Path:
    """An argparse type: a file to write, in a folder that exists; not a folder itself. A symbolic link is
    written through: the file it names is returned (created if missing; files are written whole by a rename,
    which would replace the link itself)."""
    path = _path(text, "file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a file path")
    if text.endswith(os.sep):  # Path drops the separator: 'b.json/' would write the file b.json
        raise argparse.ArgumentTypeError(f"{text!r} ends with {os.sep!r}, which names a folder; expected a file path")
    if path.is_symlink() and broken_link(path.absolute().parent) is None:
        if _loops(path):
            raise argparse.ArgumentTypeError(f"{text!r} cannot be written: it is a loop of symbolic links")
        path = Path(os.path.realpath(path))  # a missing file it names is made, in its folder
    trouble = broken_link(path.absolute())
    if trouble:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written: {trouble}")
    if not path.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: folder {path.parent} does not exist")
    return path


def name_list(flag: str, values: Sequence[str] | None, known: Iterable[str]) -> list[str] | None:
    """``values`` checked against ``known`` (with a "did you mean" hint) and for repeats; ``None`` passes."""
    if values is None:
        return None
    known = list(known)
    for value in values:
        if value not in known:
            close = difflib.get_close_matches(value, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"{flag}: unknown name {value!r} ({hint}choices: {', '.join(known)})")
    repeated = sorted({v for v in values if list(values).count(v) > 1})
    if repeated:
        raise UsageError(f"{flag}: {', '.join(map(repr, repeated))} given more than once")
    return list(values)


def no_repeats(flag: str, values: Sequence[str] | None) -> None:
    """Reject a list flag that names the same choice twice."""
    if values:
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            raise UsageError(f"{flag}: {', '.join(map(repr, repeated))} given more than once")


def conflict(args: argparse.Namespace, *flags: str) -> None:
    """Reject using more than one of ``flags`` (``--foo-bar`` reads ``args.foo_bar``) at once."""
    used = [f for f in flags if getattr(args, f.lstrip("-").replace("-", "_"))]
    if len(used) > 1:
        raise UsageError(f"{used[0]} and {used[1]} cannot be used together")


def synthetic_target(flag: str, root: Path, marker: str) -> None:
    """Refuse to generate data into ``root`` (a folder inside the one given to ``flag``) when it already holds
    files that generation did not write (no ``marker`` file there): a user's real data would be overwritten.
    Also refused: ``root`` not a folder, or it or its parent a symbolic link to nothing."""
    try:
        held = root.is_dir() and next(root.iterdir(), None) is not None
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {root}: {exc.strerror or exc}") from None
    if root.exists() and not root.is_dir():
        raise UsageError(f"{flag}: {root} exists and is not a folder")
    for path in (root.parent, root):  # the folder given to ``flag``, and the one generation fills in it
        if path.is_symlink() and not path.exists():
            raise UsageError(f"{flag}: {path} is a symbolic link to {os.readlink(path)}, which does not exist")
    if (root.parent / "config.json").is_file():  # rundir.CONFIG: generated data would sit among a run's files
        raise UsageError(f"{flag}: {root.parent} holds a run (config.json there); give a folder of its own for "
                         "the data")
    if held and not (root / marker).is_file():
        raise UsageError(f"{flag}: {root} already holds files that {flag} did not write (no {marker} file there); "
                         "generated data would overwrite them: give another folder")


def unused_with(args: argparse.Namespace, add_arguments: Callable[[argparse.ArgumentParser], None], flag: str) -> None:
    """Refuse every other flag given with ``flag`` (a command's mode that reads no other setting, e.g.
    --make-synthetic): a flag that changes nothing would pass silently. Flags are found by comparing ``args``
    with the defaults of the command's own arguments (``add_arguments``)."""
    dest = flag.lstrip("-").replace("-", "_")
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    defaults = {a.dest: a.default for a in parser._actions}
    given = [flags[k] for k, v in vars(args).items() if k in flags and k != dest and v != defaults.get(k)]
    if given:
        raise UsageError(f"{given[0]}: not used with {flag}, which only writes the data and exits")


def synthetic_unfinished(flag: str, root: Path, marker: str) -> None:
    """Refuse generated data whose writing was stopped: its marker (written first) still says
    ``"complete": false`` — some files would be missing or cut short while the marker vouches for the rest."""
    path = root / marker
    if not path.is_file():
        return  # no marker: real data
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{flag}: {root} holds a {marker} that cannot be read as JSON ({exc}): a marker of "
                         "--make-synthetic damaged (written by a version without whole-file writes when a disk "
                         "filled?); run --make-synthetic again, or remove the file if the data is real") from None
    if _says_unfinished(record):
        raise UsageError(f"{flag}: {root} holds --make-synthetic data whose writing was stopped before it finished "
                         f"({marker} says so); run --make-synthetic again to complete it")


@contextmanager
def writing_synthetic(flag: str, directory: Path, marker: str) -> Iterator[None]:
    """Around generating data into the folders of ``directory`` (each marked by its ``marker`` file, written
    whole before the data as unfinished and rewritten finished after it): an ``OSError`` that names no file (a
    full disk fails a write so) is raised again naming ``directory`` and what it leaves — folders marked
    unfinished, which runs refuse until ``flag`` completes them, or, where the failed write was a marker's,
    nothing marked unfinished (no data is written before its marker).

    Two commands writing into one ``directory`` at once would interleave their files: the second is refused
    (:class:`UsageError` naming the first's pid) while the first holds ``directory/.lock`` — the lock a run
    takes on its folder (:data:`FOLDER_LOCK`), released by the OS when the process ends."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag}: could not create the folder {directory} ({exc.strerror or exc})") from None
    try:
        lock = open_lock(directory / FOLDER_LOCK, flag)
    except OSError as exc:
        raise UsageError(f"{flag}: could not create {directory / FOLDER_LOCK} ({exc.strerror or exc}); give a "
                         "folder this user can write") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UsageError(f"{flag}: {directory} is being written by another process (pid "
                             f"{lock.read().strip() or '?'}); wait for it to finish") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield from _writing(flag, directory, marker)


FOLDER_LOCK = ".lock"  # a folder's lock file, held for a run (rundir) or for --make-synthetic


def open_lock(path: Path, flag: str) -> IO[str]:
    """Open (create) the lock file ``path`` for reading and appending, without following a symbolic link: the
    holder writes its pid into it, which would overwrite whatever a link leads to. :class:`UsageError` (naming
    ``flag``) for a link or for something other than a file there; ``OSError`` where it cannot be opened."""
    if path.is_symlink():
        raise UsageError(f"{flag}: {path} (the folder's lock) is a symbolic link, to {os.readlink(path)}; remove "
                         "it (the lock's holder writes its pid into the file, which would overwrite what it leads to)")
    if path.exists() and not path.is_file():
        raise UsageError(f"{flag}: {path} (the folder's lock) exists and is not a file; remove it")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    return open(fd, "a+")  # noqa: SIM115 (the caller holds it for the lock's lifetime)


def _writing(flag: str, directory: Path, marker: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        said = exc.strerror or str(exc)
        said = said if said.startswith("could not write ") else f"could not write the data under {directory} ({said})"
        unfinished = [str(m.parent) for m in sorted(Path(directory).glob(f"*/{marker}")) if not _finished(m)]
        left = (f"marked unfinished, so runs refuse it until {flag} completes it: {', '.join(unfinished)}" if unfinished
                else "no folder is left marked unfinished (no data is written before its marker)")
        raise OSError(exc.errno, f"{said}; {left}") from exc


def _finished(marker: Path) -> bool:
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return not _says_unfinished(record)


def _says_unfinished(record: Any) -> bool:
    """A marker record saying ``"complete"`` other than ``true`` (older markers have no ``"complete"``:
    written before it existed, whole; a marker that is not an object is not ours)."""
    return isinstance(record, dict) and "complete" in record and record["complete"] is not True


def moram_flags(p: argparse.ArgumentParser, defaults, extra: Sequence[str] = ()) -> None:
    """Add the MoRAM settings as flags with ``defaults`` (a :class:`~moram_ref.config.MoRAMConfig`), one
    wording for every command (spec §3–§5): ``--atoms-per-task``, ``--top-k``, ``--temperature``,
    ``--threshold``, and those of ``--threshold-mode``, ``--scale``, ``--dropout`` named in ``extra``
    (``"threshold_mode"``, ``"scale"``, ``"dropout"``). :func:`moram_config` reads them back."""
    unknown = set(extra) - {"threshold_mode", "scale", "dropout"}
    if unknown:
        raise ValueError(f"extra: unknown MoRAM flags {sorted(unknown)}")
    when = "when --threshold-mode says" if "threshold_mode" in extra else "in evaluation only, as in the paper"
    p.add_argument("--atoms-per-task", type=integer(1, MAX_ATOMS), default=defaults.atoms_per_task, metavar="R",
                   help="rank-1 atoms (key/value pairs) each task adds to every adapted layer (spec §4; "
                        "default %(default)s)")
    p.add_argument("--top-k", type=integer(1, MAX_ATOMS), default=defaults.top_k, metavar="K",
                   help="atoms MoRAM keeps per token, by normalised key response (spec §3 step 3; dense MoRAM "
                        "keeps all; default %(default)s)")
    from moram_ref.config import MIN_TEMPERATURE  # noqa: PLC0415

    p.add_argument("--temperature", type=real(MIN_TEMPERATURE), default=defaults.temperature, metavar="TAU",
                   help=f"τ ≥ {MIN_TEMPERATURE:g} of the softmax over the kept atoms' normalised responses (spec §3 "
                        f"step 4; default %(default)s)")
    p.add_argument("--threshold", type=real(-1, 1), default=defaults.threshold, metavar="DELTA",
                   help=f"δ in [-1, 1]: a kept atom whose normalised response is below δ gets weight 0, {when} "
                        f"(spec §3 step 5; default %(default)s)")
    if "threshold_mode" in extra:
        p.add_argument("--threshold-mode", default=defaults.threshold_mode, choices=["eval", "always", "never"],
                       help="when the δ gate applies: in evaluation only, always, never (spec §3 step 5; "
                            "default %(default)s)")
    if "scale" in extra:
        p.add_argument("--scale", type=real(-MAX_SCALE, MAX_SCALE, nonzero=True), default=defaults.scale, metavar="ALPHA",
                       help="α ≠ 0 multiplying the current task's values; folded into them when the task ends, "
                            "so freezing changes nothing (spec §4, §9; default %(default)s)")
    if "dropout" in extra:
        p.add_argument("--dropout", type=real(0, 1, high_open=True), default=defaults.dropout, metavar="P",
                       help="adapter dropout on the atoms' input, in training only (spec §3 step 1; "
                            "default %(default)s)")


def moram_config(args: argparse.Namespace, **extra: Any):
    """The run's :class:`~moram_ref.config.MoRAMConfig` from the usual flags; its errors name the flag."""
    from moram_ref.config import MoRAMConfig  # noqa: PLC0415

    fields = {f: getattr(args, f) for f in ("atoms_per_task", "top_k", "temperature", "threshold")
              if hasattr(args, f)} | extra
    try:
        return MoRAMConfig(**fields)
    except ValueError as exc:
        flag = next((f for f in fields if str(exc).startswith(f)), None)
        raise UsageError(f"--{flag.replace('_', '-')}: {exc}" if flag else str(exc)) from None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A ``json.loads`` ``object_pairs_hook`` that refuses a key given twice in one object (``json`` keeps the
    last silently, so the first would never be checked): :class:`DuplicateKeyError` naming the key."""
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set = set()
        again = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKeyError(f"the key {again!r} appears twice in one object")
    return out


class DuplicateKeyError(ValueError):
    """A JSON object that gives a key twice (:func:`unique_keys`)."""


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; a missing, unreadable or malformed file is a :class:`UsageError` naming it, as is
    one with an object that gives a key twice (:func:`unique_keys`: which of the two counts is a guess)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UsageError(f"{what}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what}: cannot read {path} ({exc})") from None
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: {path} is not valid JSON ({exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno})") from None
    except DuplicateKeyError as exc:
        raise UsageError(f"{what}: {path}: {exc}") from None
    except ValueError as exc:  # an integer of over 4,300 digits
        raise UsageError(f"{what}: {path} cannot be read as JSON (ValueError: {str(exc)[:120]})") from None
    except RecursionError as exc:  # nesting deeper than the stack
        raise UsageError(f"{what}: {path} cannot be read as JSON ({type(exc).__name__}: {str(exc)[:120]})") from None


def check_samples(path: Path, rows: Any, fields: Sequence[str] = ("prompt", "answer"),
                  nonblank: Sequence[str] = ()) -> list[dict]:
    """A non-empty list of objects whose ``fields`` are strings, those in ``nonblank`` not empty or only
    white space; else a :class:`UsageError` naming the file, the entry's index and the field."""
    if not isinstance(rows, list):
        raise UsageError(f"{path}: expected a JSON list of {{{', '.join(map(repr, fields))}}} objects, "
                         f"got {type(rows).__name__}")
    if not rows:
        raise UsageError(f"{path}: no samples (an empty list)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UsageError(f"{path}: entry {i} must be an object with {', '.join(map(repr, fields))}, "
                             f"got {json.dumps(row)[:60]}")
        for field in fields:
            if field not in row:
                raise UsageError(f"{path}: entry {i} has no {field!r} field")
            if not isinstance(row[field], str):
                raise UsageError(f"{path}: entry {i}, field {field!r} must be a string, "
                                 f"got {json.dumps(row[field])[:60]}")
            if field in nonblank and not row[field].strip():
                raise UsageError(f"{path}: entry {i}, field {field!r} is empty ({json.dumps(row[field])})")
    return rows


def fits_in_memory(flags: str, nbytes: float, device_text: str = "cpu") -> None:
    """:class:`UsageError` naming ``flags`` when about ``nbytes`` cannot fit in the memory of ``device_text``
    (a CPU: physical memory; CUDA: the device's), so that a size typed with a digit too many is refused in
    one line rather than failing inside an allocation."""
    import torch  # noqa: PLC0415

    dev = torch.device(device_text)
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev.index or 0).total_memory
    else:
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not a POSIX system: no limit is known
            return
    if nbytes > total:
        raise UsageError(f"{flags}: these sizes need about {nbytes / 2**30:,.0f} GiB, more than the "
                         f"{total / 2**30:,.0f} GiB of {dev.type}")


def device(flag: str, text: str | None) -> str | None:
    """A torch device string that exists on this machine (``None`` passes: the caller's default)."""
    if text is None:
        return None
    import torch  # noqa: PLC0415

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag}: unknown device {text!r} (e.g. cpu, cuda, cuda:0)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"{flag}: {text!r} asked for, but no CUDA device is available (use cpu)")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"{flag}: {text!r} does not exist ({count} CUDA device(s): cuda:0 … cuda:{count - 1})")
    elif dev.type not in ("cpu", "cuda"):
        raise UsageError(f"{flag}: device type {dev.type!r} is not supported (cpu or cuda)")
    return text
