"""One method, one seed, through a task sequence: train per task, evaluate after every task.

Loss (spec §6, text version): input→label cross-entropy over every label seen so far with earlier
tasks' labels masked, plus label→input cross-entropy; label embeddings of the current task carry
gradient, earlier ones are computed once per task without. Optimiser as the paper's CLIP column:
AdamW, betas (0.9, 0.9999), weight decay 0, cosine schedule, no warm-up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moram_ref import metrics
from moram_ref.config import MoRAMConfig
from moram_ref.experiments import seeding
from moram_ref.experiments.progress import Step
from moram_ref.experiments.textcl import METHODS, state  # METHODS re-exported
from moram_ref.experiments.textcl.data import TaskData
from moram_ref.experiments.textcl.encoder import CachedEncoder
from moram_ref.shapes import check_scores
from moram_ref.torch import attach as A
from moram_ref.torch.losses import two_term_loss
from moram_ref.torch.olora import orthogonality_penalty


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 60  # per task
    batch: int = 16
    lr: float = 2e-3
    logit_scale: float = 20.0  # fixed, learnable-free (all-MiniLM-L6-v2 was trained with scale 20)
    placement: str = "all"
    moram: MoRAMConfig = field(default_factory=lambda: MoRAMConfig(atoms_per_task=8, top_k=8, temperature=0.01,
                                                                    threshold=0.2))
    probe_per_task: int = 8  # test texts per task for the 99 %-mass statistic
    olora_lambda: float = 0.5  # O-LoRA's orthogonality weight (its paper's λ1)
    eval_split: str = "test"  # "val" for hyperparameter sweeps (carved out of train.json)


def class_offsets(tasks: list[TaskData]) -> list[int]:
    return list(np.cumsum([0] + [len(t.labels) for t in tasks]))


@torch.no_grad()
def evaluate(enc: CachedEncoder, tasks: list[TaskData], split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on every task's ``split`` over the union of all labels, and over the task's own labels
    (in evaluation mode: the adapted blocks and their adapters are switched to it)."""
    offsets, union, own = class_offsets(tasks), [], []
    for j, (best, best_own) in enumerate(predict(enc, tasks, split)):
        y = torch.as_tensor(getattr(tasks[j], f"{split}_y"))
        union.append(float((best == y + offsets[j]).float().mean()))
        own.append(float((best_own == y).float().mean()))
    return np.array(union), np.array(own)


@torch.no_grad()
def predict(enc: CachedEncoder, tasks: list[TaskData], split: str = "test",
            which: list[int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per task ``j`` in ``which`` (default: all, in order), the predicted label of each of its ``split``
    texts: (index into the union of every task's labels, in :func:`class_offsets` order; index into the
    task's own labels), two int64 tensors of shape (N_j,). Evaluation mode, as :func:`evaluate`.

    Raises ValueError for a ``split`` other than 'test' or 'val'."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    enc.top.eval()
    offsets = class_offsets(tasks)
    labels = enc.embed([p for t in tasks for p in t.prompts])  # (n_classes, D)
    out = []
    for j in range(len(tasks)) if which is None else which:
        texts = getattr(tasks[j], f"{split}_text")
        emb = torch.cat([enc.embed(texts[i : i + 64]) for i in range(0, len(texts), 64)])
        scores = emb @ labels.T  # (N, n_classes)
        check_scores(scores, "label", f"{split} texts of task {tasks[j].name}", "text or label embeddings")
        out.append((scores.argmax(1), scores[:, offsets[j] : offsets[j + 1]].argmax(1)))
    return out


def run_method(method: str, seed: int, settings: TrainSettings, enc: CachedEncoder, tasks: list[TaskData],
               on_step=None, state_dir: Path | None = None, resume: bool = False, on_task=None,
               on_resume=None, recorded: dict | None = None, stop_after: int | None = None,
               on_begin=None) -> dict:
    """Returns accuracy matrices (union and per-task label space), parameter counts, timings, and MoRAM probes.

    Mode: the encoder's blocks stay in evaluation mode (their dropout off); the adapters are in training
    mode during the steps (their dropout acts, the threshold δ is off, spec §3) and in evaluation mode
    otherwise, also when a task is interrupted. Adapter dropout draws from torch's global generator,
    reseeded from ``(seed, task, step)`` before every step and restored afterwards (:mod:`..seeding`).
    ``on_step`` (optional) receives a :class:`~moram_ref.experiments.progress.Step` after every step,
    ``on_task`` (optional) ``(task index from 1, task name, union row)`` after every task's evaluation.
    ``stop_after`` (optional): train and evaluate the first ``stop_after`` tasks only (still evaluated over
    every task of ``tasks``; the later rows of the matrices stay 0). ``on_begin`` (optional) is called with
    the task index (from 1) after each task's fresh tensors are drawn, before its optimiser is built: a probe
    may change them in place (:mod:`.sensitivity`).

    ``state_dir`` (optional): the state after every task is recorded there (:mod:`.state`); with
    ``resume`` the recorded tasks are restored instead of rerun (``state.StateError`` if the record is
    damaged, foreign or stale), and the result equals the uninterrupted run's, bit for bit. ``recorded``
    (required with ``state_dir``): the run's settings that shape the record (``state.shaping``), written
    into it and, with ``resume``, compared with the record's.
    ``out["resumed_after"]`` says how many tasks were restored; ``on_resume(k)`` is called once, before
    any work, when ``k > 0`` tasks were. ``out["threads"]``: torch's CPU thread count while each task ran
    (None for a restored task whose record predates it); the numbers depend on it (docs/results.md,
    "Threads and reproducibility"), and the caller chooses it (``run`` continues a pair on its recorded one).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if state_dir is not None and not isinstance(recorded, dict):
        raise ValueError(f"recorded must be the run's settings (state.shaping) with a state_dir, got {recorded!r}")
    A.detach(enc.top)
    trained = method != "zero_shot"
    if trained:
        A.attach(enc.top, settings.moram, enc.target_names(settings.placement), method=method)
        enc.name_adapters()
    enc.top.eval()  # the backbone's own dropout stays off; adapters switch train/eval themselves
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    offsets = class_offsets(tasks)
    n = len(tasks)
    union, own = np.zeros((n, n)), np.zeros((n, n))
    out: dict = {"trainable_per_task": [], "seconds_per_task": [], "n99": [], "activation": {}, "threads": []}
    model = enc.top if trained else None
    start = 0
    fingerprint = state.data_fingerprint(tasks) if state_dir is not None else ""
    if resume and state_dir is not None:
        record = state.check(state_dir, method, seed, [t.name for t in tasks], fingerprint, settings.moram, recorded)
        start = state.load(record, state_dir, model, settings.moram, method, gen, rng, union, own, out)
        if start and on_resume is not None:
            on_resume(start)
    out["resumed_after"] = start
    for t, task in enumerate(tasks):
        if t < start:
            continue
        if stop_after is not None and t >= stop_after:
            break
        t0 = time.perf_counter()
        if trained:
            A.begin_task(enc.top, gen)
            if on_begin is not None:
                on_begin(t + 1)
            params = list(A.trainable_parameters(enc.top))
            out["trainable_per_task"].append(int(sum(p.numel() for p in params)))
            opt = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.9999), weight_decay=0.0)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / settings.steps)))
            with torch.no_grad():
                seen = enc.embed([p for prev in tasks[:t] for p in prev.prompts]) if t else None
            A.set_training(enc.top, True)
            try:
                with seeding.private_rng("cpu"):
                    for step in range(settings.steps):
                        seeding.reseed(seed, t, step)  # the adapters' dropout masks of this step
                        loss = _step(method, settings, enc, task, seen, offsets[t], opt, rng)
                        sched.step()
                        if on_step is not None:
                            on_step(Step(method, t + 1, n, task.name, step + 1, settings.steps, loss, seed))
            finally:
                A.set_training(enc.top, False)
            A.end_task(enc.top)
        union[t], own[t] = evaluate(enc, tasks, settings.eval_split)
        if method in ("moram", "dense_moram"):
            out["n99"].append(atoms_for_mass(enc, tasks, settings.probe_per_task))
            if t in (0, 1, n - 1):  # the paper's maps: after tasks 1, 2 and the last
                out["activation"][f"after_task_{t + 1}"] = activation_examples(enc, tasks)
        out["seconds_per_task"].append(time.perf_counter() - t0)
        out["threads"].append(torch.get_num_threads())
        if state_dir is not None:
            state.save(state_dir, t + 1, model, settings.moram, method, seed, fingerprint, recorded, gen, rng, union,
                       own, out, [x.name for x in tasks])
        if on_task is not None:
            on_task(t + 1, task.name, union[t])
    out.update(union=union, own=own)
    return out


def _step(method, settings: TrainSettings, enc: CachedEncoder, task: TaskData, seen, offset: int, opt, rng):
    """One optimiser step on a batch drawn by ``rng``; returns the (detached) loss."""
    idx = rng.choice(len(task.train_text), size=min(settings.batch, len(task.train_text)), replace=False)
    emb = enc.embed([task.train_text[i] for i in idx])
    cur = enc.embed(task.prompts)
    classes = cur if seen is None else torch.cat([seen, cur])
    y = torch.as_tensor(task.train_y[idx]) + offset
    loss = two_term_loss(emb, classes, y, n_masked=offset, logit_scale=settings.logit_scale)
    if method == "olora":
        loss = loss + settings.olora_lambda * orthogonality_penalty(enc.top)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def atoms_for_mass(enc: CachedEncoder, tasks: list[TaskData], per_task: int, mass: float = 0.99) -> dict[str, float]:
    """Per MoRAM layer: mean over real tokens of the fewest atoms whose weights reach 99 % of Σw (spec §8.2)."""
    texts = [t.test_text[i] for t in tasks for i in range(min(per_task, len(t.test_text)))]
    A.set_recording(enc.top, True)
    enc.embed(texts)
    lengths = torch.tensor([enc.token_count(x) for x in texts])
    result = {}
    for name, layer in A.moram_layers(enc.top):
        w = layer.last_weights  # (B, L, R)
        real = (torch.arange(w.shape[1])[None, :] < lengths[:, None]).numpy()  # (B, L)
        result[name] = float(metrics.atoms_for_mass(w.numpy(), mass)[real].mean())
    A.set_recording(enc.top, False)
    return result


@torch.no_grad()
def activation_examples(enc: CachedEncoder, tasks: list[TaskData], layer_suffix: str = "attention.self.key") -> dict:
    """Final weights ``w`` (tokens × atoms) at the first adapted block's key projection, one test text per task."""
    layers = [m for n, m in A.moram_layers(enc.top) if n.endswith(layer_suffix)]
    if not layers:
        return {}
    A.set_recording(enc.top, True)
    out = {}
    for task in tasks:
        text = task.test_text[0]
        enc.embed([text])
        out[task.name] = layers[0].last_weights[0].numpy()  # (L, R)
    A.set_recording(enc.top, False)
    return out
