"""Reading ``text-cl-confusion`` files (``confusion.json``): where each task's texts land, as tables.

``moram-ref report CONFUSION.json [CONFUSION.json …] --table textcl-confusion`` renders, per run, two tables
(rows: tasks; a column per method): right after each task is learned, and after the last task. A cell is
``union accuracy (landed)``: the % of the task's texts whose best label in the union of every task's labels
is the right one, and in brackets the % whose best label is one of the task's own (the accuracy's ceiling).
A column gives the % of the task's texts longer than the run's ``--max-length`` (if recorded); the last
column names the other task whose labels take the largest share of the task's texts, mean over the adapters. :func:`problem` checks a file's structure and every count first, so that a damaged or hand-edited
file is named, never silently misread. Importable without torch.
"""

from __future__ import annotations

import json

import numpy as np

from moram_ref.experiments.textcl.routing_tables import _count  # a whole number in [low, 2**53)
from moram_ref.experiments.textcl.tables import LABELS, count_words, run_labels, valid_counts
from moram_ref.experiments.threads import is_count

STAGES = (("after_own", "right after learning it (the accuracy matrix's diagonal)"),
          ("after_last", "after the last task (the matrix's last row)"))


def problem(data) -> str | None:
    """Why ``data`` cannot feed the confusion table (None if it can)."""
    if not isinstance(data, dict) or data.get("kind") != "text-cl confusion":
        return "is not a text-cl-confusion confusion.json"
    run = data.get("run")
    if not isinstance(run, dict) or not all(isinstance(run.get(k), dict) for k in ("settings", "encoder")):
        return "has no 'run' record with 'settings' and 'encoder'"
    enc = run["encoder"]
    if not (all(_count(enc.get(k), 1) for k in ("blocks", "adapted_blocks"))
            and enc["adapted_blocks"] <= enc["blocks"]):
        return f"records an encoder {enc!r}: expected whole numbers of blocks ≥ adapted blocks ≥ 1"
    if not isinstance(run["settings"].get("sequence"), str):
        return f"records settings without a sequence name ({run['settings'].get('sequence')!r})"
    tasks = run.get("tasks")
    if (not isinstance(tasks, list) or len(tasks) < 2 or not all(isinstance(t, str) for t in tasks)
            or len(set(tasks)) < len(tasks)):
        return f"records tasks {tasks!r}: a confusion file needs a list of 2 or more distinct task names"
    if data.get("split", "test") not in ("test", "val"):
        return f"records split {data.get('split')!r}, not 'test' or 'val'"
    n = len(tasks)
    texts = data.get("texts_per_task")
    if not (isinstance(texts, list) and len(texts) == n and all(_count(c, 1) for c in texts)):
        return f"records texts_per_task {texts!r}: expected {n} whole numbers ≥ 1, one per task"
    cut = data.get("texts_cut")  # written since the command counted them
    if cut is not None and not (isinstance(cut, list) and len(cut) == n
                                and all(_count(c) and c <= t for c, t in zip(cut, texts))):
        return f"records texts_cut {cut!r}: expected {n} whole numbers, none above its task's texts"
    seconds = data.get("wall_seconds")
    if seconds is not None and not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
                                    and 0 <= seconds < float("inf")):
        return f"records wall_seconds {seconds!r}: expected a time in seconds"
    methods = data.get("methods")
    if not isinstance(methods, dict) or not methods or not set(methods) <= set(LABELS):
        return f"records methods {methods if not isinstance(methods, dict) else sorted(methods)!r}: expected one or " \
               f"more of {', '.join(LABELS)}"
    seeds = None
    for method, entry in methods.items():
        for stage, _ in STAGES:
            part = entry.get(stage) if isinstance(entry, dict) else None
            if not isinstance(part, dict):
                return f"{LABELS[method]}: has no '{stage}' counts"
            landed, correct = part.get("landed"), part.get("correct")
            ok = (isinstance(landed, list) and isinstance(correct, list) and len(landed) == len(correct) >= 1
                  and all(isinstance(s, list) and len(s) == n and all(isinstance(r, list) and len(r) == n
                                                                     and all(_count(c) for c in r) for r in s)
                          for s in landed)
                  and all(isinstance(s, list) and len(s) == n and all(_count(c) for c in s) for s in correct))
            if not ok:
                return f"{LABELS[method]}: '{stage}' must hold, per seed, {n}×{n} landed counts and {n} correct counts"
            if seeds not in (None, len(landed)):
                return f"{LABELS[method]}: '{stage}' has {len(landed)} seed(s), another entry {seeds}"
            seeds = len(landed)
            for s, (rows, right) in enumerate(zip(landed, correct)):
                for g in range(n):
                    if sum(rows[g]) != texts[g] or right[g] > rows[g][g]:
                        return (f"{LABELS[method]}: '{stage}' seed {s}, task {tasks[g]}: {sum(rows[g])} texts landed "
                                f"and {right[g]} right of {rows[g][g]} in its own labels; expected {texts[g]} texts, "
                                "and no more right than landed in its own labels")
        why = _unreproduced_problem(entry.get("unreproduced"), tasks, seeds)
        if why:
            return f"{LABELS[method]}: {why}"
    return None


def _unreproduced_problem(cells, tasks: list[str], seeds: int) -> str | None:
    """Why ``unreproduced`` is not a list of [stage, seed, task, recorded count, counted count] (None if it is)."""
    if not isinstance(cells, list):
        return f"records unreproduced {cells!r}: expected a list of the cells that differ from the run's record"
    for cell in cells:
        ok = (isinstance(cell, list) and len(cell) == 5 and cell[0] in dict(STAGES) and _count(cell[1])
              and cell[1] < seeds and cell[2] in tasks and _count(cell[3]) and _count(cell[4]))
        if not ok:
            return f"records an unreproduced cell {cell!r}: expected [stage, seed, task, recorded, counted]"
    return None


def shares_of(entry: dict, stage: str, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(landed share (T, T), accuracy (T,)), both mean over seeds, in [0, 1]."""
    landed = np.asarray(entry[stage]["landed"], float) / texts[None, :, None]
    correct = np.asarray(entry[stage]["correct"], float) / texts[None, :]
    return landed.mean(axis=0), correct.mean(axis=0)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _attractor(landed: np.ndarray, names: list[str]) -> str:
    """'MNLI 37': the task whose labels take the largest share of the other tasks' texts (mean over those
    tasks, %), from a landed-share matrix (T, T)."""
    n = len(names)
    taken = (landed.sum(axis=0) - np.diag(landed)) / (n - 1)
    h = int(np.argmax(taken))
    return f"{names[h]} {100 * taken[h]:.0f}"


def confusion_table(*files: dict) -> str:
    """Per run (one ``confusion.json`` each), the tables of the module docstring. ValueError if a file
    fails :func:`problem`."""
    if not files:
        raise ValueError("no text-cl-confusion files given")
    for data in files:
        why = problem(data)
        if why:
            raise ValueError(f"the confusion file {why}")
    out = []
    for data, label in zip(files, run_labels([data["run"] for data in files])):
        names, methods = data["run"]["tasks"], data["methods"]
        texts = np.asarray(data["texts_per_task"], float)
        adapters = [m for m in methods if m != "zero_shot"] or list(methods)
        seeds = len(next(iter(methods.values()))["after_last"]["landed"])
        for stage, when in STAGES:
            shares = {m: shares_of(e, stage, texts) for m, e in methods.items()}
            cut = data.get("texts_cut")
            header = ["task", *(["texts cut"] if cut else []), *(LABELS[m] for m in methods),
                      "largest other destination"]
            out += [f"**{label}: where each task's texts land, {when}** — union accuracy % "
                    f"(% landing among the task's own labels), mean over {seeds} seed(s)", "",
                    _row(header), "|" + "---|" * len(header)]
            for g, name in enumerate(names):
                elsewhere = np.mean([shares[m][0][g] for m in adapters], axis=0)
                elsewhere[g] = -1
                h = int(np.argmax(elsewhere))
                destination = f"{names[h]} ({100 * elsewhere[h]:.0f})" if elsewhere[h] > 0 else "— (none)"
                out.append(_row([name, *([f"{100 * cut[g] / texts[g]:.0f}"] if cut else []),
                                 *(f"{100 * acc[g]:.1f} ({100 * land[g, g]:.0f})" for land, acc in shares.values()),
                                 destination]))
            out.append(_row(["*labels taking the largest share of the other tasks' texts*", *([""] if cut else []),
                             *(_attractor(land, names) for land, _ in shares.values()), ""]))
            out.append("")
        unreproduced = sum(len(e.get("unreproduced") or []) for e in methods.values())
        on = _counted_on(data)
        took = f" Counted in {data['wall_seconds'] / 60:.0f} min on {on}." if "wall_seconds" in data else ""
        per_task = f"{int(texts.min())}" if texts.min() == texts.max() else f"{int(texts.min())}–{int(texts.max())}"
        out.append(f"{int(texts.sum())} {data.get('split', 'test')} texts ({per_task} per task). Recounted from the "
                   "checkpoints: "
                   + ("every cell reproduces the run's recorded union accuracy." if not unreproduced else
                      f"{unreproduced} cell(s) differ from the run's recorded union accuracy (see `unreproduced`).")
                   + took)
        out.append("")
    return "\n".join(out) + (
        "\nA text lands in a task when its best-scoring label, among the labels of every task in the sequence (the "
        "union; right after task t it includes the labels of tasks not learned yet), is one of that task's; union "
        "accuracy ≤ the share landing in the task's own labels, and their ratio is the accuracy among the texts "
        "that land there. *Texts cut*: % of the task's texts longer than the run's --max-length tokens (the "
        "encoder sees their beginning only). *Largest other destination*: the other task whose labels take the "
        "largest share of the task's texts (% of all its texts), mean over the adapters (zero-shot excluded). "
        "*Labels taking the largest share of the other tasks' texts*: per method, the task whose labels take the "
        "largest share of the other tasks' texts (%, unweighted mean over those tasks, each counted at the stage "
        "of the table; an even spread would give each task 1/T of them). "
        "Command: `moram-ref text-cl-confusion <run folder>`.")


def _counted_on(data: dict) -> str:
    """The thread counts the pairs were counted on (``threads_used``; a file from before it: the process's
    ``threads``), in words. ValueError naming the field if it is not what the command writes."""
    if "threads_used" in data:
        if not valid_counts(data["threads_used"]):
            raise ValueError(f"threads_used must list distinct thread counts (1 to 4096) in increasing order, got "
                             f"{json.dumps(data['threads_used'])}")
        return count_words(data["threads_used"])
    if "threads" in data and not is_count(data["threads"]):
        raise ValueError(f"threads must be a thread count (1 to 4096), got {json.dumps(data['threads'])}")
    return f"{data.get('threads', '?')} thread(s)"
