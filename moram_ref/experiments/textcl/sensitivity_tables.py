"""Reading ``text-cl-sensitivity`` files (``sensitivity.json``) as a table.

``moram-ref report SENSITIVITY.json [SENSITIVITY.json …] --table textcl-sensitivity`` renders, per run, one
row per probed (method, τ): how far apart the reference and the nudged copy's adapters are after step 1,
after step 10 and after each of the first and the last trained task (relative distance); the share of test
predictions that differ; for MoRAM variants the share of (token, layer) pairs whose kept atom set differs;
whether the reference reproduced the recorded run. :func:`problem` checks the file first, so that a damaged
or hand-edited file is named, never silently misread. Importable without torch.
"""

from __future__ import annotations

import math

from moram_ref.experiments.textcl.routing_tables import _count, _number
from moram_ref.experiments.textcl.tables import LABELS, count_words, run_labels, valid_counts

ROUTED = ("dense_moram", "moram")


def _fraction(x) -> bool:
    return _number(x, 0.0, 1.0)


def _finite(x) -> bool:
    """A real number ≥ 0 (an integer beyond any float is not)."""
    return _number(x, 0.0, math.inf)


def problem(data) -> str | None:
    """Why ``data`` cannot feed the sensitivity table (None if it can)."""
    if not isinstance(data, dict) or data.get("kind") != "text-cl sensitivity":
        return "is not a text-cl-sensitivity sensitivity.json"
    run = data.get("run")
    if not isinstance(run, dict) or not all(isinstance(run.get(k), dict) for k in ("settings", "encoder")):
        return "has no 'run' record with 'settings' and 'encoder'"
    if not isinstance(run["settings"].get("sequence"), str) or not isinstance(run.get("tasks"), list):
        return "records a run without a sequence name or a list of tasks"
    n, steps = data.get("tasks_trained"), data.get("steps")
    if not (_count(n, 1) and n <= len(run["tasks"])):
        return f"records tasks_trained {n!r}: expected a whole number from 1 to the run's {len(run['tasks'])} tasks"
    if not (isinstance(steps, list) and steps and all(_count(s, 1) for s in steps) and steps == sorted(set(steps))):
        return f"records steps {steps!r}: expected increasing whole numbers ≥ 1"
    if not (_count(data.get("seed")) and _finite(data.get("epsilon")) and 0 < data["epsilon"] <= 0.5):
        return f"records seed {data.get('seed')!r} / epsilon {data.get('epsilon')!r}: expected a seed ≥ 0 and 0 < ε ≤ 0.5"
    if not valid_counts(data.get("threads_used")):
        return f"records threads_used {data.get('threads_used')!r}: expected thread counts in increasing order"
    probes = data.get("probes")
    if not isinstance(probes, list) or not probes:
        return "records no probes"
    seen = set()
    for i, p in enumerate(probes):
        where = f"probe {i}"
        method = p.get("method") if isinstance(p, dict) else p
        if not isinstance(method, str) or method not in LABELS or method == "zero_shot":
            return f"records {where} of method {method!r}: expected one of {', '.join(m for m in LABELS if m != 'zero_shot')}"
        if not (_finite(p.get("temperature")) and p["temperature"] > 0):
            return f"records {where} with temperature {p.get('temperature')!r}: expected a number > 0"
        if (method, p["temperature"]) in seen:
            return f"records {where}, {method} at τ {p['temperature']:g}, twice"
        seen.add((method, p["temperature"]))
        distance = p.get("distance")
        if not (isinstance(distance, list) and len(distance) == n * len(steps)):
            return f"records {where} with {len(distance) if isinstance(distance, list) else distance!r} distances: " \
                   f"expected {n * len(steps)} (tasks × recorded steps)"
        bad = next((j for j, d in enumerate(distance) if not _finite(d)), None)
        if bad is not None:
            return f"records {where} with distance {distance[bad]!r} at position {bad}: expected a number ≥ 0"
        for key in ("predictions_differ", "accuracy_gap"):
            v = p.get(key)
            if not (isinstance(v, list) and len(v) == n and all(_fraction(x) for x in v)):
                return f"records {where} with {key} {v!r}: expected {n} fractions, one per trained task"
        kept = p.get("kept_differ")
        want = n if p["method"] in ROUTED else 0
        if not (isinstance(kept, list) and len(kept) == want and all(_fraction(x) for x in kept)):
            return f"records {where} with kept_differ {kept!r}: expected {want} fractions"
        if "reproduces" not in p or not any(p["reproduces"] is x for x in (True, False, None)):
            return f"records {where} with reproduces {p.get('reproduces', 'missing')!r}: expected true, false or null"
    return None


def _pct(x: float) -> str:
    """A share in % to one decimal; a share above 0 that rounds to 0.0 shows as <0.1 (it is not none)."""
    return "<0.1" if 0 < x < 0.0005 else f"{100 * x:.1f}"


def sensitivity_table(*files: dict) -> str:
    """Per run (one ``sensitivity.json`` each), the table of the module docstring. ValueError if a file
    fails :func:`problem`."""
    if not files:
        raise ValueError("no text-cl-sensitivity files given")
    for data in files:
        why = problem(data)
        if why:
            raise ValueError(f"the sensitivity file {why}")
    out = []
    for data, label in zip(files, run_labels([data["run"] for data in files])):
        steps, n = data["steps"], data["tasks_trained"]
        at10 = steps.index(10) if 10 in steps else None
        last = f"task {n}"
        header = ["method", "τ", "after step 1", *(["after step 10"] if at10 is not None else []), "after task 1",
                  *([f"after {last}"] if n > 1 else []), "predictions differ", "kept sets differ",
                  "reference = recorded run"]
        out += [f"**{label}, seed {data['seed']}, the first {n} task(s): a relative nudge of {data['epsilon']:.2g} "
                f"to task 1's fresh tensors** — the adapters' relative distance ‖θ′ − θ‖ / ‖θ‖, then the % of test "
                f"predictions (every task's) and of (token, layer) pairs' kept atom sets that differ, after task 1"
                + (f" / after {last}" if n > 1 else ""), "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for p in data["probes"]:
            d = p["distance"]
            per = len(steps)
            cells = [LABELS[p["method"]], f"{p['temperature']:g}" if p["method"] in ROUTED else "—", f"{d[0]:.1e}",
                     *([f"{d[at10]:.1e}"] if at10 is not None else []), f"{d[per - 1]:.1e}",
                     *([f"{d[-1]:.1e}"] if n > 1 else []),
                     " / ".join(_pct(x) for x in (p["predictions_differ"][0], p["predictions_differ"][-1])[: min(n, 2)]),
                     " / ".join(_pct(x) for x in (p["kept_differ"][0], p["kept_differ"][-1])[: min(n, 2)])
                     if p["kept_differ"] else "—",
                     {True: "yes", False: "**no**", None: "— (another τ)"}[p["reproduces"]]]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", f"Measured on {count_words(data['threads_used'])} (each pair on its recorded count)."
                + (f" {data['wall_seconds'] / 60:.0f} min in all." if _finite(data.get("wall_seconds")) else ""), ""]
    return "\n".join(out).rstrip() + "\n"
