"""``moram-ref report --table clip|llm``: a CLIP/LLM run's summary.json rendered again (moram_ref/experiments/
track_tables.py) — metrics recomputed from the matrices and checked against the stored ones, several runs
averaged with their 95 % CI, every damaged or mismatched input refused in one line naming the file."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from moram_ref import metrics
from moram_ref.cli import main

TASKS = ["caltech101", "dtd", "eurosat"]


def clip_entry(matrix: list[list[float]], tasks=TASKS) -> dict:
    m = np.array(matrix, dtype=float)
    return {"units": "percent", "tasks": list(tasks), "matrix": matrix,
            **{k: (None if np.isnan(v) else 100 * v) for k, v in metrics.summary(m / 100).items()}}


def llm_entry(matrix: list[list[float | None]], tasks=("C-STANCE", "FOMC")) -> dict:
    m = np.array(matrix, dtype=float)
    return {"units": "percent", "tasks": list(tasks), "matrix": matrix, "op": 100 * metrics.op(m / 100),
            "bwt": 100 * metrics.bwt(m / 100), "bwt_clipped": 100 * metrics.bwt_clipped(m / 100),
            "numglue_mode": "numeric"}


def clip_settings(**changes) -> dict:
    s = {"benchmark": "xtail", "order": "1", "tiny": False, "model": None, "pretrained": None, "shots": 16,
         "iterations": 500, "batch": 64, "lr": 5e-4, "seed": 42, "data_root": "/data", "atoms_per_task": 16,
         "top_k": 16, "temperature": 0.01, "threshold": 0.2, "methods": ["moram", "zero_shot"], "datasets": None}
    return {**s, **changes}


def write_run(folder, summary: dict, settings: dict | None = None, command: str = "clip"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    if settings is not None:
        (folder / "config.json").write_text(json.dumps({"command": command, "settings": settings, "info": {}}))
    return folder / "summary.json"


A = [[80.0, 40.0, 30.0], [78.0, 70.0, 31.0], [75.0, 66.0, 90.0]]
B = [[82.0, 41.0, 29.0], [79.0, 72.0, 33.0], [77.0, 65.0, 92.0]]
ZERO = [[60.0, 40.0, 30.0]] * 3


def report(capsys, *argv) -> tuple[int, str, str]:
    code = main(["report", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_one_run_renders_its_metrics_matrix_and_settings(tmp_path, capsys):
    path = write_run(tmp_path / "run", {"moram": clip_entry(A), "zero_shot": clip_entry(ZERO)}, clip_settings())
    code, out, _ = report(capsys, "--table", "clip", path)
    assert code == 0
    want = metrics.summary(np.array(A) / 100)
    cells = [f"{100 * want[k]:.1f}" for k in ("transfer", "average", "last", "bwt", "forgetting")]
    assert f"| MoRAM | {' | '.join(cells)} |" in out
    assert "| zero-shot CLIP | " in out and "| after \\ on | caltech101 | dtd | eurosat |" in out
    assert "| dtd | 78.0 | 70.0 | 31.0 |" in out
    assert out.rstrip().endswith("recomputed from the matrices.")
    assert "X-TAIL, ViT-B-16 (openai), 16-shot, 500 iterations of batch 64 per task, lr 0.0005" in out
    assert "paper, ViT-B/16 X-TAIL: MoRAM 63.3 / 72.7 / 80.9" in out and "Seed 42." in out


def test_a_summary_given_through_a_link_is_described_by_its_runs_record(tmp_path, capsys):
    path = write_run(tmp_path / "run", {"moram": clip_entry(A)}, clip_settings(methods=["moram"]))
    link = tmp_path / "elsewhere" / "latest.json"
    link.parent.mkdir()
    link.symlink_to(path)
    code, out, _ = report(capsys, "--table", "clip", link)
    assert code == 0 and "Seed 42." in out and "No config.json beside" not in out, out


def test_several_runs_give_the_mean_and_the_student_t_half_width(tmp_path, capsys):
    paths = [write_run(tmp_path / f"s{seed}", {"moram": clip_entry(m)}, clip_settings(seed=seed, methods=["moram"]))
             for seed, m in ((1, A), (2, B))]
    code, out, _ = report(capsys, "--table", "clip", *paths)
    assert code == 0
    values = [100 * metrics.last(np.array(m) / 100) for m in (A, B)]
    mean, half = metrics.confidence_interval(np.array(values))
    assert f"| {mean:.1f} ± {half:.1f} |" in out and "mean over 2 runs" in out and "Seeds 1–2." in out
    assert "(Student t over 2 runs: 8.98 × the runs' standard deviation)" in out
    assert f"| caltech101 | {(A[0][0] + B[0][0]) / 2:.1f} |" in out


def test_an_llm_run_shows_unevaluated_entries_and_its_bwts(tmp_path, capsys):
    matrix = [[50.0, None], [40.0, 70.0]]
    path = write_run(tmp_path / "llm", {"moram": llm_entry(matrix)}, None)
    code, out, _ = report(capsys, "--table", "llm", path)
    assert code == 0
    assert "| MoRAM | 55.0 | -10.0 | 5.0 |" in out and "| C-STANCE | 50.0 | · |" in out
    assert "No config.json beside the file: the run's settings are unknown." in out
    settings = {"benchmark": "trace", "tiny": None, "model": None, "epochs": 1, "batch": 8, "lr": 1e-4, "seed": 0,
                "atoms_per_task": 8, "top_k": 8, "temperature": 0.5, "threshold": 0.0, "methods": ["moram"]}
    write_run(tmp_path / "llm", {"moram": llm_entry(matrix)}, settings, command="llm")
    code, _, err = report(capsys, "--table", "llm", path)  # a record of neither --tiny nor --model: not a run's
    assert code == 2 and "has settings.tiny = null and settings.model = null" in err, err
    write_run(tmp_path / "llm", {"moram": llm_entry(matrix)}, {**settings, "model": "/models/llama"}, command="llm")
    code, out, err = report(capsys, "--table", "llm", path)
    assert code == 0 and "TRACE, /models/llama, 1 epoch per task" in out, err


def test_one_task_has_no_transfer(tmp_path, capsys):
    path = write_run(tmp_path / "one", {"moram": clip_entry([[70.0]], ["dtd"])})
    code, out, _ = report(capsys, "--table", "clip", path)
    assert code == 0 and "| MoRAM | — | 70.0 | 70.0 | — | 0.0 |" in out


def test_write_and_check_put_the_table_into_a_document(tmp_path, capsys):
    path = write_run(tmp_path / "run", {"moram": clip_entry(A)}, clip_settings(methods=["moram"]))
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n<!-- BEGIN generated: clip -->\nold\n<!-- END generated: clip -->\n")
    assert report(capsys, "--table", "clip", path, "--write", doc)[0] == 0
    assert "| MoRAM | " in doc.read_text() and "old" not in doc.read_text()
    assert report(capsys, "--table", "clip", path, "--check", doc)[0] == 0


def _damage(summary: dict, how: str) -> dict:
    s = copy.deepcopy(summary)
    e = s["moram"]
    if how == "units":
        e["units"] = "fraction"
    elif how == "edited metric":
        e["last"] += 1.0
    elif how == "score above 100":
        e["matrix"][0][0] = 140.0
    elif how == "short matrix":
        e["matrix"] = e["matrix"][:2]
    elif how == "null below the diagonal":
        e["matrix"][2][0] = None
    elif how == "text score":
        e["matrix"][1][1] = "70"
    elif how == "unknown method":
        s["lora9"] = s.pop("moram")
    elif how == "tasks differ between methods":
        s["zero_shot"]["tasks"] = ["a", "b", "c"]
    elif how == "pipe in a task name":
        e["tasks"][0] = "cal|tech"
    elif how == "not a run's summary":
        return {"streams": {}}
    return s


@pytest.mark.parametrize("how, said", [
    ("units", "in units 'fraction': expected 'percent'"),
    ("edited metric", "has method 'moram': its last = 78.0, but its matrix gives 77"),
    ("score above 100", "[0][0] = 140.0: expected a score in [0, 100]"),
    ("short matrix", "is not 3 × 3"),
    ("null below the diagonal", "[2][0] = None"),
    ("text score", "[1][1] = '70'"),
    ("unknown method", "has method 'lora9': `moram-ref clip` runs"),
    ("tasks differ between methods", "another method on"),
    ("pipe in a task name", "expected a non-empty list of distinct names"),
    ("not a run's summary", "is not the summary.json of a `moram-ref clip` run"),
])
def test_a_damaged_summary_is_one_line_naming_the_file(how, said, tmp_path, capsys):
    path = write_run(tmp_path / "run", _damage({"moram": clip_entry(A), "zero_shot": clip_entry(ZERO)}, how))
    code, out, err = report(capsys, "--table", "clip", path)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"moram-ref report: error: results: {path} ") and said in err, err


def test_runs_that_cannot_be_averaged_are_refused(tmp_path, capsys):
    one = write_run(tmp_path / "a", {"moram": clip_entry(A)}, clip_settings())
    shots = write_run(tmp_path / "b", {"moram": clip_entry(B)}, clip_settings(shots=4, seed=7))
    methods = write_run(tmp_path / "c", {"zero_shot": clip_entry(ZERO)}, clip_settings(seed=9))
    llm = write_run(tmp_path / "d", {"moram": llm_entry([[50.0, None], [40.0, 70.0]])})
    other = write_run(tmp_path / "e", {"moram": clip_entry(B)}, clip_settings(seed=3), command="llm")
    again = write_run(tmp_path / "f", {"moram": clip_entry(B)}, clip_settings())  # seed 42 again
    for paths, said in (([one, shots], "was run with shots = 4"), ([one, methods], "has methods ['zero_shot']"),
                        ([one, one], "is given twice"), ([one, again], "were both run with seed 42"),
                        ([one, llm], "is the summary.json of a `moram-ref llm` run: pass --table llm"),
                        ([other], "is the record of a run of 'llm', not of `moram-ref clip`")):
        code, out, err = report(capsys, "--table", "clip", *paths)
        assert code == 2 and out == "" and err.count("\n") == 1 and said in err, (said, err)
    code, _, err = report(capsys, one)  # the default table (demo) says which one to pass
    assert code == 2 and err.rstrip().endswith("pass --table clip (the default --table demo)")


@pytest.mark.parametrize("change, said", [
    ({"lr": "fast"}, "settings.lr = 'fast': expected a finite number > 0"),
    ({"lr": True}, "settings.lr = True"),
    ({"seed": [1, 2]}, "settings.seed = [1, 2]: expected an integer in [0, 4294967295]"),
    ({"seed": 10**30}, "settings.seed = 1000000000000000000000000000000: expected an integer in [0, 4294967295]"),
    ({"iterations": {"a": 1}}, "settings.iterations = {'a': 1}"),
    ({"tiny": "false"}, "settings.tiny = 'false': expected true or false"),
    ({"benchmark": ["xtail"]}, "settings.benchmark = ['xtail']"),
    ({"benchmark": "imagenet"}, "settings.benchmark = 'imagenet'"),
    ({"model": "  "}, "expected null or a non-empty name"),
    ({"datasets": ["mnist", "dtd", "eurosat"]}, "has settings.datasets = ['mnist', 'dtd', 'eurosat'], but"),
    ({"methods": ["zero_shot"]}, "has settings.methods = ['zero_shot'], but"),
    ({"seed": None}, "settings.seed = None"),
    ({"lr": 10**400}, "expected a finite number > 0"),  # an int JSON holds but a float cannot
])
def test_a_record_beside_the_summary_that_cannot_describe_it_is_refused(change, said, tmp_path, capsys):
    """config.json is where the note's settings come from: a field of the wrong type, or settings that do not
    match the summary (other data sets, methods), are refused naming the file and the field."""
    path = write_run(tmp_path / "run", {"moram": clip_entry(A)}, clip_settings(**change))
    code, out, err = report(capsys, "--table", "clip", path)
    assert code == 2 and out == "" and err.count("\n") == 1 and said in err, err
    assert "config.json" in err


def test_a_damaged_record_beside_the_summary_is_refused(tmp_path, capsys):
    path = write_run(tmp_path / "run", {"moram": clip_entry(A)}, clip_settings())
    for content in (b"{", b"\xff\xfe", b"[]", b'{"command": "clip", "settings": []}'):
        (tmp_path / "run" / "config.json").write_bytes(content)
        code, _, err = report(capsys, "--table", "clip", path)
        assert code == 2 and "config.json" in err and err.count("\n") == 1, (content, err)


@pytest.mark.parametrize("how, said", [
    ("a key twice", "the key 'moram' appears twice in one object"),
    ("llm score above the diagonal", "above the diagonal an LLM run writes null"),
    ("end marker in a task name", "expected a non-empty list of distinct names"),
    ("space before a task name", "expected a non-empty list of distinct names"),
    ("html tag in a task name", "expected a non-empty list of distinct names"),
    ("entity in a task name", "expected a non-empty list of distinct names"),
    ("link as a task name", "expected a non-empty list of distinct names"),
])
def test_inputs_that_would_mislead_the_table_are_refused(how, said, tmp_path, capsys):
    table = "clip"
    if how == "a key twice":
        (tmp_path / "run").mkdir()
        one = json.dumps(clip_entry(A))
        (tmp_path / "run" / "summary.json").write_text('{"moram": {"units": 1}, "moram": ' + one + "}")
        path = tmp_path / "run" / "summary.json"
    elif how == "llm score above the diagonal":
        table, path = "llm", write_run(tmp_path / "run", {"moram": llm_entry([[50.0, 12.0], [40.0, 70.0]])})
    else:
        name = {"end": "<!-- END generated: clip -->", "spa": " dtd", "htm": "<img src=x onerror=alert(1)>",
                "ent": "a&lt;img src=x&gt;", "lin": "[x](javascript:alert(1))"}[how[:3]]
        path = write_run(tmp_path / "run", {"moram": clip_entry(A, [name, "b", "c"])})
    code, out, err = report(capsys, "--table", table, path)
    assert code == 2 and out == "" and said in err, err


def test_one_task_with_nan_written_for_null_is_accepted(tmp_path, capsys):
    entry = clip_entry([[70.0]], ["dtd"])
    entry["transfer"] = entry["bwt"] = float("nan")
    path = write_run(tmp_path / "one", {"moram": entry})
    code, out, _ = report(capsys, "--table", "clip", path)
    assert code == 0 and "| MoRAM | — | 70.0 |" in out


def test_writing_a_block_keeps_the_document_whole(tmp_path, capsys, monkeypatch):
    """Two blocks of one name, --block without a target, a non-regular file are refused; CRLF line endings are
    kept; a write that fails leaves the document as it was (exit 1)."""
    from moram_ref.experiments import rundir

    path = write_run(tmp_path / "run", {"moram": clip_entry(A)}, clip_settings(methods=["moram"]))
    block = "<!-- BEGIN generated: clip -->\nold\n<!-- END generated: clip -->\n"
    twice = tmp_path / "twice.md"
    twice.write_text(block + "text\n" + block)
    code, _, err = report(capsys, "--table", "clip", path, "--write", twice)
    assert code == 2 and "2 blocks are named 'clip'" in err
    code, _, err = report(capsys, "--table", "clip", path, "--block", "x")
    assert code == 2 and "--block: names the block --write or --check acts on" in err
    code, _, err = report(capsys, "--table", "clip", path, "--write", tmp_path)
    assert code == 2 and "is not a regular file" in err
    crlf = tmp_path / "crlf.md"
    crlf.write_bytes(("# Title\n" + block + "end\n").replace("\n", "\r\n").encode())
    assert report(capsys, "--table", "clip", path, "--write", crlf)[0] == 0
    raw = crlf.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n") and b"| MoRAM |" in raw
    assert report(capsys, "--table", "clip", path, "--check", crlf)[0] == 0
    doc = tmp_path / "doc.md"
    doc.write_text("# Mine\n" + block)
    before = doc.read_bytes()

    def full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir, "write_text", full)
    code, _, err = report(capsys, "--table", "clip", path, "--write", doc)
    assert code == 1 and "No space left on device" in err and doc.read_bytes() == before


def test_the_same_run_by_another_way_is_refused(tmp_path, capsys):
    """A hard link, or a copy without its record, is one run counted twice; a record with a key twice could
    hide the seed; a FIFO beside the summary would block."""
    import os

    one = write_run(tmp_path / "a", {"moram": clip_entry(A)}, clip_settings())
    (tmp_path / "b").mkdir()
    os.link(one, tmp_path / "b" / "summary.json")
    copy_ = write_run(tmp_path / "c", {"moram": clip_entry(A)})  # no config.json beside it
    twice = write_run(tmp_path / "d", {"moram": clip_entry(B)})
    (tmp_path / "d" / "config.json").write_text(json.dumps({"command": "clip", "settings": clip_settings()})
                                                .replace('"seed": 42', '"seed": 42, "seed": 99'))
    fifo = write_run(tmp_path / "e", {"moram": clip_entry(B)})
    os.mkfifo(tmp_path / "e" / "config.json")
    for paths, said in (([one, tmp_path / "b" / "summary.json"], "is given twice"),
                        ([one, copy_], "hold the same results, and no record says"),
                        ([one, twice], "the key 'seed' appears twice"),
                        ([fifo], "not a regular file")):
        code, out, err = report(capsys, "--table", "clip", *paths)
        assert code == 2 and out == "" and said in err, (said, err)


def test_what_a_real_run_may_record_is_rendered(tmp_path, capsys):
    """A negative δ (the CLI allows [-1, 1]) and a long local model path with odd characters are valid
    records: the path is shown shortened and escaped, never breaking the table."""
    model = "/home/me/.cache/huggingface/hub/models--org--name/snapshots/" + "0" * 40 + "/<b>a|b&c-->"
    path = write_run(tmp_path / "run", {"moram": clip_entry(A)},
                     clip_settings(threshold=-0.1, model=model, methods=["moram"]))
    code, out, err = report(capsys, "--table", "clip", path)
    assert code == 0, err
    note = out.rstrip().splitlines()[-1]
    assert "δ = -0.1" in note and "/&lt;b&gt;a\\|b&amp;c--&gt; (openai)" in note and "…" in note


def test_a_document_is_written_through_its_link_and_mixed_line_endings_are_refused(tmp_path, capsys):
    path = write_run(tmp_path / "run", {"moram": clip_entry(A)}, clip_settings(methods=["moram"]))
    real = tmp_path / "real.md"
    real.write_text("<!-- BEGIN generated: clip -->\nold\n<!-- END generated: clip -->\n")
    (tmp_path / "link.md").symlink_to(real)
    assert report(capsys, "--table", "clip", path, "--write", tmp_path / "link.md")[0] == 0
    assert (tmp_path / "link.md").is_symlink() and "| MoRAM |" in real.read_text()
    mixed = tmp_path / "mixed.md"
    mixed.write_bytes(b"# a\n<!-- BEGIN generated: clip -->\r\nold\r\n<!-- END generated: clip -->\r\n")
    code, _, err = report(capsys, "--table", "clip", path, "--write", mixed)
    assert code == 2 and "mixes CRLF and LF line endings" in err
