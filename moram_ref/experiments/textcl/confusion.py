"""``moram-ref text-cl-confusion RUN``: where each task's texts land in the union label space.

In the task-agnostic protocol a text is scored against the labels of every task in the sequence, so it
can be wrong in two ways: its best label belongs to another task (the text *lands* in that task), or it
lands among its own task's labels on a wrong one. Union accuracy = (share of the task's texts landing in
it) × (accuracy among those). This command separates the two, from a finished ``text-cl`` run's
checkpoints (``state/<method>_seed<s>/task<t>.safetensors``, :mod:`.state`), for every method it ran:

* ``after_own``: right after task ``t`` is learned (checkpoint ``task<t>``), where task ``t``'s texts land
  (the accuracy matrix's diagonal);
* ``after_last``: after the last task, where every task's texts land (the matrix's last row).

For each, ``landed[seed][g][h]`` counts task ``g``'s texts whose best label is one of task ``h``'s, and
``correct[seed][g]`` those that are right (the union accuracy's numerator). Zero-shot trains nothing:
the frozen encoder's counts serve for both. The prediction is the training run's own
(:func:`moram_ref.experiments.textcl.train.predict`, on the recorded ``--eval-split``), and the command
checks the counts against the union accuracies the run recorded (``progress.json``): ``unreproduced``
lists any cell that differs, ``[stage, seed, task, recorded correct, counted correct]`` (expected empty:
each (method, seed) is counted on the thread count its records were made on, :mod:`..threads`, as another
count can move a near-tie; records from before thread counts are counted on this process's).

It also counts, per task, the texts longer than ``--max-length`` tokens (``texts_cut``: the encoder sees
only their beginning) and records its wall time, its process's thread count (``threads``) and the counts
the pairs were counted on (``threads_used``).

Writes ``<RUN>/confusion.json`` and, unless ``--no-plots``, ``confusion.png`` (one panel per method: the
share of each task's texts landing in each task after the last task, mean over seeds); ``moram-ref report
<RUN>/confusion.json --table textcl-confusion`` renders the tables (:mod:`.confusion_tables`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from moram_ref.experiments import cliargs, rundir, threads
from moram_ref.experiments.textcl import METHODS, finished, state
from moram_ref.experiments.textcl.run import portable

OUTPUT, FIGURE = "confusion.json", "confusion.png"
STAGES = ("after_own", "after_last")


def add_arguments(p: argparse.ArgumentParser) -> None:
    finished.add_run_arguments(p)


def run(args: argparse.Namespace, log=print) -> dict:
    settings, methods, tasks, records = finished.plan(args.run, args.data_root, METHODS, (OUTPUT, FIGURE),
                                                      "no method", args.model_path)
    note = finished.unchecked_settings(records)
    if note:
        log(note)
    with rundir.open_run(args.run, "text-cl", settings, eval_only=True, arg="run"):
        start = time.perf_counter()
        result = _count(settings, methods, tasks, records, args.run, args.model_path, log)
        result["wall_seconds"] = time.perf_counter() - start
        finished.publish(args.run, OUTPUT, result, FIGURE, _figure, args.no_plots, log)
    return result


def _count(settings: dict, methods: list[str], tasks: list, records: dict, run: Path, model_path, log) -> dict:
    import torch  # noqa: PLC0415

    from moram_ref.experiments.textcl.train import class_offsets, predict  # noqa: PLC0415
    from moram_ref.torch import attach as A  # noqa: PLC0415
    from moram_ref.torch import checkpoint  # noqa: PLC0415

    enc, encoder = finished.encoder(settings, model_path)
    config = cliargs.moram_config(argparse.Namespace(**settings))
    split = settings.get("eval_split", "test")
    names = [t.name for t in tasks]
    n = len(tasks)
    group = np.repeat(np.arange(n), [len(t.labels) for t in tasks])  # union label index -> its task
    offsets = class_offsets(tasks)
    ys = [np.asarray(getattr(t, f"{split}_y")) for t in tasks]
    texts = np.array([len(y) for y in ys])

    def tally(which: list[int]) -> tuple[np.ndarray, np.ndarray]:
        landed, correct = np.zeros((len(which), n), dtype=int), np.zeros(len(which), dtype=int)
        for i, (j, (best, _)) in enumerate(zip(which, predict(enc, tasks, split, which))):
            best = best.numpy()
            landed[i] = np.bincount(group[best], minlength=n)
            correct[i] = int(np.sum(best == ys[j] + offsets[j]))
        return landed, correct

    result: dict = {"kind": "text-cl confusion",
                    "run": {"settings": portable(settings), "tasks": names, "encoder": encoder}, "split": split,
                    "texts_per_task": texts.tolist(), "texts_cut": texts_cut(enc, tasks, split),
                    "threads": torch.get_num_threads(), "threads_used": [], "methods": {}}
    for method in methods:
        entry = {s: {"landed": [], "correct": []} for s in STAGES}
        unreproduced = []
        for seed in range(settings["seeds"]):
            with threads.continued(state.recorded_threads(run / "state" / f"{method}_seed{seed}"), log,
                                   f"{method} seed {seed}", "its records were made", "its record") as used:
                result["threads_used"] = sorted({*result["threads_used"], used})
                A.detach(enc.top)
                if method == "zero_shot":  # the frozen encoder: one count serves every seed and stage
                    if seed == 0:
                        frozen = tally(list(range(n)))
                    own = last = frozen
                else:
                    rows = []
                    for t in range(1, n + 1):
                        A.detach(enc.top)
                        A.attach(enc.top, config, enc.target_names(settings["placement"]), method=method)
                        enc.name_adapters()
                        checkpoint.load(enc.top, run / "state" / f"{method}_seed{seed}" / f"task{t}.safetensors",
                                        config, method, tasks_done=t)
                        if t < n:
                            rows.append(tally([t - 1]))
                        else:  # the last checkpoint counts every task; its own task's row is among them
                            last = tally(list(range(n)))
                            rows.append((last[0][-1:], last[1][-1:]))
                    own = (np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]))
                recorded = np.asarray(records[method, seed]["union"], dtype=float)
                differ = len(unreproduced)
                for stage, (landed, correct), accuracy in (("after_own", own, np.diag(recorded)),
                                                           ("after_last", last, recorded[-1])):
                    entry[stage]["landed"].append(landed.tolist())
                    entry[stage]["correct"].append(correct.tolist())
                    expected = np.rint(accuracy * texts).astype(int)
                    unreproduced += [[stage, seed, names[g], int(expected[g]), int(correct[g])]
                                     for g in np.flatnonzero(expected != correct)]
                differ = len(unreproduced) - differ
                log(f"{method} seed {seed}: where each task's texts land counted"
                    + (f"; {differ} of {2 * n} cell(s) differ from the recorded union accuracy" if differ else
                       f"; reproduces the recorded union accuracy in all {2 * n} cells"))
        entry["unreproduced"] = unreproduced
        result["methods"][method] = entry
    A.detach(enc.top)
    return result


def texts_cut(enc, tasks: list, split: str) -> list[int]:
    """Per task, how many of its ``split`` texts have more tokens (with [CLS] and [SEP]) than the run's
    ``--max-length``: the encoder sees only their beginning."""
    return [sum(map(enc.is_cut, getattr(t, f"{split}_text"))) for t in tasks]


def _figure(result: dict, path: Path) -> None:
    from moram_ref.experiments.textcl.confusion_tables import shares_of  # noqa: PLC0415
    from moram_ref.experiments.textcl.tables import LABELS  # noqa: PLC0415
    from moram_ref.plots import _pyplot  # noqa: PLC0415  (matplotlib only when figures are wanted)

    plt = _pyplot()
    names = result["run"]["tasks"]
    n, panels = len(names), list(result["methods"].items())
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    small = 8 if n <= 6 else 5
    size = max(3.6, 0.42 * n + 1.6)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1.2, size * rows + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (method, entry) in zip(axes.flat, panels):
        share = 100 * shares_of(entry, "after_last", np.asarray(result["texts_per_task"], float))[0]  # %
        image = ax.imshow(share, cmap="viridis", vmin=0, vmax=100)
        for (g, h), v in np.ndenumerate(share):
            if v >= 0.5:  # below 0.5 %: blank (the title says so)
                ax.text(h, g, f"{v:.0f}", ha="center", va="center", fontsize=small, color="white" if v < 60 else "black")
        ax.set_xticks(range(n), names, fontsize=small + 1, rotation=60, ha="right")
        ax.set_yticks(range(n), names, fontsize=small + 1)
        ax.set_xlabel("lands in the labels of", fontsize=small + 2)
        ax.set_ylabel("texts of", fontsize=small + 2)
        ax.set_title(LABELS[method], fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="% of the texts of the row's task")
    fig.suptitle(f"Where each task's texts land in the union of all labels, after the last task (mean over "
                 f"{len(next(iter(result['methods'].values()))['after_last']['landed'])} seed(s), %; blank: under 0.5 %)",
                 fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
