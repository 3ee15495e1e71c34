"""The main job: both NumPy streams, every method, several seeds, tables, results.json and figures.

Run it with ``moram-ref demo --out runs/demo`` (see ``moram-ref demo --help``). Per stream and seed it
trains every method through the 5 tasks; on the digits stream it also chooses MoRAM's temperature τ on
a validation split carved from the training images (test images are never used to choose) and runs
MoRAM with the chosen τ beside the paper's. Tables give the mean and the 95 % confidence half-width
over seeds; ``moram-ref report`` renders them from ``results.json`` (the README's table comes from there).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np

from moram_ref import metrics, provenance
from moram_ref.config import MoRAMConfig
from moram_ref.experiments import cliargs, rundir
from moram_ref.experiments.toy import digits, recall
from moram_ref.experiments.toy.methods import LABELS, METHODS

# The paper's CLIP column (spec §5) with r = k = 8 for these small layers; δ = 0.2 eval-only as in the paper.
DEMO_CONFIG = MoRAMConfig(atoms_per_task=8, top_k=8, temperature=0.01, threshold=0.2, threshold_mode="eval")
SWEEP_TEMPERATURES = (0.01, 0.03, 0.1, 0.3)  # the digits stream's validation sweep of τ (0.01 = the paper's)
SWEPT = "moram_swept"  # the extra row: MoRAM with the τ chosen on the validation split
METRICS = ("transfer", "average", "last", "bwt", "forgetting")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=cliargs.out_dir, default=Path("runs/demo"), help="run folder (created)")
    p.add_argument("--seed", type=cliargs.integer(0, cliargs.MAX_SEED), default=0,
                   help="first seed; seed s draws the data and the atoms of run s")
    p.add_argument("--seeds", type=cliargs.integer(1, 1000), default=3,
                   help="number of seeds (seed, seed+1, …); tables give mean ± 95%% CI over ≥ 2, one seed's values alone")
    p.add_argument("--steps", type=cliargs.integer(1), default=None,
                   help="training steps per task (both streams; default: each stream's own)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"methods to run (default: all: {', '.join(METHODS)})")
    p.add_argument("--streams", nargs="+", default=["recall", "digits"], choices=["recall", "digits"],
                   help="task streams: 'recall' (store and recall each task's key→value pairs) and 'digits' "
                        "(scikit-learn's 8×8 digits in shifted domains on a frozen MLP encoder) (default: both)")
    p.add_argument("--no-sweep", action="store_true", help="skip the digits stream's validation sweep of τ")
    cliargs.moram_flags(p, DEMO_CONFIG, extra=("threshold_mode",))
    p.add_argument("--overlap", type=cliargs.real(0, 1), default=recall.RecallSettings.overlap,
                   help="recall stream: share of each key drawn from the subspace all tasks share")
    p.add_argument("--no-layer-norm", action="store_true",
                   help="digits stream: an encoder without LayerNorm (raw non-negative pixels reach the adapters)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures (no matplotlib needed)")


def _stream(name: str, args: argparse.Namespace, seed: int):
    """(module, settings, data, task names) of one stream for one seed."""
    rng = np.random.default_rng(seed)
    if name == "recall":
        settings = recall.RecallSettings(overlap=args.overlap)
        settings = replace(settings, steps=args.steps) if args.steps is not None else settings
        return recall, settings, recall.make_stream(settings, rng), [f"T{t + 1}" for t in range(settings.n_tasks)]
    settings = digits.DigitsSettings(layer_norm=not args.no_layer_norm)
    settings = replace(settings, steps=args.steps) if args.steps is not None else settings
    return digits, settings, digits.make_stream(settings, rng), list(digits.DOMAINS)


def _sweep(settings, streams: list[dict], config: MoRAMConfig, seeds: list[int]) -> dict:
    """Validation score (mean over seeds of Average, in [0, 1]) of MoRAM for each τ; the best τ."""
    scores = {}
    for tau in SWEEP_TEMPERATURES:
        cfg = replace(config, temperature=tau)
        vals = []
        for seed, stream in zip(seeds, streams):
            val = digits.validation_stream(stream, np.random.default_rng(10_000 + seed))
            vals.append(metrics.average(digits.run_method("moram", cfg, settings, val, seed=seed + 1)["accuracy"]))
        scores[tau] = float(np.mean(vals))
    best = max(scores, key=lambda t: (scores[t], -t))  # ties: the smaller τ (closer to the paper's)
    return {"temperatures": list(SWEEP_TEMPERATURES), "validation_average": [scores[t] for t in SWEEP_TEMPERATURES],
            "chosen": best}


RUNTIME_ONLY = ("out", "no_plots", "command")  # flags that do not shape the results


def settings_of(args: argparse.Namespace) -> dict:
    """The flags recorded in ``config.json`` and compared on a re-run."""
    return {k: v for k, v in vars(args).items() if k not in RUNTIME_ONLY}


def validate(args: argparse.Namespace) -> MoRAMConfig:
    """Every check before any work (raises :class:`~moram_ref.experiments.cliargs.UsageError`)."""
    cliargs.no_repeats("--methods", args.methods)
    cliargs.no_repeats("--streams", args.streams)
    config = cliargs.moram_config(args, threshold_mode=args.threshold_mode)
    rundir.check(args.out, "demo", settings_of(args))
    return config


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    config = validate(args)
    with rundir.open_run(args.out, "demo", settings_of(args)):
        return _run(args, config, log)


def _run(args: argparse.Namespace, config: MoRAMConfig, log: Callable[[str], None]) -> dict:
    """Every output (figures, then ``results.json``) is written to a staging folder and published together at
    the end: an interrupted run leaves the folder's earlier outputs as they were."""
    with rundir.staging(args.out) as stage:
        results = _streams(args, config, stage, log)
        rundir.write_json(stage / "results.json", results)
        rundir.publish(stage, args.out, stale=("*_accuracy.png", "*_activation_map.png"))
    log(f"\nwrote {args.out / 'results.json'}" + ("" if args.no_plots else " and figures (*.png)"))
    return results


def _streams(args: argparse.Namespace, config: MoRAMConfig, out: Path, log: Callable[[str], None]) -> dict:
    """Train and evaluate every stream; figures go to ``out`` (the staging folder)."""
    seeds = [args.seed + i for i in range(args.seeds)]
    results: dict = {"config": config.to_dict(), "seeds": seeds, "units": "fractions in [0, 1]",
                     "environment": provenance.numpy_environment(), "streams": {}}
    for stream_name in args.streams:
        built = [_stream(stream_name, args, seed) for seed in seeds]
        module, settings, _, task_names = built[0]
        data = [b[2] for b in built]
        log(f"\n== stream: {stream_name} ({len(task_names)} tasks: "
            + ", ".join(n if n == f"T{j + 1}" else f"T{j + 1} {n}" for j, n in enumerate(task_names))
            + f"; seeds {seeds}) ==")
        runs = {m: [] for m in args.methods}
        sweep = None
        if stream_name == "digits" and "moram" in args.methods and not args.no_sweep:
            t0 = time.perf_counter()
            sweep = _sweep(settings, data, config, seeds)
            runs[SWEPT] = []
            log("validation sweep of τ (MoRAM, mean Average over seeds): "
                + ", ".join(f"τ={t}: {100 * v:.1f}" for t, v in zip(sweep["temperatures"], sweep["validation_average"]))
                + f" -> τ = {sweep['chosen']} ({time.perf_counter() - t0:.1f} s)")
        for method in runs:
            t0 = time.perf_counter()
            cfg = replace(config, temperature=sweep["chosen"]) if method == SWEPT else config
            for seed, stream in zip(seeds, data):
                rundir.check_stop()  # an interrupt Python swallowed: stop here, not at the end
                res = module.run_method("moram" if method == SWEPT else method, cfg, settings, stream, seed=seed + 1)
                res["metrics"] = metrics.summary(res["accuracy"])
                runs[method].append(res)
            log(f"{label(method, sweep):<22} {time.perf_counter() - t0:5.1f} s ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
        summary = {m: summarise(rs) for m, rs in runs.items()}
        _print_stream(runs, summary, task_names, sweep, log)
        results["streams"][stream_name] = {
            "settings": asdict(settings),
            "tasks": task_names,
            "sweep": sweep,
            "labels": {m: label(m, sweep) for m in runs},
            "summary": summary,
            "methods": {m: [_jsonable(r) for r in rs] for m, rs in runs.items()},
        }
        if not args.no_plots:
            _figures(runs, task_names, config, out, stream_name, sweep)
    return results


def label(method: str, sweep: dict | None) -> str:
    if method == SWEPT:
        return f"MoRAM (τ={sweep['chosen']}, val.)"
    return LABELS[method]


def summarise(runs: list[dict]) -> dict:
    """Per metric, the mean and the 95 % CI half-width over seeds (half-width None for one seed)."""
    out = {}
    for key in METRICS:
        mean, half = metrics.confidence_interval(np.array([r["metrics"][key] for r in runs]))
        out[key] = {"mean": mean, "ci95": None if np.isnan(half) else half}
    return out


def _print_stream(runs: dict, summary: dict, task_names: list[str], sweep, log: Callable[[str], None]) -> None:
    for method, rs in runs.items():
        mean_acc = np.mean([r["accuracy"] for r in rs], axis=0)
        over = "one seed" if len(rs) == 1 else "mean over seeds"
        log(f"\n{label(method, sweep)} — accuracy (%), {over}; row i = after task i, column j = task j")
        log("          " + " ".join(f"{f'T{j + 1}':>7}" for j in range(len(task_names))))
        for i, row in enumerate(mean_acc):
            log(f"after T{i + 1:<3}" + " ".join(f"{100 * v:7.1f}" for v in row))
        if "activation_mass" in rs[0]:
            mass = np.mean([r["activation_mass"] for r in rs], axis=0)
            log("  activation mass Σw of each task's atoms (rows) on each task's inputs (columns), layer 1:")
            for g, row in enumerate(mass):
                log(f"  atoms T{g + 1:<7}" + " ".join(f"{v:7.2f}" for v in row))
            norms = np.mean([r["key_norms"][-1][0] for r in rs], axis=0)
            log("  mean key norm of each task's atoms after the last task, layer 1: "
                + " ".join(f"{v:.2f}" for v in norms))
            silent = np.mean([r["silent_fraction"] for r in rs])
            log(f"  inputs with every atom switched off by δ at evaluation: {100 * silent:.1f}%")
    one = len(next(iter(runs.values()))) == 1
    log(f"\n{'method (one seed)' if one else 'method (mean ± 95% CI)':<25}"
        + "".join(f"{k:>15}" for k in ("Transfer", "Average", "Last", "BWT", "forgetting")))
    for method, s in summary.items():
        log(f"{label(method, sweep):<24} " + "".join(f"{format_cell(s[k]):>15}" for k in METRICS))


def format_cell(cell: dict) -> str:
    """``mean ± half-width`` in percent, one decimal (``mean`` alone for one seed).

    Raises ValueError for a negative half-width (a results file edited by hand or damaged)."""
    text, half = f"{100 * cell['mean']:.1f}", cell["ci95"]
    if half is not None and half < 0:
        raise ValueError(f"a 95 % CI half-width of {half} (negative) beside the mean {cell['mean']}")
    return text if half is None or np.isnan(half) else f"{text} ± {100 * half:.1f}"


def _over(n_seeds: int) -> str:
    return "one seed" if n_seeds == 1 else f"mean over {n_seeds} seeds"


def seeds_phrase(seeds: list[int], runs: str | None = "") -> str:
    """``Seeds 0–2 (3 runs)``, ``Seeds 0, 4, 7 (3 runs)`` or ``Seed 5 (1 run)``: the seeds a table's cells are
    over; ``runs`` is appended inside the parentheses, and ``None`` leaves them out (``Seeds 0–2``)."""
    seeds = list(seeds)
    consecutive = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    listed = f"{seeds[0]}–{seeds[-1]}" if consecutive and len(seeds) > 1 else ", ".join(map(str, seeds))
    text = f"Seed{'s' if len(seeds) > 1 else ''} {listed}"
    return text if runs is None else f"{text} ({len(seeds)} run{'s' if len(seeds) > 1 else ''}{runs})"


def cells_phrase(seeds: list[int], many: str = "mean ± 95 % CI half-width") -> str:
    """What a cell of a seeds table is: ``many`` (a mean with its 95 % CI) over several seeds, the one run's value
    over a single seed (which gives no confidence interval). Over a few seeds the phrase gives the half-width's
    size in standard deviations of the seeds' values (3 seeds: 2.48), which is why it can exceed the mean."""
    if len(seeds) <= 1:
        return "the one run's values (a single seed gives no confidence interval)"
    return f"{many} ({ci_note(len(seeds))})"


def ci_note(n: int, what: str = "seeds") -> str:
    """How wide a 95 % Student-t half-width over ``n`` ≥ 2 values is, for a table's note: ``"Student t over 3
    seeds: 2.48 × the seeds' standard deviation"`` (over so few values it can exceed the mean)."""
    return f"Student t over {n} {what}: {metrics.half_width_factor(n):.2f} × the {what}' standard deviation"


def _figures(runs: dict, task_names: list[str], config: MoRAMConfig, out: Path, stream: str, sweep) -> None:
    from moram_ref import plots  # noqa: PLC0415  (matplotlib only when figures are wanted)

    mean_acc = {label(m, sweep): np.mean([r["accuracy"] for r in rs], axis=0) for m, rs in runs.items()}
    plots.accuracy_heatmaps(mean_acc, task_names, out / f"{stream}_accuracy.png",
                            f"{stream}: accuracy matrices ({_over(len(next(iter(runs.values()))))})")
    if "moram" in runs:
        r = runs["moram"][0]
        plots.activation_map(r["weights"], r["groups"], config.atoms_per_task, task_names,
                             out / f"{stream}_activation_map.png",
                             f"{stream}: MoRAM weights w after the last task (layer 1, evaluation, first seed)")


def _jsonable(res: dict) -> dict:
    keep = {k: v for k, v in res.items() if k not in ("weights", "groups")}
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in keep.items()}
