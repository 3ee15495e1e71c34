"""Training progress as values: the loops call ``progress(Step(...))`` after every optimiser step; the
CLIs decide what to print (the library never prints). Importable without torch.

The loss is kept as given (a 0-d tensor, possibly on a GPU) and converted to a number only when read
(:attr:`Step.loss`), so a callback that prints every ``N`` steps costs one device sync per ``N`` steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moram_ref.experiments import rundir


@dataclass(frozen=True)
class Step:
    """One finished optimiser step.

    ``task`` and ``step`` count from 1; ``steps`` is the number of steps of this task; ``loss_value``
    is the step's training loss (with several processes, the LLM track reports process 0's estimate of
    the global batch's loss; the CLIP track's loss is the whole batch's on every process).
    """

    method: str
    task: int
    tasks: int
    name: str
    step: int
    steps: int
    loss_value: Any
    seed: int | None = None

    @property
    def loss(self) -> float:
        return float(self.loss_value)

    @property
    def last(self) -> bool:
        """The task's last step."""
        return self.step == self.steps

    def line(self) -> str:
        seed = "" if self.seed is None else f" seed {self.seed}"
        return (f"{self.method}{seed} task {self.task}/{self.tasks} ({self.name}) "
                f"step {self.step}/{self.steps} loss {self.loss:.4f}")


def printer(every: int, log: Callable[[str], Any] = print) -> Callable[[Step], None]:
    """A progress callback that logs :meth:`Step.line` every ``every`` steps and at each task's last step.

    It also raises ``KeyboardInterrupt`` at the next step once a stop signal was noted
    (:func:`moram_ref.experiments.rundir.check_stop`) but Python swallowed its interrupt (one raised
    inside a garbage-collection callback): a long run stops within a step, not at its end."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")

    def report(step: Step) -> None:
        rundir.check_stop()
        if step.step % every == 0 or step.last:
            log(step.line())

    return report
