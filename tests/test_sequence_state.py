"""The CLIP and LLM tracks' progress.json and per-task checkpoints, read back for --resume and --eval-only:
every damage is named in one CheckpointError before any work (the CLI prints it, exit 2)."""

from __future__ import annotations

import json

import pytest

from moram_ref.experiments import sequence_state as S
from moram_ref.torch import checkpoint as C
from test_torch_attach import CFG
from test_torch_checkpoint import trained


def _written(tmp_path, record) -> object:
    path = tmp_path / "progress.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def test_a_fresh_record_round_trips(tmp_path):
    from moram_ref.experiments import rundir

    path = tmp_path / "progress.json"
    rundir.write_json(path, S.fresh(3))  # NaN is written as null, and read back
    assert S.read(path, 3) == {"tasks_done": 0, "matrix": [[None] * 3] * 3, "train": []}


@pytest.mark.parametrize(("record", "message"), [
    ("{", "cannot be read"),
    ([1, 2, 3], "must hold a JSON object, got list"),
    ({"tasks_done": 1, "train": []}, "lacks matrix"),
    ({"tasks_done": "two", "matrix": [[None] * 3] * 3, "train": []}, 'tasks_done "two", not an integer from 0 to 3'),
    ({"tasks_done": 7, "matrix": [[None] * 3] * 3, "train": []}, "tasks_done 7, not an integer from 0 to 3"),
    ({"tasks_done": -1, "matrix": [[None] * 3] * 3, "train": []}, "tasks_done -1"),
    ({"tasks_done": True, "matrix": [[None] * 3] * 3, "train": []}, "tasks_done true"),
    ({"tasks_done": 1, "matrix": [[None] * 3] * 2, "train": []}, "not 3 rows of 3 entries"),
    ({"tasks_done": 1, "matrix": [[None] * 2] * 3, "train": []}, "not 3 rows of 3 entries"),
    ({"tasks_done": 1, "matrix": [["x", None, None]] + [[None] * 3] * 2, "train": []}, "matrix[0][0] = \"x\", not an accuracy"),
    ({"tasks_done": 1, "matrix": [[None] * 3] * 3, "train": {}}, "matrix[0][0] = null, not an accuracy from 0 to 100 "
                                                                "(task 1 is done"),
    ({"tasks_done": 1, "matrix": [[50.0, None, None]] + [[None] * 3] * 2, "train": {}}, "train {}, not a list of JSON objects"),
    ({"tasks_done": 1, "matrix": [[50.0, None, None]] + [[None] * 3] * 2, "train": [3]}, "train [3], not a list of JSON"),
    ({"tasks_done": 3, "matrix": [[-500.0] * 3] * 3, "train": []}, "matrix[0][0] = -500.0, not an accuracy"),
    ({"tasks_done": 3, "matrix": [[1e308] * 3] * 3, "train": []}, "matrix[0][0] = 1e+308"),
    ("""{"tasks_done": 1, "matrix": [[NaN, null, null], [null, null, null], [null, null, null]], "train": []}""",
     "matrix[0][0] = NaN"),
    ({"tasks_done": 2, "matrix": [[50, None, None], [50, None, None], [None] * 3], "train": []}, "matrix[1][1] = null"),
    ({"tasks_done": 1, "matrix": [[50, None, None]] + [[None] * 3] * 2, "train": [], "n99": "x"}, "n99 str, not a list"),
    ({"tasks_done": 1, "matrix": [[50, None, None]] + [[None] * 3] * 2, "train": [], "maps": []}, "maps list"),
    ("[" * 200_000 + "]" * 200_000, "cannot be read (RecursionError"),
])
def test_a_damaged_progress_record_is_named(tmp_path, record, message):
    path = _written(tmp_path, record)
    with pytest.raises(C.CheckpointError) as exc:
        S.read(path, 3)
    assert message in str(exc.value) and str(path) in str(exc.value) and "start a fresh run" in str(exc.value)


def test_a_method_that_trains_has_one_train_record_per_task_done(tmp_path):
    record = {"tasks_done": 2, "matrix": [[50, None, None], [50, 60, None], [None] * 3], "train": [{"task": "a"}]}
    path = _written(tmp_path, record)
    S.read(path, 3)  # the count is checked only where the method is known
    with pytest.raises(C.CheckpointError, match=r"has 1 train record\(s\) for tasks_done 2 \(one per task trained\)"):
        S.read(path, 3, trained=True)
    with pytest.raises(C.CheckpointError, match=r"zero_shot trains nothing, so none"):
        S.read(path, 3, trained=False)
    record["train"].append({"task": "b"})
    assert len(S.read(_written(tmp_path, record), 3, trained=True)["train"]) == 2


def test_every_checkpoint_up_to_the_last_done_is_checked(tmp_path):
    for t in (1, 2):
        C.save(trained(t), tmp_path / f"task{t}.safetensors", CFG, tasks_done=t)
    S.check_checkpoints(tmp_path, 2, CFG, "moram")
    with pytest.raises(C.CheckpointError, match=r"task3\.safetensors does not exist"):
        S.check_checkpoints(tmp_path, 3, CFG, "moram")
    (tmp_path / "task2.safetensors").write_bytes((tmp_path / "task1.safetensors").read_bytes())  # copied over
    with pytest.raises(C.CheckpointError, match=r"task2\.safetensors holds the adapters after task 1, not after task 2"):
        S.check_checkpoints(tmp_path, 2, CFG, "moram")
    data = (tmp_path / "task1.safetensors").read_bytes()
    (tmp_path / "task1.safetensors").write_bytes(data[: len(data) - 9])  # truncated: found before task 2
    with pytest.raises(C.CheckpointError, match=r"task1\.safetensors"):
        S.check_checkpoints(tmp_path, 2, CFG, "moram")


def test_a_checkpoint_of_another_seed_is_refused(tmp_path):
    C.save(trained(1), tmp_path / "task1.safetensors", CFG, tasks_done=1, extra=S.extra(7))
    S.check_checkpoints(tmp_path, 1, CFG, "moram", seed=7)
    with pytest.raises(C.CheckpointError, match=r"task1\.safetensors was written by a run with --seed 7, not 8"):
        S.check_checkpoints(tmp_path, 1, CFG, "moram", seed=8)


def test_check_run_reads_every_methods_record_before_any_work(tmp_path):
    """zero_shot's record too (it has no checkpoints), and a record that is not a file is named."""
    (tmp_path / "zero_shot").mkdir()
    (tmp_path / "zero_shot" / "progress.json").write_text("[1, 2, 3]")
    with pytest.raises(C.CheckpointError, match=r"zero_shot/progress\.json must hold a JSON object"):
        S.check_run(tmp_path, ["zero_shot"], 3, CFG, eval_only=False)
    (tmp_path / "zero_shot" / "progress.json").unlink()
    (tmp_path / "zero_shot" / "progress.json").mkdir()
    with pytest.raises(C.CheckpointError, match="is not a readable file"):
        S.check_run(tmp_path, ["zero_shot"], 3, CFG, eval_only=False)


def test_the_clip_track_needs_whole_rows_for_the_tasks_done(tmp_path):
    """CLIP evaluates every domain after each task (Transfer reads above the diagonal); the LLM track only the
    tasks seen so far: a null above the diagonal of a done row is refused for CLIP, before any work."""
    record = {"tasks_done": 1, "matrix": [[50, None, 20], [None] * 3, [None] * 3], "train": [{}]}
    path = _written(tmp_path, record)
    S.read(path, 3, trained=True)
    with pytest.raises(C.CheckpointError, match=r"matrix\[0\]\[1\] = null, not an accuracy .*task 1 is done"):
        S.read(path, 3, trained=True, full_rows=True)


def test_a_progress_record_and_checkpoints_of_different_runs_are_refused(tmp_path):
    """progress.json records the digest of every checkpoint written with it: a record copied from another run
    (its accuracies beside these checkpoints), or a checkpoint copied in from one, is named before any work."""
    from moram_ref.experiments import rundir

    runs = {}
    for run, seed in (("a", 0), ("b", 1)):
        folder = tmp_path / run / "moram"
        (folder / "checkpoints").mkdir(parents=True)
        progress = {"tasks_done": 1, "matrix": [[50.0 + seed, None, None], [None] * 3, [None] * 3], "train": [{}]}
        S.vouch(progress, C.save(trained(1, seed=seed), folder / "checkpoints" / "task1.safetensors", CFG,
                                 tasks_done=1))
        rundir.write_json(folder / "progress.json", progress)
        runs[run] = folder
    S.check_run(tmp_path / "a", ["moram"], 3, CFG, eval_only=False)  # a run's own files pass
    good = (runs["a"] / "progress.json").read_bytes()
    (runs["a"] / "progress.json").write_bytes((runs["b"] / "progress.json").read_bytes())
    with pytest.raises(C.CheckpointError, match=r"a/moram/progress\.json was not written with .*task1\.safetensors"):
        S.check_run(tmp_path / "a", ["moram"], 3, CFG, eval_only=False)
    (runs["a"] / "progress.json").write_bytes(good)
    (runs["a"] / "checkpoints" / "task1.safetensors").write_bytes(
        (runs["b"] / "checkpoints" / "task1.safetensors").read_bytes())
    with pytest.raises(C.CheckpointError, match=r"was not written with .*a/moram/checkpoints/task1\.safetensors"):
        S.check_run(tmp_path / "a", ["moram"], 3, CFG, eval_only=False)
    bad = json.loads(good)
    bad["checkpoints"] = ["x"]
    (runs["a"] / "progress.json").write_text(json.dumps(bad))
    with pytest.raises(C.CheckpointError, match=r"has checkpoints \[\"x\"\], not an object of file digests"):
        S.check_run(tmp_path / "a", ["moram"], 3, CFG, eval_only=False)


@pytest.mark.parametrize("place, make", [("moram", "file"), ("moram/checkpoints", "file"), ("moram/manifests", "file"),
                                         ("moram/checkpoints/task3.safetensors", "folder")])
def test_what_is_in_the_way_of_the_runs_writes_is_named_before_any_work(tmp_path, place, make):
    target = tmp_path / place
    target.parent.mkdir(parents=True, exist_ok=True)
    target.mkdir() if make == "folder" else target.write_text("x")
    with pytest.raises(C.CheckpointError, match=rf"{place} is {'a folder' if make == 'folder' else 'not a folder'}: "
                                                r"the run writes .* there; move it away"):
        S.check_run(tmp_path, ["moram"], 3, CFG, eval_only=False)


def test_the_resume_line_says_whether_anything_is_left():
    assert S.resumed_line("moram", 2, 3) == "moram: resumed after task 2 of 3"
    assert S.resumed_line("lora", 3, 3).startswith("lora: all tasks (3 of 3) were already done; nothing left to train")
    assert "without loading the model" not in S.resumed_line("lora", 3, 3)  # train() was called with the model
    assert S.resumed_line("lora", 3, 3, model_loaded=False).endswith("progress.json, without loading the model)")
