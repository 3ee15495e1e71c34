"""Reading ``text-cl-routing`` summaries (``routing_summary.json``): the routing and shares tables.

``moram-ref report SUMMARY.json [SUMMARY.json …] --table textcl-routing`` renders one row per run and
probed method (the summary numbers of :mod:`.routing`); ``--table textcl-shares`` renders, per run, the
share of ``Σw`` each task's atoms take on each task's tokens after the last task (the paper's Fig. 3 as
numbers, spec §8.1) and, per text, whose atoms take most of the text's weight. :func:`problem` checks a
file's structure first, so that a damaged or hand-edited summary is named, never silently misread.
Importable without torch.
"""

from __future__ import annotations

import math

import numpy as np

from moram_ref.experiments.textcl.tables import LABELS, _cell, run_labels
from moram_ref.experiments.toy.ablation_tables import ci_cell

COLUMNS = (("own", "own atoms' share on own tokens"), ("newest", "newest atoms' share on earlier tokens"),
           ("old_on_new", "earlier atoms' share on the new task's tokens"), ("silent", "tokens δ silences"))
SUMMARY_KEYS = ("own", "newest", "old_on_new", "atoms99", "silent")  # text_own: written since per-text routing
PROBED = ("moram", "dense_moram")  # the methods with self-activated routing


def problem(summary, need: str | None = None) -> str | None:
    """Why ``summary`` cannot feed a routing table (None if it can); ``need``: a method it must hold.
    Every number is checked for type and range (shares and their means in [0, 1], half-widths ≥ 0, counts
    non-negative integers no larger than the texts probed), so a hand-edited file is named, never rendered."""
    if not isinstance(summary, dict) or summary.get("kind") != "text-cl routing":
        if _is_routing_json(summary):
            return "is a text-cl-routing routing.json (per layer); pass the routing_summary.json beside it"
        return "is not a text-cl-routing routing_summary.json"
    run = summary.get("run")
    if not isinstance(run, dict) or not all(isinstance(run.get(k), dict) for k in ("settings", "encoder")):
        return "has no 'run' record with 'settings' and 'encoder'"
    enc = run["encoder"]
    if not all(_count(enc.get(k), 1) for k in ("blocks", "adapted_blocks")):
        return f"records an encoder {enc!r} without whole numbers of blocks and adapted blocks"
    tasks = run.get("tasks")
    if not isinstance(tasks, list) or len(tasks) < 2 or not all(isinstance(t, str) for t in tasks):
        return f"records tasks {tasks!r}: a routing summary needs a list of 2 or more task names"
    n = len(tasks)
    texts = summary.get("texts_per_task")
    if texts is not None and not (isinstance(texts, list) and len(texts) == n and all(_count(c, 1) for c in texts)):
        return f"records texts_per_task {texts!r}: expected {n} whole numbers ≥ 1, one per task"
    methods = summary.get("methods")
    if not isinstance(methods, dict):
        return f"records methods of type {type(methods).__name__}, not a mapping of method to entry"
    if not methods or not set(methods) <= set(PROBED):
        return f"records methods {sorted(methods)}: expected one or more of {', '.join(PROBED)}"
    if need is not None and need not in methods:
        return f"has no {LABELS[need]} entry (text-cl-routing probed {', '.join(LABELS[m] for m in methods)})"
    for method, entry in methods.items():
        why = _entry_problem(entry, n, texts)
        if why:
            return f"{LABELS[method]}: {why}"
    return None


def _is_routing_json(data) -> bool:
    """``routing.json`` (the per-layer record beside the summary): methods hold per-layer ``layers``."""
    methods = data.get("methods") if isinstance(data, dict) else None
    return isinstance(methods, dict) and any(isinstance(e, dict) and "layers" in e for e in methods.values())


def _count(x, low: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x < 2**53


def _number(x, low: float, high: float) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        v = float(x)
    except OverflowError:  # an integer beyond any float
        return False
    return math.isfinite(v) and low <= v <= high


def _array(x, shape: tuple, low: float, high: float) -> np.ndarray | None:
    """``x`` as a float array of ``shape`` with every entry a real number in [low, high], else None."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError, OverflowError):
        return None
    if a.dtype.kind not in "iuf" or a.shape != shape:  # bools, strings, ragged or huge ints: not numbers
        return None
    a = a.astype(float)
    return a if np.isfinite(a).all() and (a >= low).all() and (a <= high).all() else None


_TOL = 1e-6  # shares are sums of float32 weights


def _entry_problem(entry, n: int, texts: list[int] | None) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("summary"), dict):
        return "no 'summary'"
    for key in (*SUMMARY_KEYS, *(["text_own"] if "text_own" in entry["summary"] else [])):
        cell = entry["summary"].get(key)
        high = math.inf if key == "atoms99" else 1 + _TOL
        if not isinstance(cell, dict) or not _number(cell.get("mean"), 0, high) or not (
                cell.get("ci95") is None or _number(cell["ci95"], 0, math.inf)):
            return (f"summary {key!r} is {cell!r}, not a finite mean in [0, {'∞' if key == 'atoms99' else 1}] and a "
                    "finite non-negative 95 % half-width")
    shares = entry.get("mean_share")
    if not isinstance(shares, list) or not shares:
        return "no 'mean_share' (per seed, the share matrices after each task)"
    for seed, stages in enumerate(shares):
        if not (isinstance(stages, list) and len(stages) == n
                and all(_array(st, (t + 1, n), 0, 1 + _TOL) is not None for t, st in enumerate(stages))):
            return (f"mean_share of seed {seed} is not {n} matrices of shares in [0, 1], of shape (t, {n}) after "
                    f"tasks t = 1…{n}")
    routed = entry.get("text_routing")
    if routed is not None:
        counts = _array(routed, (len(shares), n, n), 0, math.inf)
        if counts is None or (counts != np.round(counts)).any():
            return f"text_routing is not {len(shares)} seed(s) × {n} × {n} non-negative whole counts"
        if texts is not None and (counts.sum(axis=2) > np.asarray(texts)).any():
            return "text_routing counts more texts of a task than texts_per_task records"
    return None


def first_task_share(entry: dict) -> dict:
    """Mean ± CI over seeds of the first task's atoms' share on the later tasks' tokens after the last task
    (from the layer-mean share matrices of a routing summary)."""
    return ci_cell([float(np.mean(np.asarray(stages[-1])[0, 1:])) for stages in entry["mean_share"]])


def _texts(summary: dict) -> list[int] | None:
    """Probe texts per task (summaries before ``texts_per_task`` was recorded: None; checked by :func:`problem`)."""
    return summary.get("texts_per_task")


def _probe_note(summaries) -> str:
    counts = sorted({c for s in summaries for c in (_texts(s) or [s.get("per_task")]) if isinstance(c, int)})
    if not counts:
        return ""
    return (f" Real tokens of {counts[0]} test texts per task." if len(counts) == 1 else
            f" Real tokens of {counts[0]}–{counts[-1]} test texts per task (fewer where a task has fewer).")


def _even(summaries) -> str:
    """'25 %' or '25 % (4 tasks), 6.7 % (15 tasks)' when the runs differ in their number of tasks."""
    ns = sorted({len(s["run"]["tasks"]) for s in summaries})
    return f"{100 / ns[0]:.3g} %" if len(ns) == 1 else ", ".join(f"{100 / n:.3g} % ({n} tasks)" for n in ns)


def shares_table(*summaries: dict, method: str = "moram") -> str:
    """The paper's Fig. 3 as numbers, one table per run: the share of Σw (in %, mean ± 95 % CI over seeds) that
    each task's atoms (rows) take on each task's tokens (columns) after the last task, mean over the adapted
    layers; then, if recorded, per text: the % of each task's texts whose weight (summed over its tokens) goes
    mostly to each task's atoms. ValueError if a summary fails :func:`problem` (e.g. has no ``method``)."""
    if not summaries:
        raise ValueError("no text-cl-routing summaries given")
    for s in summaries:
        why = problem(s, need=method)
        if why:
            raise ValueError(f"the routing summary {why}")
    out = []
    for s, label in zip(summaries, run_labels([s["run"] for s in summaries])):
        entry, names, n = s["methods"][method], s["run"]["tasks"], len(s["run"]["tasks"])
        last = np.array([np.asarray(stages[-1], float) for stages in entry["mean_share"]])  # seed × atoms × tokens
        out += [f"**{label}, {LABELS[method]}: share of Σw after the last task, % "
                f"(an even spread: {100 / n:.3g})**", "",
                "| atoms of ↓ / tokens of → | " + " | ".join(names) + " |", "|---|" + "---|" * n]
        for g, row in enumerate(names):
            cells = [ci_cell(last[:, g, d]) for d in range(n)]
            out.append(f"| {row} | " + " | ".join(_cell(c, g == d) for d, c in enumerate(cells)) + " |")
        out.append("")
        if entry.get("text_routing"):
            out += _text_table(entry["text_routing"], names, _texts(s))
    return "\n".join(out) + (
        "\nMean ± 95 % CI over seeds; each seed's value is the mean over the adapted layers. Bold: a task's own "
        "atoms on its own tokens. A column sums to 100. Per-text tables: % of each task's probe texts over all "
        "seeds whose weight goes mostly to each task's atoms, and the % that δ silenced entirely; a row sums to "
        f"100; by chance a cell would hold {_even(summaries)}. Command: `moram-ref text-cl-routing <run folder>`.")


def _text_table(routed, names: list[str], texts: list[int] | None) -> list[str]:
    counts = np.sum(np.asarray(routed, float), axis=0)  # tasks × tasks, summed over seeds
    total = (np.asarray(texts, float) * len(routed) if texts is not None else counts.sum(axis=1))
    lines = [f"*Per text:* which task's atoms take most of a text's weight, % of each task's texts "
             f"({int(total.sum())} texts over {len(routed)} seed{'' if len(routed) == 1 else 's'}):", "",
             "| texts of ↓ / mostly on atoms of → | " + " | ".join(names) + " | silenced by δ |",
             "|---|" + "---|" * (len(names) + 1)]
    for g, row in enumerate(names):
        if total[g] == 0:  # an older summary without texts_per_task, all of this task's texts silenced
            lines.append(f"| {row} | " + " | ".join("—" for _ in names) + " | — (no text counted) |")
            continue
        pct = 100 * counts[g] / total[g]
        silenced = 100 * (total[g] - counts[g].sum()) / total[g]
        lines.append(f"| {row} | " + " | ".join(f"**{v:.0f}**" if g == h else f"{v:.0f}" for h, v in enumerate(pct))
                     + f" | {silenced:.0f} |")
    return [*lines, ""]


def routing_table(*summaries: dict) -> str:
    """Rows: run × method (``text-cl-routing``'s ``routing_summary.json``); shares in %, atoms as counts.
    ValueError if a summary fails :func:`problem`."""
    if not summaries:
        raise ValueError("no text-cl-routing summaries given")
    lines = ["| run | method | " + " | ".join(t for _, t in COLUMNS)
             + " | first task's atoms' share on later tasks' tokens | texts mostly on their own task's atoms"
             " | atoms for 99 % of Σw |",
             "|---|---|" + "---|" * (len(COLUMNS) + 3)]
    for s in summaries:
        why = problem(s)
        if why:
            raise ValueError(f"the routing summary {why}")
    # the run record holds the settings, encoder and tasks it reads
    for s, label in zip(summaries, run_labels([s["run"] for s in summaries])):
        for method, entry in s["methods"].items():
            c = entry["summary"]
            a99 = c["atoms99"]
            lines.append(f"| {label} | {LABELS[method]} | " + " | ".join(_cell(c[k], False) for k, _ in COLUMNS)
                         + f" | {_cell(first_task_share(entry), False)}"
                         + f" | {_cell(c['text_own'], False) if 'text_own' in c else 'not recorded'}"
                         + f" | {a99['mean']:.2f}" + ("" if a99["ci95"] is None else f" ± {a99['ci95']:.2f}") + " |")
    ns = sorted({len(s["run"]["tasks"]) for s in summaries})
    earlier = ", ".join(f"{100 * np.mean([t / (t + 1) for t in range(1, n)]):.1f} %"
                        + ("" if len(ns) == 1 else f" ({n} tasks)") for n in ns)
    return "\n".join(lines) + (
        "\n\nShares of the weight Σw on a task's tokens, in %: mean ± 95 % CI over seeds; each seed's value is the "
        "mean over the adapted layers, after the last task (the earlier atoms' share on a new task's tokens: right "
        f"after each task t ≥ 2, mean over t). An even spread over the tasks' atoms would give each task's atoms "
        f"{_even(summaries)} of a token's weight, and the earlier atoms {earlier} of a new task's "
        "(t − 1 of t tasks, mean over t). *Texts mostly on their own task's atoms*: the share of the probe texts "
        "whose weight, summed over their tokens (mean over layers), goes most to their own task's atoms, after the "
        f"last task (texts δ silenced entirely count as not); by chance {_even(summaries)}.{_probe_note(summaries)} "
        "Command: `moram-ref text-cl-routing <run folder>`.")
