"""The README's main-job table is what the main job prints today (no number in it is typed by hand)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from moram_ref import provenance, report
from moram_ref.cli import main
from moram_ref.experiments.toy import demo

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMITTED = ROOT / "docs" / "results" / "demo.json"  # runs/demo/results.json of the `make demo` behind the README


def test_readme_demo_table_is_the_committed_results():
    """Everywhere, cheaply: the README's table is docs/results/demo.json's (both written from one `make demo`)."""
    assert report.read_block(README.read_text(), "demo") == report.demo_table(json.loads(COMMITTED.read_text())), (
        "README.md's demo table is not docs/results/demo.json's: run `make demo`, copy runs/demo/results.json to "
        "docs/results/demo.json, then `moram-ref report runs/demo/results.json --write README.md`")


def test_the_committed_results_come_from_the_pinned_numpy():
    """The figures are the arithmetic of constraints.txt's NumPy, so the project's machines can rerun them."""
    pin = re.search(r"^numpy==([\w.]+)", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert pin, "constraints.txt pins no numpy"
    assert json.loads(COMMITTED.read_text())["environment"]["numpy"] == pin.group(1)


@pytest.mark.slow
def test_the_main_job_still_prints_the_readme_table(tmp_path):
    """Digit for digit, where NumPy and its BLAS are the ones that computed it (named under the table)."""
    committed = provenance.describe(json.loads(COMMITTED.read_text())["environment"])
    here = provenance.describe(provenance.numpy_environment())
    if here != committed:  # another NumPy or BLAS: other numbers, by design
        pytest.skip(f"README's demo table was computed by {committed}, this machine has {here}: the numbers differ "
                    f"by rounding (moram_ref/provenance.py), so they are compared only where those match")
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "demo"), "--no-plots"])  # exactly `make demo`'s settings
    results = demo.run(args, log=lambda _: None)
    assert report.read_block(README.read_text(), "demo") == report.demo_table(results), (
        "README.md's demo table is stale: run `make demo`, copy runs/demo/results.json to docs/results/demo.json, "
        "then `moram-ref report runs/demo/results.json --write README.md`")


def test_report_check_and_write_round_trip(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "5", "--seeds", "2", "--no-plots",
                 "--streams", "recall"]) == 0
    results = tmp_path / "d" / "results.json"
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- BEGIN generated: demo (moram-ref report) -->\nold\n<!-- END generated: demo -->\nend\n")
    capsys.readouterr()
    assert main(["report", str(results), "--check", str(doc)]) == 1
    said = capsys.readouterr().out.splitlines()  # what differs, not only that something does
    assert said[0].endswith("first differences (- " + str(doc) + ", + results):")
    assert said[1] == "- old" and said[2].startswith("+ | stream | method |")
    assert main(["report", str(results), "--write", str(doc)]) == 0
    assert main(["report", str(results), "--check", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "| recall | MoRAM |" in text
    (tmp_path / "plain.md").write_text("no markers here\n")
    capsys.readouterr()
    assert main(["report", str(results), "--write", str(tmp_path / "plain.md")]) == 2
    assert "no block" in capsys.readouterr().err
    assert (tmp_path / "plain.md").read_text() == "no markers here\n"
    assert main(["report", str(results), "--check", str(tmp_path / "missing.md")]) == 2
    assert "missing.md" in capsys.readouterr().err


def test_one_seed_tables_say_one_run_and_a_negative_ci_is_refused(tmp_path, capsys):
    """A single seed gives no confidence interval: the footer and the printed table say so instead of '± CI';
    a hand-edited results file whose half-width is negative is refused, naming it."""
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "5", "--seeds", "1", "--seed", "4", "--no-plots",
                 "--streams", "recall"]) == 0
    printed = capsys.readouterr().out
    assert "method (one seed)" in printed and "± 95% CI" not in printed and "mean over seeds" not in printed
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    table = report.demo_table(results)
    assert "Seed 4 (1 run); cells are the one run's values (a single seed gives no confidence interval), in %." in table
    assert "±" not in table
    cell = results["streams"]["recall"]["summary"]["moram"]["last"]
    cell["ci95"] = -0.01
    (tmp_path / "bad.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "bad.json has streams.recall.summary.moram.last.ci95 = -0.01 over one seed" in err


def test_the_seeds_of_a_table_are_listed_when_they_are_not_a_range():
    assert demo.seeds_phrase([0, 1, 2]) == "Seeds 0–2 (3 runs)"
    assert demo.seeds_phrase([0, 4, 7], " per row") == "Seeds 0, 4, 7 (3 runs per row)"
    assert demo.seeds_phrase([5], None) == "Seed 5"
    assert demo.cells_phrase([0, 1]) == "mean ± 95 % CI half-width (Student t over 2 seeds: 8.98 × the seeds' standard deviation)"
