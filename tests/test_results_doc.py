"""docs/results.md's tables are what `moram-ref report` renders from the committed results files, and the
ablation command runs end to end (its g = 1, k = 8 setting is the main job's MoRAM, seed for seed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moram_ref import report
from moram_ref.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
RESULTS = ROOT / "docs" / "results"
SOURCES = {  # table -> the committed results files it is rendered from
    "claims": ("demo.json", "ablation.json", "textcl-2026-11-29.json"),
    "ablation": ("ablation.json",),
    "routing": ("ablation.json",),
    "takeover": ("ablation.json",),
}


@pytest.mark.parametrize("table", sorted(SOURCES))
def test_docs_table_is_generated_from_its_committed_results(table):
    loaded = [json.loads((RESULTS / name).read_text()) for name in SOURCES[table]]
    expected = report.GENERATORS[table](*loaded)
    assert report.read_block(DOC.read_text(), table) == expected, (
        f"docs/results.md's '{table}' table is stale: run `moram-ref report "
        f"{' '.join('docs/results/' + n for n in SOURCES[table])} --table {table} --write docs/results.md`")


def test_committed_results_are_small_summaries():
    for path in RESULTS.glob("*.json"):
        assert path.stat().st_size < 200_000, f"{path.name} is {path.stat().st_size} bytes: keep summaries only"


def test_claims_table_needs_its_three_files(capsys):
    assert main(["report", str(RESULTS / "ablation.json"), "--table", "claims"]) == 2
    assert "--table claims takes 3 file" in capsys.readouterr().err


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
    body = report.GENERATORS["ablation"](abl)
    assert "| recall | **1** | 8 (k = 8 atoms) |" in body and "Steps per task overridden to 4" in body


def test_ablation_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit):
        main(["ablation", "--seeds", "0", "--no-plots"])
    err = capsys.readouterr().err
    assert "--seeds" in err and "0" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["ablation", "--studies", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_verdict_rules():
    from moram_ref.experiments.toy.claims import FAILS, HOLDS, NOT_DIST, old_on_new, overlap_verdict, paired_verdict

    assert paired_verdict({"mean": 0.10, "ci95": 0.05}, higher_better=True) == HOLDS
    assert paired_verdict({"mean": 0.10, "ci95": 0.05}, higher_better=False) == FAILS
    assert paired_verdict({"mean": 0.10, "ci95": 0.20}, higher_better=True) == NOT_DIST
    assert paired_verdict({"mean": 0.0, "ci95": 0.0}, higher_better=True) == NOT_DIST
    assert paired_verdict({"mean": -0.02, "ci95": 0.0}, higher_better=False) == HOLDS  # lower forgetting, no spread
    a, b = {"mean": 0.5, "ci95": 0.1}, {"mean": 0.2, "ci95": 0.1}
    assert overlap_verdict(a, b, True) == HOLDS and overlap_verdict(b, a, True) == FAILS
    assert overlap_verdict(a, b, False) == FAILS
    assert overlap_verdict({"mean": 0.5, "ci95": 0.25}, b, True) == NOT_DIST
    # old atoms on new data: after task 2 the first task's atoms take 0.25 of task 2's inputs, after task 3 0.5
    run = {"routing": [[{"share": [[1.0, 1.0, 1.0]]}],
                       [{"share": [[1.0, 0.25, 0.5], [0.0, 0.75, 0.5]]}],
                       [{"share": [[0.9, 0.2, 0.3], [0.1, 0.8, 0.2], [0.0, 0.0, 0.5]]}]]}
    assert old_on_new(run) == pytest.approx((0.25 + 0.5) / 2)
