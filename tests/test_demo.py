"""The main job runs end to end (fewer steps) and writes what the README promises."""

from __future__ import annotations

import json

import pytest

from moram_ref.cli import main


@pytest.mark.cpu_only  # the main job runs on a CPU
def test_demo_writes_results_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "30", "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Transfer" in printed and "MoRAM" in printed and "activation mass" in printed
    assert "validation sweep of τ" in printed and "key norm" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    for stream in ("recall", "digits"):
        res = results["streams"][stream]
        expected = {"frozen", "seq_lora", "moe_lora", "dense_moram", "moram"} | (
            {"moram_swept"} if stream == "digits" else set())
        assert set(res["methods"]) == expected == set(res["summary"])
        for runs in res["methods"].values():
            assert len(runs) == 2
            for run in runs:
                assert len(run["accuracy"]) == 5 and len(run["accuracy"][0]) == 5
        assert res["methods"]["moram"][0]["trainable_per_task"] == res["methods"]["seq_lora"][0]["trainable_per_task"]
        assert len(res["methods"]["moram"][0]["key_norms"]) == 5  # one entry per task
        for cell in res["summary"]["moram"].values():
            assert 0 <= cell["ci95"] and -1 <= cell["mean"] <= 1
        assert (out / f"{stream}_accuracy.png").stat().st_size > 0
        assert (out / f"{stream}_activation_map.png").stat().st_size > 0
    assert results["streams"]["digits"]["sweep"]["chosen"] in results["streams"]["digits"]["sweep"]["temperatures"]


@pytest.mark.cpu_only
def test_an_interrupted_demo_leaves_no_figures_without_results(tmp_path, capsys, monkeypatch):
    from moram_ref.experiments import rundir
    from moram_ref.experiments.toy import digits

    out = tmp_path / "demo"

    def interrupted(*args, **kwargs):  # the second stream: the first one's figures are drawn by now
        raise KeyboardInterrupt

    monkeypatch.setattr(digits, "run_method", interrupted)
    argv = ["demo", "--out", str(out), "--steps", "5", "--seeds", "1", "--streams", "recall", "digits"]
    for _ in range(2):  # the second time with a staging folder a killed run left behind
        assert main(argv) == 130
        assert "interrupted" in capsys.readouterr().err
        left = sorted(p.name for p in out.iterdir() if p.name != rundir.LOCK)
        assert left == ["config.json"]  # no staging folder, no figure of the recall stream
        (out / ".staging-left-by-a-kill").mkdir()


@pytest.mark.cpu_only
def test_an_interrupt_python_swallows_still_stops_the_demo(tmp_path, capsys, monkeypatch, terminal_signals):
    """Ctrl-C landing in a garbage-collection callback: Python only reports it ("Exception ignored"); the
    command must still stop before publishing, with one line and exit 130."""
    import signal
    import weakref

    from moram_ref.experiments.toy import recall

    real = recall.run_method

    def run_method(*args, **kwargs):
        class Thing:
            pass

        thing = Thing()
        keep = weakref.ref(thing, lambda ref: signal.raise_signal(signal.SIGINT))  # noqa: F841
        del thing  # the callback runs here; its KeyboardInterrupt cannot propagate
        return real(*args, **kwargs)

    monkeypatch.setattr(recall, "run_method", run_method)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "5", "--seeds", "1", "--streams", "recall"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "moram-ref demo: interrupted\n", captured.err
    assert "wrote" not in captured.out
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["config.json"]


@pytest.mark.cpu_only
@pytest.mark.parametrize("error, words, code", [
    (PermissionError(1, "Operation not permitted", "results.json"), "Operation not permitted", 1),
])
def test_a_refusing_file_system_is_one_line(tmp_path, capsys, monkeypatch, error, words, code):
    from moram_ref.experiments import rundir

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(rundir, "publish", refuse)
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "5", "--seeds", "1", "--streams", "recall"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moram-ref demo: error:") and words in err, err


@pytest.mark.cpu_only
def test_sighup_stops_a_command_like_ctrl_c(tmp_path, capsys, monkeypatch, terminal_signals):
    import signal

    from moram_ref.experiments.toy import recall

    def hung_up(*args, **kwargs):
        signal.raise_signal(signal.SIGHUP)

    monkeypatch.setattr(recall, "run_method", hung_up)
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "5", "--seeds", "1", "--streams", "recall"]) == 130
    assert capsys.readouterr().err == "moram-ref demo: interrupted\n"


@pytest.mark.cpu_only
def test_an_ignored_sighup_stays_ignored(tmp_path, capsys, monkeypatch):
    """Under nohup SIGHUP is ignored: the command must not turn it back on."""
    import signal

    from moram_ref.experiments.toy import recall

    real = recall.run_method

    def hung_up(*args, **kwargs):
        signal.raise_signal(signal.SIGHUP)
        return real(*args, **kwargs)

    monkeypatch.setattr(recall, "run_method", hung_up)
    inherited = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        code = main(["demo", "--out", str(tmp_path / "d"), "--steps", "5", "--seeds", "1", "--streams", "recall"])
    finally:
        signal.signal(signal.SIGHUP, inherited)
    assert code == 0 and (tmp_path / "d" / "results.json").is_file()
