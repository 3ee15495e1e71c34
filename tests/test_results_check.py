"""`moram-ref report` on a hand-edited or damaged NumPy results file: one line naming the field, never a table of
``nan``, ``± inf`` or seeds the file does not hold (moram_ref/experiments/toy/results_check.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from moram_ref.cli import main

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
DEMO = json.loads((RESULTS / "demo.json").read_text())
ABLATION = json.loads((RESULTS / "ablation.json").read_text())


def _cell(r):
    return r["streams"]["recall"]["summary"]["moram"]["last"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: _cell(r).update(ci95=-0.01), "streams.recall.summary.moram.last.ci95 = -0.01: expected a half-width ≥ 0"),
    (lambda r: _cell(r).update(ci95=float("inf")), "ci95 = inf: expected a half-width ≥ 0 over 3 seeds"),
    (lambda r: _cell(r).update(ci95=True), "ci95 = True"),
    (lambda r: _cell(r).update(mean=float("nan")), "last.mean = nan: expected a number from 0 to 1 (fractions, not %)"),
    (lambda r: _cell(r).update(mean=10**400), "last.mean = 1000"),
    (lambda r: _cell(r).pop("mean"), "streams.recall.summary.moram.last = {'ci95'"),
    (lambda r: r.update(seeds=[0, 0, 1]), "has seeds [0, 0, 1]: expected distinct integers"),
    (lambda r: r.update(seeds=[-5, 7, 100]), "has seeds [-5, 7, 100]: expected distinct integers from 0 to 4294967295"),
    (lambda r: r.update(seeds=[]), "has seeds []: expected a non-empty list"),
    (lambda r: r.update(seeds=[0, 1]), "streams.recall.methods.frozen with 3 run(s) for 2 seed(s)"),
    (lambda r: r.update(streams={}), "has no streams"),
    (lambda r: r["environment"].update(blas=None), "has environment blas None: expected a one-line name"),
    (lambda r: r["environment"].update(numpy="2.4\n| injected |"), "has environment numpy '2.4\\n| injected |'"),
    (lambda r: r.update(environment="numpy"), "has environment 'numpy': expected an object"),
    (lambda r: r["streams"]["recall"].update(labels=[]),
     "streams.recall.labels = []: expected an object giving each method its row name"),
    (lambda r: r["streams"]["recall"]["labels"].pop("moram"), "streams.recall.labels.moram = None: expected a row name"),
    (lambda r: r["streams"]["recall"]["methods"]["moram"][1]["metrics"].update(last=float("nan")),
     "streams.recall.methods.moram[1].metrics.last = nan: expected a number from 0 to 1"),
    (lambda r: r["streams"]["recall"]["methods"]["frozen"][0]["accuracy"].pop(),
     "streams.recall.methods.frozen[0].accuracy = 4 entries: expected a list of 5"),
    (lambda r: r["streams"]["digits"]["methods"]["moram"][2].update(silent_fraction=-0.5),
     "streams.digits.methods.moram[2].silent_fraction = -0.5: expected a number from 0 to 1"),
    (lambda r: r["streams"]["digits"]["sweep"].update(chosen=0.5), "streams.digits.sweep.chosen = 0.5: expected one of"),
    (lambda r: r["streams"]["digits"]["sweep"]["validation_average"].append(0.5),
     "streams.digits.sweep.validation_average = 5 entries: expected a list of 4"),
    (lambda r: r["streams"]["recall"].update(tasks=["T1", "T1"]), "streams.recall.tasks = ['T1', 'T1']: expected"),
    (lambda r: r.update(units="%"), "has units '%': the tables read 'fractions in [0, 1]'"),
    (lambda r: r["config"].update(top_k=0), "has config {'atoms_per_task': 8, 'top_k': 0"),
    (lambda r: r["config"].update(temperature=10**400), "not MoRAM settings"),
    (lambda r: _cell(r).update(ci95=1e308), "ci95 = 1e+308: expected a half-width ≥ 0 over 3 seeds, at most 1.434"),
    (lambda r: r["streams"]["recall"]["labels"].update(moram="MoRAM | x"), "streams.recall.labels.moram = 'MoRAM | x'"),
    (lambda r: r["streams"].update({"a\nb": r["streams"].pop("recall")}), "has a stream named 'a\\nb'"),
    (lambda r: r["streams"].update({"<i>x</i>": r["streams"].pop("recall")}), "has a stream named '<i>x</i>'"),
    (lambda r: r["streams"]["digits"]["sweep"].update(chosen=True, temperatures=[1, 2], validation_average=[0.1, 0.2]),
     "streams.digits.sweep.chosen = True: expected one of the temperatures"),
    (lambda r: r["streams"]["recall"]["methods"].update(moram=[1, 2, 3]),
     "streams.recall.methods.moram[0] = 1: expected a run's record"),
])
def test_a_damaged_demo_results_file_is_named(edit, message, tmp_path, capsys):
    results = copy.deepcopy(DEMO)
    edit(results)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path} has" in err and message in err, err


@pytest.mark.parametrize(("table", "edit", "message"), [
    ("ablation", lambda r: r.update(seeds=[0, 1]), "streams.recall.runs.g1_k8.runs with 3 run(s) for 2 seed(s)"),
    ("takeover", lambda r: r["takeover"]["cells"][0]["summary"]["newest"].update(ci95=-1),
     "takeover.cells[0].summary.newest.ci95 = -1"),
    ("routing", lambda r: r.update(steps_override="x"), "has steps_override 'x'"),
    ("ablation", lambda r: r.update(environment={"numpy": "2.4.6"}), "has environment blas None"),
    ("routing", lambda r: r["streams"]["digits"]["runs"]["g1_k8"]["runs"][0]["routing"][4][0]["share"][1].__setitem__(
        2, float("nan")), "streams.digits.runs.g1_k8.runs[0].routing[4][0].share[1][2] = nan: expected a number from 0 to 1"),
    ("routing", lambda r: r["streams"]["recall"]["runs"]["g1_k8"]["runs"][1]["routing"].pop(),
     "streams.recall.runs.g1_k8.runs[1].routing = [[{'share'"),
    ("ablation", lambda r: r["streams"]["recall"]["runs"]["g2_k8"].update(group="x"),
     "streams.recall.runs.g2_k8.group = 'x': expected a number of atoms per unit"),
    ("ablation", lambda r: r["streams"]["recall"]["runs"]["g1_k4"]["runs"][0]["metrics"].update(last=None),
     "streams.recall.runs.g1_k4.runs[0].metrics.last = None: expected a number from 0 to 1"),
    ("ablation", lambda r: r["streams"]["recall"]["runs"]["g1_k4"]["summary"]["atoms99"].update(mean=-1),
     "streams.recall.runs.g1_k4.summary.atoms99.mean = -1"),
    ("takeover", lambda r: r["takeover"]["cells"][3]["runs"][0].update(newest=float("inf")),
     "takeover.cells[3].runs[0].newest = inf: expected a number from 0 to 1"),
    ("takeover", lambda r: r["takeover"]["cells"][0].update(layer_norm="yes"),
     "takeover.cells[0].layer_norm = 'yes': expected true or false"),
    ("takeover", lambda r: r["takeover"]["cells"][0].update(steps=2.5), "takeover.cells[0].steps = 2.5: expected a number of steps"),
    ("takeover", lambda r: r.update(takeover=[1]), "has takeover [1]: expected an object with a list of grid cells"),
    ("takeover", lambda r: (r.pop("takeover"), r.update(studies=["granularity"])),
     "has no takeover.cells: the takeover table needs a run with --studies takeover"),
    ("takeover", lambda r: r.update(studies=5), "has studies 5: expected a non-empty list of granularity, topk, takeover"),
    ("takeover", lambda r: r["takeover"]["cells"][0]["runs"][0].update(key_norm_ratio=1e308),
     "takeover.cells[0].runs[0].key_norm_ratio = 1e+308: expected a number from 0 to 1e+06"),
    ("routing", lambda r: r.update(streams={}), "has no stream with MoRAM's runs (g1_k8)"),
    ("ablation", lambda r: r.update(streams={}), "has no stream with runs: the ablation table would have no rows"),
    ("ablation", lambda r: r["streams"]["recall"]["runs"]["g8_k8"].update(group=10**30, top_k=10**30),
     "streams.recall.runs.g8_k8.group = 1000"),
    ("ablation", lambda r: r["streams"]["recall"]["runs"]["g8_k8"].update(top_k=4),
     "streams.recall.runs.g8_k8.top_k = 4: expected null (every atom) or a number of atoms, a multiple of the group 8"),
])
def test_a_damaged_ablation_results_file_is_named(table, edit, message, tmp_path, capsys):
    results = copy.deepcopy(ABLATION)
    results["environment"] = dict(DEMO["environment"])
    edit(results)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert main(["report", str(path), "--table", table]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_the_committed_files_pass_and_each_is_sent_to_its_table(capsys):
    assert main(["report", str(RESULTS / "demo.json")]) == 0
    assert main(["report", str(RESULTS / "ablation.json"), "--table", "takeover"]) == 0
    capsys.readouterr()
    assert main(["report", str(RESULTS / "ablation.json")]) == 2
    assert "pass --table ablation, routing or takeover" in capsys.readouterr().err
    assert main(["report", str(RESULTS / "demo.json"), "--table", "routing"]) == 2
    assert "pass --table demo (the default)" in capsys.readouterr().err


@pytest.mark.parametrize(("summary", "track"), [
    ({"moram": {"units": "percent", "tasks": ["a", "b"], "matrix": [[1.0, 2.0], [3.0, 4.0]], "transfer": 2.0}}, "clip"),
    ({"moram": {"units": "percent", "tasks": ["a", "b"], "matrix": [[1.0, None], [3.0, 4.0]], "op": 3.5}}, "llm"),
])
def test_a_clip_or_llm_summary_is_named_as_such(tmp_path, capsys, summary, track):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    assert main(["report", str(path)]) == 2
    assert f"is the summary.json of a `moram-ref {track}` run" in capsys.readouterr().err


def test_a_takeover_share_that_does_not_vary_has_no_correlation(tmp_path, capsys):
    """np.corrcoef of a constant is nan: the sentence says the correlation is undefined instead."""
    results = copy.deepcopy(ABLATION)
    for cell in results["takeover"]["cells"]:
        for run in cell["runs"]:
            run["newest"] = 0.25
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert main(["report", str(path), "--table", "takeover"]) == 0
    out = capsys.readouterr()
    assert "nan" not in out.out and "undefined (one of them is the same in every run)" in out.out and not out.err
