"""``moram-ref``: the command line — one sub-command per experiment, plus the layer benchmark.

Errors in the input (a flag, a combination of flags, a data file, the run folder) are found before any
work starts and printed as one line, ``moram-ref <command>: error: …``, with exit status 2.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import threading

from moram_ref.experiments import rundir
from moram_ref.experiments.cliargs import Parser, UsageError, one_line
from moram_ref.shapes import NonFiniteError

# name → (module with add_arguments and run [or module:function to run], one-line description)
COMMANDS = {
    "demo": ("moram_ref.experiments.toy.demo",
             "the main job: NumPy continual-learning demo, recall + digits streams, every method (no torch)"),
    "text-cl": ("moram_ref.experiments.textcl.run",
                "a real pretrained encoder (MiniLM) on the O-LoRA text tasks, every method × seeds"),
    "text-cl-merge": ("moram_ref.experiments.textcl.merge",
                      "one text-cl run from parts that trained disjoint --methods (each in its own --out)"),
    "text-cl-routing": ("moram_ref.experiments.textcl.routing",
                        "where MoRAM's weight goes in a finished text-cl run, task by task (from its checkpoints)"),
    "text-cl-confusion": ("moram_ref.experiments.textcl.confusion",
                          "where each task's texts land in a finished text-cl run's union label space (every method)"),
    "text-cl-sensitivity": ("moram_ref.experiments.textcl.sensitivity",
                            "how far a one-ulp nudge of the first task's fresh adapter tensors carries in a finished "
                            "text-cl run's setting, per method and τ"),
    "clip": ("moram_ref.experiments.clip.run",
             "X-TAIL / MTIL on open_clip (real or --tiny); --verify checks the data, --make-synthetic writes some"),
    "llm": ("moram_ref.experiments.llm.run",
            "TRACE / O-LoRA sequences on causal LMs (a local model or --tiny); torchrun for several GPUs"),
    "ablation": ("moram_ref.experiments.toy.ablation",
                 "the paper's claims on the NumPy streams: granularity, top-k budget, routing diagnostics, takeover"),
    "report": ("moram_ref.report",
               "render a results table from a run's results.json or summary.json (the README's and docs' generated "
               "blocks)"),
    "bench": ("moram_ref.bench:cli_run", "the layer benchmark: MoRAM vs LoRA speed ratios measured side by side (torch)"),
}


# "spec §N" in a flag's help cites the method's specification, which is not shipped: docs/theory.md maps each section
SPEC_NOTE = ("'spec §N' cites the method's specification by section; docs/theory.md says where each section is "
             "written out in these docs (§3 the forward pass, §5 the paper's settings, §7 its numbers).")


def build_parser(command: str | None = None) -> Parser:
    """The ``moram-ref`` parser; only ``command``'s module is imported (the demo never imports torch)."""
    parser = Parser(prog="moram-ref", description="MoRAM reference implementation: one command per experiment, "
                                                       "plus the layer benchmark")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands",
                                help="see 'moram-ref COMMAND --help'")
    for name, (module, description) in COMMANDS.items():
        p = sub.add_parser(name, help=description, description=description, epilog=SPEC_NOTE)
        if name == command:
            importlib.import_module(module.split(":")[0]).add_arguments(p)
    return parser


_STOPS_SEEN: list[int] = []  # the stop signals :func:`_stop` received in this process (see rundir.exit_after_a_stop)


def _stop(signum, frame):
    """SIGINT, SIGTERM and SIGHUP end a command like Ctrl-C: its cleanup runs, one line, exit status 130."""
    _STOPS_SEEN.append(signum)
    rundir.request_stop()
    raise KeyboardInterrupt


def _stop_handlers(replaced: dict) -> None:
    """Install :func:`_stop` for the stop signals whose handler is still the default (an ignored one, as
    under ``nohup``, stays ignored); each handler replaced goes into ``replaced`` as soon as it is, so a
    signal in the middle still leaves every one to be put back."""
    default = {signal.SIGINT: signal.default_int_handler}
    for sig in rundir.STOP_SIGNALS:
        if signal.getsignal(sig) is default.get(sig, signal.SIG_DFL):
            replaced[sig] = signal.signal(sig, _stop)


def _put_back(replaced: dict, exiting: bool = False) -> None:
    """Put back every handler :func:`_stop_handlers` replaced (``exiting``: ignore those signals instead);
    a stop signal that arrives meanwhile (its ``KeyboardInterrupt``) is raised again once all of them are
    back, never with one left behind."""
    stopped = False
    for sig, handler in replaced.items():
        while True:
            try:
                signal.signal(sig, signal.SIG_IGN if exiting else signal.SIG_DFL if handler is None else handler)
                break
            except KeyboardInterrupt:
                stopped = True
    if stopped:
        raise KeyboardInterrupt


def _interrupted(name: str, argv: list[str] = ()) -> int:
    done = rundir.published_while_held()  # the stop came while the outputs were being replaced: they were
    print(f"{name}: interrupted" + (f" (after its outputs in {', '.join(map(str, done))} were all replaced: they "
                                    "are complete)" if done else _how_to_continue(name, argv)), file=sys.stderr)
    return 130


def _how_to_continue(name: str, argv: list[str]) -> str:
    """'; <how to continue>' for a command that stopped inside a run folder it writes (else ''): the same
    command with ``--resume`` (again, if it had it) for text-cl, clip and llm; text-cl-merge again."""
    runs = rundir.opened_runs()
    command = name.removeprefix("moram-ref ")
    if not runs or command not in (*RESUMABLE, "text-cl-merge"):
        return ""
    where = f"the run in {runs[-1]}"
    if command == "text-cl-merge":
        return f"; the same `{name}` command again finishes {where} (from the parts' records, anew)"
    if _given(argv, "--resume") or _given(argv, "--eval-only"):
        return f"; the same command again continues {where}"
    return f"; the same command with `--resume` continues {where}"


def _given(argv: list[str], flag: str) -> bool:
    """Whether ``argv`` gives ``flag`` (the parsers take no abbreviation)."""
    return flag in argv


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (0, 1 file system error, 2 usage error, 130 interrupted)."""
    return _run(argv, exiting=False)


def entry() -> None:
    """The ``moram-ref`` console script and ``python -m moram_ref.cli``: :func:`main`, then exit with its status.

    When the command has ended, its outputs are written (or it said "interrupted"), and a stop signal can
    only do harm: Python then spends a second or more tearing torch and transformers down, after putting
    every handler set in Python back to the default action, so a late Ctrl-C or SIGTERM would kill the
    finished process (exit status -2 or -15 instead of its own). The stop signals are therefore ignored
    from the moment the command ends (SIGQUIT and SIGKILL still end the process).
    """
    status = _run(None, exiting=True)
    if sys.stdout is not None:  # None: started with standard output closed (`>&-`)
        try:
            sys.stdout.flush()  # what is still buffered goes out now, where a refusal can be told apart
        except BrokenPipeError:
            _drop_stdout()
            status = status or _closed(_name(sys.argv[1:]), finished=True)
        except OSError as exc:  # `> /dev/full`: a full disk
            _drop_stdout()
            if not status:  # a failed command has said why already
                print(f"{_name(sys.argv[1:])}: error: could not write its output ({exc.strerror})", file=sys.stderr)
                status = 1
    if _STOPS_SEEN:
        rundir.exit_after_a_stop(status)
    sys.exit(status)


def _run(argv: list[str] | None, exiting: bool) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    real = sys.stdout
    guarded = sys.stdout = _Output(real if real is not None else _ClosedOutput())
    try:
        return _main(argv, exiting)
    except KeyboardInterrupt:  # a stop while the handlers are put back, after _main's own except clauses
        return _interrupted(_name(argv), argv)
    finally:
        if sys.stdout is guarded:  # the command may have replaced it in turn: then it is theirs to put back
            sys.stdout = real
        rundir.clear_stop()  # the next command in this process (a test, a notebook) starts afresh


class OutputError(OSError):
    """Standard output refused a write (``> /dev/full``: a full disk), told apart from the command's own files."""


class _ClosedOutput:
    """What Python gives a process started with standard output closed (`>&-`) is None, where print does
    nothing; this stands in for it and refuses every write, as `cat` does."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    def flush(self) -> None:
        pass


class _Output:
    """Standard output as the command sees it: a refused write raises :class:`OutputError` (a closed pipe
    stays a ``BrokenPipeError``); everything else is the stream's own."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._guarded(self._stream.write, text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    @staticmethod
    def _guarded(call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc.errno, exc.strerror) from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _name(argv: list[str]) -> str:
    """How messages name the command: ``moram-ref <command>``, or ``moram-ref`` if argv names none."""
    return f"moram-ref {argv[0]}" if argv and argv[0] in COMMANDS else "moram-ref"


def _smaller(command: str | None) -> str:
    """What to lower after training diverged: the learning rate, and the LLM track's ``--scale`` α (spec §5:
    the current values' output and their gradients grow with it)."""
    return "a smaller --lr or --scale" if command == "llm" else "a smaller --lr"


def _main(argv: list[str], exiting: bool) -> int:
    command = argv[0] if argv and argv[0] in COMMANDS else None
    name = _name(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    rundir.clear_stop()
    replaced: dict = {}
    hook = sys.unraisablehook
    try:
        if main_thread:
            _stop_handlers(replaced)
        sys.unraisablehook = rundir.quiet_swallowed_interrupts
        args = build_parser(command).parse_args(argv)  # may import torch: interruptible too
        name = f"moram-ref {args.command}"
        module, _, function = COMMANDS[args.command][0].partition(":")
        status = getattr(importlib.import_module(module), function or "run")(args)
    except UsageError as exc:
        print(f"{name}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # files are written whole (temporary file, then rename): nothing is half-written
        return _interrupted(name, argv)
    except Exception as exc:
        if rundir.stop_requested():  # the interrupt surfaced as another error (e.g. an import it broke)
            return _interrupted(name, argv)
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "moram_ref").partition(".")[0] != "moram_ref":
            # (a module of ours missing is a broken install: traceback)
            print(f"{name}: error: needs the package that provides {exc.name!r}, which this environment lacks; "
                  "`make install-dev` installs every command's dependencies (`make demo` only NumPy, "
                  "matplotlib and scikit-learn)", file=sys.stderr)
            return 2
        checkpoint = sys.modules.get("moram_ref.torch.checkpoint")  # loaded if it can have raised
        if checkpoint is not None and isinstance(exc, checkpoint.CheckpointError):
            print(f"{name}: error: {one_line(str(exc))}", file=sys.stderr)  # a damaged run folder file
            return 2
        if isinstance(exc, NonFiniteError):  # activations overflowed: a diverged run or overflowing weights
            diverged = type(exc).__name__ == "DivergedError"  # the progress printer saw a NaN/inf loss
            print(f"{name}: error: {one_line(str(exc))}: "
                  + (f"training diverged (try {_smaller(command)}, in a new --out)" if diverged else
                     f"activations overflowed on the way — training that diverged (try {_smaller(command)}, in a "
                     "new --out) or adapter weights that are finite but too large (a checkpoint that matches its "
                     "checksum was written so)"), file=sys.stderr)
            return 1
        if isinstance(exc, RuntimeError) and "device-side assert" in str(exc):
            # a check on the GPU failed (torch._assert_async: the forward's NaN/inf check is one); the CUDA
            # context cannot be used after it, so the process stops
            print(f"{name}: error: a check on the GPU failed (a device-side assertion: CUDA printed which one "
                  "above) and the GPU cannot continue in this process. An adapted layer's NaN/inf input check fails "
                  f"after training that diverged (try {_smaller(command)}, in a new --out) or with adapter weights "
                  "finite but too large; on a CPU (--device cpu) the message names the layer. Files written before are "
                  "whole", file=sys.stderr)
            return 1
        if isinstance(exc, BrokenPipeError):  # `moram-ref … | head`: the reader of the output has gone
            _drop_stdout()
            return _closed(name, finished=False)
        if isinstance(exc, OutputError):  # `> /dev/full`
            _drop_stdout()
            print(f"{name}: error: could not write its output ({exc.strerror}); it stopped there{_whole(name)}",
                  file=sys.stderr)
            return 1
        if isinstance(exc, OSError):  # the file system refused (permissions, a full disk): one line
            said = exc.strerror if exc.filename is None and exc.strerror else exc  # no "[Errno N]" before ours
            print(f"{name}: error: {said}", file=sys.stderr)
            return 1
        raise
    finally:
        sys.unraisablehook = hook
        _put_back(replaced, exiting)
    if rundir.stop_requested():  # an interrupt Python swallowed (see rundir.quiet_swallowed_interrupts)
        return _interrupted(name, argv)
    return status if isinstance(status, int) else 0


RESUMABLE = ("text-cl", "clip", "llm")  # the commands with --resume


def _closed(name: str, finished: bool) -> int:
    """After the reader of standard output has gone (`| head`): 141, as Unix tools end on SIGPIPE (128 + 13).
    ``report`` ends quietly (it only prints). A command that writes a run folder says on standard error
    whether it had ``finished`` (only the end of its output was lost) or stopped its work there."""
    if name != "moram-ref report":
        why = "its output was closed (the reader of a pipe, e.g. `head`, exited)"
        try:  # standard error may be in the same pipe (`2>&1 | head`): then the line has nowhere to go
            print(f"{name}: {why} after the command had finished: only the end of its output was lost" if finished
                  else f"{name}: stopped: {why}{_whole(name)}", file=sys.stderr, flush=True)
        except (BrokenPipeError, ValueError):
            _drop_stdout(sys.stderr)
    return 141


def _whole(name: str) -> str:
    """'; what it wrote is whole', and how to continue a command with --resume."""
    more = " (`--resume` continues a run it left unfinished)" if name.removeprefix("moram-ref ") in RESUMABLE else ""
    return f"; what it wrote is whole{more}"


def _drop_stdout(stream=None) -> None:
    """Point standard output (or ``stream``) at ``os.devnull`` after its reader has gone, so that Python's
    flush at exit does not report the broken pipe a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (stream or sys.stdout).fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a replaced sys.stdout without a descriptor (a test, a notebook)
        pass


if __name__ == "__main__":
    entry()
