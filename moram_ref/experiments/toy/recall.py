"""Stream 1 — associative recall: each task stores key→value pairs whose keys live in the task's own
region of input space; the adapters must recall every task's values after every later task.

Input regions: task ``t`` draws keys from a random ``m``-dimensional subspace ``S_t`` mixed with a
shared subspace ``S_0``: ``k = normalise(√(1−ρ) S_t z + √ρ S_0 z')``. ``ρ`` (``overlap``) sets how much
the regions share. Targets: ``y* = W0 k + v`` with a random ``v``; the adapter must learn ``Δ(k) = v``.
Score: a pair is recalled when the output lands within ``tolerance`` (relative) of its target,
``‖y − y*‖ < tol · ‖v‖``; the frozen base alone has relative error exactly 1 and recalls nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moram_ref.config import MoRAMConfig
from moram_ref.experiments.toy.methods import activation_mass, count_trainable, key_norms, make_layer, silent_fraction
from moram_ref.numpy.optim import Adam


@dataclass(frozen=True)
class RecallSettings:
    n_tasks: int = 5
    pairs_per_task: int = 8
    d: int = 64
    overlap: float = 0.2
    steps: int = 300
    lr: float = 1e-2
    tolerance: float = 0.5


def make_stream(settings: RecallSettings, rng: np.random.Generator) -> dict:
    s = settings
    m = s.pairs_per_task
    basis, _ = np.linalg.qr(rng.standard_normal((s.d, s.d)))  # orthonormal columns
    need = m * (s.n_tasks + 1)
    if need > s.d:
        raise ValueError(f"d={s.d} too small for {s.n_tasks} tasks of {m} pairs (needs {need})")
    shared = basis[:, :m]  # (d, m)
    weight = rng.standard_normal((s.d, s.d)) / np.sqrt(s.d)  # frozen base W0
    tasks = []
    for t in range(s.n_tasks):
        own = basis[:, m * (t + 1) : m * (t + 2)]  # (d, m)
        keys = np.sqrt(1 - s.overlap) * rng.standard_normal((m, m)) @ own.T
        keys += np.sqrt(s.overlap) * rng.standard_normal((m, m)) @ shared.T
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)  # (m, d)
        vals = rng.standard_normal((m, s.d)) / np.sqrt(s.d) * 2.0  # (m, d) what the adapter must add
        tasks.append({"keys": keys, "values": vals, "targets": keys @ weight.T + vals})
    return {"weight": weight, "tasks": tasks}


def relative_error(layer, task: dict) -> np.ndarray:
    """``‖y − y*‖ / ‖v‖`` per stored pair (evaluation mode). -> (m,)"""
    y, _ = layer.forward(task["keys"], training=False)  # (m, d)
    err = np.linalg.norm(y - task["targets"], axis=1)
    return err / np.linalg.norm(task["values"], axis=1)


def recall_accuracy(layer, task: dict, tolerance: float) -> float:
    return float(np.mean(relative_error(layer, task) < tolerance))


def run_method(method: str, config: MoRAMConfig, settings: RecallSettings, stream: dict, seed: int, *,
               layer_factory=make_layer, on_task_end=None) -> dict:
    """Train one method through the stream; returns its accuracy matrix and diagnostics.

    ``layer_factory(method, weight, bias, config)`` builds the adapted layer (ablations pass their own);
    ``on_task_end(t, layer)``, when given, is called after task ``t`` is frozen and evaluated (probes).
    """
    rng = np.random.default_rng(seed)
    layer = layer_factory(method, stream["weight"], None, config)
    tasks = stream["tasks"]
    n = len(tasks)
    acc = np.zeros((n, n))
    err = np.zeros((n, n))
    trainable, norms = [], []
    for t, task in enumerate(tasks):
        if method != "frozen":
            layer.begin_task(rng)
            trainable.append(count_trainable([layer]))
            opt = Adam(lr=settings.lr)
            for _ in range(settings.steps):
                y, cache = layer.forward(task["keys"], training=True, rng=rng)
                grad_y = (y - task["targets"]) / len(y)  # d/dy of ½ mean ‖y − y*‖²
                grads = layer.backward(grad_y, cache)
                opt.step(layer.current_parameters(), {k: g for k, g in grads.items() if k != "x"})
            layer.end_task()
            if method in ("moram", "dense_moram"):
                norms.append([key_norms(layer)])  # (layers, tasks so far)
        acc[t] = [recall_accuracy(layer, other, settings.tolerance) for other in tasks]
        err[t] = [relative_error(layer, other).mean() for other in tasks]
        if on_task_end is not None:
            on_task_end(t, layer)
    out = {"accuracy": acc, "relative_error": err, "trainable_per_task": trainable}
    if method in ("moram", "dense_moram"):
        out["key_norms"] = norms
        keys = np.concatenate([task["keys"] for task in tasks])
        groups = np.repeat(np.arange(n), settings.pairs_per_task)
        out["activation_mass"] = activation_mass(layer, keys, groups, n)
        out["silent_fraction"] = silent_fraction(layer, keys)
        out["weights"] = layer.forward(keys, training=False)[1]["w"]
        out["groups"] = groups
    return out
