"""Progress lines: the loops report every step as a value; the CLIs' printer picks one line every N steps
and the last step of each task, naming the method, the task, the step and the loss."""

from __future__ import annotations

import pytest

from moram_ref.experiments.progress import Step, printer


def steps(n_tasks=2, n_steps=5, method="moram"):
    return [Step(method, t, n_tasks, f"T{t}", s, n_steps, 1.0 / s) for t in range(1, n_tasks + 1)
            for s in range(1, n_steps + 1)]


def test_printer_logs_every_n_steps_and_each_tasks_last_step():
    lines = []
    report = printer(2, lines.append)
    for step in steps():
        report(step)
    assert lines == [f"moram task {t}/2 (T{t}) step {s}/5 loss {1 / s:.4f}" for t in (1, 2) for s in (2, 4, 5)]


def test_line_names_the_seed_when_there_is_one():
    assert Step("olora", 3, 4, "yahoo", 7, 60, 0.25, seed=2).line() == "olora seed 2 task 3/4 (yahoo) step 7/60 loss 0.2500"


def test_loss_is_read_only_when_asked():
    class Lazy:
        reads = 0

        def __float__(self):
            Lazy.reads += 1
            return 0.5

    report = printer(10, lambda _: None)
    for s in range(1, 10):
        report(Step("moram", 1, 1, "T", s, 20, Lazy()))
    assert Lazy.reads == 0  # no line, no conversion (on a GPU: no device sync)
    report(Step("moram", 1, 1, "T", 10, 20, Lazy()))
    assert Lazy.reads == 1


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_printer_rejects_a_bad_interval(every):
    with pytest.raises(ValueError, match="every"):
        printer(every)


def test_printer_stops_a_run_at_the_next_step_after_a_swallowed_interrupt():
    from moram_ref.experiments import rundir

    report = printer(100, lambda line: None)
    first, second = steps()[:2]
    report(first)
    rundir.request_stop()  # what the CLI's handler notes before its KeyboardInterrupt, which Python lost
    try:
        with pytest.raises(KeyboardInterrupt):
            report(second)
    finally:
        rundir.clear_stop()
