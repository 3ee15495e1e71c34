"""The checks every path flag shares (``moram_ref.experiments.cliargs``): empty and non-UTF-8 names, symbolic
links that lead nowhere or loop, files written through a link; and a run folder that a failed run made and
left with nothing in it is removed (``rundir.open_run``)."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest

from moram_ref.experiments import cliargs, rundir

LATIN1 = os.fsdecode(b"caf\xe9")  # a name in Latin-1: unpaired surrogates once decoded as UTF-8


@pytest.fixture
def links(tmp_path):
    (tmp_path / "dang").symlink_to("nowhere")
    (tmp_path / "chain").symlink_to("dang")
    (tmp_path / "self").symlink_to("self")
    (tmp_path / "real").mkdir()
    (tmp_path / "good").symlink_to("real")
    (tmp_path / "existing.json").write_text("{}")
    (tmp_path / "to_file").symlink_to("existing.json")
    (tmp_path / "to_new").symlink_to("new.json")
    return tmp_path


def test_a_link_leading_nowhere_is_named_with_where_it_ends(links):
    assert cliargs.broken_link(links / "dang") == f"{links / 'dang'} is a symbolic link to nowhere, which does not exist"
    assert cliargs.broken_link(links / "chain" / "x") == (f"{links / 'chain'} is a symbolic link to dang, which leads "
                                                          f"to {links / 'nowhere'}, which does not exist")
    assert cliargs.broken_link(links / "self" / "x") == f"{links / 'self'} is a loop of symbolic links"
    assert cliargs.broken_link(links / "good" / "new") is None and cliargs.broken_link(links / "no" / "such") is None


@pytest.mark.parametrize("parse", [cliargs.out_dir, cliargs.out_file, cliargs.existing_dir, cliargs.existing_file])
@pytest.mark.parametrize("name, said", [
    ("", "expected a"), (LATIN1, "caf\\xe9' is not valid UTF-8"), ("self", "is a loop of symbolic links"),
    ("self/x", "is a loop of symbolic links"), ("chain/x", "which does not exist"),
])
def test_every_path_type_refuses_the_same_names(parse, name, said, links):
    with pytest.raises(argparse.ArgumentTypeError, match=None) as caught:
        parse(str(links / name) if name else name)
    assert said in str(caught.value), str(caught.value)


def test_a_file_flag_writes_through_a_link(links):
    """Files are written whole by a rename, which would replace a link: the file it names is written instead."""
    assert cliargs.out_file(str(links / "to_file")) == links / "existing.json"
    assert cliargs.out_file(str(links / "to_new")) == links / "new.json"  # made when written
    assert cliargs.out_file(str(links / "good" / "r.json")) == links / "good" / "r.json"
    assert cliargs.out_dir(str(links / "good" / "run")) == links / "good" / "run"


def test_usable_path_is_the_check_for_flags_argparse_does_not_type(links, monkeypatch):
    monkeypatch.setenv("HOME", str(links))
    assert cliargs.usable_path("--model", "~/real", "folder") == links / "real"  # ~ expanded
    assert cliargs.usable_path("--model", "meta-llama/Llama-3.2-1B", "folder").parts[0] == "meta-llama"  # a hub name
    for text, said in (("", "--model: expected a folder path, got an empty one"),
                       ("  ", "--model: expected a folder path, got only blanks ('  ')"),
                       (LATIN1, "--model: 'caf\\xe9' is not valid"),
                       (str(links / "dang"), "--model: "), (str(links / "self"), "--model: ")):
        with pytest.raises(cliargs.UsageError) as caught:
            cliargs.usable_path("--model", text, "folder")
        assert str(caught.value).startswith(said), str(caught.value)
    with pytest.raises(cliargs.UsageError, match="is a loop of symbolic links"):
        cliargs.usable_path("--model", str(links / "self"))


def test_a_lock_file_that_is_a_symbolic_link_is_refused_not_written_through(tmp_path):
    """The run writes its pid into its lock file: through a link it would overwrite the file the link names."""
    out, precious = tmp_path / "run", tmp_path / "precious.txt"
    out.mkdir()
    precious.write_text("the user's\n")
    (out / rundir.LOCK).symlink_to(precious)
    with pytest.raises(cliargs.UsageError, match="the folder's lock\\) is a symbolic link, to .*precious.txt; remove"):
        with rundir.open_run(out, "llm", {"lr": 1.0}):
            pass
    assert precious.read_text() == "the user's\n" and sorted(p.name for p in out.iterdir()) == [rundir.LOCK]


@pytest.mark.parametrize("removed", [1, rundir.LOCK_ATTEMPTS])
def test_a_folder_removed_while_a_run_takes_its_lock_is_locked_anew(removed, tmp_path, monkeypatch):
    """A run failing into a new folder removes it, lock file included, while still holding the lock: a second
    run that opened that lock file just before gets the lock of a file no longer there. It must not run in a
    removed folder: it takes the lock again on the folder made anew, and gives up, saying so, if it keeps
    being removed."""
    import fcntl

    out = tmp_path / "run"
    real, calls = fcntl.flock, []

    def flock_after_a_failed_run_removed_the_folder(fh, op):
        real(fh, op)
        if op & fcntl.LOCK_EX and len(calls) < removed:
            calls.append(1)
            shutil.rmtree(out)  # what the failed run did between this run's open and its lock

    monkeypatch.setattr(fcntl, "flock", flock_after_a_failed_run_removed_the_folder)
    if removed == rundir.LOCK_ATTEMPTS:
        with pytest.raises(cliargs.UsageError, match=f"--out: {out} was removed {removed} times while this run"):
            with rundir.open_run(out, "llm", {"lr": 1.0}):
                pass
        return
    with rundir.open_run(out, "llm", {"lr": 1.0}):
        assert (out / "config.json").is_file() and (out / rundir.LOCK).read_text() == f"{os.getpid()}\n"
        assert rundir._holder(out) is not None  # the lock held is the folder's present one
    assert calls == [1]


def test_a_run_that_fails_before_writing_anything_leaves_no_folder(tmp_path):
    """A fresh folder holding only the run's record and lock (and empty folders) when the run fails is removed:
    it would refuse the next run with other settings. One with work in it, or one that existed, stays."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="no weights"), rundir.open_run(out, "llm", {"lr": 1.0}):
        (out / "moram" / "checkpoints").mkdir(parents=True)
        raise RuntimeError("no weights")
    assert not out.exists() and out not in rundir.opened_runs()
    nested = tmp_path / "a" / "b" / "run"  # the parents it made go too
    with pytest.raises(RuntimeError), rundir.open_run(nested, "llm", {"lr": 1.0}):
        raise RuntimeError("no weights")
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError), rundir.open_run(out, "llm", {"lr": 1.0}):
        (out / "moram").mkdir()
        (out / "moram" / "progress.json").write_text("{}")
        raise RuntimeError("after the first task")
    assert (out / "moram" / "progress.json").is_file()
    held = tmp_path / "held"
    held.mkdir()
    (held / "notes.txt").write_text("the user's")
    with pytest.raises(cliargs.UsageError):  # refused: the folder holds files of no run
        with rundir.open_run(held, "llm", {"lr": 1.0}):
            pass
    assert (held / "notes.txt").read_text() == "the user's"


def test_an_interrupted_run_keeps_its_folder_for_resume(tmp_path):
    out = tmp_path / "run"
    rundir.clear_stop()
    with pytest.raises(KeyboardInterrupt), rundir.open_run(out, "llm", {"lr": 1.0}):
        raise KeyboardInterrupt
    assert json.loads((out / "config.json").read_text())["settings"] == {"lr": 1.0}
    assert out in rundir.opened_runs()  # the CLI names it: "--resume continues the run in …"
    rundir.clear_stop()


def test_a_folder_the_user_made_stays_though_the_run_failed(tmp_path):
    """An empty folder the user made stays, emptied of what the failed run wrote (its record would refuse the
    next run's other settings)."""
    out = tmp_path / "mine"
    out.mkdir()
    with pytest.raises(RuntimeError), rundir.open_run(out, "llm", {"lr": 1.0}):
        (out / "moram").mkdir()
        raise RuntimeError("no weights")
    assert out.is_dir() and list(out.iterdir()) == []
    with rundir.open_run(out, "llm", {"lr": 2.0}):  # another run's settings: accepted
        pass
