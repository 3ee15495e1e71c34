"""docs/results.md's tables are what `moram-ref report` renders from the committed results files, and the
ablation command runs end to end (its g = 1, k = 8 setting is the main job's MoRAM, seed for seed)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from moram_ref import provenance, report
from moram_ref.cli import main
from moram_ref.experiments.toy import results_check

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
RESULTS = ROOT / "docs" / "results"
MARKER = re.compile(r"<!-- BEGIN generated: (\S+) \((moram-ref report [^)]*)\) -->")


def generated_blocks(path: Path) -> list[tuple[str, list[str]]]:
    """Every generated block of ``path``: (block name, the report arguments its marker line names)."""
    return [(m.group(1), shlex.split(m.group(2))[2:]) for m in MARKER.finditer(path.read_text())]


DOC_BLOCKS = generated_blocks(DOC)
README_BLOCKS = [(name, argv) for name, argv in generated_blocks(ROOT / "README.md")
                 if all(a.startswith("docs/results/") for a in argv if a.endswith(".json"))]  # not runs/…


def test_every_table_of_the_docs_has_a_marker():
    assert {name for name, _ in DOC_BLOCKS} >= {"claims", "ablation", "routing", "takeover", "textcl-matrix"}
    assert len(DOC_BLOCKS) == DOC.read_text().count("<!-- BEGIN generated:"), "a marker line without its command"


@pytest.mark.parametrize(("doc", "block", "argv"), [(DOC, n, a) for n, a in DOC_BLOCKS]
                         + [(ROOT / "README.md", n, a) for n, a in README_BLOCKS], ids=lambda x: str(x)[:40])
def test_docs_table_is_what_its_marker_command_renders(doc, block, argv):
    """The command in the marker line, run on the committed results files, renders the block as it stands."""
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    args = parser.parse_args(argv)
    assert args.write is not None and Path(args.write).name == doc.name, f"{block}: the marker's command must --write {doc.name}"
    assert (args.block or args.table) == block
    loaded = [json.loads((ROOT / p).read_text()) for p in args.results]
    expected = report.GENERATORS[args.table](*loaded)
    assert report.read_block(doc.read_text(), block) == expected, (
        f"{doc.name}'s '{block}' table is stale: run `{' '.join(['moram-ref', 'report', *argv])}`")


def test_committed_results_are_small_summaries():
    for path in RESULTS.rglob("*.json"):  # the largest summary: the 15-task routing one (its shares after every
        # task, 15 stages × 15 × 15 per seed and method), about 330 kB as text-cl-routing writes it
        assert path.stat().st_size < 400_000, f"{path.name} is {path.stat().st_size} bytes: keep summaries only"


def test_claims_table_needs_its_three_files(capsys):
    assert main(["report", str(RESULTS / "ablation.json"), "--table", "claims"]) == 2
    assert "--table claims takes 3 or more file" in capsys.readouterr().err


def test_ablation_runs_and_g1_is_the_main_jobs_moram(tmp_path):
    out = tmp_path / "abl"
    assert main(["ablation", "--out", str(out), "--steps", "4", "--seeds", "2", "--streams", "recall",
                 "--studies", "granularity", "topk", "--no-plots"]) == 0
    abl = json.loads((out / "results.json").read_text())
    runs = abl["streams"]["recall"]["runs"]
    assert set(runs) == {"g1_k8", "g2_k8", "g4_k8", "g8_k8", "g1_k1", "g1_k2", "g1_k4", "g1_kR"}
    assert len(runs["g1_k8"]["runs"][0]["routing"]) == 5  # one record per task for MoRAM
    share = np.array(runs["g1_k8"]["runs"][0]["routing"][-1][0]["share"])
    assert share.shape == (5, 5) and np.allclose(share.sum(axis=0)[share.sum(axis=0) > 0], 1.0)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "4", "--seeds", "2", "--streams", "recall",
                 "--methods", "moram", "--no-plots"]) == 0
    demo = json.loads((tmp_path / "demo" / "results.json").read_text())
    for ours, theirs in zip(runs["g1_k8"]["runs"], demo["streams"]["recall"]["methods"]["moram"]):
        np.testing.assert_allclose(ours["accuracy"], theirs["accuracy"], rtol=0, atol=1e-6)
    # what the runs write passes the checks `moram-ref report` makes before rendering
    assert results_check.ablation_problem(abl) is None and results_check.demo_problem(demo) is None
    body = report.GENERATORS["ablation"](abl)
    assert "| recall | **1** | 8 (k = 8 atoms) |" in body and "Steps per task overridden to 4" in body
    assert abl["environment"] == provenance.numpy_environment()  # the build that rounded these figures
    assert f"Computed by {provenance.describe(abl['environment'])}" in body
    assert "Computed by" not in report.GENERATORS["ablation"]({k: v for k, v in abl.items() if k != "environment"})


def test_ablation_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit):
        main(["ablation", "--seeds", "0", "--no-plots"])
    err = capsys.readouterr().err
    assert "--seeds" in err and "0" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["ablation", "--studies", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_verdict_rules():
    from moram_ref.experiments.toy.claims import FAILS, HOLDS, NOT_DIST, old_on_new, paired_verdict

    assert paired_verdict({"mean": 0.10, "ci95": 0.05}, higher_better=True) == HOLDS
    assert paired_verdict({"mean": 0.10, "ci95": 0.05}, higher_better=False) == FAILS
    assert paired_verdict({"mean": 0.10, "ci95": 0.20}, higher_better=True) == NOT_DIST
    assert paired_verdict({"mean": 0.0, "ci95": 0.0}, higher_better=True) == NOT_DIST
    assert paired_verdict({"mean": -0.02, "ci95": 0.0}, higher_better=False) == HOLDS  # lower forgetting, no spread
    # old atoms on new data: after task 2 the first task's atoms take 0.25 of task 2's inputs, after task 3 0.5
    run = {"routing": [[{"share": [[1.0, 1.0, 1.0]]}],
                       [{"share": [[1.0, 0.25, 0.5], [0.0, 0.75, 0.5]]}],
                       [{"share": [[0.9, 0.2, 0.3], [0.1, 0.8, 0.2], [0.0, 0.0, 0.5]]}]]}
    assert old_on_new(run) == pytest.approx((0.25 + 0.5) / 2)


def test_ablation_publishes_its_figures_with_results_json(tmp_path, monkeypatch):
    """The routing-share figure is drawn with results.json into a staging folder and published together: an
    interrupt before the end leaves no figure without its results (it used to be drawn into the folder mid-run)."""
    from moram_ref.experiments.toy import ablation

    out = tmp_path / "abl"
    argv = ["ablation", "--out", str(out), "--steps", "2", "--seeds", "1", "--streams", "recall",
            "--studies", "granularity"]
    grouped = ablation.run_grouped

    def then_stopped(*args, **kwargs):  # the stream ran; stopped before results.json
        grouped(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ablation, "run_grouped", then_stopped)
    assert main(argv) == 130
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["config.json"]
    monkeypatch.undo()
    assert main(argv) == 0
    assert [p.name for p in out.glob("*.png")] == ["recall_routing_share.png"] and (out / "results.json").is_file()
