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
    (lambda r: r.update(seeds=[]), "has seeds []: expected a non-empty list"),
    (lambda r: r.update(seeds=[0, 1]), "streams.recall.methods.frozen with 3 run(s) for 2 seed(s)"),
    (lambda r: r.update(streams={}), "has no streams"),
    (lambda r: r["environment"].update(blas=None), "has environment blas None: expected a one-line name"),
    (lambda r: r["environment"].update(numpy="2.4\n| injected |"), "has environment numpy '2.4\\n| injected |'"),
    (lambda r: r.update(environment="numpy"), "has environment 'numpy': expected an object"),
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
