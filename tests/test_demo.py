"""The main job runs end to end (fewer steps) and writes what the README promises."""

from __future__ import annotations

import json

import pytest

from moram_ref.cli import main


@pytest.mark.cpu_only  # the main job runs on a CPU
def test_demo_writes_results_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "30", "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Transfer" in printed and "MoRAM" in printed and "activation mass" in printed
    assert "validation sweep of τ" in printed and "key norm" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    for stream in ("recall", "digits"):
        res = results["streams"][stream]
        expected = {"frozen", "seq_lora", "moe_lora", "dense_moram", "moram"} | (
            {"moram_swept"} if stream == "digits" else set())
        assert set(res["methods"]) == expected == set(res["summary"])
        for runs in res["methods"].values():
            assert len(runs) == 2
            for run in runs:
                assert len(run["accuracy"]) == 5 and len(run["accuracy"][0]) == 5
        assert res["methods"]["moram"][0]["trainable_per_task"] == res["methods"]["seq_lora"][0]["trainable_per_task"]
        assert len(res["methods"]["moram"][0]["key_norms"]) == 5  # one entry per task
        for cell in res["summary"]["moram"].values():
            assert 0 <= cell["ci95"] and -1 <= cell["mean"] <= 1
        assert (out / f"{stream}_accuracy.png").stat().st_size > 0
        assert (out / f"{stream}_activation_map.png").stat().st_size > 0
    assert results["streams"]["digits"]["sweep"]["chosen"] in results["streams"]["digits"]["sweep"]["temperatures"]


@pytest.mark.cpu_only
def test_an_interrupted_demo_leaves_no_figures_without_results(tmp_path, capsys, monkeypatch):
    from moram_ref.experiments import rundir
    from moram_ref.experiments.toy import digits

    out = tmp_path / "demo"

    def interrupted(*args, **kwargs):  # the second stream: the first one's figures are drawn by now
        raise KeyboardInterrupt

    monkeypatch.setattr(digits, "run_method", interrupted)
    argv = ["demo", "--out", str(out), "--steps", "5", "--seeds", "1", "--streams", "recall", "digits"]
    for _ in range(2):  # the second time with a staging folder a killed run left behind
        assert main(argv) == 130
        assert "interrupted" in capsys.readouterr().err
        left = sorted(p.name for p in out.iterdir() if p.name != rundir.LOCK)
        assert left == ["config.json"]  # no staging folder, no figure of the recall stream
        (out / ".staging-left-by-a-kill").mkdir()
