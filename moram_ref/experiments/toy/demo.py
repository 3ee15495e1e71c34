"""The main job: both NumPy streams, every method, tables, results.json and figures.

Run it with ``moram-ref demo --out runs/demo`` (see ``moram-ref demo --help``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np

from moram_ref import metrics
from moram_ref.config import MoRAMConfig
from moram_ref.experiments import cliargs, rundir
from moram_ref.experiments.toy import digits, recall
from moram_ref.experiments.toy.methods import LABELS, METHODS

# The paper's CLIP column (spec §5) with r = k = 8 for these small layers; δ = 0.2 eval-only as in the paper.
DEMO_CONFIG = MoRAMConfig(atoms_per_task=8, top_k=8, temperature=0.01, threshold=0.2, threshold_mode="eval")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=cliargs.out_dir, default=Path("runs/demo"), help="run folder (created)")
    p.add_argument("--seed", type=cliargs.integer(0), default=0, help="seed of every random draw")
    p.add_argument("--steps", type=cliargs.integer(1), default=None,
                   help="training steps per task (both streams; default: each stream's own)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--streams", nargs="+", default=["recall", "digits"], choices=["recall", "digits"])
    p.add_argument("--atoms-per-task", type=cliargs.integer(1), default=DEMO_CONFIG.atoms_per_task)
    p.add_argument("--top-k", type=cliargs.integer(1), default=DEMO_CONFIG.top_k)
    p.add_argument("--temperature", type=cliargs.real(0, low_open=True), default=DEMO_CONFIG.temperature)
    p.add_argument("--threshold", type=cliargs.real(-1, 1), default=DEMO_CONFIG.threshold)
    p.add_argument("--threshold-mode", default=DEMO_CONFIG.threshold_mode, choices=["eval", "always", "never"])
    p.add_argument("--overlap", type=cliargs.real(0, 1), default=recall.RecallSettings.overlap,
                   help="recall stream: share of each key drawn from the subspace all tasks share")
    p.add_argument("--no-plots", action="store_true", help="skip the figures (no matplotlib needed)")


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
    out: Path = args.out
    results: dict = {"config": config.to_dict(), "seed": args.seed, "streams": {}}
    for stream_name in args.streams:
        rng = np.random.default_rng(args.seed)
        if stream_name == "recall":
            settings = recall.RecallSettings(overlap=args.overlap)
            settings = replace(settings, steps=args.steps) if args.steps is not None else settings
            module, data = recall, recall.make_stream(settings, rng)
            task_names = [f"T{t + 1}" for t in range(settings.n_tasks)]
        else:
            settings = digits.DigitsSettings()
            settings = replace(settings, steps=args.steps) if args.steps is not None else settings
            module, data = digits, digits.make_stream(settings, rng)
            task_names = list(digits.DOMAINS)
        log(f"\n== stream: {stream_name} ({len(task_names)} tasks: {', '.join(task_names)}) ==")
        per_method = {}
        for i, method in enumerate(args.methods):
            t0 = time.perf_counter()
            res = module.run_method(method, config, settings, data, seed=args.seed + 1)
            res["seconds"] = time.perf_counter() - t0
            res["metrics"] = metrics.summary(res["accuracy"])
            per_method[method] = res
            log(f"[{i + 1}/{len(args.methods)}] {LABELS[method]:<18} {res['seconds']:5.1f} s")
        _print_stream(per_method, task_names, log)
        results["streams"][stream_name] = {
            "settings": asdict(settings),
            "tasks": task_names,
            "methods": {m: _jsonable(r) for m, r in per_method.items()},
        }
        if not args.no_plots:
            _figures(per_method, task_names, config, out, stream_name)
    rundir.write_json(out / "results.json", results)
    log(f"\nwrote {out / 'results.json'}" + ("" if args.no_plots else " and figures (*.png)"))
    return results


def _print_stream(per_method: dict, task_names: list[str], log: Callable[[str], None]) -> None:
    for method, res in per_method.items():
        log(f"\n{LABELS[method]} — accuracy (%), row i = after task i, column j = task j")
        log("          " + " ".join(f"{n[:7]:>7}" for n in task_names))
        for i, row in enumerate(res["accuracy"]):
            log(f"after {task_names[i][:4]:<4}" + " ".join(f"{100 * v:7.1f}" for v in row))
        if "activation_mass" in res:
            log("  activation mass Σw of each task's atoms (rows) on each task's inputs (columns), layer 1:")
            for g, row in enumerate(res["activation_mass"]):
                log(f"  atoms {task_names[g][:8]:<8}" + " ".join(f"{v:7.2f}" for v in row))
            log(f"  inputs with every atom switched off by δ at evaluation: {100 * res['silent_fraction']:.1f}%")
    log("\nmethod              Transfer  Average     Last      BWT  forgetting  trainable/task")
    for method, res in per_method.items():
        m = res["metrics"]
        params = res["trainable_per_task"][0] if res["trainable_per_task"] else 0
        log(f"{LABELS[method]:<18} " + " ".join(f"{100 * m[k]:8.1f}" for k in ("transfer", "average", "last", "bwt"))
            + f" {100 * m['forgetting']:11.1f} {params:15d}")


def _figures(per_method: dict, task_names: list[str], config: MoRAMConfig, out: Path, stream: str) -> None:
    from moram_ref import plots  # noqa: PLC0415  (matplotlib only when figures are wanted)

    plots.accuracy_heatmaps({LABELS[m]: r["accuracy"] for m, r in per_method.items()}, task_names,
                            out / f"{stream}_accuracy.png", f"{stream}: accuracy matrices")
    if "moram" in per_method:
        r = per_method["moram"]
        plots.activation_map(r["weights"], r["groups"], config.atoms_per_task, task_names,
                             out / f"{stream}_activation_map.png",
                             f"{stream}: MoRAM weights w after the last task (layer 1, evaluation)")


def _jsonable(res: dict) -> dict:
    keep = {k: v for k, v in res.items() if k not in ("weights", "groups")}
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in keep.items()}
