"""Routing diagnostics for the toy streams: where MoRAM's weight goes, task by task, and why.

A :class:`RoutingProbe` is passed as ``on_task_end`` to ``recall.run_method`` / ``digits.run_method``.
After every task it records, per adapted layer, on every domain's test inputs (evaluation mode):

* ``share[g][d]``: the share of the total weight ``Σw`` on domain ``d``'s inputs that task ``g``'s atoms
  take (columns sum to 1 over the tasks learned so far, or to 0 where δ silences every input) —
  the paper's Fig. 3 (spec §8.1) as numbers;
* ``silent[d]``: the share of domain ``d``'s inputs on which δ switches every atom off;
* ``atoms99[d]``: the mean number of atoms that carry 99 % of an input's weight (spec §8.2), over the
  inputs of domain ``d`` that keep any weight;
* ``key_norm[g]``: the mean key norm ``‖A_i‖`` of task ``g``'s atoms;
* ``key_alignment[g]``: the mean cosine between task ``g``'s keys and the mean direction of the layer's
  inputs (all domains): how much the keys point along what every input shares;
* ``coherence``: ``‖mean_n x_n/‖x_n‖‖`` of the layer's inputs, 1 when every input points the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moram_ref import metrics


def layer_inputs_and_weights(model, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(input, w)`` per adapted layer, evaluation mode: a recall layer or a digits ``AdaptedEncoder``."""
    if hasattr(model, "layers"):  # digits: the encoder's two adapted layers
        _, (c1, c2, *_) = model.forward(x, training=False)
        return [(c1["x"], c1["w"]), (c2["x"], c2["w"])]
    _, cache = model.forward(x, training=False)
    return [(cache["x"], cache["w"])]


def layer_diagnostics(layer, x: np.ndarray, w: np.ndarray, groups: np.ndarray, n_domains: int) -> dict:
    """The module docstring's quantities for one layer after a task. x (N, d_in), w (N, R), groups (N,)."""
    r = layer.config.atoms_per_task
    n_tasks = layer.n_atoms // r
    by_task = w.reshape(len(w), n_tasks, r).sum(axis=2)  # (N, tasks so far)
    share = np.zeros((n_tasks, n_domains))
    silent, atoms99 = [], []
    for d in range(n_domains):
        mass = by_task[groups == d].mean(axis=0)  # (tasks,)
        share[:, d] = mass / mass.sum() if mass.sum() > 0 else 0.0
        wd = w[groups == d]
        alive = wd.sum(axis=1) > 0
        silent.append(float(np.mean(~alive)))
        atoms99.append(float(metrics.atoms_for_mass(wd[alive]).mean()) if alive.any() else 0.0)
    keys = layer.frozen_keys.reshape(n_tasks, r, -1)  # (tasks, r, d_in)
    unit_x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    direction = unit_x.mean(axis=0)
    coherence = float(np.linalg.norm(direction))
    cos = keys @ direction / (np.linalg.norm(keys, axis=2) * max(coherence, 1e-12))  # (tasks, r)
    return {"share": share.tolist(), "silent": silent, "atoms99": atoms99,
            "key_norm": np.linalg.norm(keys, axis=2).mean(axis=1).tolist(),
            "key_alignment": cos.mean(axis=1).tolist(), "coherence": coherence}


class RoutingProbe:
    """Collects :func:`layer_diagnostics` after every task: ``records[t][layer]``."""

    def __init__(self, x: np.ndarray, groups: np.ndarray, n_domains: int) -> None:
        self.x, self.groups, self.n_domains = x, groups, n_domains
        self.records: list[list[dict]] = []

    def __call__(self, t: int, model) -> None:
        layers = model.layers if hasattr(model, "layers") else [model]
        pairs = layer_inputs_and_weights(model, self.x)
        self.records.append([layer_diagnostics(layer, xi, w.reshape(len(xi), -1), self.groups, self.n_domains)
                             for layer, (xi, w) in zip(layers, pairs)])


def probe_inputs(stream_name: str, stream: dict) -> tuple[np.ndarray, np.ndarray]:
    """Every domain's test inputs, concatenated, and their domain index: (N, d_in), (N,)."""
    if stream_name == "recall":
        tasks = stream["tasks"]
        return np.concatenate([t["keys"] for t in tasks]), np.repeat(np.arange(len(tasks)), len(tasks[0]["keys"]))
    doms = stream["domains"]
    return (np.concatenate([d["x_test"] for d in doms]),
            np.concatenate([np.full(len(d["x_test"]), i) for i, d in enumerate(doms)]))


def takeover(share_last: np.ndarray) -> dict[str, float]:
    """From the final share matrix (tasks × domains): ``newest`` = the mean share of the last task's atoms on
    the earlier domains' inputs; ``own`` = the mean share of each domain's own atoms on its inputs."""
    s = np.asarray(share_last)
    return {"newest": float(s[-1, :-1].mean()), "own": float(np.mean(np.diag(s)))}


def share_heatmaps(shares: dict[str, np.ndarray], task_names: list[str], path: Path, title: str) -> None:
    """One panel per stage: the share of weight of each task's atoms (rows) on each domain's inputs (columns)."""
    from moram_ref.plots import _pyplot  # noqa: PLC0415  (matplotlib only when figures are wanted)

    plt = _pyplot()
    n = max(np.asarray(s).shape[1] for s in shares.values())
    small = 8 if n <= 6 else 6  # cell labels stay legible up to the 15-task sequence
    fig, axes = plt.subplots(1, len(shares), figsize=(max(4.4, 0.55 * n + 2.0) * len(shares), max(3.8, 0.4 * n + 1.8)),
                             squeeze=False, layout="constrained")
    for ax, (stage, s) in zip(axes[0], shares.items()):
        s = np.asarray(s)
        image = ax.imshow(s, cmap="magma", vmin=0, vmax=1, aspect="auto")
        for (g, d), v in np.ndenumerate(s):
            ax.text(d, g, f"{v:.2f}", ha="center", va="center", fontsize=small, color="cyan" if v < 0.5 else "black")
        ax.set_xticks(range(s.shape[1]), task_names[: s.shape[1]], fontsize=small + 1, rotation=35, ha="right")
        ax.set_yticks(range(s.shape[0]), [f"atoms of {n}" for n in task_names[: s.shape[0]]], fontsize=small + 1)
        ax.set_xlabel("inputs of task", fontsize=small + 1)
        ax.set_title(stage, fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label="share of Σw on the task's tokens")
    fig.suptitle(title, fontsize=11, wrap=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
