"""Resume after a kill equals the uninterrupted run, checkpoint tensors included (LLM and CLIP tracks).

A run is killed in the middle of task 3 (an exception raised from the step callback after a given
step: nothing of task 3 is saved), then resumed in a fresh model, as ``--resume`` does. Every tensor of
every per-task checkpoint file must be bit-for-bit equal to the uninterrupted run's, and so must the
evaluation matrix. Adapter dropout is on (0.1, the paper's LLM setting): its masks must not depend on
what the process did before the task. The data is generated (no ../shared needed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

from moram_ref.config import MoRAMConfig  # noqa: E402

LLM_TASKS = ("C-STANCE", "FOMC", "ScienceQA")
KILL_AT = (3, 2)  # (task, step): after step 2 of task 3's 4 steps


class Killed(Exception):
    """Stands for the process being killed."""


def killer(at):
    seen = []

    def on_step(step):
        seen.append((step.task, step.step, step.steps))
        if (step.task, step.step) == at:
            raise Killed(f"killed after step {step.step}/{step.steps} of task {step.task}")

    return on_step, seen


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()["moram_ref"])


def assert_same_checkpoints(full: Path, resumed: Path, n_tasks: int) -> int:
    """Every tensor of every task's checkpoint equal bit for bit; returns the number of tensors compared."""
    compared = 0
    for t in range(1, n_tasks + 1):
        a, meta_a = read_checkpoint(full / f"task{t}.safetensors")
        b, meta_b = read_checkpoint(resumed / f"task{t}.safetensors")
        assert set(a) == set(b) and meta_a == meta_b, f"task{t}: different tensor names or metadata"
        for name in a:
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, f"task{t} {name}"
            diff = (a[name].double() - b[name].double()).abs().max().item() if a[name].numel() else 0.0
            assert torch.equal(a[name], b[name]), f"task{t}.safetensors {name}: max |diff| {diff:.3e}"
            compared += 1
    return compared


# --- LLM ---------------------------------------------------------------------------------------------

def _llm_args(data_root: Path, out: Path) -> argparse.Namespace:
    from moram_ref.experiments.llm.run import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--data-root", str(data_root), "--out", str(out), "--tiny", "llama", "--device", "cpu"])


def _llm_run(data_root: Path, out: Path, **kw):
    """As the CLI does it: the CLI's model builder (the tokenizer is trained once, then read back from
    ``out``), a fresh model per process, the paper's LLM MoRAM settings (dropout 0.1)."""
    from moram_ref.experiments.llm import data, run
    from moram_ref.experiments.llm.train import LLMSettings, run_sequence

    tasks, _ = data.load_sequence(data_root, list(LLM_TASKS))
    args = _llm_args(data_root, out)
    model, tok = run.build(args, tasks, out, seed=7)
    cfg = MoRAMConfig.paper_llm()
    assert cfg.dropout == 0.1
    settings = LLMSettings(method="moram", epochs=2, batch=4, micro_batch=2, max_prompt=64, max_answer=8,
                           max_new_tokens=3, eval_batch=4, moram=cfg, seed=7)
    return run_sequence(model, tok, tasks, settings, out / "moram", **kw)


def test_llm_resume_after_a_kill_mid_task_equals_the_uninterrupted_run(tmp_path):
    from moram_ref.experiments.llm.data import write_trace_shaped

    root = write_trace_shaped(tmp_path / "data", LLM_TASKS, n_train=8, n_test=2)
    full = _llm_run(root, tmp_path / "full")
    on_step, seen = killer(KILL_AT)
    with pytest.raises(Killed):
        _llm_run(root, tmp_path / "cut", on_step=on_step)
    assert seen[-1] == (3, 2, 4), "the kill must land inside task 3"
    cut = tmp_path / "cut" / "moram"
    assert json.loads((cut / "progress.json").read_text())["tasks_done"] == 2
    assert not (cut / "checkpoints" / "task3.safetensors").exists()
    resumed = _llm_run(root, tmp_path / "cut", resume=True)
    np.testing.assert_array_equal(resumed, full)
    n = assert_same_checkpoints(tmp_path / "full" / "moram" / "checkpoints", cut / "checkpoints", 3)
    assert n == 3 * 2 * 4 * 4  # tasks × layers × (q, k, v, o) × (frozen keys/values, keys, values)


# --- CLIP --------------------------------------------------------------------------------------------

CLIP_KEYS = ["caltech101", "dtd", "eurosat"]


def _clip_run(data_root: Path, out: Path, **kw):
    pytest.importorskip("open_clip")
    from moram_ref.experiments.clip import backbone
    from moram_ref.experiments.clip.data import load_domain
    from moram_ref.experiments.clip.train import ClipSettings, run_sequence

    model, _, tf, tok = backbone.tiny_clip(seed=0)
    domains = [load_domain(data_root, k) for k in CLIP_KEYS]
    cfg = MoRAMConfig(atoms_per_task=4, top_k=4, temperature=0.1, threshold=0.2, dropout=0.1)
    settings = ClipSettings(shots=3, iterations=4, batch=4, eval_batch=5, moram=cfg)
    return run_sequence(model, tok, tf, domains, settings, out, data_root=data_root, **kw)


def test_clip_resume_after_a_kill_mid_task_equals_the_uninterrupted_run(tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("torchvision")
    from moram_ref.experiments.clip.synthetic import make_coop_dataset

    root = tmp_path / "data"
    for i, key in enumerate(CLIP_KEYS):
        make_coop_dataset(root, key, seed=i, gray=key == "dtd")
    full = _clip_run(root, tmp_path / "full")
    on_step, seen = killer(KILL_AT)
    with pytest.raises(Killed):
        _clip_run(root, tmp_path / "cut", on_step=on_step)
    assert seen[-1] == (3, 2, 4), "the kill must land inside task 3"
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["tasks_done"] == 2
    resumed = _clip_run(root, tmp_path / "cut", resume=True)
    np.testing.assert_array_equal(resumed, full)
    n = assert_same_checkpoints(tmp_path / "full" / "checkpoints", tmp_path / "cut" / "checkpoints", 3)
    assert n == 3 * 24 * 4  # tasks × adapted layers × tensors
