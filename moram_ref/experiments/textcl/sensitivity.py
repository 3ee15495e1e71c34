"""``moram-ref text-cl-sensitivity RUN``: how far a one-ulp nudge carries, method by method and τ by τ.

Why: a text-CL run's numbers depend on the thread count and the BLAS path it ran on, and only the MoRAM
variants' predictions move with them (docs/results.md, "Threads and reproducibility"). Those change a
product in its last bit; this command measures what such a difference grows into.

Reads a finished ``text-cl`` run (its settings, data and encoder, as ``text-cl-routing`` does) and, for one
seed (``--seed``), trains each of its trained methods twice through its first ``--tasks`` tasks with the
run's settings: the *reference*, and a *nudged* copy whose first task's fresh trainable tensors are
multiplied entry by entry by ``1 ± ε`` (``--epsilon``, default 2⁻²³: one float32 ulp at 1; signs from a
fixed generator; tensors initialised to zero stay zero). Both copies see the same batches, dropout masks
and thread count (the pair's recorded one), so every difference between them grows from the nudge.
``--temperatures`` adds runs of MoRAM and dense MoRAM at other τ (the run's own τ is always included).

Recorded per (method, τ):

* ``distance``: ``‖θ' − θ‖ / ‖θ‖`` over every adapter tensor (frozen banks and the current task's; the
  backbone is frozen and shared) after steps 1, 2, 5, 10, 20, 30, … of each task;
* after each task, ``predictions_differ``, the share of test texts (every task's, union label space) whose
  predicted label differs, and ``accuracy_gap``, the largest |Δ accuracy| of a task;
* for MoRAM and dense MoRAM, ``kept_differ``: the share of (token, adapted layer) pairs of ``--per-task``
  test texts per task whose set of atoms with non-zero weight differs (evaluation mode, δ on);
* ``reproduces``: for the run's own τ, whether the reference's union accuracy rows equal the run's
  recorded ones (they are the same computation; None at another τ).

Writes ``<RUN>/sensitivity.json`` and, unless ``--no-plots``, ``sensitivity.png`` (distance against step).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from moram_ref.config import MIN_TEMPERATURE
from moram_ref.experiments import cliargs, rundir, threads
from moram_ref.experiments.textcl import finished, state
from moram_ref.experiments.textcl.run import portable

OUTPUT, FIGURE = "sensitivity.json", "sensitivity.png"
TRAINED = ("seq_lora", "moe_lora", "olora", "dense_moram", "moram")  # methods with adapters, in table order
ROUTED = ("dense_moram", "moram")  # self-activated: their kept sets are compared
EPSILON = 2.0 ** -23
PER_TASK = 32  # probe texts per task whose kept sets are compared


def recorded_steps(steps: int) -> list[int]:
    """The steps (from 1) after which the distance is recorded: 1, 2, 5, then every 10th, and the last."""
    return sorted({s for s in (1, 2, 5, *range(10, steps + 1, 10), steps) if s <= steps})


def add_arguments(p: argparse.ArgumentParser) -> None:
    finished.add_run_arguments(p)
    p.add_argument("--seed", type=cliargs.integer(0, cliargs.MAX_SEED), default=0,
                   help="the run's seed to probe (default 0)")
    p.add_argument("--tasks", type=cliargs.integer(1), default=2,
                   help="train the first N tasks of the run's sequence (default %(default)s)")
    p.add_argument("--epsilon", type=cliargs.real(0, 0.5, low_open=True), default=EPSILON,
                   help="relative size of the nudge of the first task's fresh tensors (default 2^-23 = "
                        "1.19e-07, one float32 ulp at 1)")
    p.add_argument("--temperatures", nargs="+", type=cliargs.real(MIN_TEMPERATURE), default=[], metavar="TAU",
                   help=f"also probe MoRAM and dense MoRAM at these τ ≥ {MIN_TEMPERATURE:g} (the run's own τ is "
                        f"always probed)")
    p.add_argument("--per-task", type=cliargs.integer(1), default=PER_TASK,
                   help="evaluation texts (the run's --eval-split) per task whose kept atom sets are compared "
                        "(default %(default)s)")


def run(args: argparse.Namespace, log=print) -> dict:
    settings, methods, tasks, records = finished.plan(args.run, args.data_root, TRAINED, (OUTPUT, FIGURE),
                                                      "no method with adapters", args.model_path)
    if args.seed >= settings["seeds"]:
        raise cliargs.UsageError(f"--seed: {args.seed}, but the run has seeds 0 … {settings['seeds'] - 1}")
    if args.tasks > len(tasks):
        raise cliargs.UsageError(f"--tasks: {args.tasks} exceeds the run's {len(tasks)} tasks")
    cliargs.no_repeats("--temperatures", [repr(t) for t in args.temperatures])
    if not set(methods) & set(ROUTED):
        for flag, given in (("--temperatures", args.temperatures), ("--per-task", args.per_task != PER_TASK)):
            if given:
                raise cliargs.UsageError(f"{flag}: applies to MoRAM and dense MoRAM, and the run trained neither "
                                         f"(--methods {' '.join(settings['methods'])})")
    note = finished.unchecked_settings(records)
    if note:
        log(note)
    started_on = threads.started_on(args.run, "run")
    with rundir.open_run(args.run, "text-cl", settings, eval_only=True, arg="run"):
        start = time.perf_counter()
        result = _probe(args, settings, methods, tasks, records, started_on, log)
        result["wall_seconds"] = time.perf_counter() - start
        finished.publish(args.run, OUTPUT, result, FIGURE, _figure, args.no_plots, log)
    return result


def _probe(args, settings: dict, methods: list[str], tasks: list, records: dict, started_on, log) -> dict:
    import torch  # noqa: PLC0415

    from moram_ref.experiments.textcl.train import TrainSettings  # noqa: PLC0415

    enc, encoder = finished.encoder(settings, args.model_path)
    split = settings.get("eval_split", "test")
    with threads.continued(started_on, log, "the encoder's cached blocks", "the run started", "the run"):
        enc.precompute([x for t in tasks for x in t.train_text + getattr(t, f"{split}_text") + t.prompts])
    config = cliargs.moram_config(argparse.Namespace(**settings))
    base = TrainSettings(steps=settings["steps"], batch=settings["batch"], lr=settings["lr"],
                         placement=settings["placement"], moram=config, eval_split=split)
    probe_texts = [x for t in tasks for x in getattr(t, f"{split}_text")[: args.per_task]]
    taus = [config.temperature] + [t for t in args.temperatures if t != config.temperature]
    result: dict = {"kind": "text-cl sensitivity",
                    "run": {"settings": portable(settings), "tasks": [t.name for t in tasks], "encoder": encoder},
                    "seed": args.seed, "tasks_trained": args.tasks, "epsilon": args.epsilon,
                    "steps": recorded_steps(base.steps), "per_task": args.per_task,
                    "threads": torch.get_num_threads(), "threads_used": [], "probes": []}
    for method in methods:
        for tau in (taus if method in ROUTED else [config.temperature]):
            who = f"{method} seed {args.seed}" + (f", τ {tau:g}" if method in ROUTED else "")
            folder = state.folder(args.run, method, args.seed)
            with threads.continued(state.recorded_threads(folder), log, who, "its records were made",
                                   "its record") as used:
                result["threads_used"] = sorted({*result["threads_used"], used})
                settings_tau = base if tau == config.temperature else _with_tau(base, tau)
                t0 = time.perf_counter()
                ref = _trained(method, args, settings_tau, enc, tasks, probe_texts, nudge=False)
                nudged = _trained(method, args, settings_tau, enc, tasks, probe_texts, nudge=True)
            entry = _compare(method, tau, ref, nudged, result["steps"])
            if tau == config.temperature:
                recorded = np.asarray(records[method, args.seed]["union"], dtype=float)[: args.tasks]
                entry["reproduces"] = bool(np.array_equal(ref["union"][: args.tasks], recorded))
            else:
                entry["reproduces"] = None
            entry["seconds"] = time.perf_counter() - t0
            result["probes"].append(entry)
            log(f"{who}: distance {_fmt(entry['distance'][0])} after step 1, {_fmt(entry['distance'][-1])} at the "
                f"end; predictions differ {100 * entry['predictions_differ'][-1]:.1f} %"
                + (f", kept sets {100 * entry['kept_differ'][-1]:.1f} %" if entry["kept_differ"] else "")
                + {True: "; the reference reproduces the recorded run", False: "; the reference does NOT "
                   "reproduce the recorded run (another machine kind or build?)", None: ""}[entry["reproduces"]]
                + f" ({entry['seconds']:.0f} s)")
    from moram_ref.torch import attach as A  # noqa: PLC0415

    A.detach(enc.top)
    return result


def _with_tau(base, tau: float):
    from dataclasses import replace  # noqa: PLC0415

    return replace(base, moram=replace(base.moram, temperature=tau))


def _trained(method: str, args, settings, enc, tasks: list, probe_texts: list[str], nudge: bool) -> dict:
    """One copy through the first ``args.tasks`` tasks: adapter snapshots at the recorded steps, predictions
    and (MoRAM variants) kept sets after each task, the union accuracy matrix."""
    import torch  # noqa: PLC0415

    from moram_ref.experiments.textcl.train import predict, run_method  # noqa: PLC0415
    from moram_ref.torch import attach as A  # noqa: PLC0415

    steps = set(recorded_steps(settings.steps))
    out: dict = {"snapshots": [], "predictions": [], "kept": []}

    def on_begin(task: int) -> None:
        if nudge and task == 1:
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in A.trainable_parameters(enc.top):
                    sign = torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1  # ±1
                    p.mul_(1 + args.epsilon * sign)

    def on_step(step) -> None:
        if step.step in steps:
            out["snapshots"].append(_adapter_vector(enc.top))

    def on_task(i: int, name: str, row) -> None:
        out["predictions"].append(torch.cat([best for best, _ in predict(enc, tasks, settings.eval_split)]))
        if method in ROUTED:
            out["kept"].append(_kept_sets(enc, probe_texts))

    res = run_method(method, args.seed, settings, enc, tasks, on_step=on_step, on_task=on_task,
                     stop_after=args.tasks, on_begin=on_begin)
    out["union"] = res["union"]
    return out


def _adapter_vector(top) -> "torch.Tensor":
    """Every attached layer's own tensors (frozen bank and current task; not the base layer), as one float64 vector."""
    import torch  # noqa: PLC0415

    from moram_ref.torch import attach as A  # noqa: PLC0415

    parts = [v.detach().double().flatten() for _, layer in A.attached_layers(top)
             for k, v in layer.state_dict().items() if not k.startswith("base_layer")]
    return torch.cat(parts)


def _kept_sets(enc, texts: list[str]) -> list:
    """Per MoRAM layer, (real tokens, R) booleans: which atoms have non-zero weight (evaluation mode)."""
    import torch  # noqa: PLC0415

    from moram_ref.torch import attach as A  # noqa: PLC0415

    A.set_recording(enc.top, True)
    try:
        with torch.no_grad():
            enc.embed(texts)
        lengths = [enc.token_count(x) for x in texts]
        real = torch.zeros(len(texts), max(lengths), dtype=torch.bool)
        for i, n in enumerate(lengths):
            real[i, :n] = True
        return [(layer.last_weights > 0)[real] for _, layer in A.moram_layers(enc.top)]
    finally:
        A.set_recording(enc.top, False)


def _compare(method: str, tau: float, ref: dict, nudged: dict, steps: list[int]) -> dict:
    distance = [float((b - a).norm() / a.norm()) if float(a.norm()) > 0 else float((b - a).norm())
                for a, b in zip(ref["snapshots"], nudged["snapshots"])]
    differ = [float((a != b).double().mean()) for a, b in zip(ref["predictions"], nudged["predictions"])]
    trained = len(ref["predictions"])
    gap = np.abs(ref["union"][:trained] - nudged["union"][:trained]).max(axis=1)
    kept = [float(np.mean([float((a != b).any(dim=-1).double().mean()) for a, b in zip(ka, kb)]))
            for ka, kb in zip(ref["kept"], nudged["kept"])]
    return {"method": method, "temperature": tau, "distance": distance,
            "task_of_step": [t for t in range(1, trained + 1) for _ in steps],
            "predictions_differ": differ, "accuracy_gap": gap.tolist(), "kept_differ": kept}


def _fmt(x: float) -> str:
    return f"{x:.1e}"


def _figure(result: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from moram_ref.experiments.textcl.routing_tables import LABELS  # noqa: PLC0415

    steps = result["steps"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = plt.get_cmap("tab20").colors
    for i, entry in enumerate(result["probes"]):
        n = len(entry["distance"]) // len(steps)
        x = [t * steps[-1] + s for t in range(n) for s in steps]
        label = LABELS.get(entry["method"], entry["method"])
        if entry["method"] in ROUTED:
            label += f", τ {entry['temperature']:g}"
        ax.plot(x, np.maximum(entry["distance"], 1e-12), marker="." if entry["method"] != "dense_moram" else "x",
                ls="--" if entry["method"] == "dense_moram" else "-", color=colours[i % len(colours)], label=label)
    for t in range(1, result["tasks_trained"]):
        ax.axvline(t * steps[-1] + 0.5, color="grey", lw=0.6, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("training step (tasks one after the other)")
    ax.set_ylabel("‖θ′ − θ‖ / ‖θ‖ of the adapters")
    ax.set_title(f"a relative nudge of {result['epsilon']:.2g} to task 1's fresh tensors (seed {result['seed']})",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
