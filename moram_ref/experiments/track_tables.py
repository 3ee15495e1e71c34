"""``moram-ref report --table clip|llm``: a CLIP or LLM run's ``summary.json`` as Markdown tables.

A run prints its table when it ends; this renders the same numbers again, later, as Markdown — one row per
method (the metrics of spec §6, recomputed here from the accuracy matrices the file holds, and checked
against the values the run stored beside them), then each method's matrix — so a GPU run's results go
into a document with ``report --table clip runs/xtail/summary.json --write docs/results.md``, never typed.
Several files (runs of one setting with other seeds) give the mean over the runs and its 95 % Student-t
half-width per cell (``metrics.confidence_interval``). The run's settings come from the ``config.json``
its run folder keeps beside ``summary.json`` (a copied summary without it is rendered without them).

Every file is checked before anything is rendered; a problem names the file and the field.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from moram_ref import metrics
from moram_ref.experiments import rundir
from moram_ref.experiments.cliargs import MAX_SEED
from moram_ref.experiments.toy.demo import ci_note, seeds_phrase
from moram_ref.experiments.toy.results_check import _number as finite_number
from moram_ref.experiments.toy.results_check import names_problem, short_repr

# What each track's table shows: (the metric's key in summary.json, its column header).
COLUMNS = {
    "clip": (("transfer", "Transfer"), ("average", "Average"), ("last", "Last"), ("bwt", "BWT"),
             ("forgetting", "forgetting")),
    "llm": (("op", "OP"), ("bwt", "BWT"), ("forgetting", "BWT (clipped, paper's positive)")),
}
BENCHMARKS = {"xtail": "X-TAIL", "mtil": "MTIL"}  # the rest (the LLM sequences) are written in capitals
# Settings that may differ between runs averaged together (the seed is what several runs are for).
MAY_DIFFER = {"seed", "data_root", "classnames_json", "templates_json"}
TOLERANCE = 1e-6  # stored metric vs the one recomputed from the matrix, in points (%): JSON keeps 17 digits


def labels(track: str) -> dict[str, str]:
    """The methods a track runs and the names its table gives them (the run's own labels)."""
    if track == "clip":
        from moram_ref.experiments.clip.run import LABELS  # noqa: PLC0415  (argparse and NumPy only)
    else:
        from moram_ref.experiments.llm.run import LABELS  # noqa: PLC0415
    return LABELS


def track_of(summary: Any) -> str | None:
    """``"clip"`` or ``"llm"`` for a run's summary.json (LLM runs store OP, CLIP runs Transfer), else None."""
    if not (isinstance(summary, dict) and summary and all(isinstance(v, dict) for v in summary.values())):
        return None
    kinds = {"llm" if "op" in v else "clip" if "transfer" in v else None for v in summary.values()}
    return kinds.pop() if len(kinds) == 1 else None


def recomputed(track: str, matrix: np.ndarray) -> dict[str, float]:
    """The table's metrics (in points) from an accuracy matrix in percent (spec §6, ``moram_ref.metrics``)."""
    m = metrics.summary(matrix / 100) if track == "clip" else {
        "op": metrics.op(matrix / 100), "bwt": metrics.bwt(matrix / 100), "bwt_clipped": metrics.bwt_clipped(matrix / 100)}
    m["forgetting"] = -m["bwt_clipped"] + 0.0
    return {k: 100 * v for k, v in m.items()}


def problem(summary: Any, track: str) -> str | None:
    """Why ``summary`` (a parsed summary.json) cannot be ``track``'s table, or None. Messages follow the file."""
    other = track_of(summary)
    if other is not None and other != track:
        return f"is the summary.json of a `moram-ref {other}` run: pass --table {other}"
    if other is None:
        return (f"is not the summary.json of a `moram-ref {track}` run (an object {{method: {{units, tasks, matrix, "
                f"{COLUMNS[track][0][0]}, …}}}})")
    known = labels(track)
    tasks = None
    for method, entry in summary.items():
        where = f"method {short_repr(method)}"
        its = f"{where}: its"
        if method not in known:
            return f"has {where}: `moram-ref {track}` runs {', '.join(known)}"
        if entry.get("units") != "percent":
            return f"has {where} in units {short_repr(entry.get('units'))}: expected 'percent'"
        if (why := names_problem(f"{where}: tasks", entry.get("tasks"))) is not None:
            return why
        if tasks is not None and entry["tasks"] != tasks:
            return f"has {where} on tasks {short_repr(entry['tasks'])}, another method on {short_repr(tasks)}"
        tasks = entry["tasks"]
        if (why := _matrix_problem(track, entry.get("matrix"), len(tasks))) is not None:
            return f"has {its} matrix {why}"
        matrix = np.array(entry["matrix"], dtype=float)
        for key, value in recomputed(track, matrix).items():
            stored = entry.get(key)
            if key == "forgetting" and track == "llm":
                continue  # the LLM run stores bwt_clipped only
            undefined = stored is None or (isinstance(stored, float) and math.isnan(stored))
            if undefined and math.isnan(value):
                continue  # undefined (one task) is written as null
            if isinstance(stored, bool) or not isinstance(stored, (int, float)) or not abs(stored - value) <= TOLERANCE:
                return (f"has {its} {key} = {short_repr(stored)}, but its matrix gives {value:.6g}: the file "
                        "was edited or is damaged")
    return None


def _matrix_problem(track: str, matrix: Any, n: int) -> str | None:
    """A ``n × n`` list of scores in [0, 100]; an LLM run's entries above the diagonal are null (not evaluated)."""
    if not (isinstance(matrix, list) and len(matrix) == n and all(isinstance(r, list) and len(r) == n for r in matrix)):
        return f"is not {n} × {n} (one row and column per task)"
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if track == "llm" and j > i:  # a task not learned yet is not evaluated: the run writes null
                if v is not None:
                    return f"has [{i}][{j}] = {short_repr(v)}: above the diagonal an LLM run writes null (not evaluated)"
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
                return f"has [{i}][{j}] = {short_repr(v)}: expected a score in [0, 100]"
    return None


def read_run(path: Path, summary: dict) -> dict:
    """A summary and its run's record: ``config.json`` beside it, parsed (None when there is none: a summary
    copied out of its run folder), or the reason it cannot be read (``config_error``)."""
    record, error = None, None
    beside = Path(path).resolve().parent / "config.json"  # beside the file itself (a link's target)
    if beside.exists() or beside.is_symlink():
        try:
            record = json.loads(rundir.read_results_text(beside), object_pairs_hook=rundir.unique_keys)
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bytes, not a file
            error = f"cannot be read ({' '.join(str(exc).split())[:200]})"
    return {"path": str(path), "summary": summary, "config": record, "config_error": error}


def _count(low: int, high: int | None = None) -> Any:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)


def _number(low: float, open_low: bool = True) -> Any:
    return lambda v: finite_number(v) and (v > low if open_low else v >= low)


def _name_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, str) and bool(v.strip()))


def _shown(name: Any) -> str:
    """A model name or path as a table note can show it: one line, ``|`` escaped, ``&``, ``<`` and ``>`` as
    HTML entities (a Markdown page would render a tag, or end a generated block at a comment marker), a long
    path shortened to its end."""
    text = " ".join(str(name).split())
    text = text if len(text) <= 100 else "…" + text[-80:]
    return html.escape(text, quote=False).replace("|", "\\|")


def _settings_rules(track: str) -> dict[str, tuple[Any, str]]:
    """Each setting the table reads or compares: (its test, what it must be)."""
    from moram_ref.experiments.llm.data import SEQUENCES  # noqa: PLC0415

    common = {"lr": (_number(0), "a finite number > 0"), "seed": (_count(0, MAX_SEED), f"an integer in [0, {MAX_SEED}]"),
              "batch": (_count(1), "an integer ≥ 1"), "atoms_per_task": (_count(1), "an integer ≥ 1"),
              "top_k": (_count(1), "an integer ≥ 1"), "temperature": (_number(0), "a finite number > 0"),
              "threshold": (lambda v: _number(-1, open_low=False)(v) and v <= 1, "a number in [-1, 1]"),
              "model": (_name_or_none, "null or a non-empty name"),
              "methods": (lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v), "a list of methods")}
    if track == "clip":
        return {**common,
                "benchmark": (lambda v: isinstance(v, str) and v in BENCHMARKS, f"one of {sorted(BENCHMARKS)}"),
                "order": (lambda v: v is None or v in ("1", "2"), "null, '1' or '2'"),
                "tiny": (lambda v: isinstance(v, bool), "true or false"),
                "pretrained": (_name_or_none, "null or a non-empty name"),
                "shots": (_count(0), "an integer ≥ 0"), "iterations": (_count(1), "an integer ≥ 1"),
                "datasets": (lambda v: v is None or (isinstance(v, list) and all(isinstance(d, str) for d in v)),
                             "null or a list of data set names")}
    return {**common,
            "benchmark": (lambda v: isinstance(v, str) and v in SEQUENCES, f"one of {sorted(SEQUENCES)}"),
            "tiny": (lambda v: v is None or (isinstance(v, str) and v in ("llama", "qwen2", "gemma")),
                     "null, 'llama', 'qwen2' or 'gemma'"),
            "epochs": (lambda v: v is None or _count(1)(v), "null or an integer ≥ 1")}

def config_problem(run: dict, track: str) -> str | None:
    """Why the record beside a summary cannot describe it (another command's, a field of the wrong type, other
    data sets or methods than the summary's), or None (also when there is no record)."""
    where = Path(run["path"]).parent / "config.json"
    if run["config_error"] is not None:
        return f"{where} (beside {run['path']}) {run['config_error']}"
    record = run["config"]
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        return f"{where} (beside {run['path']}) is not a run's record: expected an object with its settings"
    if record.get("command") != track:
        return (f"{where} (beside {run['path']}) is the record of a run of {short_repr(record.get('command'))}, "
                f"not of `moram-ref {track}`")
    settings = record["settings"]
    for key, (ok, what) in _settings_rules(track).items():
        if key not in settings or not ok(settings[key]):
            shown = short_repr(settings[key]) if key in settings else "missing"
            return f"{where} has settings.{key} = {shown}: expected {what}"
    tasks = next(iter(run["summary"].values()))["tasks"]
    chosen = settings.get("datasets")
    if track == "clip" and isinstance(chosen, list) and chosen != tasks:
        return f"{where} has settings.datasets = {short_repr(chosen)}, but {run['path']} is on tasks {short_repr(tasks)}"
    ran = (record.get("info") or {}).get("tasks") if isinstance(record.get("info"), dict) else None
    if track == "llm" and isinstance(ran, list) and ran != tasks:
        return f"{where} has info.tasks = {short_repr(ran)}, but {run['path']} is on tasks {short_repr(tasks)}"
    if track == "llm" and settings["tiny"] is None and settings["model"] is None:
        return f"{where} has settings.tiny = null and settings.model = null: a run has one of the two (--tiny, --model)"
    missing = [m for m in run["summary"] if m not in settings["methods"]]
    if missing:
        return f"{where} has settings.methods = {short_repr(settings['methods'])}, but {run['path']} holds {missing}"
    return None


def runs_problem(runs: list[dict], track: str) -> str | None:
    """Why these runs cannot be averaged into one table (methods, tasks or settings differ), or None."""
    first = runs[0]
    for run in runs:
        if why := config_problem(run, track):
            return why
    seen: dict = {}
    for run in runs:  # one run counted twice would shrink the interval as if it were two
        info = Path(run["path"]).stat()
        where = (info.st_dev, info.st_ino)  # the same file by any path: a symlink, '..', a hard link
        if where in seen:
            return f"{run['path']} is given twice ({seen[where]}): several files are different runs, averaged"
        seen[where] = run["path"]
    unknown = [r for r in runs if r["config"] is None]
    for i, run in enumerate(runs):
        for other in runs[i + 1:]:
            if (run in unknown or other in unknown) and run["summary"] == other["summary"]:
                return (f"{run['path']} and {other['path']} hold the same results, and no record says they are runs "
                        "of different seeds: one run counted twice would shrink the interval")
    for run in runs[1:]:
        if list(run["summary"]) != list(first["summary"]):
            return (f"{run['path']} has methods {list(run['summary'])}, {first['path']} {list(first['summary'])}: "
                    "several files are runs of one setting, averaged")
        here, there = (next(iter(r["summary"].values()))["tasks"] for r in (run, first))
        if here != there:
            return f"{run['path']} is on tasks {here}, {first['path']} on {there}"
    known = [r for r in runs if r["config"] is not None]
    for run in known[1:]:
        a, b = known[0]["config"]["settings"], run["config"]["settings"]
        differ = sorted(k for k in set(a) | set(b) if k not in MAY_DIFFER and a.get(k) != b.get(k))
        if differ:
            k = differ[0]
            return (f"{run['path']} was run with {k} = {short_repr(b.get(k))}, {known[0]['path']} with "
                    f"{short_repr(a.get(k))}: only runs that differ in their seed are averaged")
    seeds: dict = {}
    for run in runs:
        seed = run["config"]["settings"].get("seed") if run["config"] is not None else None
        if isinstance(seed, int) and not isinstance(seed, bool):
            if seed in seeds:
                return (f"{run['path']} and {seeds[seed]} were both run with seed {seed}: the same run twice would "
                        "shrink the interval; several files are runs with other --seeds, averaged")
            seeds[seed] = run["path"]
    return None


def table(track: str, *runs: dict) -> str:
    """The Markdown tables of one or more checked runs (:func:`problem`, :func:`runs_problem`)."""
    names = labels(track)
    first = runs[0]["summary"]
    tasks = next(iter(first.values()))["tasks"]
    lines = [f"| method | {' | '.join(h for _, h in COLUMNS[track])} |", "|---|" + "---|" * len(COLUMNS[track])]
    values = {m: [recomputed(track, np.array(r["summary"][m]["matrix"], dtype=float)) for r in runs] for m in first}
    for method, per_run in values.items():
        lines.append(f"| {names[method]} | " + " | ".join(_cell([v[k] for v in per_run]) for k, _ in COLUMNS[track])
                     + " |")
    what = "accuracy" if track == "clip" else "score"
    for method in first:
        mean = np.mean([np.array(r["summary"][method]["matrix"], dtype=float) for r in runs], axis=0)
        lines += ["", f"{names[method]}: {what} (%) after each task (rows) on each task (columns)"
                  f"{'' if len(runs) == 1 else f', mean over {len(runs)} runs'}", "",
                  "| after \\ on | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        lines += [f"| {t} | " + " | ".join("·" if np.isnan(v) else f"{v:.1f}" for v in row) + " |"
                  for t, row in zip(tasks, mean)]
    return "\n".join(lines) + "\n\n" + _note(track, runs)


def _cell(values: list[float]) -> str:
    """One cell: the run's value, or the mean ± 95 % half-width over runs; ``—`` where undefined (one task)."""
    if any(math.isnan(v) for v in values):
        return "—"
    mean, half = metrics.confidence_interval(np.array(values))
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {half:.1f}"


def _note(track: str, runs: list[dict]) -> str:
    """What the cells are and which runs they come from."""
    known = [r["config"]["settings"] for r in runs if r["config"] is not None]
    cells = ("the one run's values" if len(runs) == 1
             else f"mean ± 95 % CI half-width over {len(runs)} runs ({ci_note(len(runs), 'runs')})")
    text = f"Cells: {cells}, in points (%); metrics of spec §6, recomputed from the matrices."
    if len(known) == len(runs):
        text = f"{seeds_phrase([s.get('seed') for s in known], runs=None)}. " + text
        text = f"{describe(track, known[0])}. " + text
    else:
        text += (" (No config.json beside the file: the run's settings are unknown.)" if len(runs) == 1 else
                 f" ({len(runs) - len(known)} of the {len(runs)} files have no config.json beside them: their settings "
                 "are unknown.)")
    return text




def describe(track: str, s: dict) -> str:
    """The settings of a run in words, from its config.json's ``settings``; a CLIP run's with the paper's
    figures for scale (``clip.run.PAPER``)."""
    bench = BENCHMARKS.get(s.get("benchmark"), str(s.get("benchmark")).upper())
    core = (f"lr {s.get('lr'):g}" if isinstance(s.get("lr"), (int, float)) else f"lr {s.get('lr')}") + (
        f", MoRAM r = {s.get('atoms_per_task')}, k = {s.get('top_k')}, τ = {s.get('temperature')}, "
        f"δ = {s.get('threshold')}")
    if track == "clip":
        from moram_ref.experiments.clip.run import PAPER  # noqa: PLC0415

        tiny = bool(s.get("tiny"))
        backbone = ("a tiny random CLIP" if tiny else f"{_shown(s.get('model') or 'ViT-B-16')} ({_shown(s.get('pretrained') or 'openai')})")
        chosen = s.get("datasets")
        order = (f" ({', '.join(map(str, chosen))})" if isinstance(chosen, list) and chosen
                 else f" order {s.get('order') or '1'}" if s.get("benchmark") == "mtil" else "")
        shots = f"{s['shots']}-shot" if s.get("shots") else "full training sets"
        paper = PAPER.get(s.get("benchmark"))
        scale = "" if paper is None else (f" (--tiny: a pipeline check whose numbers mean nothing; for scale only, the {paper})"
                                          if tiny else f" ({paper})")
        return (f"{bench}{order}, {backbone}, {shots}, {s.get('iterations')} iterations of batch {s.get('batch')} "
                f"per task, {core}{scale}")
    backbone = (f"a tiny random {s.get('tiny')} decoder (--tiny: a pipeline check whose numbers mean nothing)"
                if s.get("tiny") else _shown(s.get("model")))
    epochs = s.get("epochs")
    return (f"{bench}, {backbone}, {epochs} epoch{'' if epochs == 1 else 's'} per task, batch {s.get('batch')}, "
            f"{core}")
