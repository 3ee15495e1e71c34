"""``moram-ref text-cl``: every method × seed on a task sequence, tables with 95 % CIs, files and figures."""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from moram_ref import metrics
from moram_ref.config import MoRAMConfig

LABELS = {"zero_shot": "zero-shot", "seq_lora": "sequential LoRA", "moe_lora": "MoE-LoRA (router)", "olora": "O-LoRA",
          "dense_moram": "dense MoRAM", "moram": "MoRAM"}
DEFAULTS = dict(steps=60, batch=16, lr=2e-3, adapt_layers=2, max_length=128, placement="all",
                atoms_per_task=8, top_k=8, temperature=0.01, threshold=0.2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from moram_ref.experiments.textcl.data import SEQUENCES
    from moram_ref.experiments.textcl import METHODS

    p.add_argument("--data-root", type=Path, required=True, help="folder with one sub-folder per task (JSON)")
    p.add_argument("--out", type=Path, default=Path("runs/text-cl"))
    p.add_argument("--sequence", default="standard-1", choices=sorted(SEQUENCES))
    p.add_argument("--tasks", type=int, default=None, help="use only the first N tasks of the sequence")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 … N-1 (training order and fresh atoms)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="training steps per task")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--adapt-layers", type=int, default=DEFAULTS["adapt_layers"], help="top blocks with adapters")
    p.add_argument("--placement", default=DEFAULTS["placement"], choices=["attention", "ffn", "all"])
    p.add_argument("--max-length", type=int, default=DEFAULTS["max_length"], help="tokens per input")
    p.add_argument("--atoms-per-task", type=int, default=DEFAULTS["atoms_per_task"])
    p.add_argument("--top-k", type=int, default=DEFAULTS["top_k"])
    p.add_argument("--temperature", type=float, default=DEFAULTS["temperature"])
    p.add_argument("--threshold", type=float, default=DEFAULTS["threshold"])
    p.add_argument("--max-train", type=int, default=None, help="cap training samples per task (quick runs)")
    p.add_argument("--max-test", type=int, default=None, help="cap test samples per task (quick runs)")
    p.add_argument("--eval-split", default="test", choices=["test", "val"], help="'val' for sweeps")
    p.add_argument("--model-path", type=Path, default=None, help="encoder folder (default: the packaged MiniLM)")
    p.add_argument("--no-plots", action="store_true")


def run(args: argparse.Namespace, log=print) -> dict:
    import torch

    from moram_ref.experiments.progress import printer
    from moram_ref.experiments.textcl.data import SEQUENCES, load_task
    from moram_ref.experiments.textcl.encoder import CachedEncoder, load_encoder
    from moram_ref.experiments.textcl.train import TrainSettings, run_method

    started = time.perf_counter()
    config = MoRAMConfig(atoms_per_task=args.atoms_per_task, top_k=args.top_k, temperature=args.temperature,
                         threshold=args.threshold)
    settings = replace(TrainSettings(), steps=args.steps, batch=args.batch, lr=args.lr, placement=args.placement,
                       moram=config, eval_split=args.eval_split)
    out: Path = args.out
    (out / "matrices").mkdir(parents=True, exist_ok=True)
    tasks = [load_task(args.data_root, name, max_train=args.max_train, max_test=args.max_test)
             for name in SEQUENCES[args.sequence][: args.tasks]]
    model, tokenizer = load_encoder(args.model_path)
    enc = CachedEncoder(model, tokenizer, adapt_layers=args.adapt_layers, max_length=args.max_length)
    run_config = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
                  "settings": {**asdict(settings), "moram": config.to_dict()},
                  "tasks": [{"name": t.name, "labels": t.labels, "prompts": t.prompts, "train": len(t.train_text),
                             "val": len(t.val_text), "test": len(t.test_text), "dropped": t.dropped} for t in tasks],
                  "machine": {"python": platform.python_version(), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "platform": platform.platform()}}
    (out / "config.json").write_text(json.dumps(run_config, indent=1))
    log(f"sequence {args.sequence}: {', '.join(t.name for t in tasks)}; caching the frozen lower blocks …")
    t0 = time.perf_counter()
    split_text = "val_text" if args.eval_split == "val" else "test_text"
    enc.precompute([x for t in tasks for x in t.train_text + getattr(t, split_text) + t.prompts])
    log(f"cached {len(enc._cache)} texts in {time.perf_counter() - t0:.0f} s")
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    total = len(args.methods) * args.seeds
    done = 0
    for seed in range(args.seeds):
        for method in args.methods:
            t0 = time.perf_counter()
            res = run_method(method, seed, settings, enc, tasks, on_step=printer(settings.steps, log))
            res["seconds"] = time.perf_counter() - t0
            runs[method].append(res)
            done += 1
            _save_matrices(out / "matrices", method, seed, res, [t.name for t in tasks])
            s = metrics.summary(res["union"])
            log(f"[{done}/{total}] {LABELS[method]:<18} seed {seed}: Last {100 * s['last']:.1f}, "
                f"Average {100 * s['average']:.1f}, {res['seconds']:.0f} s")
    results = summarise(runs, [t.name for t in tasks])
    results["wall_seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = format_table(results)
    (out / "table.md").write_text(table)
    log("\n" + table)
    if not args.no_plots:
        _figures(runs, results, tasks, config, out)
    log(f"wrote {out}/results.json, table.md, matrices/, config.json" + ("" if args.no_plots else ", *.png")
        + f" — {results['wall_seconds'] / 60:.1f} min in all")
    return results


def _save_matrices(folder: Path, method: str, seed: int, res: dict, names: list[str]) -> None:
    data = {"tasks": names, "union": res["union"].tolist(), "own": res["own"].tolist(),
            "trainable_per_task": res["trainable_per_task"], "seconds": res["seconds"], "n99": res["n99"]}
    (folder / f"{method}_seed{seed}.json").write_text(json.dumps(data, indent=1))
    for space in ("union", "own"):
        with open(folder / f"{method}_seed{seed}_{space}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["after \\ on"] + names)
            for name, row in zip(names, res[space]):
                writer.writerow([name] + [f"{100 * v:.2f}" for v in row])


def summarise(runs: dict[str, list[dict]], names: list[str]) -> dict:
    table = {}
    for method, seeds in runs.items():
        entry = {"seeds": len(seeds), "trainable_per_task": seeds[0]["trainable_per_task"][:1],
                 "seconds_mean": float(np.mean([r["seconds"] for r in seeds]))}
        for space in ("union", "own"):
            per_seed = [metrics.summary(r[space]) for r in seeds]
            entry[space] = {k: dict(zip(("mean", "ci95"), metrics.confidence_interval(np.array([p[k] for p in per_seed]))))
                            for k in ("transfer", "average", "last", "bwt", "forgetting")}
            entry[space]["mean_matrix"] = np.mean([r[space] for r in seeds], axis=0).tolist()
        table[method] = entry
    return {"tasks": names, "methods": table}


def format_table(results: dict) -> str:
    lines = []
    for space, title in (("union", "task-agnostic: union of all tasks' labels (X-TAIL-like)"),
                         ("own", "per-task label space (MTIL-like)")):
        lines += [f"### {title}", "",
                  "| method | Transfer | Average | Last | BWT | forgetting | trainable / task | s / seed |",
                  "|---|---|---|---|---|---|---|---|"]
        for method, e in results["methods"].items():
            cells = [_pm(e[space][k]) for k in ("transfer", "average", "last", "bwt", "forgetting")]
            params = e["trainable_per_task"][0] if e["trainable_per_task"] else 0
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {params:,} | {e['seconds_mean']:.0f} |")
        lines.append("")
    seeds = next(iter(results["methods"].values()))["seeds"]
    lines.append(f"Mean ± 95 % confidence half-width (Student t) over {seeds} seed(s), in %.")
    return "\n".join(lines) + "\n"


def _pm(stat: dict) -> str:
    mean, half = 100 * stat["mean"], 100 * stat["ci95"]
    return f"{mean:.1f}" if np.isnan(half) else f"{mean:.1f} ± {half:.1f}"


def _figures(runs, results, tasks, config, out: Path) -> None:
    from moram_ref import plots

    names = [t.name for t in tasks]
    for space in ("union", "own"):
        plots.accuracy_heatmaps({LABELS[m]: np.array(e[space]["mean_matrix"]) for m, e in results["methods"].items()},
                                names, out / f"accuracy_{space}.png", f"accuracy ({space} label space), mean over seeds")
    for method in ("moram", "dense_moram"):
        if method in runs and runs[method][0]["activation"]:
            plots.token_activation_maps(runs[method][0]["activation"], config.atoms_per_task,
                                        out / f"activation_{method}.png",
                                        f"{LABELS[method]}: weights w at block 1's key projection (seed 0)")
    curves = {LABELS[m]: runs[m][0]["n99"] for m in ("moram", "dense_moram") if m in runs}
    if any(curves.values()):
        plots.atoms_for_mass(curves, [config.atoms_per_task * (t + 1) for t in range(len(tasks))],
                             out / "atoms_for_99_mass.png", "atoms carrying 99 % of the weight, per layer (seed 0)")
