"""Figures (spec §8): accuracy-matrix heatmaps and activation maps. Needs matplotlib (the demo extra).

Functions return nothing and write one PNG each; they never print.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def accuracy_heatmaps(matrices: dict[str, np.ndarray], task_names: list[str], path: Path, title: str) -> None:
    """One panel per method: ``a[i, j]`` after task i (rows) on task j (columns)."""
    plt = _pyplot()
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, (name, a) in zip(axes[0], matrices.items()):
        ax.imshow(a, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(a):
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(task_names)), task_names, rotation=60, fontsize=6)
        ax.set_yticks(range(len(task_names)), [f"after {t}" for t in task_names], fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def activation_map(weights: np.ndarray, groups: np.ndarray, atoms_per_task: int, task_names: list[str],
                   path: Path, title: str) -> None:
    """Final mixing weights ``w`` as atoms (grouped by the task that added them) × inputs (grouped by task)."""
    plt = _pyplot()
    order = np.argsort(groups, kind="stable")
    w = weights.reshape(-1, weights.shape[-1])[order].T  # (R, N)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    im = ax.imshow(w, aspect="auto", cmap="magma", interpolation="nearest", vmin=0, vmax=max(w.max(), 1e-12))
    bounds = np.flatnonzero(np.diff(groups[order])) + 0.5
    for b in bounds:
        ax.axvline(b, color="cyan", lw=0.6)
    for g in range(1, w.shape[0] // atoms_per_task):
        ax.axhline(g * atoms_per_task - 0.5, color="cyan", lw=0.6)
    centers = [np.mean(np.flatnonzero(groups[order] == d)) for d in range(len(task_names))]
    ax.set_xticks(centers, [f"inputs of {n}" for n in task_names], fontsize=7)
    ax.set_yticks([(g + 0.5) * atoms_per_task - 0.5 for g in range(w.shape[0] // atoms_per_task)],
                  [f"atoms of {n}" for n in task_names[: w.shape[0] // atoms_per_task]], fontsize=7)
    fig.colorbar(im, ax=ax, label="w")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
