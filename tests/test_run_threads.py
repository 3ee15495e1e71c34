"""The clip and llm runs record torch's thread count; --resume and --eval-only continue on it
(moram_ref.experiments.threads). text-cl does so per (method, seed): tests/test_textcl_threads.py."""

from __future__ import annotations

import json
import re

import pytest

torch = pytest.importorskip("torch")

from moram_ref.experiments import threads as TH  # noqa: E402


@pytest.fixture
def set_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_pinned_sets_and_restores(set_threads):
    set_threads(2)
    said = []
    with TH.pinned(1, said.append, "clip") as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    assert said == ["clip: on 1 thread(s), as the run started (this process has 2; another count gives other numbers)"]
    with TH.pinned(None, said.append) as n:  # None: the process's own, nothing said
        assert n == 2
    with pytest.raises(KeyError):
        with TH.pinned(1):
            raise KeyError("a failing run")
    assert torch.get_num_threads() == 2 and len(said) == 1


@pytest.mark.parametrize("config, expected", [({"info": {"threads": 3}}, 3), ({"info": {"threads": 4096}}, 4096),
                                              ({"info": {}}, None), ({}, None), ([], None)])
def test_started_on_reads_the_recorded_count(tmp_path, config, expected):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert TH.started_on(tmp_path) == expected


@pytest.mark.parametrize("value", [0, -1, True, "2", 2.0, None, [], 4097, 10**9])
def test_started_on_refuses_a_damaged_count(tmp_path, value):
    from moram_ref.experiments.cliargs import UsageError

    (tmp_path / "config.json").write_text(json.dumps({"info": {"threads": value}}))
    with pytest.raises(UsageError, match=r"--out: .*config\.json records info\.threads .*not a thread count \(an "
                                         r"integer from 1 to 4096\); put back"):
        TH.started_on(tmp_path)


@pytest.mark.parametrize("info", [[], [1], None, "abc"])
def test_an_info_that_is_not_a_map_is_refused(tmp_path, info):
    from moram_ref.experiments.cliargs import UsageError

    (tmp_path / "config.json").write_text(json.dumps({"info": info}))
    with pytest.raises(UsageError, match=r"records info .*, not a map \(what the run found\)"):
        TH.started_on(tmp_path)


@pytest.mark.parametrize("by_method, words", [({"bogus": 1}, "for bogus, not among the run's methods (moram)"),
                                              ({"moram": 0}, "info.threads_by_method.moram 0, not a thread count"),
                                              ([1], "not a map from methods to thread counts")])
def test_part_counts_are_checked(tmp_path, by_method, words):
    from moram_ref.experiments.cliargs import UsageError

    (tmp_path / "config.json").write_text(json.dumps({"info": {"threads": 1, "threads_by_method": by_method}}))
    with pytest.raises(UsageError, match=re.escape(words)):
        TH.part_counts(tmp_path, ["moram"])
    (tmp_path / "config.json").write_text(json.dumps({"info": {"threads": 1, "threads_by_method": {"moram": 3}}}))
    assert TH.part_counts(tmp_path, ["moram"]) == {"moram": 3}


def test_started_on_names_an_unreadable_file(tmp_path):
    from moram_ref.experiments.cliargs import UsageError

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="--out: cannot read"):
        TH.started_on(tmp_path)


def test_a_count_above_the_cores_is_said_to_be_slower(set_threads, monkeypatch):
    set_threads(1)
    monkeypatch.setattr(TH.os, "cpu_count", lambda: 2)
    said = []
    with TH.pinned(3, said.append, "llm"):
        assert torch.get_num_threads() == 3
    assert said == ["llm: on 3 thread(s), as the run started (this process has 1; another count gives other numbers; "
                    "more than this machine's 2 cores: slower, the same numbers)"]


def _spy(monkeypatch, module) -> list[int]:
    """The thread count each ``run_sequence`` call of ``module`` runs on."""
    seen, real = [], module.run_sequence

    def spying(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "run_sequence", spying)
    return seen


def _damaged(main, argv, out, capsys) -> None:
    """A hand-damaged info.threads stops --resume and --eval-only in one line, the folder untouched."""
    config = json.loads((out / "config.json").read_text())
    config["info"]["threads"] = "two"
    (out / "config.json").write_text(json.dumps(config))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for again in ("--eval-only", "--resume"):
        capsys.readouterr()
        assert main(argv + [again]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and 'records info.threads "two", not a thread count' in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def _check(main, argv, out, monkeypatch, module, set_threads, capsys, name):
    set_threads(1)
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["info"]["threads"] == 1
    set_threads(2)
    seen = _spy(monkeypatch, module)
    capsys.readouterr()
    for again in ("--eval-only", "--resume"):
        assert main(argv + [again]) == 0
    assert seen and set(seen) == {1}, seen
    assert torch.get_num_threads() == 2
    log = capsys.readouterr().out
    assert log.count(f"{name}: on 1 thread(s), as the run started (this process has 2;") == 2, log
    assert json.loads((out / "config.json").read_text())["info"]["threads"] == 1  # the record is kept
    _damaged(main, argv, out, capsys)


def test_clip_continues_on_its_starting_count(tmp_path, monkeypatch, set_threads, capsys):
    pytest.importorskip("open_clip")
    pytest.importorskip("torchvision")
    from moram_ref.cli import main
    from moram_ref.experiments.clip import train
    from moram_ref.experiments.clip.synthetic import make_coop_dataset

    keys = ["caltech101", "dtd"]
    for i, key in enumerate(keys):
        make_coop_dataset(tmp_path / "data", key, seed=i, gray=key == "dtd")
    out = tmp_path / "run"
    argv = ["clip", "--tiny", "--data-root", str(tmp_path / "data"), "--out", str(out), "--datasets", *keys,
            "--shots", "2", "--iterations", "2", "--batch", "4", "--methods", "moram", "--atoms-per-task", "2",
            "--top-k", "2", "--device", "cpu"]
    _check(main, argv, out, monkeypatch, train, set_threads, capsys, "clip")


def _llm_argv(tmp_path, out) -> list[str]:
    """A tiny two-task llm run into ``out``, on generated TRACE-shaped data."""
    from moram_ref.experiments.llm import data

    root = data.write_trace_shaped(tmp_path / "data", ("C-STANCE", "FOMC"), n_train=4, n_test=2)
    return ["llm", "--data-root", str(root), "--out", str(out), "--tiny", "llama", "--skip-missing", "--epochs", "1",
            "--batch", "4", "--micro-batch", "2", "--max-new-tokens", "2", "--atoms-per-task", "2", "--top-k", "2",
            "--device", "cpu"]


def test_llm_continues_on_its_starting_count(tmp_path, monkeypatch, set_threads, capsys):
    pytest.importorskip("transformers")
    from moram_ref.cli import main
    from moram_ref.experiments.llm import train

    out = tmp_path / "run"
    argv = _llm_argv(tmp_path, out)
    _check(main, argv, out, monkeypatch, train, set_threads, capsys, "llm")


def test_a_run_from_before_the_record_says_it_continues_on_this_process(tmp_path, monkeypatch, set_threads, capsys):
    pytest.importorskip("transformers")
    from moram_ref.cli import main

    out = tmp_path / "run"
    argv = _llm_argv(tmp_path, out)
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    del config["info"]["threads"]
    (out / "config.json").write_text(json.dumps(config))
    set_threads(2)
    capsys.readouterr()
    assert main(argv + ["--eval-only"]) == 0
    assert ("llm: the run does not record the thread count it was made on (it predates the record); continuing on "
            "this process's 2") in capsys.readouterr().out


def test_cpu_names_the_model_and_its_widest_vector_extension(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f\n")
    real = TH.Path

    monkeypatch.setattr(TH, "Path", lambda p: real(info) if p == "/proc/cpuinfo" else real(p))
    assert TH.cpu() == "Some CPU 9000 (AVX-512)"
    info.write_text("model name\t: Old CPU\nflags\t\t: fpu sse2\n")
    assert TH.cpu() == "Old CPU"
    info.unlink()
    assert TH.cpu()  # platform.processor() or platform.machine(): never empty
