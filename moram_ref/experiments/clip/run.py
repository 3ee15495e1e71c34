"""``moram-ref clip``: X-TAIL and MTIL on open_clip — one command per experiment, table at the end, resumable."""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from moram_ref import metrics
from moram_ref.config import MoRAMConfig
from moram_ref.experiments import cliargs, rundir, threads
from moram_ref.experiments.clip import METHODS

LABELS = {"zero_shot": "zero-shot CLIP", "seq_lora": "sequential LoRA", "moe_lora": "MoE-LoRA (router)",
          "dense_moram": "dense MoRAM", "moram": "MoRAM"}
# summary.json / matrix.json: every accuracy (matrix entries, Transfer, Average, Last, BWT, forgetting) in percent
UNITS = "percent"
# The published Transfer / Average / Last a run is compared with (docs/experiments.md, spec §7).
PAPER = {"xtail": "paper, ViT-B/16 X-TAIL: MoRAM 63.3 / 72.7 / 80.9; zero-shot Transfer 62.4",
         "mtil": "ViT-B/16 MTIL order I: zero-shot 69.4 / 65.3 / 65.3; ZSCL 68.1 / 75.4 / 83.6"}


def add_arguments(p: argparse.ArgumentParser) -> None:

    p.add_argument("--benchmark", default="xtail", choices=["xtail", "mtil"],
                   help="X-TAIL (10 domains, one label space for all) or MTIL (11 data sets, each its own labels) (spec §6; "
                        "default %(default)s)")
    p.add_argument("--order", default=None, choices=["1", "2"], help="MTIL order I or II (default 1)")
    p.add_argument("--classnames-json", type=cliargs.existing_file, default=None,
                   help="MTIL: class names per dataset ({key: [names]} or a datasets.json-style file)")
    p.add_argument("--classnames-field", default=None, help="the list to use in a datasets.json-style file")
    p.add_argument("--templates-json", type=cliargs.existing_file, default=None,
                   help="MTIL: an evaluation template ensemble per dataset ({key: [templates]} or datasets.json-style)")
    p.add_argument("--templates-field", default=None, help="the list to use in a datasets.json-style file")
    p.add_argument("--data-root", type=cliargs.existing_dir, default=None, help="required except with --make-synthetic")
    p.add_argument("--make-synthetic", type=cliargs.out_dir, default=None, metavar="DIR",
                   help="write small synthetic data sets and exit: X-TAIL layout in DIR/xtail (caltech101, dtd, "
                        "eurosat), torchvision layout in DIR/mtil (mnist, dtd, eurosat); run on them with --datasets")
    p.add_argument("--out", type=cliargs.out_dir, default=None,
                   help="run folder (default runs/<--benchmark>: runs/xtail or runs/mtil)")
    p.add_argument("--datasets", nargs="+", default=None, help="a subset, in this order (default: the benchmark's)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=cliargs.model_name, default=None, help="open_clip model name (default ViT-B-16)")
    src.add_argument("--tiny", action="store_true", help="a tiny random CLIP (CPU tests)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or a local .pt path (default openai)")
    p.add_argument("--methods", nargs="+", default=["moram"], choices=METHODS, metavar="METHOD",
                   help=f"methods to run, one after the other ({', '.join(METHODS)}; default moram)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same settings, on the thread count it started on)")
    p.add_argument("--eval-only", action="store_true", help="re-evaluate the run's saved per-task checkpoints (on the thread count it started on)")
    p.add_argument("--verify", action="store_true", help="check the data on disk and exit (non-zero on a problem)")
    p.add_argument("--shots", type=cliargs.integer(0, cliargs.MAX_COUNT), default=16, help="K-shot training subsets; 0 = every training image")
    p.add_argument("--iterations", type=cliargs.integer(1), default=500, help="per task (ZSCL's full-shot MTIL uses 1000)")
    p.add_argument("--batch", type=cliargs.integer(1), default=64, help="at most the smallest training set")
    p.add_argument("--lr", type=cliargs.learning_rate(), default=5e-4,
                   help="AdamW learning rate, cosine schedule over each task's iterations (spec §5; default %(default)s)")
    p.add_argument("--eval-batch", type=cliargs.integer(1, cliargs.MAX_COUNT), default=256,
                   help="images per evaluation batch (memory; default %(default)s)")
    p.add_argument("--workers", type=cliargs.integer(0, cliargs.MAX_WORKERS), default=0,
                   help="data-loader worker processes; 0 loads in the main process (default %(default)s)")
    p.add_argument("--seed", type=cliargs.integer(0, cliargs.MAX_SEED), default=42,
                   help="seeds the few-shot subsets, each task's fresh atoms and its batch order (spec §5; "
                        "default %(default)s)")
    p.add_argument("--encoders", nargs="+", default=["image", "text"], choices=["image", "text"],
                   help="which of CLIP's encoders get adapters (spec §5: both; default: both)")
    p.add_argument("--kinds", nargs="+", default=["attention", "mlp"], choices=["attention", "mlp"],
                   help="which linear layers of every block: attention q/k/v/out, MLP c_fc/c_proj (spec §5: "
                        "both; default: both)")
    cliargs.moram_flags(p, MoRAMConfig.paper_clip())  # spec §5, CLIP
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")


# flags that do not shape the results (a resume may change them)
# what a fresh re-run with the same settings removes first (rundir.clear_earlier)
EARLIER_RUN = (*METHODS, "summary.json", "accuracy.png", "activation_*.png", "atoms_for_99_mass_*.png")
RUNTIME_ONLY = ("out", "resume", "eval_only", "verify", "make_synthetic", "workers", "device", "eval_batch", "command")


def settings_of(args: argparse.Namespace) -> dict:
    """The flags recorded in ``config.json`` and compared on a resume (paths made absolute), and the sha256
    of the class-name and template files' content (their JSON, keys sorted: a re-indented file is the same):
    a resume with an edited file would name classes otherwise."""
    settings = {k: (str(Path(v).resolve()) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in RUNTIME_ONLY}
    for key in ("classnames_json", "templates_json"):
        if getattr(args, key, None) is not None:
            content = json.dumps(json.loads(Path(getattr(args, key)).read_text()), sort_keys=True, ensure_ascii=False)
            settings[f"{key}_sha256"] = hashlib.sha256(content.encode()).hexdigest()
    return settings


def validate(args: argparse.Namespace) -> list:
    """Every check before any work: flags, their combinations, the data (loaded), the run folder; returns
    the domains (empty for --make-synthetic and --verify, which check nothing else)."""
    from moram_ref.experiments.clip.data import SYNTHETIC_MARKER, xtail_spec
    from moram_ref.experiments.clip.tvdata import mtil_spec

    mtil = args.benchmark == "mtil"
    if args.make_synthetic:
        for flag in ("--data-root", "--verify", "--resume", "--eval-only", "--datasets"):
            cliargs.conflict(args, "--make-synthetic", flag)
        cliargs.unused_with(args, add_arguments, "--make-synthetic")
        for layout in ("xtail", "mtil"):
            cliargs.synthetic_target("--make-synthetic", args.make_synthetic / layout, SYNTHETIC_MARKER)
        return []
    args.out = Path("runs") / args.benchmark if args.out is None else args.out
    if args.data_root is None:
        raise cliargs.UsageError("--data-root: required (except with --make-synthetic)")
    cliargs.synthetic_unfinished("--data-root", args.data_root, SYNTHETIC_MARKER)
    for flag in ("--resume", "--eval-only"):
        cliargs.conflict(args, "--verify", flag)
    cliargs.conflict(args, "--resume", "--eval-only")
    if not mtil:
        for flag in ("--order", "--classnames-json", "--templates-json"):
            if getattr(args, flag[2:].replace("-", "_")) is not None:
                raise cliargs.UsageError(f"{flag}: applies to --benchmark mtil only")
    for name in ("classnames", "templates"):
        if getattr(args, f"{name}_field") is not None and getattr(args, f"{name}_json") is None:
            raise cliargs.UsageError(f"--{name}-field: needs --{name}-json")
    args.order = args.order or "1"
    if args.datasets is None:  # the benchmark's whole order: on --make-synthetic data, say which it holds
        from moram_ref.experiments.clip.data import synthetic_keys

        held = synthetic_keys(args.data_root)
        whole = mtil_spec()["orders"][args.order] if mtil else xtail_spec()["order"]
        if held and not set(whole) <= held:
            mine = [k for k in whole if k in held]
            raise cliargs.UsageError(f"--datasets: --data-root {args.data_root} holds --make-synthetic data of "
                                     f"{', '.join(mine)} only, not the {len(whole)} data sets of the benchmark's order; "
                                     f"pass --datasets {' '.join(mine)}")
    known = sorted({k for order in mtil_spec()["orders"].values() for k in order}) if mtil else xtail_spec()["order"]
    args.datasets = cliargs.name_list("--datasets", args.datasets, known) or (
        mtil_spec()["orders"][args.order] if mtil else xtail_spec()["order"])
    if args.verify:
        return []
    if args.tiny and args.pretrained is not None:
        raise cliargs.UsageError("--pretrained: not used with --tiny (a random model)")
    args.model = None if args.tiny else (args.model or "ViT-B-16")
    args.pretrained = None if args.tiny else ("openai" if args.pretrained is None else args.pretrained)
    if not args.tiny:
        _check_model(args.model, args.pretrained)
    for flag in ("--methods", "--encoders", "--kinds"):
        cliargs.no_repeats(flag, getattr(args, flag[2:]))
    cliargs.moram_config(args)
    cliargs.device("--device", args.device)
    domains = _load_domains(args, mtil)
    for d in domains:
        if not len(d.test.labels):
            raise cliargs.UsageError(f"--data-root: {d.key} has no test images (its split lists none); every task is "
                                     "evaluated on its test set")
        counts = np.bincount(np.asarray(d.train.labels, dtype=int), minlength=len(d.classnames))
        n_train = int(np.minimum(counts, args.shots).sum()) if args.shots else len(d.train.labels)
        if args.batch > n_train:
            raise cliargs.UsageError(f"--batch: {args.batch} exceeds the {n_train} training images of {d.key} "
                                     f"(--shots {args.shots}); use --batch {max(n_train, 1)} or less")
    if _rank() == 0:  # torchrun: rank 0 owns the run folder (the others would see its lock)
        rundir.check(args.out, "clip", settings_of(args), resume=args.resume, eval_only=args.eval_only)
    if args.eval_only:
        rundir.require_checkpoints(args.out, args.methods, len(domains))
    if args.resume or args.eval_only:  # what the run will read back, checked before any work
        from moram_ref.experiments import sequence_state

        sequence_state.check_run(args.out, args.methods, len(domains), cliargs.moram_config(args), args.eval_only,
                                 args.seed, full_rows=True)  # every domain is evaluated after each task
    if args.resume and args.shots:  # the few-shot subsets drawn before, read back as the run will read them
        from moram_ref.experiments.clip.data import few_shot, manifest_path

        for method in args.methods:
            folder = args.out / method / "manifests"
            for d in domains:
                if manifest_path(d.key, args.shots, args.seed, folder).is_file():
                    try:
                        few_shot(d, args.shots, args.seed, folder)
                    except ValueError as exc:
                        raise cliargs.UsageError(f"--resume: {exc}") from None
    return domains


def _check_model(model: str, pretrained: str) -> None:
    import open_clip

    if model not in open_clip.list_models():
        close = difflib.get_close_matches(model, open_clip.list_models(), n=1)
        raise cliargs.UsageError(f"--model: unknown open_clip model {model!r}"
                                 + (f" (did you mean {close[0]!r}?)" if close else " (see open_clip.list_models())"))
    if not pretrained.strip():
        raise cliargs.UsageError(f"--pretrained: expected a tag of {model} or a weights file, got {pretrained!r}")
    looks_like_path = pretrained.endswith((".pt", ".bin", ".safetensors")) or "/" in pretrained
    weights = cliargs.usable_path("--pretrained", pretrained) if looks_like_path else None
    if weights is not None and not weights.is_file():
        raise cliargs.UsageError(f"--pretrained: {pretrained!r} is not a weights file" if weights.exists()
                                 else f"--pretrained: file {pretrained!r} does not exist")
    if not looks_like_path and pretrained not in open_clip.list_pretrained_tags_by_model(model):
        raise cliargs.UsageError(f"--pretrained: {pretrained!r} is not a tag of {model} (tags: "
                                 f"{', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'})")


def _read_name_files(args: argparse.Namespace) -> tuple:
    """``--classnames-json`` and ``--templates-json`` read and checked: ``(names, ensembles)``, each a dict
    ``{dataset key: list of strings}`` (empty when the flag is not given). Raises ``cliargs.UsageError``
    naming the flag for a file that is not a JSON object, cannot be read, or lacks a list for a dataset of
    the run (:func:`~moram_ref.experiments.clip.tvdata.read_classnames` checks every list the run uses)."""
    from moram_ref.experiments.clip.tvdata import read_classnames

    for flag in ("--classnames-json", "--templates-json"):
        path = getattr(args, flag[2:].replace("-", "_"))
        if path is not None and not isinstance(cliargs.read_json(path, flag), dict):
            raise cliargs.UsageError(f"{flag}: {path} must hold a JSON object ({{dataset: [...]}} or datasets.json-style)")
    names, ensembles = {}, {}
    for flag, section in (("--classnames-json", "classnames"), ("--templates-json", "templates")):
        path = getattr(args, f"{section}_json")
        if path is None:
            continue
        try:
            found = read_classnames(path, getattr(args, f"{section}_field"), section, args.datasets)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise cliargs.UsageError(f"{flag}: {exc}") from None
        (names if section == "classnames" else ensembles).update(found)
    return names, ensembles


def _load_domains(args: argparse.Namespace, mtil: bool) -> list:
    from moram_ref.experiments.clip.data import load_domain
    from moram_ref.experiments.clip.tvdata import load_mtil_domain

    names, ensembles = _read_name_files(args) if mtil else ({}, {})
    domains = []
    for key in args.datasets:
        try:
            domains.append(load_mtil_domain(args.data_root, key, names.get(key), eval_templates=ensembles.get(key))
                           if mtil else load_domain(args.data_root, key))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            said = " ".join(str(exc).split()).removeprefix(f"{key}: ") or type(exc).__name__
            # names from --classnames-json that do not fit the dataset: the flag's file is what to fix
            flag = (f"--classnames-json {args.classnames_json}" if mtil and key in names and "class names" in said
                    else "--data-root")
            raise cliargs.UsageError(f"{flag}: {key}: {said}") from None
    return domains


PRINT_EVERY = 50  # a progress line every this many steps, and one at the end of each task


def run(args: argparse.Namespace, log=print) -> dict:
    domains = validate(args)
    if args.make_synthetic:
        from moram_ref.experiments.clip.data import SYNTHETIC_MARKER
        from moram_ref.experiments.clip.synthetic import make_all

        with cliargs.writing_synthetic("--make-synthetic", args.make_synthetic, SYNTHETIC_MARKER):
            roots = make_all(args.make_synthetic)
        log(f"wrote X-TAIL-layout data to {roots['xtail']} (caltech101 dtd eurosat) and torchvision-layout "
            f"data to {roots['mtil']} (mnist dtd eurosat)")
        return {k: str(v) for k, v in roots.items()}
    if args.verify:
        return _verify(args, log)
    info = {"threads": threads.current()}  # torch's CPU thread count: a resume continues on it
    continued = threads.started_on(args.out) if args.resume or args.eval_only else None  # checked before the lock
    with rundir.open_run(args.out, "clip", settings_of(args), resume=args.resume, eval_only=args.eval_only,
                         info=info, primary=_rank() == 0):
        resuming = (args.resume or args.eval_only) and _rank() == 0
        if not (args.resume or args.eval_only) and _rank() == 0:  # a re-run with the same settings starts from
            rundir.clear_earlier(args.out, EARLIER_RUN, log)  # scratch: the earlier run's outputs and state go
        with threads.continued(continued, log if resuming else None, "clip", "the run started"):
            return _run(args, domains, log)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _verify(args: argparse.Namespace, log) -> dict:
    from moram_ref.experiments.clip.data import verify
    from moram_ref.experiments.clip.tvdata import verify as verify_mtil

    if args.benchmark == "mtil":
        report = verify_mtil(args.data_root, args.datasets, *_read_name_files(args))  # the names the run would use
    else:
        report = verify(args.data_root, args.datasets)
    for key, entry in report.items():
        why = "; ".join(entry.get("problems", [])) or entry.get("error", "")
        status = "ok" if entry["ok"] else f"PROBLEM ({why})" if why else "PROBLEM"
        log(f"{key:14s} {status}  " + json.dumps({k: v for k, v in entry.items() if k not in ("ok", "problems", "error")}))
    bad = [k for k, e in report.items() if not e["ok"]]
    if bad:
        raise cliargs.UsageError(f"--verify: {len(bad)} of {len([k for k in report if k != 'union'])} data sets have problems under --data-root "
                                 f"{args.data_root}: {', '.join(bad)}")
    return report


def _run(args: argparse.Namespace, domains: list, log) -> dict:
    import torch

    from moram_ref.experiments import sequence_state

    keys = args.datasets
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = cliargs.moram_config(args)
    summary = {}
    for method in args.methods:
        out = args.out / method
        n, trained = len(domains), method != "zero_shot"
        done = sequence_state.finished_matrix(out, n, trained, full_rows=True) if args.resume else None
        if done is not None:  # every task done: nothing to load, train or evaluate
            log(sequence_state.resumed_line(method, n, n, model_loaded=False))
            matrix = np.array(done, dtype=float)
        else:
            matrix = _run_method(args, method, domains, config, device, log)
        summary[method] = {"units": UNITS, "tasks": keys, "matrix": matrix,
                           **{k: 100 * v for k, v in metrics.summary(matrix / 100).items()}}
        if _rank() == 0:
            rundir.write_csv(out / "matrix.csv", [["after \\ on"] + keys]
                             + [[k] + [f"{v:.2f}" for v in row] for k, row in zip(keys, matrix)])
            rundir.write_json(out / "matrix.json", summary[method])
    if _rank():
        return summary
    log("\n" + format_table(summary, args.benchmark, tiny=bool(args.tiny)))
    from moram_ref import plots

    with rundir.staging(args.out) as stage:  # the summary and its figures replace the earlier ones together
        rundir.write_json(stage / "summary.json", summary)
        plots.accuracy_heatmaps({LABELS[m]: np.array(s["matrix"]) / 100 for m, s in summary.items()}, keys,
                                stage / "accuracy.png", f"{args.benchmark.upper()} accuracy matrices")
        _probe_figures(args, config, keys, stage)
        figures = sorted(p.name for p in stage.glob("*.png"))
        rundir.publish(stage, args.out, stale=("accuracy.png", "activation_*.png", "atoms_for_99_mass_*.png"))
    log(f"wrote {args.out}/summary.json, {', '.join(figures)}; per method <method>/: matrix.json, matrix.csv, "
        "progress.json, checkpoints/ (methods that train)")
    return summary


def _run_method(args: argparse.Namespace, method: str, domains: list, config, device: str, log) -> np.ndarray:
    """Build the model and run ``method``'s sequence (or its rest, or its evaluation); its accuracy matrix."""
    from moram_ref.experiments.clip import backbone
    from moram_ref.experiments.clip.train import ClipSettings, run_sequence
    from moram_ref.experiments.progress import printer

    if args.tiny:
        model, _, transform, tokenizer = backbone.tiny_clip(seed=0)
    else:
        try:
            model, _, transform, tokenizer = backbone.load_clip(args.model, args.pretrained, device)
        except backbone.LoadError as exc:  # weights not downloadable (offline), unreadable
            raise cliargs.UsageError(f"--pretrained: open_clip could not load {args.model} {args.pretrained!r} "
                                     f"({' '.join(str(exc).split())[:300]}); offline, its weights must be in the "
                                     "cache, or give --pretrained FILE") from None
    model = model.to(device)
    settings = ClipSettings(method=method, protocol=args.benchmark, shots=args.shots or None,
                            iterations=args.iterations, batch=args.batch,
                            lr=args.lr, eval_batch=args.eval_batch, seed=args.seed, workers=args.workers,
                            targets=backbone.target_regex(args.encoders, args.kinds), moram=config)
    out = args.out / method
    out.mkdir(parents=True, exist_ok=True)
    with printer(PRINT_EVERY, log) as on_step:  # names the first step whose loss was NaN or inf
        return run_sequence(model, tokenizer, transform, domains, settings, out, device, args.resume,
                            args.eval_only, Path(args.data_root), log, on_step=on_step)


def _probe_figures(args, config, keys, where: Path) -> None:
    """Activation maps (atoms × image tokens) and atoms for 99 % mass vs task, from the MoRAM run's probes
    (``args.out/<method>/progress.json``), drawn into ``where``."""
    from moram_ref import plots

    for method in ("moram", "dense_moram"):
        path = args.out / method / "progress.json"
        if method not in args.methods or not path.is_file():
            continue
        progress = json.loads(path.read_text())
        if progress.get("maps"):
            stages = {stage: {k: np.array(v) for k, v in entry["maps"].items()} for stage, entry in progress["maps"].items()}
            layer = next(iter(progress["maps"].values()))["layer"]
            plots.token_activation_maps(stages, config.atoms_per_task, where / f"activation_{method}.png",
                                        f"{LABELS[method]}: weights w at {layer}")
        if progress.get("n99"):
            plots.atoms_for_mass({LABELS[method]: progress["n99"]},
                                 [config.atoms_per_task * (t + 1) for t in range(len(progress["n99"]))],
                                 where / f"atoms_for_99_mass_{method}.png",
                                 "image encoder: atoms carrying 99 % of the weight, per layer")


def format_table(summary: dict, benchmark: str = "xtail", tiny: bool = False) -> str:
    """The summary table (accuracy, %), with the paper's figures for reference (docs/experiments.md, spec §7)."""
    lines = ["method               Transfer  Average     Last", ]
    for method, s in summary.items():
        lines.append(f"{LABELS[method]:<18} " + " ".join(f"{s[k]:8.1f}" for k in ("transfer", "average", "last")))
    paper = PAPER[benchmark]
    if tiny:
        lines.append(f"(--tiny: a small random CLIP, a pipeline check whose numbers mean nothing; for scale only, the "
                     f"{paper} — docs/experiments.md)")
    else:
        lines.append(f"({paper} — docs/experiments.md)")
    return "\n".join(lines)
