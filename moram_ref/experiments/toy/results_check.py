"""The NumPy runs' results files (``moram-ref demo`` and ``moram-ref ablation``), checked before a table is
rendered from them: ``moram-ref report`` names the field that a hand edit or a damaged file got wrong,
rather than rendering ``nan``, ``± inf`` or a count of seeds the file does not hold.

Each ``*_problem`` returns None for a well-formed file, else why not, in words that name the field
(``streams.recall.summary.moram.last.ci95 is -0.01: …``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from moram_ref import provenance
from moram_ref.provenance import short_repr
from moram_ref.experiments.toy.demo import METRICS


def _number(value: Any) -> bool:
    """A finite int or float (not a bool; an int too large for a float is not one)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def seeds_problem(results: dict) -> str | None:
    """``seeds``: a non-empty list of distinct integers (the runs each row is over)."""
    seeds = results.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        return f"has seeds {short_repr(seeds)}: expected a non-empty list of the run's seeds"
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        return f"has seeds {short_repr(seeds)}: expected distinct integers"
    return None


def cell_problem(where: str, cell: Any, n_seeds: int, low: float = -1.0, high: float = 1.0) -> str | None:
    """A ``{"mean", "ci95"}`` cell in fractions: a finite mean in [low, high]; a 95 % CI half-width that is
    finite and ≥ 0 over several seeds, None over one (no interval from one run)."""
    if not isinstance(cell, dict) or "mean" not in cell or "ci95" not in cell:
        return f"has {where} = {short_repr(cell)}: expected {{'mean': …, 'ci95': …}}"
    mean, half = cell["mean"], cell["ci95"]
    if not _number(mean) or not low <= mean <= high:
        return f"has {where}.mean = {short_repr(mean)}: expected a number from {low:g} to {high:g} (fractions, not %)"
    if n_seeds == 1 and half is not None:
        return f"has {where}.ci95 = {short_repr(half)} over one seed: one run gives no interval (null expected)"
    if n_seeds > 1 and (not _number(half) or half < 0):
        return f"has {where}.ci95 = {short_repr(half)}: expected a half-width ≥ 0 over {n_seeds} seeds"
    return None


def _runs_problem(where: str, runs: Any, n_seeds: int) -> str | None:
    if not isinstance(runs, list) or len(runs) != n_seeds or not all(isinstance(r, dict) for r in runs):
        count = len(runs) if isinstance(runs, list) else type(runs).__name__
        return f"has {where} with {count} run(s) for {n_seeds} seed(s): one run per seed expected"
    return None


def environment_problem(results: dict) -> str | None:
    """``environment`` (optional): what :func:`provenance.numpy_environment` records."""
    if "environment" not in results:
        return None
    why = provenance.problem(results["environment"])
    return None if why is None else f"has environment {why}"


def _first_problem(results: dict, problems: Callable[[dict, int], Iterator[str]]) -> str | None:
    """Seeds and environment first (the rest counts runs per seed), then the first of ``problems``."""
    if not isinstance(results, dict):
        return f"holds a JSON {type(results).__name__}, not a results object"
    why = seeds_problem(results) or environment_problem(results)
    return why or next(problems(results, len(results["seeds"])), None)


def _demo_problems(results: dict, n: int) -> Iterator[str]:
    streams = results.get("streams")
    if not isinstance(streams, dict) or not streams:
        yield "has no streams: expected the runs of at least one stream"
        return
    for name, res in streams.items():
        if not isinstance(res, dict) or not isinstance(res.get("summary"), dict) or not res["summary"]:
            yield f"has streams.{name} without a summary of its methods"
            return
        ran = set(res.get("methods") or {}) if isinstance(res.get("methods"), dict) else set()
        if ran != set(res["summary"]):
            yield (f"has streams.{name}.summary for {sorted(res['summary'])} but runs of {sorted(ran)}: a table "
                   "row would be missing or empty")
            return
        for method, cells in res["summary"].items():
            if not isinstance(cells, dict):
                yield f"has streams.{name}.summary.{method} = {short_repr(cells)}: expected a cell per metric"
                return
            runs = res.get("methods", {}).get(method) if isinstance(res.get("methods"), dict) else None
            yield from filter(None, [_runs_problem(f"streams.{name}.methods.{method}", runs, n)])
            for key in METRICS:
                low = -1.0 if key in ("bwt", "forgetting") else 0.0
                yield from filter(None, [cell_problem(f"streams.{name}.summary.{method}.{key}", cells.get(key), n, low)])


def _ablation_problems(results: dict, n: int) -> Iterator[str]:
    steps = results.get("steps_override")
    if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
        yield f"has steps_override {short_repr(steps)}: expected null or a number of steps"
    for name, res in (results.get("streams") or {}).items():
        for key, setting in (res.get("runs") or {}).items() if isinstance(res, dict) else ():
            runs = setting.get("runs") if isinstance(setting, dict) else setting
            yield from filter(None, [_runs_problem(f"streams.{name}.runs.{key}.runs", runs, n)])
    takeover = results.get("takeover")
    if "takeover" in (results.get("studies") or []) and not (isinstance(takeover, dict) and takeover.get("cells")):
        yield "has no takeover.cells although its studies include takeover"
    for i, cell in enumerate(takeover.get("cells", []) if isinstance(takeover, dict) else []):
        where = f"takeover.cells[{i}]"
        yield from filter(None, [_runs_problem(f"{where}.runs", cell.get("runs") if isinstance(cell, dict) else cell, n)])
        for key in ("newest", "own", "last"):  # the cells in % of the takeover table
            summary = cell.get("summary") if isinstance(cell, dict) and isinstance(cell.get("summary"), dict) else {}
            yield from filter(None, [cell_problem(f"{where}.summary.{key}", summary.get(key), n, 0.0)])


def demo_problem(results: dict) -> str | None:
    """The main job's ``results.json``: seeds, the environment, every stream's summary cells and runs."""
    return _first_problem(results, _demo_problems)


def ablation_problem(results: dict) -> str | None:
    """The ablation's ``results.json``: seeds, the environment, one run per seed in every setting."""
    return _first_problem(results, _ablation_problems)
