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


def accuracy_figure(matrices: dict[str, np.ndarray], task_names: list[str], title: str):
    """One panel per method: ``a[i, j]`` (fractions in [0, 1]) after task i (rows) on task j (columns),
    as a matplotlib figure, returned unsaved (pyplot's current backend: inline in a notebook). NaN entries
    (not evaluated: an LLM run scores only the tasks learned so far) are left blank."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, (name, a) in zip(axes[0], matrices.items()):
        ax.imshow(a, vmin=0, vmax=1, cmap="viridis")
        for (i, j), v in np.ndenumerate(a):
            if np.isnan(v):
                continue
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(task_names)), task_names, rotation=60, fontsize=6)
        ax.set_yticks(range(len(task_names)), [f"after {t}" for t in task_names], fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_heatmaps(matrices: dict[str, np.ndarray], task_names: list[str], path: Path, title: str) -> None:
    """:func:`accuracy_figure`, written to ``path`` (PNG)."""
    plt = _pyplot()
    fig = accuracy_figure(matrices, task_names, title)
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
    # names alone on the ticks (what they are is in the axis labels), slanted where they could run together
    slant = {"rotation": 20, "ha": "right", "rotation_mode": "anchor"} if max(map(len, task_names)) > 10 else {}
    ax.set_xticks(centers, task_names, fontsize=7, **slant)
    ax.set_yticks([(g + 0.5) * atoms_per_task - 0.5 for g in range(w.shape[0] // atoms_per_task)],
                  task_names[: w.shape[0] // atoms_per_task], fontsize=7)
    ax.set_xlabel("test inputs, grouped by task", fontsize=8)
    ax.set_ylabel("atoms, by the task that added them", fontsize=8)
    fig.colorbar(im, ax=ax, label="w")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def token_activation_figure(maps: dict[str, dict[str, np.ndarray]], atoms_per_task: int, title: str):
    """The paper's rank activation maps (spec §8.1) as a matplotlib figure, returned unsaved.

    ``maps[stage][example]`` holds the final weights ``w`` of one input, shape (tokens, R). Columns: the
    stages (e.g. after tasks 1, 2 and the last); rows: one example per task. Each panel shows atoms
    (rows, in blocks of ``atoms_per_task`` separated by lines: the task that added them) × tokens; one
    colour bar (w from 0 to 1) serves every panel. Uses pyplot's current backend (inline in a notebook).
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415

    stages = list(maps)
    examples = list(maps[stages[0]])
    fig, axes = plt.subplots(len(examples), len(stages), figsize=(3.6 * len(stages) + 1, 1.9 * len(examples) + 0.6),
                             squeeze=False, layout="constrained")
    image = None
    for j, stage in enumerate(stages):
        for i, name in enumerate(examples):
            w = np.asarray(maps[stage][name]).T  # (R, L)
            ax = axes[i][j]
            image = ax.imshow(w, aspect="auto", cmap="magma", interpolation="nearest", vmin=0, vmax=1)
            for g in range(1, w.shape[0] // atoms_per_task):
                ax.axhline(g * atoms_per_task - 0.5, color="cyan", lw=0.8)
            ax.set_title(f"{name} example, {stage.replace('_', ' ')}", fontsize=8)
            ax.set_xlabel("token", fontsize=7)
            ax.set_ylabel(f"atom ({atoms_per_task} per task)", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=axes, label="mixing weight w", shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def token_activation_maps(maps: dict[str, dict[str, np.ndarray]], atoms_per_task: int, path: Path, title: str) -> None:
    """:func:`token_activation_figure`, written to ``path`` (PNG)."""
    plt = _pyplot()
    fig = token_activation_figure(maps, atoms_per_task, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def atoms_for_mass(curves: dict[str, list[dict[str, float]]], router_active: list[int], path: Path, title: str) -> None:
    """Atoms carrying 99 % of the mass per layer against the task index, beside a router MoE's active rank."""
    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    styles = [("o", "-", 2.0), ("^", ":", 2.4), ("D", "-.", 1.6)]  # overlapping curves stay visible
    for (method, per_task), (marker, line, width) in zip(curves.items(), styles * len(curves)):
        if not per_task:
            continue
        layers = list(per_task[0])
        mean = [np.mean([d[layer] for layer in layers]) for d in per_task]
        tasks = np.arange(1, len(per_task) + 1)
        for layer in layers:
            ax.plot(tasks, [d[layer] for d in per_task], color="0.8", lw=0.6)
        ax.plot(tasks, mean, marker=marker, ls=line, lw=width, markerfacecolor="none",
                label=f"{method}: mean over layers ({mean[-1]:.2f} after the last task)")
    ax.plot(np.arange(1, len(router_active) + 1), router_active, "k--", marker="s",
            label="MoE-LoRA: active rank (every expert weighted)")
    if all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):  # a curve at 0 (δ silenced all) stays
        ax.set_yscale("log", base=2)  # ~1 atom against 8·T ranks: a linear axis flattens the MoRAM curves
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("after task")
    ax.set_ylabel("atoms per token (99 % of Σw)" + (", log scale" if ax.get_yscale() == "log" else ""))
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
