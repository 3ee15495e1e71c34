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
    assert report["sections"]["llm"]["ok"] and report["sections"]["layer"]["ok"]
    assert report["sections"]["llm"]["generate"]["new_tokens_per_s"] > 0
