"""Training progress as values: the loops call ``progress(Step(...))`` after every optimiser step; the
CLIs decide what to print (the library never prints). Importable without torch.

The loss is kept as given (a 0-d tensor, possibly on a GPU) and converted to a number only when read
(:attr:`Step.loss`), so a callback that prints every ``N`` steps costs one device sync per ``N`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from moram_ref.experiments import rundir
from moram_ref.shapes import NonFiniteError


@dataclass(frozen=True)
class Step:
    """One finished optimiser step.

    ``task`` and ``step`` count from 1; ``steps`` is the number of steps of this task; ``loss_value``
    is the step's training loss (with several processes, the LLM track reports process 0's estimate of
    the global batch's loss; the CLIP track's loss is the whole batch's on every process). ``grad_norm``
    (optional, a 0-d tensor or a number) is the total gradient norm a loop that clips gradients measured
    before clipping (the LLM track): an infinite one is clipped to a zero update, so training stops
    learning while its loss stays finite.
    """

    method: str
    task: int
    tasks: int
    name: str
    step: int
    steps: int
    loss_value: Any
    seed: int | None = None
    grad_norm: Any = None

    @property
    def loss(self) -> float:
        return float(self.loss_value)

    @property
    def last(self) -> bool:
        """The task's last step."""
        return self.step == self.steps

    @property
    def place(self) -> str:
        """Where in the run: ``"<method>[ seed <s>] task <t>/<T> (<name>) step <s>/<S>"``."""
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.method}{seed} task {self.task}/{self.tasks} ({self.name}) step {self.step}/{self.steps}"

    def line(self, loss: float | None = None) -> str:
        """The progress line; ``loss`` (optional) is :attr:`loss` already read."""
        return f"{self.place} loss {self.loss if loss is None else loss:.4f}"


_NORM_ONLY = 1 << 31  # the watch's flag: the first non-finite step's loss was finite, its gradient norm not
_STEP = (1 << 31) - 1  # the watch's step bits
_CLIPPED = ("clipping an infinite gradient norm makes the update zero, or NaN where a gradient is itself inf: "
            "training stopped learning")


class DivergedError(NonFiniteError):
    """Training diverged: a step's loss or gradient norm was NaN or inf (the message names the first such
    step)."""


class Printer:
    """The CLIs' progress callback (made by :func:`printer`): logs :meth:`Step.line` every ``every`` steps and
    at each task's last step, and watches the loss (and :attr:`Step.grad_norm`, where given) for NaN and inf.

    The watch reads nothing back to the host between lines: for a tensor loss it keeps, on the loss's device,
    the number of the first step whose loss or gradient norm was not finite (a few element-wise kernels per
    step). A line whose loss or gradient norm is NaN or inf raises :class:`DivergedError` (a
    ``NonFiniteError``) naming that step and the first such one; a finite line after such a step logs a note
    naming the first one (once). Used as a context manager
    around training, it turns a ``NonFiniteError`` raised inside after a step was taken (an adapted layer's input
    check, a score check) into a ``DivergedError``, completed with the first step whose loss was NaN or inf, if
    one was seen, else with the last step taken: when the run diverged, not only where the overflow was met
    (before any step, e.g. with a loaded checkpoint, it passes unchanged).

    It also raises ``KeyboardInterrupt`` at the next step once a stop signal was noted
    (:func:`moram_ref.experiments.rundir.check_stop`) but Python swallowed its interrupt (one raised inside a
    garbage-collection callback): a long run stops within a step, not at its end.
    """

    def __init__(self, every: int, log: Callable[[str], Any] = print):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.every, self.log = every, log
        self._noted = False  # a loss NaN or inf between lines was told (once)
        self._last: Step | None = None  # the latest step, its loss dropped (no tensor kept alive)
        self._tasks: dict[int, Step] = {}  # each task's latest step, its loss dropped (no tensor kept alive)
        self._first: Any = None  # 0-d int64 tensor on the loss's device: 0 while every step was finite, else
        #                          the first other one's task × 2³² + step, + 2³¹ if its loss was finite
        #                          (its gradient norm was not)

    def __call__(self, step: Step) -> None:
        rundir.check_stop()
        self._watch(step)
        if step.step % self.every == 0 or step.last:
            loss = step.loss  # the one read back from the device (the watch's flag is then ready too)
            if not math.isfinite(loss):
                raise DivergedError(f"the training loss is {loss} at {step.place}{self._since(step)}")
            norm = None if step.grad_norm is None else float(step.grad_norm)
            if norm is not None and not math.isfinite(norm):
                effect = _CLIPPED if math.isinf(norm) else "a NaN gradient makes the update NaN"
                raise DivergedError(f"the gradient norm is {norm} at {step.place} ({effect}){self._since(step)}")
            self.log(step.line(loss))
            first = self.first_non_finite() if not self._noted else None
            if first is not None:  # a step NaN or inf between lines, finite again since
                self._noted = True
                self.log(f"note: {self._what()} was NaN or inf at {first.place} (the first such step); the "
                         "steps since are finite")

    def __enter__(self) -> Printer:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if not isinstance(exc, NonFiniteError) or isinstance(exc, DivergedError) or self._last is None:
            return  # (no step taken in this process: a loaded checkpoint may be the cause, not training)
        first = self.first_non_finite()
        if first is not None:
            raise DivergedError(f"{exc}; {self._what()} was first NaN or inf at {first.place}") from exc
        raise DivergedError(f"{exc}; met after {self._last.place}, the last training step taken") from exc

    def first_non_finite(self) -> Step | None:
        """The first watched step whose loss or gradient norm (a tensor) was NaN or inf, its loss dropped;
        ``None`` if none was. Reads the device once."""
        code = 0 if self._first is None else int(self._first)
        if not code:
            return None
        return replace(self._tasks[code >> 32], step=code & _STEP)

    def _what(self) -> str:
        """What the first non-finite step had: its loss, or (its loss finite) its gradient norm."""
        code = 0 if self._first is None else int(self._first)
        return "the gradient norm" if code & _NORM_ONLY else "the training loss"

    def _watch(self, step: Step) -> None:
        self._last = replace(step, loss_value=None)
        loss = step.loss_value
        if not callable(getattr(loss, "isfinite", None)):  # a plain number: checked when its line is printed
            return
        import torch  # noqa: PLC0415  (a tensor loss: torch is loaded)

        self._tasks[step.task] = self._last
        if self._first is None:
            self._first = loss.new_zeros((), dtype=torch.int64)
        loss_ok = loss.isfinite()
        fine, code = loss_ok, (step.task << 32) | step.step
        if step.grad_norm is not None:  # a number or a tensor on the loss's device
            fine = loss_ok & torch.as_tensor(step.grad_norm, device=loss.device).isfinite()
            code = torch.where(loss_ok, code | _NORM_ONLY, code)
        self._first = self._first.where(fine | (self._first > 0), code)

    def _since(self, step: Step) -> str:
        first = self.first_non_finite()
        if first is None or first.place == step.place:
            return ""
        return f"; {self._what()} was first NaN or inf at {first.place}"


def printer(every: int, log: Callable[[str], Any] = print) -> Printer:
    """A :class:`Printer`: the progress callback the CLIs pass to the training loops (``every`` ≥ 1 steps
    between lines; ``log`` receives each line). ``ValueError`` for a bad ``every``."""
    return Printer(every, log)
