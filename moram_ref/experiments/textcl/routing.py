"""``moram-ref text-cl-routing RUN``: where MoRAM's weight goes in a real encoder, task by task.

Reads a finished ``text-cl`` run folder: its recorded settings (``config.json``) and the per-task
checkpoints of MoRAM and dense MoRAM (``state/<method>_seed<s>/task<t>.safetensors``, :mod:`.state`).
After every task ``t`` it loads that checkpoint and runs ``--per-task`` test texts of *every* task through
the adapted blocks (evaluation mode: δ on). At every MoRAM layer, over the real tokens of those texts, it
computes the NumPy streams' diagnostics (:func:`moram_ref.experiments.toy.routing.layer_diagnostics`):
the share of the weight ``Σw`` that each task's atoms take on each task's tokens (the paper's Fig. 3,
spec §8.1), the share of tokens δ silences, atoms for 99 % of the weight (spec §8.2), the key norms of
each task's atoms. Per text it also sums, over the text's real tokens, the weight each task's atoms take
(mean over layers of the text's normalised shares) and records which task's atoms take the most:
``text_routing[seed][t][g][h]``, after task ``t + 1``, the number of task ``g``'s texts whose weight goes
mostly to task ``h``'s atoms (``h`` over the tasks learned so far; a text with no weight left by δ counts in
no column). Writes
``<RUN>/routing.json``, ``routing_summary.json`` and, unless ``--no-plots``, ``routing_share_<method>.png``.

Summary per method (mean ± 95 % CI over seeds; each seed's value is the mean over layers, after the last
task unless said): ``own`` (each task's atoms' share on its own tokens, mean over tasks), ``newest`` (the
last task's atoms' share on the earlier tasks' tokens), ``old_on_new`` (right after each task t ≥ 2, the
earlier tasks' atoms' share on task t's tokens, mean over t), ``atoms99``, ``silent`` and ``text_own`` (the
share of texts, over every task's probe texts, whose weight goes mostly to their own task's atoms; an even
spread would give 1/T by chance).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from moram_ref.experiments import cliargs, rundir, threads
from moram_ref.experiments.textcl import finished, state
from moram_ref.experiments.textcl.routing_tables import PROBED
from moram_ref.experiments.textcl.run import portable
from moram_ref.experiments.toy.ablation_tables import ci_cell


def add_arguments(p: argparse.ArgumentParser) -> None:
    finished.add_run_arguments(p)
    p.add_argument("--per-task", type=cliargs.integer(1), default=32, help="test texts probed per task")


OUTPUTS = ("routing.json", "routing_summary.json")


def _plan(args: argparse.Namespace) -> tuple[dict, list, list, dict]:
    """Every check before any work (:func:`.finished.plan`). Returns (settings, methods, tasks, records)."""
    settings, methods, tasks, records = finished.plan(
        args.run, args.data_root, PROBED, OUTPUTS + tuple(f"routing_share_{m}.png" for m in PROBED),
        "neither MoRAM nor dense MoRAM: nothing routes", args.model_path)
    return settings, methods, tasks, records


def run(args: argparse.Namespace, log=print) -> dict:
    settings, methods, tasks, records = _plan(args)
    note = finished.unchecked_settings(records)
    if note:
        log(note)
    with rundir.open_run(args.run, "text-cl", settings, eval_only=True, arg="run"):
        for leftover in args.run.glob(".routing*tmp*"):  # from a probe of an earlier version killed while writing
            leftover.unlink()
        result = _probe(args, settings, methods, tasks, log)
        with rundir.staging(args.run) as stage:  # written there, then published together: all old or all new
            if not args.no_plots:
                _figures(result, stage)
            for name, data in zip(OUTPUTS, (result, brief(result))):
                (stage / name).write_text(rundir.dumps(data))
            figures = tuple(f"routing_share_{m}.png" for m in methods)
            stale = [n for n in figures if (args.run / n).is_file() and not (stage / n).is_file()]
            rundir.publish(stage, args.run, stale=figures)  # figures an earlier probe drew would not match
    drew = not args.no_plots
    log(f"wrote {args.run}/routing.json, routing_summary.json" + (", routing_share_*.png" if drew else "")
        + (f"; removed the earlier {', '.join(stale)}" if stale else ""))
    return result


def _probe(args, settings: dict, methods: list[str], tasks: list, log) -> dict:
    import torch  # noqa: PLC0415

    from moram_ref.torch import attach as A  # noqa: PLC0415
    from moram_ref.torch import checkpoint  # noqa: PLC0415

    names = [t.name for t in tasks]
    texts = [x for t in tasks for x in t.test_text[: args.per_task]]
    per_task = [min(args.per_task, len(t.test_text)) for t in tasks]
    groups = np.repeat(np.arange(len(tasks)), per_task)
    enc, encoder = finished.encoder(settings, args.model_path)
    config = cliargs.moram_config(argparse.Namespace(**settings))
    lengths = np.array([enc.token_count(x) for x in texts])
    out: dict = {"run": {"settings": settings, "tasks": names, "encoder": encoder}, "per_task": max(per_task),
                 "texts_per_task": per_task, "methods": {}}
    for method in methods:
        seeds, texts_routed = [], []
        for seed in range(settings["seeds"]):
            stages, routed = [], []
            with threads.continued(state.recorded_threads(args.run / "state" / f"{method}_seed{seed}"), log,
                                   f"{method} seed {seed}", "its records were made", "its record"):  # its rounding
                for t in range(1, len(names) + 1):
                    A.detach(enc.top)
                    A.attach(enc.top, config, enc.target_names(settings["placement"]), method=method)
                    enc.name_adapters()
                    checkpoint.load(enc.top, args.run / "state" / f"{method}_seed{seed}" / f"task{t}.safetensors",
                                    config, method, tasks_done=t)
                    enc.top.eval()
                    layers, shares = _diagnose(enc, texts, lengths, groups, len(names), A, torch)
                    stages.append(layers)
                    routed.append(text_routing(shares, groups, t).tolist())
            texts_routed.append(routed)
            seeds.append(stages)
            log(f"{method} seed {seed}: routing after each of {len(names)} tasks probed")
        out["methods"][method] = {"summary": summarise(seeds, texts_routed, len(texts)),
                                  "mean_share": [[mean_share(stage).tolist() for stage in stages] for stages in seeds],
                                  "text_routing": texts_routed, "layers": seeds}
    A.detach(enc.top)
    return out


def _diagnose(enc, texts, lengths, groups, n_tasks: int, A, torch) -> tuple[dict[str, dict], np.ndarray]:
    """Diagnostics of every MoRAM layer on the probe texts (real tokens only), with the current checkpoint,
    and the per-text shares of each task's atoms, averaged over layers (n_texts, tasks learned)."""
    from moram_ref.experiments.toy.routing import layer_diagnostics  # noqa: PLC0415

    layers = A.moram_layers(enc.top)
    inputs: dict[str, list] = {name: [] for name, _ in layers}
    weights: dict[str, list] = {name: [] for name, _ in layers}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, name=name: inputs[name].append(args[0].detach()))
             for name, layer in layers]
    A.set_recording(enc.top, True)
    try:
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                enc.embed(texts[i : i + 64])
                real = torch.arange(inputs[layers[0][0]][-1].shape[1])[None, :] < torch.as_tensor(
                    lengths[i : i + 64])[:, None]  # (B, L)
                for name, layer in layers:
                    inputs[name][-1] = inputs[name][-1][real].numpy()
                    weights[name].append(layer.last_weights[real].numpy())
    finally:
        A.set_recording(enc.top, False)
        for h in hooks:
            h.remove()
    token_groups = np.repeat(groups, lengths)
    token_texts = np.repeat(np.arange(len(texts)), lengths)
    result, per_text = {}, []
    for name, layer in layers:
        view = SimpleNamespace(config=layer.config, n_atoms=layer.n_atoms, frozen_keys=layer.frozen_keys.numpy())
        w = np.concatenate(weights[name])
        result[name] = layer_diagnostics(view, np.concatenate(inputs[name]), w, token_groups, n_tasks)
        per_text.append(text_shares(w, token_texts, len(texts), layer.config.atoms_per_task))
    return result, np.mean(per_text, axis=0)


def text_shares(w: np.ndarray, token_texts: np.ndarray, n_texts: int, atoms_per_task: int) -> np.ndarray:
    """Per text, the share of its total weight (summed over its tokens) that each task's atoms take.

    w (N_tokens, R) with R = atoms_per_task · tasks learned; token_texts (N_tokens,) the text of each token.
    Returns (n_texts, tasks learned); rows sum to 1, or to 0 for a text whose every token δ silenced."""
    by_task = w.reshape(len(w), -1, atoms_per_task).sum(axis=2)  # (N_tokens, tasks)
    per_text = np.zeros((n_texts, by_task.shape[1]))
    np.add.at(per_text, token_texts, by_task)
    total = per_text.sum(axis=1, keepdims=True)
    return np.divide(per_text, total, out=np.zeros_like(per_text), where=total > 0)


def text_routing(shares: np.ndarray, groups: np.ndarray, learned: int) -> np.ndarray:
    """Counts (tasks × tasks learned): row g, column h = task g's texts whose largest share is task h's
    atoms'. shares (n_texts, learned) from :func:`text_shares`; texts with no weight are not counted."""
    n_tasks = int(groups.max()) + 1
    counts = np.zeros((n_tasks, learned), dtype=int)
    alive = shares.sum(axis=1) > 0
    np.add.at(counts, (groups[alive], shares[alive].argmax(axis=1)), 1)
    return counts


def per_seed(stages: list[dict[str, dict]], routed: list[list[list[int]]], n_texts: int) -> dict[str, float]:
    """One seed's summary numbers (module docstring), each the mean over layers; ``routed``: that seed's
    :func:`text_routing` counts after each task, over ``n_texts`` probe texts (silenced ones included)."""
    last = stages[-1]
    own, newest, atoms99, silent = [], [], [], []
    for d in last.values():
        s = np.asarray(d["share"])
        own.append(float(np.mean(np.diag(s))))
        newest.append(float(s[-1, :-1].mean()) if s.shape[0] > 1 else float("nan"))
        atoms99.append(float(np.mean(d["atoms99"])))
        silent.append(float(np.mean(d["silent"])))
    quiet = [float(np.mean([np.asarray(d["share"])[:t, t].sum() for d in stage.values()]))
             for t, stage in enumerate(stages) if t >= 1]
    counts = np.asarray(routed[-1])
    return {"own": float(np.mean(own)), "newest": float(np.mean(newest)),
            "old_on_new": float(np.mean(quiet)) if quiet else float("nan"),
            "atoms99": float(np.mean(atoms99)), "silent": float(np.mean(silent)),
            "text_own": float(np.trace(counts) / n_texts)}  # a text δ silenced entirely is not on its own atoms



def summarise(seeds: list[list[dict]], routed: list, n_texts: int) -> dict[str, dict]:
    values = [per_seed(stages, r, n_texts) for stages, r in zip(seeds, routed)]
    return {key: {**ci_cell([v[key] for v in values]), "per_seed": [v[key] for v in values]} for key in values[0]}


def brief(result: dict) -> dict:
    """``routing_summary.json``: the run, and per method the summary and the layer-mean share matrices (what
    the docs commit and ``report`` reads; the per-layer records stay in ``routing.json``)."""
    run = dict(result["run"])
    run["settings"] = portable(run["settings"])
    return {"kind": "text-cl routing", "run": run, "per_task": result["per_task"],
            "texts_per_task": result["texts_per_task"],
            "methods": {m: {"summary": e["summary"], "mean_share": e["mean_share"],
                            "text_routing": [r[-1] for r in e["text_routing"]]}
                        for m, e in result["methods"].items()}}


def mean_share(stage: dict[str, dict]) -> np.ndarray:
    """The share matrix (tasks learned × tasks) of one stage, averaged over layers."""
    return np.mean([np.asarray(d["share"]) for d in stage.values()], axis=0)


def _figures(result: dict, out: Path) -> None:
    """``routing_share_<method>.png`` per method (seed 0) in ``out``. Long sequences show the stages after
    tasks 1, 2, the middle one and the last."""
    from moram_ref.experiments.toy.routing import share_heatmaps  # noqa: PLC0415

    names = result["run"]["tasks"]
    n = len(names)
    shown = list(range(n)) if n <= 4 else sorted({0, 1, n // 2, n - 1})
    for method, entry in result["methods"].items():
        stages = entry["layers"][0]
        shares = {f"after task {t + 1}": mean_share(stages[t]) for t in shown}
        share_heatmaps(shares, names, out / f"routing_share_{method}.png",
                       f"{method}: share of Σw of each task's atoms (rows) on each task's tokens (columns), "
                       "mean over layers, seed 0")
