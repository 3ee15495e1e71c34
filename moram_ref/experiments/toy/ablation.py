"""``moram-ref ablation``: the paper's claims tested on the NumPy streams (issue #13).

Three studies, each over both streams (recall, digits) × several seeds, with the main job's settings
(``demo.DEMO_CONFIG``: r = k = 8, τ = 0.01, δ = 0.2 at evaluation) unless varied:

* ``granularity``: the same routing and the same trainable atoms per task, routed as units of
  g ∈ {1, 2, 4, 8} atoms (:mod:`granularity`); the top-k budget counts atoms (k = 8 atoms = 8/g units),
  so as many atoms are active at every g. g = 1 is MoRAM (the main job's MoRAM row, same seeds).
* ``topk``: rank-1 atoms with the budget k ∈ {1, 2, 4, 8, R} (R: every atom; δ unchanged).
* ``takeover``: on the digits stream with and without the per-sample LayerNorm, a small grid of τ, lr
  and steps: how much of the weight on earlier domains' inputs the newest domain's atoms take, with the
  key norms, the keys' alignment with the inputs' shared direction, and the inputs' coherence.

Every MoRAM-like run carries a :class:`routing.RoutingProbe`. ``results.json`` holds per-seed metrics and
routing summaries (no per-input weights); ``moram-ref report`` renders the docs' tables from it.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np

from moram_ref import metrics, provenance
from moram_ref.experiments import cliargs, rundir
from moram_ref.experiments.toy import digits, recall, routing
from moram_ref.experiments.toy.demo import DEMO_CONFIG, METRICS, format_cell, summarise
from moram_ref.experiments.toy.granularity import grouped_factory

STUDIES = ("granularity", "topk", "takeover")
GROUPS = (1, 2, 4, 8)
TOP_KS = (1, 2, 4, 8, None)  # None: every atom (k = R)
TAKEOVER_GRID = {"temperature": (0.01, 0.1, 1.0), "lr": (1e-3, 3e-3), "steps": (100, 300)}
STAGES = (0, 1, 4)  # the routing tables and figures after task 1, task 2 and the last task


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=cliargs.out_dir, default=Path("runs/ablation"), help="run folder (created)")
    p.add_argument("--seed", type=cliargs.integer(0, cliargs.MAX_SEED), default=0,
                   help="first seed (seed s: the main job's data and atoms of run s)")
    p.add_argument("--seeds", type=cliargs.integer(1, 1000), default=3, help="number of seeds; tables give mean ± 95%% CI over ≥ 2, one seed's values alone")
    p.add_argument("--studies", nargs="+", default=list(STUDIES), choices=STUDIES,
                   help="'granularity' (rank-1 atoms vs units of 2/4/8), 'topk' (the top-k budget), 'takeover' "
                        "(when the newest atoms take over) (default: all three)")
    p.add_argument("--streams", nargs="+", default=["recall", "digits"], choices=["recall", "digits"],
                   help="streams of the granularity and top-k studies (takeover: digits only)")
    p.add_argument("--steps", type=cliargs.integer(1), default=None, help="override the steps per task everywhere (quick checks)")
    p.add_argument("--no-plots", action="store_true", help="skip the routing heatmaps (no matplotlib needed)")


def setting_name(group: int, top_k: int | None) -> str:
    return f"g{group}_k{'R' if top_k is None else top_k}"


def settings_for(studies: list[str]) -> list[tuple[int, int | None]]:
    """(group, top_k) pairs to run, each once (g = 1, k = 8 serves both studies)."""
    pairs = [(g, DEMO_CONFIG.top_k) for g in GROUPS] if "granularity" in studies else []
    pairs += [(1, k) for k in TOP_KS if "topk" in studies and (1, k) not in pairs]
    return pairs


def _stream(name: str, seed: int, steps: int | None, layer_norm: bool = True):
    rng = np.random.default_rng(seed)  # as demo._stream: the same data for the same seed
    if name == "recall":
        settings = recall.RecallSettings()
        settings = replace(settings, steps=steps) if steps is not None else settings
        return recall, settings, recall.make_stream(settings, rng), [f"T{t + 1}" for t in range(settings.n_tasks)]
    settings = digits.DigitsSettings(layer_norm=layer_norm)
    settings = replace(settings, steps=steps) if steps is not None else settings
    return digits, settings, digits.make_stream(settings, rng), list(digits.DOMAINS)


def _run(module, name, settings, stream, seed, config, group) -> dict:
    """One MoRAM-like run with a routing probe: accuracy, metrics and routing records."""
    x, groups = routing.probe_inputs(name, stream)
    probe = routing.RoutingProbe(x, groups, len(np.unique(groups)))
    res = module.run_method("moram", config, settings, stream, seed=seed + 1,
                            layer_factory=grouped_factory(group), on_task_end=probe)
    out = {"accuracy": res["accuracy"].tolist(), "metrics": metrics.summary(res["accuracy"]),
           "routing": probe.records, "takeover": routing.takeover(probe.records[-1][0]["share"])}
    return out


def run_grouped(args, seeds, log) -> dict:
    out = {}
    pairs = settings_for(args.studies)
    for name in args.streams:
        built = [_stream(name, s, args.steps) for s in seeds]
        module, settings, _, tasks = built[0]
        runs = {}
        for group, top_k in pairs:
            t0 = time.perf_counter()
            cfg = replace(DEMO_CONFIG, top_k=top_k)
            key = setting_name(group, top_k)
            rs = []
            for seed, b in zip(seeds, built):
                rs.append(_run(module, name, settings, b[2], seed, cfg, group))
            summary = _summary(rs)
            if key != "g1_k8":  # the full task-by-task routing record is kept for MoRAM only (file size)
                rs = [{**r, "routing": r["routing"][-1:]} for r in rs]
            runs[key] = {"group": group, "top_k": top_k, "runs": rs, "summary": summary,
                         "seconds": time.perf_counter() - t0}
            log(f"{name:<7} {key:<7} " + "".join(f"{format_cell(runs[key]['summary'][m]):>14}" for m in METRICS)
                + f"   atoms99 {runs[key]['summary']['atoms99']['mean']:.2f}  ({runs[key]['seconds']:.1f} s)")
        out[name] = {"tasks": tasks, "settings": asdict(settings), "runs": runs}
    return out


def share_figure(name: str, stream: dict, out: Path) -> None:
    """``{name}_routing_share.png``: MoRAM's weight shares after task 1, 2 and the last (from the results)."""
    if "g1_k8" not in stream["runs"]:
        return
    runs, tasks = stream["runs"]["g1_k8"]["runs"], stream["tasks"]
    stages = {f"after {tasks[t]}": np.mean([r["routing"][t][0]["share"] for r in runs], axis=0) for t in STAGES}
    routing.share_heatmaps(stages, tasks, out / f"{name}_routing_share.png",
                           f"{name}: share of weight of each task's atoms on each task's inputs "
                           f"(MoRAM, layer 1, {'one seed' if len(runs) == 1 else f'mean over {len(runs)} seeds'})")


def _summary(rs: list[dict]) -> dict:
    """Mean ± 95 % CI over seeds of the metrics and of the final routing figures (layer 1)."""
    out = summarise(rs)
    extra = {"atoms99": [np.mean(r["routing"][-1][0]["atoms99"]) for r in rs],
             "own_share": [r["takeover"]["own"] for r in rs],
             "newest_share": [r["takeover"]["newest"] for r in rs],
             "silent": [np.mean(r["routing"][-1][0]["silent"]) for r in rs]}
    for key, vals in extra.items():
        mean, half = metrics.confidence_interval(np.array(vals, dtype=float))
        out[key] = {"mean": mean, "ci95": None if np.isnan(half) else half}
    return out


def run_takeover(args, seeds, log) -> dict:
    cells = []
    for layer_norm in (True, False):
        built = {}
        grid = itertools.product(*TAKEOVER_GRID.values())  # --steps folds the grid's step counts into one
        for tau, lr, steps in dict.fromkeys((t, r, args.steps if args.steps is not None else s) for t, r, s in grid):
            t0 = time.perf_counter()
            rs = []
            for seed in seeds:
                if seed not in built:
                    built[seed] = _stream("digits", seed, None, layer_norm)
                module, settings, stream, _ = built[seed]
                settings = replace(settings, lr=lr, steps=steps)
                r = _run(module, "digits", settings, stream, seed, replace(DEMO_CONFIG, temperature=tau), 1)
                first, final = r["routing"][0][0], r["routing"][-1][0]
                rs.append({"metrics": r["metrics"], "newest": r["takeover"]["newest"], "own": r["takeover"]["own"],
                           "key_norm_first": first["key_norm"][0], "key_norm_last": final["key_norm"][-1],
                           "key_norm_ratio": final["key_norm"][-1] / final["key_norm"][0],
                           "alignment_first": final["key_alignment"][0], "alignment_last": final["key_alignment"][-1],
                           "coherence": final["coherence"]})
            summary = summarise(rs)
            for key in ("newest", "own", "key_norm_ratio", "alignment_first", "alignment_last", "coherence"):
                mean, half = metrics.confidence_interval(np.array([r[key] for r in rs]))
                summary[key] = {"mean": mean, "ci95": None if np.isnan(half) else half}
            cells.append({"layer_norm": layer_norm, "temperature": tau, "lr": lr, "steps": steps, "runs": rs,
                          "summary": summary})
            log(f"takeover LN={'on ' if layer_norm else 'off'} τ={tau:<5} lr={lr:<6} steps={steps:<4} "
                f"newest {format_cell(summary['newest'])}  own {format_cell(summary['own'])}  "
                f"key-norm ratio {summary['key_norm_ratio']['mean']:.2f}  Last {format_cell(summary['last'])}"
                f"  ({time.perf_counter() - t0:.1f} s)")
    return {"grid": {k: list(v) for k, v in TAKEOVER_GRID.items()}, "cells": cells}


RUNTIME_ONLY = ("out", "no_plots", "command")  # flags that do not shape the results


def settings_of(args: argparse.Namespace) -> dict:
    """The flags recorded in ``config.json`` and compared on a re-run."""
    return {k: v for k, v in vars(args).items() if k not in RUNTIME_ONLY}


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    cliargs.no_repeats("--studies", args.studies)
    cliargs.no_repeats("--streams", args.streams)
    rundir.check(args.out, "ablation", settings_of(args))
    with rundir.open_run(args.out, "ablation", settings_of(args)):
        return _run_all(args, log)


def _run_all(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    seeds = [args.seed + i for i in range(args.seeds)]
    t0 = time.perf_counter()
    results: dict = {"config": DEMO_CONFIG.to_dict(), "seeds": seeds, "units": "fractions in [0, 1]",
                     "studies": list(args.studies), "steps_override": args.steps,
                     "environment": provenance.numpy_environment()}  # its NumPy and BLAS round the figures
    log("setting  " + "".join(f"{m:>14}" for m in METRICS)
        + ("   (mean ± 95% CI over seeds, %)" if len(seeds) > 1 else "   (one seed, %)"))
    if {"granularity", "topk"} & set(args.studies):
        results["streams"] = run_grouped(args, seeds, log)
    if "takeover" in args.studies:
        results["takeover"] = run_takeover(args, seeds, log)
    results["seconds"] = time.perf_counter() - t0
    with rundir.staging(args.out) as stage:  # the figures and results.json replace the earlier ones together
        rundir.write_text(stage / "results.json", rundir.dumps(_rounded(results)))
        for name, stream in results.get("streams", {}).items():
            if not args.no_plots:
                share_figure(name, stream, stage)
        rundir.publish(stage, args.out, stale=("*_routing_share.png",))
    log(f"\nwrote {args.out / 'results.json'} ({results['seconds']:.0f} s)"
        + ("" if args.no_plots else " and *_routing_share.png"))
    return results


def _rounded(obj):
    """Floats to 6 significant digits (the results file stays small; tables print 1 decimal of %)."""
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    if isinstance(obj, np.generic):
        return _rounded(obj.item())
    return obj
