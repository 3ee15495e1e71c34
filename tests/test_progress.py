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


def _tensor_steps(losses, n_steps=None, task=1):
    import torch

    n = n_steps or len(losses)
    return [Step("moram", task, 2, f"T{task}", s, n, torch.tensor(v)) for s, v in enumerate(losses, 1)]


def test_a_line_whose_loss_is_not_finite_stops_the_run_naming_the_first_such_step():
    from moram_ref.experiments.progress import DivergedError

    lines = []
    report = printer(3, lines.append)
    with pytest.raises(DivergedError, match=r"^the training loss is nan at moram task 1/2 \(T1\) step 3/4; the training "
                                            r"loss was first NaN or inf at moram task 1/2 \(T1\) step 2/4$"):
        for step in _tensor_steps([1.0, float("inf"), float("nan"), 1.0]):
            report(step)
    assert lines == []


def test_a_plain_number_loss_is_checked_when_its_line_is_printed():
    from moram_ref.experiments.progress import DivergedError

    report = printer(2, lambda _: None)
    report(Step("moram", 1, 1, "T", 1, 4, float("nan")))  # not a line: not read
    with pytest.raises(DivergedError, match=r"loss is inf at moram task 1/1 \(T\) step 2/4$"):
        report(Step("moram", 1, 1, "T", 2, 4, float("inf")))


def test_the_watch_reads_nothing_back_from_the_device_between_lines():
    """Losses on the meta device have no values: any read (``bool``, ``item``, ``float``) would raise."""
    import torch

    report = printer(100, lambda _: None)
    for s in range(1, 50):
        report(Step("moram", 1, 1, "T", s, 200, torch.empty((), device="meta")))
    with pytest.raises(RuntimeError, match="meta"):  # reading it needs the values: done only when asked
        report.first_non_finite()


@pytest.mark.parametrize("losses, said", [
    ([1.0, 2.0], "x contains NaN or inf; met after moram task 2/2 (T2) step 2/5, the last training step taken"),
    ([1.0, float("nan")], "x contains NaN or inf; the training loss was first NaN or inf at moram task 2/2 (T2) step 2/5"),
])
def test_an_overflow_met_inside_is_completed_with_when_it_happened(losses, said):
    from moram_ref.experiments.progress import DivergedError
    from moram_ref.shapes import NonFiniteError

    with pytest.raises(NonFiniteError) as caught, printer(10, lambda _: None) as report:
        for step in _tensor_steps(losses, n_steps=5, task=2):
            report(step)
        raise NonFiniteError("x contains NaN or inf")
    assert str(caught.value) == said and isinstance(caught.value, DivergedError)


def test_a_loss_that_was_not_finite_between_lines_is_noted_once():
    lines = []
    report = printer(3, lines.append)
    for step in _tensor_steps([1.0, float("nan"), 3.0, 4.0, 5.0, 6.0]):
        report(step)
    assert lines == ["moram task 1/2 (T1) step 3/6 loss 3.0000",
                     "note: the training loss was NaN or inf at moram task 1/2 (T1) step 2/6 (the first such step); "
                     "the steps since are finite",
                     "moram task 1/2 (T1) step 6/6 loss 6.0000"]



def _norm_steps(norms, losses=None):
    import torch

    losses = losses or [1.0] * len(norms)
    return [Step("lora", 1, 1, "T", s, len(norms), torch.tensor(v), grad_norm=torch.tensor(g))
            for s, (v, g) in enumerate(zip(losses, norms), 1)]


def test_an_infinite_gradient_norm_on_a_line_stops_the_run_though_the_loss_is_finite():
    """Clipping an infinite norm zeroes the update: the loss stays finite while nothing is learnt."""
    from moram_ref.experiments.progress import DivergedError

    report = printer(2, lambda _: None)
    with pytest.raises(DivergedError, match=r"^the gradient norm is inf at lora task 1/1 \(T\) step 2/3 \(clipping "
                                            r"an infinite gradient norm makes the update zero, or NaN where a "
                                            r"gradient is itself inf: training stopped learning\)$"):
        for step in _norm_steps([1.0, float("inf"), 1.0]):
            report(step)


@pytest.mark.parametrize("norms, losses, what", [
    ([1.0, float("inf"), float("nan"), 2.0], None, "the gradient norm"),
    ([1.0, float("nan"), 3.0, 2.0], [1.0, float("nan"), 1.0, 1.0], "the training loss"),  # both: the loss is named
])
def test_the_first_step_with_an_infinite_gradient_norm_is_noted_and_named(norms, losses, what):
    from moram_ref.experiments.progress import DivergedError
    from moram_ref.shapes import NonFiniteError

    lines = []
    with pytest.raises(DivergedError) as caught, printer(4, lines.append) as report:
        for step in _norm_steps(norms, losses):
            report(step)
        raise NonFiniteError("x contains NaN or inf")
    assert lines == ["lora task 1/1 (T) step 4/4 loss 1.0000",
                     f"note: {what} was NaN or inf at lora task 1/1 (T) step 2/4 (the first such step); the steps "
                     "since are finite"]
    assert str(caught.value) == f"x contains NaN or inf; {what} was first NaN or inf at lora task 1/1 (T) step 2/4"


def test_the_gradient_norm_is_watched_without_reading_the_device():
    import torch

    report = printer(100, lambda _: None)
    for s in range(1, 20):
        meta = torch.empty((), device="meta")
        report(Step("moram", 1, 1, "T", s, 200, meta, grad_norm=meta))
    with pytest.raises(RuntimeError, match="meta"):
        report.first_non_finite()


def test_an_overflow_before_any_step_or_another_error_passes_unchanged():
    from moram_ref.shapes import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"^x contains NaN or inf$"), printer(10) as report:
        raise NonFiniteError("x contains NaN or inf")
    with pytest.raises(KeyError), printer(10) as report:
        report(_tensor_steps([float("nan")], n_steps=5)[0])
        raise KeyError("other")


def test_a_nan_gradient_norm_says_the_update_is_nan_not_zero():
    from moram_ref.experiments.progress import DivergedError

    with pytest.raises(DivergedError, match=r"^the gradient norm is nan at lora task 1/1 \(T\) step 2/2 \(a NaN gradient "
                                            r"makes the update NaN\)$"):
        report = printer(2, lambda _: None)
        for step in _norm_steps([1.0, float("nan")]):
            report(step)
