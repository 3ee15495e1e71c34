"""``moram-ref text-cl``: every method × seed on a task sequence, tables with 95 % CIs, files and figures."""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from moram_ref import metrics
from moram_ref.config import MoRAMConfig
from moram_ref.experiments import cliargs, rundir, threads
from moram_ref.experiments.toy.demo import ci_note, format_cell

LABELS = {"zero_shot": "zero-shot", "seq_lora": "sequential LoRA", "moe_lora": "MoE-LoRA (router)", "olora": "O-LoRA",
          "dense_moram": "dense MoRAM", "moram": "MoRAM"}
DEFAULTS = dict(steps=60, batch=16, lr=2e-3, adapt_layers=2, max_length=128, placement="all",
                atoms_per_task=8, top_k=8, temperature=0.01, threshold=0.2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from moram_ref.experiments.textcl.data import SEQUENCES
    from moram_ref.experiments.textcl import METHODS

    p.add_argument("--data-root", type=cliargs.existing_dir, required=True,
                   help="folder with one sub-folder per task (JSON)")
    p.add_argument("--out", type=cliargs.out_dir, default=Path("runs/text-cl"),
                   help="run folder (default runs/text-cl; one folder per sequence and setting)")
    p.add_argument("--sequence", default="standard-1", choices=sorted(SEQUENCES),
                   help="O-LoRA task order (default standard-1; long-4 has 15 tasks)")
    p.add_argument("--tasks", type=cliargs.integer(2), default=None,
                   help="use only the first N ≥ 2 tasks of the sequence (Transfer and BWT need two)")
    p.add_argument("--seeds", type=cliargs.integer(1), default=3, help="seeds 0 … N-1 (training order and fresh atoms; default 3)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"methods to train and evaluate, each on every seed (default: all six: {', '.join(METHODS)}); "
                        f"parts run with disjoint --methods join with text-cl-merge")
    p.add_argument("--steps", type=cliargs.integer(1), default=DEFAULTS["steps"], help="training steps per task (default %(default)s)")
    p.add_argument("--batch", type=cliargs.integer(1), default=DEFAULTS["batch"], help="texts per step (default 16)")
    p.add_argument("--lr", type=cliargs.learning_rate(), default=DEFAULTS["lr"], help="AdamW learning rate (default 2e-3)")
    p.add_argument("--adapt-layers", type=cliargs.integer(1), default=DEFAULTS["adapt_layers"],
                   help="adapters on the encoder's top N blocks (default %(default)s; MiniLM has 6)")
    p.add_argument("--placement", default=DEFAULTS["placement"], choices=["attention", "ffn", "all"],
                   help="which linear layers of an adapted block get adapters: attention q/k/v/output, the "
                        "feed-forward pair, or both (default %(default)s)")
    p.add_argument("--max-length", type=cliargs.integer(MIN_LENGTH), default=DEFAULTS["max_length"],
                   help="tokens per input, [CLS] and [SEP] included; longer texts are cut (default %(default)s)")
    cliargs.moram_flags(p, MoRAMConfig(**{k: DEFAULTS[k] for k in ("atoms_per_task", "top_k", "temperature",
                                                                    "threshold")}))
    p.add_argument("--max-train", type=cliargs.integer(1), default=None, help="cap training samples per task (quick runs; default: every one)")
    p.add_argument("--max-test", type=cliargs.integer(1), default=None, help="cap test samples per task (quick runs; default: every one)")
    p.add_argument("--eval-split", default="test", choices=["test", "val"], help="'val' for sweeps")
    p.add_argument("--model-path", type=cliargs.existing_dir, default=None,
                   help="encoder folder (default: the packaged MiniLM)")
    p.add_argument("--no-plots", action="store_true", help="tables and results.json only, no figures (no matplotlib needed)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (same settings) after its last finished task, each method and seed "
                        "on the thread count its records were made on")


MIN_LENGTH = 3  # [CLS], one token of text, [SEP]
FIGURES = ("accuracy_*.png", "activation_*.png", "atoms_for_99_mass.png")  # what _figures draws
EARLIER_RUN = ("state", "matrices", "results.json", "table.md", *FIGURES,  # and text-cl-routing's outputs:
               "routing.json", "routing_summary.json", "routing_share_*.png",  # they came from that state,
               "confusion.json", "confusion.png")  # as text-cl-confusion's did
RUNTIME_ONLY = ("out", "no_plots", "resume", "command", "merged_from")  # flags that do not shape the results


def settings_of(args: argparse.Namespace) -> dict:
    """The flags recorded in ``config.json`` and compared on a re-run (paths made absolute)."""
    return {k: (str(Path(v).resolve()) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in RUNTIME_ONLY}


def portable(settings: dict) -> dict:
    """``settings`` with the local folders reduced to their names: what a results file records (it travels)."""
    return {k: (Path(v).name if k in ("data_root", "model_path") and v else v) for k, v in settings.items()}


def encoder_record(model_path, model, adapt_layers: int) -> dict:
    """The encoder a results file names: its folder (or the packaged MiniLM), the sha256 of its files
    (:func:`~.state.encoder_fingerprint`), its blocks, the adapted ones."""
    from moram_ref.experiments.textcl.state import encoder_fingerprint, encoder_name  # noqa: PLC0415

    return {"name": encoder_name(model_path), "sha256": encoder_fingerprint(model_path),
            "blocks": int(model.config.num_hidden_layers), "adapted_blocks": adapt_layers}


def validate(args: argparse.Namespace) -> tuple[list, MoRAMConfig]:
    """Every check before any work: flags, the encoder folder, every task file; returns (tasks, config)."""
    from moram_ref.experiments.textcl.data import SEQUENCES, load_task

    sequence = SEQUENCES[args.sequence]
    if args.tasks is not None and args.tasks > len(sequence):
        raise cliargs.UsageError(f"--tasks: {args.tasks} exceeds the {len(sequence)} tasks of --sequence {args.sequence}")
    args.tasks = args.tasks or len(sequence)  # recorded resolved: omitting --tasks equals naming them all
    cliargs.no_repeats("--methods", args.methods)
    config = cliargs.moram_config(args)
    _check_encoder(args)
    tasks = []
    for name in sequence[: args.tasks]:
        folder = args.data_root / name
        if not folder.is_dir():
            raise cliargs.UsageError(f"--data-root: task folder {folder} does not exist (--sequence {args.sequence}); "
                                     "--data-root is your copy of the benchmark, one folder per task holding "
                                     "labels.json, train.json, test.json (docs/experiments.md)")
        labels = cliargs.read_json(folder / "labels.json", "--data-root")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise cliargs.UsageError(f"{folder / 'labels.json'}: expected a non-empty list of label strings")
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise cliargs.UsageError(f"{folder / 'labels.json'}: each label once, got {repeated} more than once")
        for split in ("train", "test"):
            path = folder / f"{split}.json"
            cliargs.check_samples(path, cliargs.read_json(path, "--data-root"))
        try:
            task = load_task(args.data_root, name, max_train=args.max_train, max_test=args.max_test)
        except (OSError, ValueError, KeyError) as exc:
            raise cliargs.UsageError(f"--data-root: {exc}") from None
        if args.batch > len(task.train_text):
            raise cliargs.UsageError(f"--batch: {args.batch} exceeds the {len(task.train_text)} training samples of "
                                     f"task {name} (after the validation split and --max-train)")
        tasks.append(task)
    rundir.check(args.out, "text-cl", settings_of(args), resume=args.resume)
    if args.resume:  # every record readable, ours and current, before any work
        from moram_ref.experiments.textcl import state  # noqa: PLC0415

        fingerprint, shaping = state.data_fingerprint(tasks), state.shaping(settings_of(args))
        for seed in range(args.seeds):
            for method in args.methods:
                state.check(state.folder(args.out, method, seed), method, seed, [t.name for t in tasks], fingerprint,
                            config, shaping)
    return tasks, config


def _check_encoder(args: argparse.Namespace) -> None:
    """--model-path holds a transformers encoder whose files can all be read; --adapt-layers and
    --max-length fit it."""
    from moram_ref.experiments.textcl.encoder import default_model_path
    from moram_ref.experiments.textcl.state import check_encoder

    try:
        path = args.model_path or default_model_path()
    except ImportError as exc:
        raise cliargs.UsageError(f"--model-path: not given and {exc}") from None
    cfg = cliargs.read_json(Path(path) / "config.json", "--model-path")
    layers, positions = cfg.get("num_hidden_layers"), cfg.get("max_position_embeddings")
    if not isinstance(layers, int):
        raise cliargs.UsageError(f"--model-path: {path}/config.json has no num_hidden_layers (not a transformers encoder?)")
    if args.adapt_layers > layers:
        raise cliargs.UsageError(f"--adapt-layers: {args.adapt_layers} exceeds the encoder's {layers} blocks")
    if isinstance(positions, int) and args.max_length > positions:
        raise cliargs.UsageError(f"--max-length: {args.max_length} exceeds the encoder's {positions} positions")
    check_encoder(path)  # weights present, every file readable (hashed once: the records name it)


def run(args: argparse.Namespace, log=print) -> dict:
    tasks, config = validate(args)
    started_on, part_threads = ((threads.started_on(args.out), threads.part_counts(args.out, args.methods))
                                if args.resume else (None, {}))  # a damaged count stops the run here, early
    info = {"tasks": [{"name": t.name, "labels": t.labels, "prompts": t.prompts, "train": len(t.train_text),
                       "val": len(t.val_text), "test": len(t.test_text), "dropped": t.dropped} for t in tasks]}
    for t in tasks:  # recorded in config.json too; said here, where it is seen
        if any(t.dropped.values()):
            log(f"{t.name}: left out {t.dropped.get('train', 0)} training and {t.dropped.get('test', 0)} test "
                "sample(s) whose answer is none of labels.json's labels")
    from moram_ref.experiments.textcl.encoder import load_checked

    loaded = load_checked(args.model_path)  # an encoder that does not load is refused before the folder is touched
    info["threads"] = threads.current()  # the count a resume continues on (a fresh run records it)
    with rundir.open_run(args.out, "text-cl", settings_of(args), resume=args.resume, info=info):
        if not args.resume:  # a re-run with the same settings starts from scratch: the earlier run goes
            rundir.clear_earlier(args.out, EARLIER_RUN, log)
        return _run(args, tasks, config, log, loaded, started_on, part_threads)


def _run(args: argparse.Namespace, tasks: list, config: MoRAMConfig, log, loaded: tuple,
         started_on: int | None = None, part_threads: dict | None = None) -> dict:
    """The run itself. For a resume: ``started_on``, the thread count the run started with (None: not
    recorded), and ``part_threads``, each method's part's in a merged run (:mod:`..threads`)."""
    import torch

    from moram_ref.experiments.progress import printer
    from moram_ref.experiments.textcl import state
    from moram_ref.experiments.textcl.encoder import CachedEncoder
    from moram_ref.experiments.textcl.train import TrainSettings, run_method

    started = time.perf_counter()
    settings = replace(TrainSettings(), steps=args.steps, batch=args.batch, lr=args.lr, placement=args.placement,
                       moram=config, eval_split=args.eval_split)
    out: Path = args.out
    (out / "matrices").mkdir(parents=True, exist_ok=True)
    model, tokenizer = loaded
    enc = CachedEncoder(model, tokenizer, adapt_layers=args.adapt_layers, max_length=args.max_length)
    own = torch.get_num_threads()  # this process's count (OMP_NUM_THREADS, or the cores)
    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": own,
               "cpu": threads.cpu(), "mkl_cbwr": os.environ.get("MKL_CBWR"),  # MKL's path: None = its default
               "platform": platform.platform()}
    part_threads = part_threads or {}
    run_threads = started_on or own  # the encoder's cached blocks: on the run's starting count
    log(f"sequence {args.sequence}: {', '.join(t.name for t in tasks)}; caching the frozen lower blocks …")
    t0 = time.perf_counter()
    split_text = "val_text" if args.eval_split == "val" else "test_text"
    with threads.pinned(run_threads):  # the cached blocks' rounding is the run's too
        enc.precompute([x for t in tasks for x in t.train_text + getattr(t, split_text) + t.prompts])
    log(f"cached {len(enc._cache)} texts in {time.perf_counter() - t0:.0f} s")
    for task in tasks:
        texts = task.train_text + getattr(task, split_text)
        if cut := sum(map(enc.is_cut, texts)):
            log(f"note: {cut} of {len(texts)} {task.name} passages are longer than --max-length {args.max_length} "
                f"tokens: each is read as its first {args.max_length}")
    rundir.check_stop()
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    total = len(args.methods) * args.seeds
    done = 0
    for seed in range(args.seeds):
        for method in args.methods:
            def after_task(i: int, name: str, row, method=method, seed=seed) -> None:
                rundir.check_stop()  # an interrupt Python swallowed: stop here, not at the end
                log(f"{method} seed {seed}: after task {i}/{len(tasks)} ({name}), union accuracy % "
                    + ", ".join(f"{t.name} {100 * v:.1f}" for t, v in zip(tasks, row)))

            def restored(k: int, method=method, seed=seed) -> None:
                log(f"{method} seed {seed}: restored {k}/{len(tasks)} task(s) from {state.folder(out, method, seed)}")

            folder = state.folder(out, method, seed)
            count, why = _pair_threads(state.recorded_threads(folder) if args.resume else None,
                                       part_threads.get(method), started_on)
            trains = not args.resume or state.tasks_done(folder) < len(tasks)  # a finished pair is only restored
            with threads.continued(count, log if trains and args.resume else None, f"{method} seed {seed}",
                                   why or "", "its run"), printer(settings.steps, log) as on_step:
                res = run_method(method, seed, settings, enc, tasks, on_step=on_step,
                                 state_dir=folder, resume=args.resume, on_task=after_task, on_resume=restored,
                                 recorded=state.shaping(settings_of(args)))
            res["seconds"] = float(sum(res["seconds_per_task"]))
            runs[method].append(res)
            done += 1
            _save_matrices(out / "matrices", method, seed, res, [t.name for t in tasks])
            s = metrics.summary(res["union"])
            log(f"[{done}/{total}] {LABELS[method]:<18} seed {seed}: Last {100 * s['last']:.1f}, "
                f"Average {100 * s['average']:.1f}, {res['seconds']:.0f} s")
    results = summarise(runs, [t.name for t in tasks])
    results["settings"] = portable(settings_of(args))
    results["train_settings"] = {**asdict(settings), "moram": config.to_dict()}
    results["machine"] = machine  # this process's
    results["threads"] = thread_counts([r["threads"] for rs in runs.values() for r in rs])
    results["encoder"] = encoder_record(args.model_path, model, args.adapt_layers)
    results["wall_seconds"] = time.perf_counter() - started  # this process's (a resumed run: since the resume)
    results["method_seconds"] = float(sum(r["seconds"] for rs in runs.values() for r in rs))  # restored tasks too
    results["resumed"] = {f"{m}_seed{i}": r["resumed_after"] for m, rs in runs.items() for i, r in enumerate(rs)
                          if r["resumed_after"]}
    if getattr(args, "merged_from", None):  # text-cl-merge: the parts whose records were restored
        results["merged_from"] = [Path(p).name for p in args.merged_from]
    table = format_table(results) + "\n" + thread_note(results) + "\n"
    with rundir.staging(out) as stage:  # results, table and figures replace the earlier ones together
        rundir.write_json(stage / "results.json", results)
        rundir.write_text(stage / "table.md", table)
        if not args.no_plots:
            _figures(runs, results, tasks, config, stage)
        rundir.publish(stage, out, stale=FIGURES)
    log("\n" + table)
    log(f"wrote {out}/results.json, table.md, matrices/, config.json" + ("" if args.no_plots else ", *.png")
        + f" — {results['wall_seconds'] / 60:.1f} min in all")
    return results


def _save_matrices(folder: Path, method: str, seed: int, res: dict, names: list[str]) -> None:
    data = {"tasks": names, "union": res["union"].tolist(), "own": res["own"].tolist(),
            "trainable_per_task": res["trainable_per_task"], "seconds": res["seconds"], "n99": res["n99"]}
    rundir.write_json(folder / f"{method}_seed{seed}.json", data)
    for space in ("union", "own"):
        rundir.write_csv(folder / f"{method}_seed{seed}_{space}.csv", [["after \\ on"] + names]
                         + [[name] + [f"{100 * v:.2f}" for v in row] for name, row in zip(names, res[space])])


def _pair_threads(recorded: int | None, part: int | None, started: int | None) -> tuple[int | None, str | None]:
    """The count a (method, seed) pair runs on and why: its records' last, else its part's starting count (a
    merged run), else the run's; (None, None) if none is recorded: this process's own."""
    for count, why in ((recorded, "its records were made"), (part, "its part started"), (started, "this run started")):
        if count is not None:
            return count, why
    return None, None


def thread_counts(per_pair: list[list]) -> dict:
    """``{"counts", "unrecorded"}``: the thread counts the run's tasks ran on (sorted, each once) and how
    many tasks' records predate thread counts, from each (method, seed) pair's ``run_method`` ``threads``."""
    flat = [t for pair in per_pair for t in pair]
    return {"counts": sorted({t for t in flat if t is not None}), "unrecorded": sum(t is None for t in flat)}


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
            entry[space]["per_seed"] = per_seed  # seed i of every method saw the same batches: paired comparisons
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
            cells = [format_cell(e[space][k]) for k in ("transfer", "average", "last", "bwt", "forgetting")]
            params = e["trainable_per_task"][0] if e["trainable_per_task"] else 0
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {params:,} | {e['seconds_mean']:.0f} |")
        lines.append("")
    seeds = next(iter(results["methods"].values()))["seeds"]
    lines.append(f"Mean ± 95 % confidence half-width over {seeds} seeds ({ci_note(seeds)}), in %." if seeds > 1
                 else "One seed: each cell is that run's value, in % (a single seed gives no confidence interval).")
    return "\n".join(lines) + "\n"


def thread_note(results: dict) -> str:
    """The line under ``table.md`` that says on what the numbers were computed and what else moves them: the
    thread counts the tasks ran on (``results["threads"]``) and the CPU (``results["machine"]["cpu"]``)."""
    counts = [str(c) for c in results.get("threads", {}).get("counts", [])]
    unrecorded = results.get("threads", {}).get("unrecorded", 0)
    on = (", ".join(counts[:-1]) + " and " if len(counts) > 1 else "") + counts[-1] + " thread(s)" if counts \
        else "an unrecorded thread count"
    if counts and unrecorded:
        on += f" ({unrecorded} task(s) on an unrecorded count)"
    machine = results.get("machine", {})
    where = "".join(f", {v}" for v in (machine.get("cpu"), machine.get("mkl_cbwr") and f"MKL_CBWR={machine['mkl_cbwr']}")
                    if v)
    moram = {"moram", "dense_moram"} & set(results.get("methods", {}))
    return (f"Computed on {on}{where}; `--resume` keeps each method and seed on its count. Another thread count "
            "or CPU kind rounds differently, which can move the numbers"
            + (" (MoRAM's at τ = 0.01 by up to 16 points on a task)" if moram else "")
            + ": docs/results.md, \"Threads and reproducibility\".")


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
                                        f"{LABELS[method]}: weights w at the first adapted block's key projection (seed 0)")
    curves = {LABELS[m]: runs[m][0]["n99"] for m in ("moram", "dense_moram") if m in runs}
    if any(curves.values()):
        plots.atoms_for_mass(curves, [config.atoms_per_task * (t + 1) for t in range(len(tasks))],
                             out / "atoms_for_99_mass.png", "atoms carrying 99 % of the weight, per layer (seed 0)")
