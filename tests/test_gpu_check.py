"""The prepared GPU check runs end to end with --quick (tiny sizes): every section, checked, JSON after each."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("open_clip")

from moram_ref import gpu_check  # noqa: E402


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
    assert set(sections["layer"]["cases"]) == {f"{c}/{d}" for c in ("clip_like", "llm_like", "big_bank")
                                               for d in ("bfloat16", "float32")}
    assert sections["clip"]["methods"]["moram"]["check_identity_at_begin"]["max_abs_diff"] == 0.0
    assert sections["llm_train"]["methods"]["moram"]["check_identity_at_begin"]["ok"]
    assert sections["llm_generate"]["variants"]["moram_eager"]["new_tokens_per_s"] > 0
    goals = report["summary"]["goals"]
    assert len(goals) == 5 and all(g["value"] is not None for g in goals), goals
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


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--budget-s", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--budget-s must be > 0, got 0.0" in capsys.readouterr().err
    for flags, message in ((["--device", "tpu"], "--device must be cpu or cuda[:N], got 'tpu'"),
                           (["--compile-backend", "nope"], "--compile-backend must be one of")):
        with pytest.raises(SystemExit):
            gpu_check.main([*flags, "--out", str(tmp_path)])
        assert message in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path / "file")])
    assert "--out must be a folder" in capsys.readouterr().err


def test_command_prints_the_gpu_line(capsys):
    assert gpu_check.main(["--command"]) == 0
    check, tests = capsys.readouterr().out.strip().splitlines()
    assert check.startswith("python3 -m pip install") and "--out $OUT" in check and ".whl/*.whl" in check
    assert "MORAM_TEST_DEVICE=cuda" in tests and "-n 8" in tests and "--timeout" in tests
