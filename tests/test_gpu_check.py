"""The prepared GPU check runs end to end with --small (on a CPU here) and writes its JSON."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")


def test_gpu_check_small_runs_on_cpu(tmp_path):
    from moram_ref import gpu_check

    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--small", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert all(s["ok"] for s in report["sections"].values()), report
    assert set(report["sections"]) == {"layer", "llm", "clip"}
    assert report["sections"]["clip"]["moram"]["images_per_s"] > 0
    assert report["sections"]["llm"]["generate"]["new_tokens_per_s"] > 0
