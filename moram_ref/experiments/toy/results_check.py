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

import numpy as np

from moram_ref import metrics, provenance
from moram_ref.provenance import short_repr
from moram_ref.config import MoRAMConfig
from moram_ref.experiments.cliargs import MAX_SEED
from moram_ref.experiments.toy.ablation import STUDIES
from moram_ref.experiments.toy.demo import METRICS

UNITS = "fractions in [0, 1]"  # what the runs write under "units"
# The largest magnitude any recorded quantity may have (counts of atoms, key norms and their ratios are far
# smaller): beyond it a file is damaged, and the tables' sums and ×100 would overflow to inf.
BIG = 1e6
LOW = {"bwt": -1.0, "forgetting": -1.0}  # metrics that can be negative (fractions); the others start at 0


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
    if (not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds)
            or len(set(seeds)) != len(seeds)):
        return f"has seeds {short_repr(seeds)}: expected distinct integers from 0 to {MAX_SEED} (what --seed takes)"
    return None


def cell_problem(where: str, cell: Any, n_seeds: int, low: float = -1.0, high: float = 1.0) -> str | None:
    """A ``{"mean", "ci95"}`` cell: a finite mean in [low, high] (bounds beyond ±``BIG`` are ±``BIG``); a 95 %
    CI half-width from 0 to the width of that range over several seeds, None over one (no interval from one run)."""
    low, high = max(low, -BIG), min(high, BIG)
    if not isinstance(cell, dict) or "mean" not in cell or "ci95" not in cell:
        return f"has {where} = {short_repr(cell)}: expected {{'mean': …, 'ci95': …}}"
    mean, half = cell["mean"], cell["ci95"]
    if not _number(mean) or not low <= mean <= high:
        return (f"has {where}.mean = {short_repr(mean)}: expected a number from {low:g} to {high:g}"
                + (" (fractions, not %)" if high == 1 else ""))
    if n_seeds == 1 and half is not None:
        return f"has {where}.ci95 = {short_repr(half)} over one seed: one run gives no interval (null expected)"
    if n_seeds > 1 and (not _number(half) or not 0 <= half <= widest_half_width(n_seeds, low, high) * (1 + 1e-9)):
        return (f"has {where}.ci95 = {short_repr(half)}: expected a half-width ≥ 0 over {n_seeds} seeds, at most "
                f"{widest_half_width(n_seeds, low, high):.4g} (the widest that {n_seeds} values from {low:g} to "
                f"{high:g} give)")
    return None


def widest_half_width(n: int, low: float, high: float) -> float:
    """The widest 95 % Student-t half-width :func:`metrics.confidence_interval` gives for ``n`` values in
    [low, high]: half of them at each end (the largest sample variance)."""
    return metrics.confidence_interval(np.array([low] * (n // 2) + [high] * (n - n // 2), dtype=float))[1]


def number_problem(where: str, value: Any, low: float = -math.inf, high: float = math.inf) -> str | None:
    """A finite number from ``low`` to ``high``; bounds beyond ±``BIG`` are ±``BIG``."""
    low, high = max(low, -BIG), min(high, BIG)
    if not _number(value) or not low <= value <= high:
        return f"has {where} = {short_repr(value)}: expected a number from {low:g} to {high:g}"
    return None


def array_problem(where: str, value: Any, shape: tuple[int, ...], low: float = -math.inf,
                  high: float = math.inf) -> str | None:
    """Nested lists of the given ``shape`` whose entries pass :func:`number_problem`; the first bad entry
    is named by its index (``…share[2][0] = nan``)."""
    def walk(path: str, v: Any, dims: tuple[int, ...]) -> str | None:
        if not dims:
            return number_problem(path, v, low, high)
        if not isinstance(v, list) or len(v) != dims[0]:
            count = f"{len(v)} entries" if isinstance(v, list) else short_repr(v)
            return f"has {path} = {count}: expected a list of {dims[0]}"
        return next(filter(None, (walk(f"{path}[{i}]", x, dims[1:]) for i, x in enumerate(v))), None)

    return walk(where, value, shape)


TABLE_TEXT_RULE = ("printable characters on one line, without '|', '<', '>', '&' or '](', no space at either end, "
                   "at most 100 characters")


def table_text(value: Any) -> bool:
    """A string a Markdown table cell can show as it is (:data:`TABLE_TEXT_RULE`): ``|`` would split the cell,
    ``<`` and ``>`` make HTML a Markdown page renders (a tag) or a comment marker that could end a generated
    block early (``report --write``), ``&`` an entity a page shows as another character (``&lt;``), ``](`` a
    link or an image, a space at an end hides a difference between two names."""
    return (isinstance(value, str) and bool(value.strip()) and value == value.strip() and len(value) <= 100
            and not any(c in value for c in "|<>&\n\r") and "](" not in value and value.isprintable())


def _stream_name_problem(name: Any) -> str:
    return f"has a stream named {short_repr(name)}: expected a name a table can show ({TABLE_TEXT_RULE})"


def names_problem(where: str, value: Any) -> str | None:
    """A non-empty list of distinct names a table can show (:func:`table_text`): task or domain names."""
    if (not isinstance(value, list) or not value or not all(table_text(v) for v in value)
            or len(set(value)) != len(value)):
        return (f"has {where} = {short_repr(value)}: expected a non-empty list of distinct names ({TABLE_TEXT_RULE})")
    return None


def config_problem(results: dict) -> str | None:
    """``config`` (optional): the MoRAM settings of the run, as :class:`MoRAMConfig` accepts them."""
    if "config" not in results:
        return None
    try:
        MoRAMConfig.from_dict(results["config"])
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        return f"has config {short_repr(results['config'])}: not MoRAM settings ({exc})"
    return None


def units_problem(results: dict) -> str | None:
    """``units`` (optional): the cells are fractions; a file that says otherwise would print 100× off."""
    if "units" in results and results["units"] != UNITS:
        return f"has units {short_repr(results['units'])}: the tables read {UNITS!r}"
    return None


def _runs_problem(where: str, runs: Any, n_seeds: int) -> str | None:
    if not isinstance(runs, list) or len(runs) != n_seeds:
        count = len(runs) if isinstance(runs, list) else type(runs).__name__
        return f"has {where} with {count} run(s) for {n_seeds} seed(s): one run per seed expected"
    bad = next((i for i, r in enumerate(runs) if not isinstance(r, dict)), None)
    if bad is not None:
        return f"has {where}[{bad}] = {short_repr(runs[bad])}: expected a run's record (an object)"
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
    why = seeds_problem(results) or environment_problem(results) or config_problem(results) or units_problem(results)
    return why or next(problems(results, len(results["seeds"])), None)


def _metrics_problems(where: str, run: dict) -> Iterator[str]:
    """A run's ``metrics``: every one of :data:`METRICS`, a fraction (bwt and forgetting from -1)."""
    m = run.get("metrics")
    if not isinstance(m, dict):
        yield f"has {where}.metrics = {short_repr(m)}: expected an object with {', '.join(METRICS)}"
        return
    for key in METRICS:
        yield from filter(None, [number_problem(f"{where}.metrics.{key}", m.get(key), LOW.get(key, 0.0), 1.0)])


def _demo_problems(results: dict, n: int) -> Iterator[str]:
    streams = results.get("streams")
    if not isinstance(streams, dict) or not streams:
        yield "has no streams: expected the runs of at least one stream"
        return
    for name, res in streams.items():
        if not table_text(name):
            yield _stream_name_problem(name)
            return
        if not isinstance(res, dict) or not isinstance(res.get("summary"), dict) or not res["summary"]:
            yield f"has streams.{name} without a summary of its methods"
            return
        ran = set(res.get("methods") or {}) if isinstance(res.get("methods"), dict) else set()
        if ran != set(res["summary"]):
            yield (f"has streams.{name}.summary for {sorted(res['summary'])} but runs of {sorted(ran)}: a table "
                   "row would be missing or empty")
            return
        why = names_problem(f"streams.{name}.tasks", res.get("tasks"))
        if why:
            yield why
            return
        n_tasks = len(res["tasks"])
        labels = res.get("labels")
        for method in res["summary"]:
            label = labels.get(method) if isinstance(labels, dict) else None
            if not table_text(label):
                where = f"streams.{name}.labels" + (f".{method}" if isinstance(labels, dict) else "")
                yield (f"has {where} = {short_repr(label if isinstance(labels, dict) else labels)}: expected "
                       f"{'a row name (one line, no |)' if isinstance(labels, dict) else 'an object giving each method its row name'}")
                return
        for method, cells in res["summary"].items():
            if not isinstance(cells, dict):
                yield f"has streams.{name}.summary.{method} = {short_repr(cells)}: expected a cell per metric"
                return
            runs = res["methods"][method]
            yield from filter(None, [_runs_problem(f"streams.{name}.methods.{method}", runs, n)])
            for key in METRICS:
                yield from filter(None, [cell_problem(f"streams.{name}.summary.{method}.{key}", cells.get(key), n,
                                                      LOW.get(key, 0.0))])
            for j, run in enumerate(runs if isinstance(runs, list) else []):
                where = f"streams.{name}.methods.{method}[{j}]"
                yield from _metrics_problems(where, run)
                yield from filter(None, [array_problem(f"{where}.accuracy", run.get("accuracy"), (n_tasks, n_tasks),
                                                       0.0, 1.0)])
                if method == "moram":  # the table's note on silenced inputs
                    yield from filter(None, [number_problem(f"{where}.silent_fraction", run.get("silent_fraction"),
                                                            0.0, 1.0)])
        yield from _sweep_problems(f"streams.{name}.sweep", res.get("sweep"))


def _sweep_problems(where: str, sweep: Any) -> Iterator[str]:
    """The validation sweep of τ (or null): temperatures > 0, a validation Average in [0, 1] for each, and
    the chosen τ among them."""
    if sweep is None:
        return
    temps = sweep.get("temperatures") if isinstance(sweep, dict) else None
    if not isinstance(temps, list) or not temps:
        yield f"has {where} = {short_repr(sweep)}: expected null or an object with temperatures, validation_average, chosen"
        return
    yield from filter(None, [array_problem(f"{where}.temperatures", temps, (len(temps),), 1e-300)])
    yield from filter(None, [array_problem(f"{where}.validation_average", sweep.get("validation_average"),
                                           (len(temps),), 0.0, 1.0)])
    chosen = sweep.get("chosen")
    if not _number(chosen) or chosen not in temps:
        yield f"has {where}.chosen = {short_repr(chosen)}: expected one of the temperatures {short_repr(temps)}"


# The ablation table's cells per setting: (low, high) of each summary entry (fractions; atoms99 a count).
SETTING_CELLS = {"average": (0.0, 1.0), "last": (0.0, 1.0), "transfer": (0.0, 1.0), "forgetting": (-1.0, 1.0),
                 "atoms99": (0.0, math.inf), "own_share": (0.0, 1.0), "newest_share": (0.0, 1.0)}
# The takeover table's cells: (low, high) of each summary entry.
TAKEOVER_CELLS = {"newest": (0.0, 1.0), "own": (0.0, 1.0), "last": (0.0, 1.0), "key_norm_ratio": (0.0, math.inf),
                  "alignment_first": (-1.0, 1.0), "alignment_last": (-1.0, 1.0), "coherence": (0.0, 1.0)}


def _count(value: Any, low: int = 1) -> bool:
    """An integer from ``low`` to ``BIG`` (a number of atoms, steps or units), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= BIG


def _routing_problems(where: str, routing: Any, n_tasks: int, n_layers: int | None, every_task: bool) -> Iterator[str]:
    """A run's routing records (:mod:`routing`): one stage per task (``every_task``; the other settings keep
    the last only), each a list of ``n_layers`` layer records; after task t, ``share`` is (t+1) × tasks in
    [0, 1], ``silent`` and ``atoms99`` one per domain, ``key_norm`` and ``key_alignment`` one per task so far,
    ``coherence`` in [0, 1]."""
    stages = n_tasks if every_task else 1
    if not isinstance(routing, list) or len(routing) != stages:
        yield (f"has {where} = {short_repr(routing)}: expected "
               + (f"one record per task ({n_tasks})" if every_task else "the record after the last task"))
        return
    for t, stage in enumerate(routing, start=n_tasks - stages):
        if not isinstance(stage, list) or not stage or (n_layers is not None and len(stage) != n_layers):
            yield (f"has {where}[{t - n_tasks + stages}] = {short_repr(stage)}: expected a record per layer"
                   + (f" ({n_layers}, as in the first run)" if n_layers else ""))
            return
        for layer, rec in enumerate(stage):
            at = f"{where}[{t - n_tasks + stages}][{layer}]"
            if not isinstance(rec, dict):
                yield f"has {at} = {short_repr(rec)}: expected share, silent, atoms99, key_norm, key_alignment, coherence"
                return
            for key, shape, low, high in (("share", (t + 1, n_tasks), 0.0, 1.0), ("silent", (n_tasks,), 0.0, 1.0),
                                          ("atoms99", (n_tasks,), 0.0, math.inf), ("key_norm", (t + 1,), 0.0, math.inf),
                                          ("key_alignment", (t + 1,), -1.0, 1.0), ("coherence", (), 0.0, 1.0)):
                yield from filter(None, [array_problem(f"{at}.{key}", rec.get(key), shape, low, high)])


def _setting_problems(where: str, key: str, setting: Any, n: int, n_tasks: int) -> Iterator[str]:
    if not isinstance(setting, dict):
        yield f"has {where} = {short_repr(setting)}: expected a setting with group, top_k, runs and summary"
        return
    group, top_k = setting.get("group"), setting.get("top_k")
    if not _count(group):
        yield f"has {where}.group = {short_repr(group)}: expected a number of atoms per unit (≥ 1)"
    if top_k is not None and not (_count(top_k) and _count(group) and top_k >= group and top_k % group == 0):
        yield (f"has {where}.top_k = {short_repr(top_k)}: expected null (every atom) or a number of atoms, a multiple "
               f"of the group {short_repr(group)} (k/g units are kept)")
    runs = setting.get("runs")
    yield from filter(None, [_runs_problem(f"{where}.runs", runs, n)])
    summary = setting.get("summary")
    if not isinstance(summary, dict):
        yield f"has {where}.summary = {short_repr(summary)}: expected a cell per column"
        return
    for cell, (low, high) in SETTING_CELLS.items():
        yield from filter(None, [cell_problem(f"{where}.summary.{cell}", summary.get(cell), n, low, high)])
    layers = None
    for j, run in enumerate(runs if isinstance(runs, list) else []):
        yield from _metrics_problems(f"{where}.runs[{j}]", run)
        if key == "g1_k8" or "routing" in run:  # the routing table and the claims read g1_k8's
            yield from _routing_problems(f"{where}.runs[{j}].routing", run.get("routing"), n_tasks, layers,
                                         every_task=key == "g1_k8")
            stages = run.get("routing")
            layers = len(stages[0]) if layers is None and isinstance(stages, list) and stages and \
                isinstance(stages[0], list) else layers


def _ablation_problems(results: dict, n: int, table: str = "ablation") -> Iterator[str]:
    steps = results.get("steps_override")
    if steps is not None and not _count(steps):
        yield f"has steps_override {short_repr(steps)}: expected null or a number of steps"
    studies = results.get("studies")
    if not isinstance(studies, list) or not studies or not all(s in STUDIES for s in studies):
        yield f"has studies {short_repr(studies)}: expected a non-empty list of {', '.join(STUDIES)}"
        return
    streams = results.get("streams")
    if not isinstance(streams, dict):
        yield f"has streams {short_repr(streams)}: expected an object of streams"
        return
    if table == "ablation" and not any(isinstance(r, dict) and r.get("runs") for r in streams.values()):
        yield "has no stream with runs: the ablation table would have no rows (studies granularity, topk write them)"
        return
    if table == "routing" and not any(isinstance(r, dict) and isinstance(r.get("runs"), dict) and "g1_k8" in r["runs"]
                                      for r in streams.values()):
        yield ("has no stream with MoRAM's runs (g1_k8): the routing table would be empty (the granularity or topk "
               "study writes them)")
        return
    for name, res in streams.items():
        if not table_text(name):
            yield _stream_name_problem(name)
            return
        if not isinstance(res, dict) or not isinstance(res.get("runs"), dict):
            yield f"has streams.{name} = {short_repr(res)}: expected an object with tasks and runs"
            return
        why = names_problem(f"streams.{name}.tasks", res.get("tasks"))
        if why:
            yield why
            return
        for key, setting in res["runs"].items():
            yield from _setting_problems(f"streams.{name}.runs.{key}", key, setting, n, len(res["tasks"]))
    takeover = results.get("takeover")
    if takeover is not None and not (isinstance(takeover, dict) and isinstance(takeover.get("cells"), list)):
        yield f"has takeover {short_repr(takeover)}: expected an object with a list of grid cells"
        return
    if ("takeover" in studies or table == "takeover") and not (takeover or {}).get("cells"):
        yield ("has no takeover.cells" + (" although its studies include takeover" if "takeover" in studies else
                                          ": the takeover table needs a run with --studies takeover"))
        return
    for i, cell in enumerate((takeover or {}).get("cells", [])):
        where = f"takeover.cells[{i}]"
        if not isinstance(cell, dict):
            yield f"has {where} = {short_repr(cell)}: expected a grid cell"
            return
        if not isinstance(cell.get("layer_norm"), bool):
            yield f"has {where}.layer_norm = {short_repr(cell.get('layer_norm'))}: expected true or false"
        for key in ("temperature", "lr"):
            yield from filter(None, [number_problem(f"{where}.{key}", cell.get(key), 1e-300)])
        if not _count(cell.get("steps")):
            yield f"has {where}.steps = {short_repr(cell.get('steps'))}: expected a number of steps (an integer ≥ 1)"
        runs = cell.get("runs")
        yield from filter(None, [_runs_problem(f"{where}.runs", runs, n)])
        summary = cell.get("summary") if isinstance(cell.get("summary"), dict) else {}
        for key, (low, high) in TAKEOVER_CELLS.items():  # the cells of the takeover table
            yield from filter(None, [cell_problem(f"{where}.summary.{key}", summary.get(key), n, low, high)])
        for j, run in enumerate(runs if isinstance(runs, list) else []):  # the pooled sentence reads these
            for key, (low, high) in (("newest", (0.0, 1.0)), ("key_norm_ratio", (0.0, math.inf))):
                yield from filter(None, [number_problem(f"{where}.runs[{j}].{key}", run.get(key), low, high)])


def demo_problem(results: dict) -> str | None:
    """The main job's ``results.json``: seeds, the environment, every stream's summary cells and runs."""
    return _first_problem(results, _demo_problems)


def ablation_problem(results: dict, table: str = "ablation") -> str | None:
    """The ablation's ``results.json`` for ``table`` (ablation, routing or takeover: each also needs its
    rows to exist): seeds, the environment, every setting, routing record and takeover cell it reads."""
    return _first_problem(results, lambda r, n: _ablation_problems(r, n, table))
