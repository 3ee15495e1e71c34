"""Run folders: one run at a time (a lock the OS releases), settings recorded and compared on a resume,
nothing changed on a refusal, strict JSON; end to end through the CLI where it is cheap."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from moram_ref.cli import main
from moram_ref.experiments import rundir
from moram_ref.experiments.cliargs import UsageError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"lr": 0.001, "max_train": 8, "methods": ["moram"], "data_root": "/data"}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _strict_load(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_dumps_is_strict_json_with_null_for_undefined():
    obj = {"m": np.array([[1.0, math.nan], [math.inf, 2.0]]), "x": np.float32(0.5), "n": np.int64(3),
           "p": Path("a/b"), "t": (1, -math.inf)}
    back = _strict_load(rundir.dumps(obj))
    assert back == {"m": [[1.0, None], [None, 2.0]], "x": 0.5, "n": 3, "p": "a/b", "t": [1, None]}


def test_write_json_is_atomic_on_failure(tmp_path):
    path = tmp_path / "r.json"
    rundir.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        rundir.write_json(path, {"a": object()})  # not serialisable: the old file stays whole
    assert _strict_load(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_refused_write_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    import tempfile

    path = tmp_path / "config.json"
    path.write_text("old")

    def refusing(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(tmp_path / ".config.json.x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refusing)
    with pytest.raises(PermissionError) as refused:
        rundir.write_json(path, {"a": 1})
    assert str(refused.value) == f"[Errno 1] could not write {path} (Operation not permitted)"
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_resume_with_other_settings_lists_every_difference_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    with rundir.open_run(out, "llm", SETTINGS):
        (out / "progress.json").write_text("{}")
    before = _snapshot(out)
    new = {**SETTINGS, "lr": 0.1, "max_train": 9}
    with pytest.raises(UsageError) as err:
        with rundir.open_run(out, "llm", new, resume=True):
            pytest.fail("a resume with other settings must not start")
    msg = str(err.value)
    assert "--lr: recorded 0.001, now 0.1" in msg and "--max-train: recorded 8, now 9" in msg and "\n" not in msg
    assert _snapshot(out) == before
    with rundir.open_run(out, "llm", SETTINGS, resume=True):  # the same settings resume, record unchanged
        pass
    assert _snapshot(out) == before


@pytest.mark.parametrize("kind", ["resume", "eval_only"])
def test_resume_needs_a_run(tmp_path, kind):
    with pytest.raises(UsageError, match="no run folder"):
        rundir.check(tmp_path / "nothing", "clip", SETTINGS, **{kind: True})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="config.json missing"):
        rundir.check(tmp_path / "empty", "clip", SETTINGS, **{kind: True})


def test_fresh_run_refuses_foreign_files_other_settings_and_other_commands(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.tex").write_text("mine")
    with pytest.raises(UsageError, match="holds no moram-ref run"):
        rundir.check(tmp_path / "work", "demo", SETTINGS)
    with rundir.open_run(tmp_path / "run", "demo", SETTINGS):
        pass
    rundir.check(tmp_path / "run", "demo", SETTINGS)  # a re-run with the same settings may use it
    with pytest.raises(UsageError, match="other settings"):
        rundir.check(tmp_path / "run", "demo", {**SETTINGS, "lr": 1.0})
    with pytest.raises(UsageError, match="holds a 'demo' run"):
        rundir.check(tmp_path / "run", "clip", SETTINGS)
    for record in ({"command": "demo", "settings": [1, 2]}, {"command": 7, "settings": {}}, [1], {"command": "demo"}):
        (tmp_path / "run" / "config.json").write_text(json.dumps(record))  # valid JSON, not a run record
        for resume in (False, True):
            with pytest.raises(UsageError, match="is not a moram-ref run record"):
                rundir.check(tmp_path / "run", "demo", SETTINGS, resume=resume)


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from moram_ref.experiments import rundir
    with rundir.open_run(Path(sys.argv[1]), "demo", {"seed": 0}):
        Path(sys.argv[2]).write_text("locked")
        if sys.argv[3] == "crash":
            import os; os._exit(3)
        time.sleep(120)
""")


def _hold(out: Path, flag: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(flag), mode], env=env)
    for _ in range(600):
        if flag.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert flag.exists(), "the holder process did not take the lock"
    return proc


def test_second_run_into_a_folder_in_use_is_refused_with_the_pid(tmp_path, capsys):
    out = tmp_path / "demo"
    proc = _hold(out, tmp_path / "flag", "hold")
    try:
        before = _snapshot(out)
        code = main(["demo", "--out", str(out), "--steps", "1", "--no-plots"])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by another run (pid {proc.pid})" in err and err.count("\n") == 1
        assert _snapshot(out) == before
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "run"
    proc = _hold(out, tmp_path / "flag", "crash")
    assert proc.wait(timeout=60) == 3
    with rundir.open_run(out, "demo", {"seed": 0}):  # no stale lock after a crash
        assert (out / ".lock").read_text().strip() == str(os.getpid())


def test_demo_rerun_resume_rules_through_the_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "1", "--no-plots", "--streams", "recall", "--methods", "moram"]
    assert main(args) == 0
    recorded = _strict_load((out / "config.json").read_text())
    assert recorded["command"] == "demo" and recorded["settings"]["steps"] == 1
    assert "out" not in recorded["settings"] and "no_plots" not in recorded["settings"]
    _strict_load((out / "results.json").read_text())
    assert main(args) == 0  # the same settings: a re-run is allowed
    capsys.readouterr()
    before = _snapshot(out)
    assert main(args[:-1] + ["frozen"]) == 2
    err = capsys.readouterr().err
    assert "--methods: recorded [\"moram\"], now [\"frozen\"]" in err and err.count("\n") == 1
    assert _snapshot(out) == before


def test_a_folder_that_cannot_be_created_or_locked_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    """A read-only run folder (a read-only mount, `chattr +i`; root ignores mode bits, so the refusal is
    simulated) and a folder that cannot be made: exit 1, one line naming the folder and what to do."""
    args = ["demo", "--steps", "1", "--no-plots", "--streams", "recall", "--methods", "moram"]
    real_mkdir = Path.mkdir

    def refused(self, *rest, **kwargs):
        if self.name == "unmakeable":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *rest, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "mkdir", refused)
        assert main([*args, "--out", str(tmp_path / "unmakeable")]) == 1
    err = capsys.readouterr().err
    assert err == f"moram-ref demo: error: --out: could not create the folder {tmp_path / 'unmakeable'} (Permission denied)\n"
    out = tmp_path / "demo"
    assert main([*args, "--out", str(out)]) == 0
    capsys.readouterr()
    before = _snapshot(out)

    def read_only(path, flag):  # opening the lock for writing fails on a read-only mount; reading still works
        raise PermissionError(30, "Read-only file system", str(path))

    monkeypatch.setattr(rundir, "open_lock", read_only)
    assert main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (f"moram-ref demo: error: --out: {out} is not writable here (Read-only file system, on its lock "
                   "file .lock); this command writes into it: choose another --out\n")
    assert _snapshot(out) == before


def test_a_folder_whose_lock_is_writable_but_not_the_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    """`chattr +i` on a run folder that has its lock file: the lock opens, new files cannot be made."""
    out = tmp_path / "run"
    with rundir.open_run(out, "demo", {"steps": 1}):
        pass
    real = rundir.tempfile.mkstemp

    def immutable(*args, **kwargs):
        if Path(kwargs.get("dir", "")) == out:
            raise PermissionError(1, "Operation not permitted")
        return real(*args, **kwargs)

    monkeypatch.setattr(rundir.tempfile, "mkstemp", immutable)
    reached = []
    with pytest.raises(OSError) as refused:
        with rundir.open_run(out, "demo", {"steps": 1}, resume=True):
            reached.append(True)
    assert not reached and refused.value.filename is None
    assert refused.value.strerror == (f"--out: {out} is not writable here (Operation not permitted, on a new file); "
                                      "this command writes into it: copy the run folder somewhere writable and give "
                                      "the copy as --out")


def test_a_folder_only_read_may_be_unwritable(tmp_path, monkeypatch):
    """``reads_only`` (text-cl-merge's parts): an unwritable lock file is taken shared, or the folder is read
    unlocked when it has none; a run holding it is still named; a writing command is still refused."""
    import fcntl

    out = tmp_path / "run"
    with rundir.open_run(out, "demo", {"steps": 1}):
        pass
    real_open = open

    def read_only(path, flag):  # opening the lock for writing fails on a read-only mount; reading still works
        raise PermissionError(30, "Read-only file system", str(path))

    monkeypatch.setattr(rundir, "open_lock", read_only)
    with rundir.open_run(out, "demo", {"steps": 1}, resume=True, reads_only=True) as folder:
        with real_open(out / rundir.LOCK) as other:  # a second reader is welcome
            fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert folder.path == out
    with pytest.raises(UsageError, match="steps"):  # the record is still checked
        with rundir.open_run(out, "demo", {"steps": 2}, resume=True, reads_only=True):
            pass
    with real_open(out / rundir.LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run writing there (on a mount that allows it)
        with pytest.raises(UsageError, match="in use by another run"):
            with rundir.open_run(out, "demo", {"steps": 1}, resume=True, reads_only=True, arg="PART"):
                pass
    (out / rundir.LOCK).unlink()
    with rundir.open_run(out, "demo", {"steps": 1}, resume=True, reads_only=True):
        pass  # no lock file: no run can be writing (each creates it first)
    with pytest.raises(OSError, match="is not writable here"):
        with rundir.open_run(out, "demo", {"steps": 1}, resume=True):
            pass


def _llm_data(root: Path) -> Path:
    for name in ("dbpedia", "amazon"):
        (root / name).mkdir(parents=True)
        rows = [{"prompt": f"Topic of {name} text {i}? Answer:", "answer": f"label{i % 2}"} for i in range(6)]
        (root / name / "train.json").write_text(json.dumps(rows))
        (root / name / "test.json").write_text(json.dumps(rows[:2]))
    return root


def test_llm_cli_writes_strict_json_and_refuses_a_changed_resume(tmp_path, capsys, monkeypatch):
    data = _llm_data(tmp_path / "data")
    out = tmp_path / "run"
    args = ["llm", "--tiny", "llama", "--benchmark", "olora-1", "--skip-missing", "--data-root", str(data),
            "--out", str(out), "--max-train", "4", "--max-test", "2", "--epochs", "1", "--batch", "4",
            "--micro-batch", "2", "--max-prompt", "32", "--max-answer", "4", "--max-new-tokens", "2"]
    assert main(args) == 0
    summary = _strict_load((out / "summary.json").read_text())["moram"]
    assert summary["units"] == "percent" and summary["matrix"][0][1] is None  # not evaluated: null, not NaN
    _strict_load((out / "moram" / "matrix.json").read_text())
    capsys.readouterr()
    before = _snapshot(out)
    assert main(args + ["--resume", "--lr", "0.1", "--max-train", "3"]) == 2
    err = capsys.readouterr().err
    assert "--lr: recorded 0.0005, now 0.1" in err and "--max-train: recorded 4, now 3" in err
    assert _snapshot(out) == before
    summary = (out / "summary.json").read_bytes()
    from moram_ref.experiments.llm import run as llm_run

    def no_model(*_, **__):
        raise AssertionError("a finished run's --resume loaded the model")

    monkeypatch.setattr(llm_run, "build", no_model)
    assert main(args + ["--resume"]) == 0  # same settings: continues (nothing left to train)
    assert (out / "summary.json").read_bytes() == summary
    said = capsys.readouterr().out
    assert ("moram: all tasks (2 of 2) were already done; nothing left to train (the results are written again "
            "from progress.json, without loading the model)") in said, said


def test_clip_summary_is_strict_json_in_one_unit(tmp_path, capsys, monkeypatch):
    from moram_ref.experiments.clip import backbone
    from moram_ref.experiments.clip.synthetic import make_all

    roots = make_all(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["clip", "--tiny", "--data-root", str(roots["xtail"]), "--datasets", "dtd", "eurosat", "--shots", "2",
            "--iterations", "1", "--batch", "2", "--methods", "zero_shot", "--out", str(out)]
    assert main(argv) == 0
    written = {p.name: p.read_bytes() for p in (out / "summary.json", out / "zero_shot" / "matrix.json")}

    def no_model(*_, **__):
        raise AssertionError("a finished run's --resume loaded the model")

    monkeypatch.setattr(backbone, "tiny_clip", no_model)
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0  # finished: the results again, from progress.json alone
    assert "zero_shot: all tasks (2 of 2) were already done" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (out / "summary.json", out / "zero_shot" / "matrix.json")} == written
    monkeypatch.undo()
    (out / "zero_shot" / "progress.json").unlink()  # its record gone: --resume runs it again, and says so
    assert main(argv + ["--resume"]) == 0
    assert "zero_shot: nothing recorded in" in capsys.readouterr().out
    s = _strict_load((out / "summary.json").read_text())["zero_shot"]
    matrix = np.array(s["matrix"])
    assert s["units"] == "percent" and matrix.max() > 1  # percent, not fractions
    np.testing.assert_allclose(s["last"], matrix[-1].mean())  # the summary numbers are in the matrix's unit
    np.testing.assert_allclose(s["transfer"], matrix[0, 1])  # two tasks: the one entry above the diagonal
    assert _strict_load((out / "zero_shot" / "matrix.json").read_text()) == s


def test_a_damaged_run_folder_is_one_line_naming_the_file(tmp_path, capsys):
    """A checkpoint whose bytes were damaged, or an unreadable progress.json, found on --eval-only/--resume:
    one line naming the file, exit 2 (not a traceback)."""
    data = _llm_data(tmp_path / "data")
    out = tmp_path / "run"
    args = ["llm", "--tiny", "llama", "--benchmark", "olora-1", "--skip-missing", "--data-root", str(data),
            "--out", str(out), "--max-train", "4", "--max-test", "2", "--epochs", "1", "--batch", "4",
            "--micro-batch", "2", "--max-prompt", "32", "--max-answer", "4", "--max-new-tokens", "2",
            "--methods", "moram"]
    assert main(args) == 0
    ck = sorted((out / "moram" / "checkpoints").glob("task*.safetensors"))[-1]
    raw = bytearray(ck.read_bytes())
    raw[-40:-8] = bytes(b ^ 0xFF for b in raw[-40:-8])  # tensor bytes, header intact
    ck.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(args + ["--eval-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ck.name in err[0] and "Traceback" not in err[0], err
    (out / "moram" / "progress.json").write_text('{"tasks_done": 1,')
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "progress.json cannot be read" in err[0], err


def test_checkpoint_refuses_a_config_that_does_not_describe_the_layers(tmp_path):
    import torch

    from moram_ref.config import MoRAMConfig
    from moram_ref.torch import attach, checkpoint

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    attach.attach(model, MoRAMConfig(atoms_per_task=2, top_k=2), ["0"])
    with pytest.raises(checkpoint.CheckpointError, match="atoms_per_task=8 does not match layer '0'"):
        checkpoint.save(model, tmp_path / "x.safetensors", MoRAMConfig(atoms_per_task=8, top_k=8), tasks_done=0)
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("command", ["demo", "ablation"])
def test_a_huge_seed_count_is_refused_before_any_work(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--seeds", "99999999999", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "--seeds" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


_HELD = textwrap.dedent("""
    import os, signal, sys, threading, time
    from moram_ref.experiments import rundir

    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal, whatever this process inherited
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (nohup ignores SIGHUP, a background job SIGINT)

    inside, sent = threading.Event(), threading.Event()

    def sender():  # a second thread, alive and not blocking anything, as BLAS and torch workers are
        inside.wait()
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))  # process-directed, like Ctrl-C or kill
        sent.set()
        time.sleep(1)

    threading.Thread(target=sender, daemon=True).start()
    try:
        with rundir.uninterrupted():
            inside.set()
            sent.wait()
            end = time.monotonic() + 0.3
            while time.monotonic() < end:  # bytecode runs: a signal not held would be raised here
                pass
            print("block finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted after the block", flush=True)
    print("went on", flush=True)
""")


@pytest.mark.parametrize("name, out, code", [
    ("SIGINT", "block finished\ninterrupted after the block\nwent on\n", 0),
    ("SIGTERM", "block finished\n", -15),  # the default action, once the block is done
    ("SIGHUP", "block finished\n", -1),  # a closed terminal: the default action too, once the block is done
], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_uninterrupted_holds_a_process_directed_signal_until_the_block_ends(name, out, code):
    done = subprocess.run([sys.executable, "-c", _HELD, name], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.stdout, done.returncode) == (out, code), done.stderr


def test_uninterrupted_restores_the_handlers_and_raises_nothing_when_nothing_came(terminal_signals):
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with rundir.uninterrupted():
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    assert {s: signal.getsignal(s) for s in before} == before


def _staged(tmp_path):
    out, stage = tmp_path / "out", tmp_path / "out" / ".staging-x"
    stage.mkdir(parents=True)
    for name in ("results.json", "a.png"):
        (out / name).write_text(f"old {name}")
        (stage / name).write_text(f"new {name}")
    (out / "b.png").write_text("old b.png, not redrawn")
    return out, stage


def test_publish_replaces_together_and_removes_stale_figures(tmp_path):
    out, stage = _staged(tmp_path)
    assert rundir.publish(stage, out, stale=("*.png",)) == ["a.png", "results.json"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["a.png", "results.json"]
    assert (out / "a.png").read_text() == "new a.png" and (out / "results.json").read_text() == "new results.json"


def test_publish_undoes_every_step_when_the_file_system_refuses(tmp_path, monkeypatch):
    out, stage = _staged(tmp_path)
    real = os.replace

    def refusing(src, dst):
        if Path(dst) == out / "results.json" and Path(src).parent == stage:  # the last new file: refused
            raise PermissionError(1, "Operation not permitted", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refusing)
    with pytest.raises(PermissionError) as refused:
        rundir.publish(stage, out, stale=("*.png",))
    assert str(refused.value) == (f"[Errno 1] {out}: could not replace results.json (Operation not permitted); "
                                  "every file there is as before")  # the output's name, not a staging path
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == {
        "results.json": "old results.json", "a.png": "old a.png", "b.png": "old b.png, not redrawn"}


def test_publish_refuses_a_folder_where_a_file_goes_and_deletes_nothing(tmp_path):
    """A folder named like an output (a user's, or ``mkdir summary.json`` by mistake) was moved aside with the
    replaced files and deleted with them, contents and all; now nothing is touched."""
    out, stage = _staged(tmp_path)
    (out / "a.png").unlink()
    (out / "a.png").mkdir()
    (out / "a.png" / "keep.txt").write_text("a user's file")
    with pytest.raises(IsADirectoryError, match=r"could not write a\.png: a folder of that name is there \(nothing "
                                                r"was replaced\); move it away"):
        rundir.publish(stage, out, stale=("*.png",))
    assert (out / "a.png" / "keep.txt").read_text() == "a user's file"
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == {
        "results.json": "old results.json", "b.png": "old b.png, not redrawn"}


def test_publish_refuses_after_a_swallowed_interrupt(tmp_path):
    out, stage = _staged(tmp_path)
    rundir.request_stop()
    try:
        with pytest.raises(KeyboardInterrupt):
            rundir.publish(stage, out)
    finally:
        rundir.clear_stop()
    assert (out / "results.json").read_text() == "old results.json"


def test_an_interrupt_right_after_the_staging_folder_is_made_leaves_none(tmp_path, monkeypatch, terminal_signals):
    import signal
    import tempfile

    real = tempfile.mkdtemp

    def made_then_interrupted(*args, **kwargs):
        made = real(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return made

    monkeypatch.setattr(tempfile, "mkdtemp", made_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with rundir.staging(tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


def test_remove_is_all_or_nothing_when_the_file_system_refuses(tmp_path, monkeypatch):
    for name in ("results.json", "table.md"):
        (tmp_path / name).write_text(name)
    (tmp_path / "state" / "moram_seed0").mkdir(parents=True)
    (tmp_path / "state" / "moram_seed0" / "progress.json").write_text("{}")
    real = os.replace

    def refusing(src, dst):
        if Path(src).name == "table.md":
            raise PermissionError(1, "Operation not permitted", str(src))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refusing)
    before = _snapshot(tmp_path)
    with pytest.raises(PermissionError, match=r"could not remove table\.md \(Operation not permitted\); every file"):
        rundir.remove(tmp_path, ("state", "results.json", "table.md"))
    assert _snapshot(tmp_path) == before and not list(tmp_path.glob(".removing-*"))
    monkeypatch.setattr(os, "replace", real)
    assert rundir.remove(tmp_path, ("state", "results.json", "table.md")) == ["results.json", "state", "table.md"]
    assert list(tmp_path.iterdir()) == []


def test_a_stop_while_the_cli_installs_its_handlers_is_one_line_and_puts_them_back(monkeypatch, capsys,
                                                                                   terminal_signals):
    """A signal can come between any two lines: while the stop handlers go in (before, a traceback and the
    process killed by SIGINT) or while they are put back (before, some left installed)."""
    import signal

    from moram_ref import cli

    before = {sig: signal.getsignal(sig) for sig in rundir.STOP_SIGNALS}
    installed = cli._stop_handlers

    def interrupted_midway(replaced):
        installed(replaced)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_stop_handlers", interrupted_midway)
    assert main(["demo", "--help"]) == 130
    assert capsys.readouterr().err == "moram-ref demo: interrupted\n"
    assert {sig: signal.getsignal(sig) for sig in rundir.STOP_SIGNALS} == before
    monkeypatch.setattr(cli, "_stop_handlers", installed)

    real, calls = signal.signal, []

    def signal_then_interrupt(sig, handler):  # the first handler put back lets a pending stop through
        calls.append(sig)
        result = real(sig, handler)
        if len(calls) == len(rundir.STOP_SIGNALS) + 1:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(signal, "signal", signal_then_interrupt)
    assert main(["demo", "--resume", "--out", "/nonexistent/x"]) == 130  # the usage error, then the stop
    monkeypatch.setattr(signal, "signal", real)
    assert {sig: signal.getsignal(sig) for sig in rundir.STOP_SIGNALS} == before
    assert capsys.readouterr().err.endswith("moram-ref demo: interrupted\n")


def test_an_interrupt_while_the_staging_folder_is_removed_is_held_until_it_is_gone(tmp_path, monkeypatch,
                                                                                   terminal_signals):
    """A breaker's stop during the removal left the stage, with the replaced files in it, behind."""
    import signal

    real = shutil.rmtree

    def interrupted_while_removing(path, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        real(path, *args, **kwargs)

    (tmp_path / "results.json").write_text("old")
    monkeypatch.setattr(shutil, "rmtree", interrupted_while_removing)
    with pytest.raises(KeyboardInterrupt):
        with rundir.staging(tmp_path) as stage:
            (stage / "results.json").write_text("new")
            rundir.publish(stage, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert (tmp_path / "results.json").read_text() == "new"


def test_a_stop_held_through_a_publish_is_reported_with_the_outputs_complete(tmp_path, monkeypatch,
                                                                             terminal_signals):
    import signal

    real = rundir._renames

    def interrupted_inside(moves, *args):
        real(moves[:1], *args)
        signal.raise_signal(signal.SIGINT)
        real(moves[1:], *args)

    (tmp_path / "a.png").write_text("old")
    monkeypatch.setattr(rundir, "_renames", interrupted_inside)
    rundir.clear_stop()
    with pytest.raises(KeyboardInterrupt):
        with rundir.staging(tmp_path) as stage:
            for name in ("a.png", "results.json"):
                (stage / name).write_text("new")
            rundir.publish(stage, tmp_path)
    assert rundir.published_while_held() == [tmp_path]
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.png": "new", "results.json": "new"}
    rundir.clear_stop()
    assert rundir.published_while_held() == []


_LATE = textwrap.dedent("""
    import atexit, os, signal, sys
    from moram_ref import cli
    atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))  # a stop while Python shuts down
    sys.argv = ["moram-ref", "demo", "--help"]
    cli.entry()
""")


_STOP_IN_C = textwrap.dedent("""
    import ctypes, sys
    from moram_ref import cli, report

    def run(args):  # the stop arrives while C runs Python source, as pybind11 does while torch is imported
        source = b"import signal\\nsignal.raise_signal(signal.%s)\\n"
        ctypes.pythonapi.PyRun_String(source, 257, ctypes.py_object({}), ctypes.py_object({}))  # 257: Py_file_input

    report.run = run
    sys.argv = ["moram-ref", "report", "results.json"]
    cli.entry()
""")


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_a_stop_during_torchs_import_still_ends_with_130(stop, tmp_path):
    """CPython marks an interrupt that leaves PyRun_String as unhandled, and a `python -m` process so marked
    killed itself with SIGINT after saying "interrupted" (a breaker saw exit status -2 after Ctrl-C or SIGTERM
    3-4.6 s after the start, while torch was imported)."""
    (tmp_path / "stop_in_c.py").write_text(_STOP_IN_C % stop)
    done = subprocess.run([sys.executable, "-m", "stop_in_c"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)])
    assert (done.returncode, done.stderr) == (130, "moram-ref report: interrupted\n")


def test_the_console_script_ignores_a_stop_once_the_command_has_ended():
    """After the command, Python tears torch down for a second or more; a stop then killed the finished
    process (a breaker saw exit status -2 and -15 on completed runs)."""
    for signals in ({}, {"SIGTERM": "SIG_IGN"}):  # as from a terminal, and as under nohup-like ignoring
        prelude = "".join(f"import signal; signal.signal(signal.{k}, signal.{v})\n" for k, v in signals.items())
        done = subprocess.run([sys.executable, "-c", prelude + _LATE], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0 and "usage: moram-ref demo" in done.stdout, (done.returncode, done.stderr)


@pytest.mark.parametrize("error, stopping, printed", [
    (KeyboardInterrupt(), True, False),
    (RuntimeError("DataLoader worker (pid 8811) is killed by signal: Terminated. "), True, False),
    (RuntimeError("DataLoader worker (pid 8811) is killed by signal: Terminated. "), False, True),  # no stop asked
    (RuntimeError("something else"), True, True),
    (KeyboardInterrupt(), False, True),
])
def test_after_a_stop_signal_only_its_own_echoes_are_kept_quiet(error, stopping, printed, monkeypatch):
    """A stop signal sent to the process group (--workers: the DataLoader's workers too) interrupts callbacks
    Python cannot raise from and ends the workers; those echoes print no traceback. Anything else does."""
    seen = []
    monkeypatch.setattr(sys, "__unraisablehook__", seen.append)
    unraisable = type("U", (), {"exc_type": type(error), "exc_value": error})()
    rundir.clear_stop()
    try:
        if stopping:
            rundir.request_stop()
        rundir.quiet_swallowed_interrupts(unraisable)
    finally:
        rundir.clear_stop()
    assert (seen == [unraisable]) is printed
