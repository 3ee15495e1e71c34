"""``moram-ref llm``: one command per experiment — train through a sequence, evaluate after every task,
print the matrix, OP and both BWTs; resumable; ``torchrun`` for several processes."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from pathlib import Path

import numpy as np

from moram_ref import metrics
from moram_ref.config import MoRAMConfig
from moram_ref.experiments import cliargs, rundir, threads
from moram_ref.experiments.llm import METHODS

LABELS = {"zero_shot": "frozen (zero-shot)", "seq_lora": "sequential LoRA", "olora": "O-LoRA",
          "dense_moram": "dense MoRAM", "moram": "MoRAM"}
# summary.json / matrix.json: scores 0–100 (accuracy, ROUGE-L, edit similarity, … in percent), OP and BWTs in points
UNITS = "percent"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from moram_ref.experiments.llm.data import SEQUENCES

    p.add_argument("--benchmark", default="trace", choices=sorted(SEQUENCES), help="task sequence (default %(default)s)")
    p.add_argument("--data-root", type=cliargs.existing_dir, default=None,
                   help="folder with one sub-folder per task (train.json, test.json: lists of prompt/answer rows); "
                        "required except with --make-synthetic")
    p.add_argument("--make-synthetic", type=cliargs.out_dir, default=None, metavar="DIR",
                   help="write the TRACE tasks, generated (random words and answers in the benchmark's layout), to "
                        "DIR/trace and exit: a pipeline check without the benchmark")
    p.add_argument("--out", type=cliargs.out_dir, default=Path("runs/llm"), help="run folder (default %(default)s)")
    src = p.add_mutually_exclusive_group()  # one of the two is required, except with --make-synthetic (validate)
    src.add_argument("--model", help="a local folder (or a cached hub name) for AutoModelForCausalLM.from_pretrained")
    src.add_argument("--tiny", choices=["llama", "qwen2", "gemma"], help="a tiny random decoder (CPU tests)")
    p.add_argument("--methods", nargs="+", default=["moram"], choices=METHODS, metavar="METHOD",
                   help=f"methods to run, one after the other ({', '.join(METHODS)}; default moram)")
    p.add_argument("--resume", action="store_true", help="continue from the last finished task (same settings, on the thread count the run started on)")
    p.add_argument("--eval-only", action="store_true", help="re-evaluate the saved per-task checkpoints (on the thread count the run started on)")
    p.add_argument("--skip-missing", action="store_true", help="leave out tasks whose train/test file is absent")
    p.add_argument("--max-train", type=cliargs.integer(1), default=None, help="cap training samples per task (default: every one)")
    p.add_argument("--max-test", type=cliargs.integer(1), default=None, help="cap test samples per task (default: every one)")
    p.add_argument("--epochs", type=cliargs.integer(1), default=None,
                   help="epochs per task (default: the paper's TRACE epochs, 1 for other tasks)")
    p.add_argument("--batch", type=cliargs.integer(1), default=32, help="effective batch (gradient accumulation)")
    p.add_argument("--micro-batch", type=cliargs.integer(1), default=4, help="at most --batch")
    p.add_argument("--lr", type=cliargs.learning_rate(), default=5e-4,
                   help="Adam learning rate, constant (spec §5; default %(default)s)")
    p.add_argument("--max-prompt", type=cliargs.integer(1), default=1024,
                   help="prompt tokens kept, from the end (MeetingBank: 4096 always, spec §5; default %(default)s)")
    p.add_argument("--max-answer", type=cliargs.integer(1), default=512,
                   help="answer tokens trained on (spec §5; default %(default)s)")
    p.add_argument("--max-new-tokens", type=cliargs.integer(1), default=64,
                   help="tokens generated per test prompt (greedy) (default %(default)s)")
    p.add_argument("--eval-batch", type=cliargs.integer(1, cliargs.MAX_COUNT), default=16,
                   help="prompts generated per batch (default %(default)s)")
    p.add_argument("--numglue-mode", default="numeric", choices=["numeric", "accuracy"],
                   help="NumGLUE scoring: the answer's final number compared numerically (the authors' code) or as "
                        "text accuracy, like the classification tasks (default %(default)s)")
    p.add_argument("--seed", type=cliargs.integer(0, cliargs.MAX_SEED), default=1234,
                   help="seeds each task's fresh atoms, the data order and the dropout masks (spec §5; "
                        "default %(default)s)")
    p.add_argument("--targets", nargs="+", default=["q_proj", "k_proj", "v_proj", "o_proj"], metavar="NAME",
                   help="linear layers to adapt: a module name or its last part(s) after a dot (spec §5: q_proj k_proj "
                        "v_proj o_proj, the default)")
    cliargs.moram_flags(p, MoRAMConfig.paper_llm(), extra=("scale", "dropout"))  # spec §5, LLMs
    p.add_argument("--bf16", action="store_true",
                   help="bf16 weights, for GPUs (on a CPU it runs, several times slower, and says so)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: less memory, slower")
    p.add_argument("--fsdp", action="store_true", help="shard the frozen model over the torchrun processes (FSDP2)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")


# flags that do not shape the results (a resume may change them)
# what a fresh re-run with the same settings removes first (rundir.clear_earlier)
EARLIER_RUN = (*METHODS, "summary.json", "scores.png")
RUNTIME_ONLY = ("out", "resume", "eval_only", "make_synthetic", "device", "eval_batch", "gradient_checkpointing", "fsdp",
                "command")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def settings_of(args: argparse.Namespace) -> dict:
    """The flags recorded in ``config.json`` and compared on a resume (local paths made absolute)."""
    settings = {k: (str(Path(v).resolve()) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in RUNTIME_ONLY}
    if args.model and Path(args.model).is_dir():
        settings["model"] = str(Path(args.model).resolve())
    return settings


def validate(args: argparse.Namespace) -> tuple[list, list[str]]:
    """Every check before any work: flags, the model, every data file, the run folder; returns (tasks, skipped)."""
    from moram_ref.experiments.llm.data import SEQUENCES, load_sequence

    if args.make_synthetic:
        from moram_ref.experiments.llm.data import SYNTHETIC_MARKER

        for flag in ("--data-root", "--resume", "--eval-only"):
            cliargs.conflict(args, "--make-synthetic", flag)
        if args.benchmark != "trace":
            raise cliargs.UsageError(f"--make-synthetic: generates the TRACE tasks only; --benchmark {args.benchmark} "
                                     "needs its real data (the O-LoRA releases' layout, docs/experiments.md)")
        cliargs.unused_with(args, add_arguments, "--make-synthetic")
        cliargs.synthetic_target("--make-synthetic", args.make_synthetic / "trace", SYNTHETIC_MARKER)
        return [], []
    if args.data_root is None:
        raise cliargs.UsageError("--data-root: required (except with --make-synthetic)")
    from moram_ref.experiments.llm.data import SYNTHETIC_MARKER

    cliargs.synthetic_unfinished("--data-root", args.data_root, SYNTHETIC_MARKER)
    if args.model is None and args.tiny is None:
        raise cliargs.UsageError("--model or --tiny: one is required (a local model folder for "
                                 "AutoModelForCausalLM, or a tiny random decoder for a CPU check)")
    cliargs.conflict(args, "--resume", "--eval-only")
    for flag in ("--methods", "--targets"):
        cliargs.no_repeats(flag, getattr(args, flag[2:]))
    if args.micro_batch > args.batch:
        raise cliargs.UsageError(f"--micro-batch: {args.micro_batch} exceeds --batch {args.batch}")
    if args.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise cliargs.UsageError("--fsdp: needs several processes (torchrun --nproc_per_node N); WORLD_SIZE is 1")
    cliargs.moram_config(args, scale=args.scale, dropout=args.dropout)
    cliargs.device("--device", args.device)
    if args.model is not None:
        _check_model(args.model)
    _check_targets(args)
    for name in SEQUENCES[args.benchmark]:
        for split in ("train", "test"):
            path = args.data_root / name / f"{split}.json"
            if path.exists() and not path.is_file():
                raise cliargs.UsageError(f"--data-root: {path} is not a file (task {name} of --benchmark {args.benchmark})")
            if path.is_file():
                # an empty answer would be matched by every prediction (scoring compares the answer's length)
                cliargs.check_samples(path, cliargs.read_json(path, "--data-root"), nonblank=("answer",))
            elif not args.skip_missing:
                raise cliargs.UsageError(f"--data-root: {path} does not exist (task {name} of --benchmark "
                                         f"{args.benchmark}); pass --skip-missing to leave such tasks out")
        labels = args.data_root / name / "labels.json"
        if labels.is_file():
            value = cliargs.read_json(labels, "--data-root")
            if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
                raise cliargs.UsageError(f"{labels}: expected a non-empty list of label strings")
    try:
        tasks, skipped = load_sequence(args.data_root, args.benchmark, args.skip_missing, args.max_train, args.max_test)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise cliargs.UsageError(f"--data-root: {' '.join(str(exc).split())}") from None
    if _rank() == 0:  # torchrun: rank 0 owns the run folder (the others would see its lock)
        rundir.check(args.out, "llm", settings_of(args), resume=args.resume, eval_only=args.eval_only)
    if args.eval_only:
        rundir.require_checkpoints(args.out, args.methods, len(tasks))
    if args.resume or args.eval_only:  # what the run will read back, checked before any work
        from moram_ref.experiments import sequence_state

        sequence_state.check_run(args.out, args.methods, len(tasks),
                                 cliargs.moram_config(args, scale=args.scale, dropout=args.dropout), args.eval_only,
                                 args.seed)
    if not args.eval_only and set(args.methods) != {"zero_shot"}:  # after the record checks: a changed --resume
        for task in tasks:  # names every changed flag first. A larger global batch would train each step on
            if args.batch > len(task.train):  # fewer samples than asked
                capped = f" (--max-train {args.max_train})" if len(task.train) == args.max_train else ""
                raise cliargs.UsageError(f"--batch: {args.batch} exceeds the {len(task.train)} training samples of "
                                         f"{task.name}{capped}; use --batch {len(task.train)} or less")
    return tasks, skipped


def _check_model(model: str) -> None:
    """--model: a local folder with config.json, or a hub name (in the local cache when offline)."""
    path = cliargs.usable_path("--model", model, "folder")  # not empty, UTF-8, no link leading nowhere
    if path.exists():
        if not (path / "config.json").is_file():
            raise cliargs.UsageError(f"--model: {model!r} is not a model folder (no config.json)")
        return
    if not HUB_ID.match(model):
        raise cliargs.UsageError(f"--model: folder {model!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("", "0"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise cliargs.UsageError(f"--model: {model!r} is neither a local folder nor a model in the hub cache "
                                     "(offline mode)")


def _check_targets(args: argparse.Namespace) -> None:
    """--targets select linear layers of the model (its skeleton built on the meta device: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from moram_ref.experiments.llm import backbones
    from moram_ref.torch.attach import match_targets

    try:
        config = AutoConfig.from_pretrained(args.model) if args.model else backbones.tiny_config(args.tiny, 64)
    except (OSError, ValueError) as exc:
        raise cliargs.UsageError(f"--model: {args.model!r}: {' '.join(str(exc).split())[:300]}") from None
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    try:
        match_targets(skeleton, list(args.targets))
    except ValueError as exc:
        raise cliargs.UsageError(f"--targets: {' '.join(str(exc).split())[:300]}") from None


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _setup_dist():
    import torch

    from moram_ref.experiments.llm.train import Dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(torch.distributed.get_rank(), world)


def cpu_bf16_note(args: argparse.Namespace) -> str | None:
    """A line for ``--bf16`` on a CPU: it runs, but slowly (None otherwise)."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.bf16 or torch.device(device).type != "cpu":
        return None
    return ("--bf16 on the CPU: the run goes ahead in bfloat16, but most CPUs have no bfloat16 matrix units and "
            "multiply in it several times slower than in float32 (4× on a 2-core AMD EPYC); the flag is meant "
            "for GPUs")


def build(args, tasks, out: Path, seed: int):
    """(model, tokenizer): a pretrained model, or a tiny one with a tokenizer trained on the task text."""
    import torch

    from moram_ref.experiments.llm import backbones

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model:
        try:
            model, tok = backbones.load_pretrained(args.model, dtype, device)
        except backbones.LoadError as exc:
            raise cliargs.UsageError(f"--model: transformers could not load {args.model!r} ({exc})") from None
    else:
        from transformers import AutoTokenizer

        tok_dir = out / "tokenizer"
        if (tok_dir / "tokenizer.json").is_file():
            try:
                tok = AutoTokenizer.from_pretrained(str(tok_dir))
            except Exception as exc:  # noqa: BLE001  a damaged file of the run folder (transformers raises many kinds)
                raise cliargs.UsageError(f"--out: {tok_dir} holds a tokenizer that does not load "
                                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); remove that "
                                         "folder and the run trains the same tokenizer again from the task text") \
                    from None
        else:
            texts = [r["prompt"] + " " + r["answer"] for t in tasks for r in t.train]
            tok = backbones.build_tokenizer(texts, vocab_size=2000, out_dir=tok_dir)
        model = backbones.tiny_model(args.tiny, len(tok), seed=seed, dtype=dtype).to(device)
    if args.gradient_checkpointing:
        # acts in training mode only (the training loop sets it); transformers >= 5 renamed the method
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model.enable_input_require_grads()  # the frozen embeddings would otherwise cut the graph
    return model, tok


PRINT_EVERY = 10  # a progress line every this many steps, and one at the end of each task


def run(args: argparse.Namespace, log=print) -> dict:
    tasks, skipped = validate(args)
    if args.make_synthetic:
        from moram_ref.experiments.llm.data import SYNTHETIC_MARKER, SYNTHETIC_TEST, SYNTHETIC_TRAIN, make_synthetic

        with cliargs.writing_synthetic("--make-synthetic", args.make_synthetic, SYNTHETIC_MARKER):
            root = make_synthetic(args.make_synthetic)
        log(f"wrote TRACE-layout data to {root}: the 8 TRACE tasks generated, {SYNTHETIC_TRAIN} training and "
            f"{SYNTHETIC_TEST} test rows each (random answers: a pipeline check whose scores mean nothing)")
        return {"trace": str(root)}
    info = {"tasks": [t.name for t in tasks], "skipped": skipped,
            "threads": threads.current()}  # torch's CPU thread count: a resume continues on it
    continued = threads.started_on(args.out) if args.resume or args.eval_only else None  # checked before the lock
    with rundir.open_run(args.out, "llm", settings_of(args), resume=args.resume, eval_only=args.eval_only,
                         info=info, primary=_rank() == 0):
        resuming = (args.resume or args.eval_only) and _rank() == 0
        if not (args.resume or args.eval_only) and _rank() == 0:  # a re-run with the same settings starts from
            rundir.clear_earlier(args.out, EARLIER_RUN, log)  # scratch: the earlier run's outputs and state go
        with threads.continued(continued, log if resuming else None, "llm", "the run started"):
            return _run(args, tasks, skipped, log)


def _run(args: argparse.Namespace, tasks: list, skipped: list[str], log) -> dict:
    from moram_ref.experiments import sequence_state
    from moram_ref.experiments.llm.train import LLMSettings, run_sequence
    from moram_ref.experiments.progress import printer

    dist = _setup_dist()
    if skipped and dist.rank == 0:
        log(f"skipped (missing split): {skipped}")
    if dist.rank == 0 and (note := cpu_bf16_note(args)):
        log(note)
    config = cliargs.moram_config(args, scale=args.scale, dropout=args.dropout)
    summary = {}
    for method in args.methods:
        out = args.out / method
        settings = LLMSettings(method=method, epochs=args.epochs, batch=args.batch, micro_batch=args.micro_batch,
                               lr=args.lr, max_prompt=args.max_prompt, max_answer=args.max_answer,
                               max_new_tokens=args.max_new_tokens, eval_batch=args.eval_batch,
                               numglue_mode=args.numglue_mode, seed=args.seed, targets=tuple(args.targets), moram=config,
                               fsdp=args.fsdp)
        n = len(tasks)
        done = sequence_state.finished_matrix(out, n, method != "zero_shot") if args.resume else None
        if done is not None:  # every task done: nothing to load, train or generate
            if dist.rank == 0:
                log(sequence_state.resumed_line(method, n, n, model_loaded=False))
            summary[method] = _finish(np.array(done, dtype=float), [t.name for t in tasks], out, settings,
                                      dist.rank == 0)
            continue
        out.mkdir(parents=True, exist_ok=True)
        model, tok = build(args, tasks, args.out, args.seed)
        quiet = dist.rank != 0  # one process reports
        on_step = None if quiet else printer(PRINT_EVERY, log)  # names the first step whose loss was NaN or inf
        with on_step or contextlib.nullcontext():
            matrix = run_sequence(model, tok, tasks, settings, out, resume=args.resume, eval_only=args.eval_only,
                                  dist=dist, log=None if quiet else log, on_step=on_step)
        summary[method] = _finish(matrix, [t.name for t in tasks], out, settings, dist.rank == 0)
    if dist.rank == 0:
        names = [t.name for t in tasks]
        log("\n" + format_table(summary, names, tiny=bool(args.tiny)))
        from moram_ref import plots

        with rundir.staging(args.out) as stage:  # the summary and its figure replace the earlier ones together
            rundir.write_json(stage / "summary.json", summary)
            plots.accuracy_heatmaps({LABELS[m]: np.array(s["matrix"], dtype=float) / 100 for m, s in summary.items()},
                                    names, stage / "scores.png", f"{args.benchmark.upper()} scores (0–100)")
            rundir.publish(stage, args.out, stale=("scores.png",))
        log(f"wrote {args.out}/summary.json, scores.png; per method <method>/: matrix.json, matrix.csv, "
            "progress.json, predictions/, checkpoints/ (methods that train)")
    return summary


def _finish(matrix: np.ndarray, names: list[str], out: Path, settings, write: bool = True) -> dict:
    """The method's scores; ``matrix.json`` (``null`` = not evaluated: a task after the row's task) and ``.csv``."""
    result = {"units": UNITS, "tasks": names, "matrix": matrix, "op": metrics.op(matrix), "bwt": metrics.bwt(matrix),
              "bwt_clipped": metrics.bwt_clipped(matrix), "numglue_mode": settings.numglue_mode}
    if not write:
        return result
    rundir.write_json(out / "matrix.json", result)
    rundir.write_csv(out / "matrix.csv", [["after \\ on"] + names]
                     + [[name] + ["" if np.isnan(v) else f"{v:.2f}" for v in row] for name, row in zip(names, matrix)])
    return result


def format_table(summary: dict, names: list[str], tiny: bool = False) -> str:
    lines = []
    width = min(max(9, *map(len, names)), 16)  # whole task names (NumGLUE-cm vs -ds), up to 16 characters
    for method, r in summary.items():
        lines.append(f"{LABELS[method]} — scores (0–100), row = after task, column = task")
        lines.append(" " * (width + 1) + " ".join(f"{n[:width]:>{width}}" for n in names))
        for name, row in zip(names, r["matrix"]):
            lines.append(f"{name[:width]:<{width}} " + " ".join(f"{'·':>{width}}" if np.isnan(v) else f"{v:{width}.1f}"
                                                                for v in row))
        lines.append("")
    lines.append("method               OP     BWT   BWT (clipped, paper's positive)")
    for method, r in summary.items():
        lines.append(f"{LABELS[method]:<18} {r['op']:6.1f} {r['bwt']:7.1f} {-r['bwt_clipped'] + 0.0:8.1f}")  # as report
    if tiny:
        lines.append("(--tiny: a small random decoder, a pipeline check whose numbers mean nothing — docs/experiments.md)")
    return "\n".join(lines)
