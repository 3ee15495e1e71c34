"""The main job runs end to end (fewer steps) and writes what the README promises."""

from __future__ import annotations

import json

import pytest

from moram_ref.cli import main


@pytest.mark.cpu_only  # the main job runs on a CPU
def test_demo_writes_results_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "30"]) == 0
    printed = capsys.readouterr().out
    assert "Transfer" in printed and "MoRAM" in printed and "activation mass" in printed
    results = json.loads((out / "results.json").read_text())
    for stream in ("recall", "digits"):
        methods = results["streams"][stream]["methods"]
        assert set(methods) == {"frozen", "seq_lora", "moe_lora", "dense_moram", "moram"}
        for res in methods.values():
            assert len(res["accuracy"]) == 5 and len(res["accuracy"][0]) == 5
        assert methods["moram"]["trainable_per_task"] == methods["seq_lora"]["trainable_per_task"]
        assert (out / f"{stream}_accuracy.png").stat().st_size > 0
        assert (out / f"{stream}_activation_map.png").stat().st_size > 0
