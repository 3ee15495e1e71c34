"""``moram-ref clip``: X-TAIL and MTIL on open_clip — one command per experiment, table at the end, resumable."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from moram_ref import metrics
from moram_ref.config import MoRAMConfig

LABELS = {"zero_shot": "zero-shot CLIP", "seq_lora": "sequential LoRA", "moe_lora": "MoE-LoRA (router)",
          "dense_moram": "dense MoRAM", "moram": "MoRAM"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from moram_ref.experiments.clip import METHODS

    p.add_argument("--benchmark", default="xtail", choices=["xtail", "mtil"])
    p.add_argument("--order", default="1", choices=["1", "2"], help="MTIL order I or II")
    p.add_argument("--classnames-json", type=Path, default=None,
                   help="MTIL: class names per dataset ({key: [names]} or a datasets.json-style file)")
    p.add_argument("--classnames-field", default=None, help="the list to use in a datasets.json-style file")
    p.add_argument("--templates-json", type=Path, default=None,
                   help="MTIL: an evaluation template ensemble per dataset ({key: [templates]} or datasets.json-style)")
    p.add_argument("--templates-field", default=None, help="the list to use in a datasets.json-style file")
    p.add_argument("--data-root", type=Path, default=None, help="required except with --make-synthetic")
    p.add_argument("--make-synthetic", type=Path, default=None, metavar="DIR",
                   help="write small synthetic X-TAIL (DIR/xtail) and MTIL (DIR/mtil) data sets and exit")
    p.add_argument("--out", type=Path, default=Path("runs/xtail"))
    p.add_argument("--datasets", nargs="+", default=None, help="a subset, in this order (default: the benchmark's)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="ViT-B-16", help="open_clip model name")
    src.add_argument("--tiny", action="store_true", help="a tiny random CLIP (CPU tests)")
    p.add_argument("--pretrained", default="openai", help="open_clip pretrained tag (or a local .pt path)")
    p.add_argument("--methods", nargs="+", default=["moram"], choices=METHODS)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--verify", action="store_true", help="check the data on disk and exit")
    p.add_argument("--shots", type=int, default=16, help="K-shot training subsets; 0 = every training image")
    p.add_argument("--iterations", type=int, default=500, help="per task (ZSCL's full-shot MTIL uses 1000)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--encoders", nargs="+", default=["image", "text"], choices=["image", "text"])
    p.add_argument("--kinds", nargs="+", default=["attention", "mlp"], choices=["attention", "mlp"])
    p.add_argument("--atoms-per-task", type=int, default=16)
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.01)
    p.add_argument("--threshold", type=float, default=0.2)
    p.add_argument("--device", default=None)


PRINT_EVERY = 50  # a progress line every this many steps, and one at the end of each task


def run(args: argparse.Namespace, log=print) -> dict:
    import torch

    from moram_ref.experiments.clip import backbone
    from moram_ref.experiments.clip.data import load_domain, verify, xtail_spec
    from moram_ref.experiments.clip.train import ClipSettings, run_sequence
    from moram_ref.experiments.progress import printer
    from moram_ref.experiments.clip.tvdata import load_mtil_domain, mtil_spec, read_classnames

    if args.make_synthetic:
        from moram_ref.experiments.clip.synthetic import make_all

        roots = make_all(args.make_synthetic)
        log(f"wrote X-TAIL-layout data to {roots['xtail']} (caltech101 dtd eurosat) and torchvision-layout "
            f"data to {roots['mtil']} (mnist dtd eurosat)")
        return {k: str(v) for k, v in roots.items()}
    if args.data_root is None:
        raise SystemExit("moram-ref clip: --data-root is required")
    mtil = args.benchmark == "mtil"
    keys = args.datasets or (mtil_spec()["orders"][args.order] if mtil else xtail_spec()["order"])
    if args.verify and mtil:
        report = {}
        for key in keys:
            try:
                d = load_mtil_domain(args.data_root, key)
                report[key] = {"ok": True, "found": {"train": len(d.train.labels), "test": len(d.test.labels)},
                               "classes": len(d.classnames)}
            except (FileNotFoundError, ValueError) as exc:
                report[key] = {"ok": False, "error": str(exc)}
            log(f"{key:14s} {'ok' if report[key]['ok'] else 'PROBLEM'}  "
                + json.dumps({k: v for k, v in report[key].items() if k != 'ok'}))
        return report
    if args.verify:
        report = verify(args.data_root, keys)
        for key, entry in report.items():
            log(f"{key:14s} {'ok' if entry['ok'] else 'PROBLEM'}  " + json.dumps({k: v for k, v in entry.items() if k != 'ok'}))
        return report
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if mtil:
        names = read_classnames(args.classnames_json, args.classnames_field) if args.classnames_json else {}
        ensembles = read_classnames(args.templates_json, args.templates_field, "templates") if args.templates_json else {}
        domains = [load_mtil_domain(args.data_root, k, names.get(k), eval_templates=ensembles.get(k)) for k in keys]
    else:
        domains = [load_domain(args.data_root, k) for k in keys]
    config = MoRAMConfig(atoms_per_task=args.atoms_per_task, top_k=args.top_k, temperature=args.temperature,
                         threshold=args.threshold)
    summary = {}
    for method in args.methods:
        if args.tiny:
            model, _, transform, tokenizer = backbone.tiny_clip(seed=0)
        else:
            model, _, transform, tokenizer = backbone.load_clip(args.model, args.pretrained, device)
        model = model.to(device)
        settings = ClipSettings(method=method, protocol=args.benchmark, shots=args.shots or None,
                                iterations=args.iterations, batch=args.batch,
                                lr=args.lr, eval_batch=args.eval_batch, seed=args.seed, workers=args.workers,
                                targets=backbone.target_regex(args.encoders, args.kinds), moram=config)
        out = args.out / method
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                     "moram": config.to_dict(), "datasets": keys}, indent=1))
        matrix = run_sequence(model, tokenizer, transform, domains, settings, out, device, args.resume, args.eval_only,
                              Path(args.data_root), log, on_step=printer(PRINT_EVERY, log))
        summary[method] = {"matrix": matrix.tolist(), **{k: v for k, v in metrics.summary(matrix / 100).items()}}
        with open(out / "matrix.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["after \\ on"] + keys)
            for k, row in zip(keys, matrix):
                w.writerow([k] + [f"{v:.2f}" for v in row])
        (out / "matrix.json").write_text(json.dumps(summary[method], indent=1))
    log("\n" + format_table(summary, args.benchmark))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    from moram_ref import plots

    plots.accuracy_heatmaps({LABELS[m]: np.array(s["matrix"]) / 100 for m, s in summary.items()}, keys,
                            args.out / "accuracy.png", f"{args.benchmark.upper()} accuracy matrices")
    _probe_figures(args, config, keys)
    return summary


def _probe_figures(args, config, keys) -> None:
    """Activation maps (atoms × image tokens) and atoms for 99 % mass vs task, from the MoRAM run's probes."""
    from moram_ref import plots

    for method in ("moram", "dense_moram"):
        path = args.out / method / "progress.json"
        if method not in args.methods or not path.is_file():
            continue
        progress = json.loads(path.read_text())
        if progress.get("maps"):
            stages = {stage: {k: np.array(v) for k, v in entry["maps"].items()} for stage, entry in progress["maps"].items()}
            layer = next(iter(progress["maps"].values()))["layer"]
            plots.token_activation_maps(stages, config.atoms_per_task, args.out / f"activation_{method}.png",
                                        f"{LABELS[method]}: weights w at {layer}")
        if progress.get("n99"):
            plots.atoms_for_mass({LABELS[method]: progress["n99"]},
                                 [config.atoms_per_task * (t + 1) for t in range(len(progress["n99"]))],
                                 args.out / f"atoms_for_99_mass_{method}.png",
                                 "image encoder: atoms carrying 99 % of the weight, per layer")


def format_table(summary: dict, benchmark: str = "xtail") -> str:
    lines = ["method               Transfer  Average     Last", ]
    for method, s in summary.items():
        lines.append(f"{LABELS[method]:<18} " + " ".join(f"{100 * s[k]:8.1f}" for k in ("transfer", "average", "last")))
    lines.append("(paper, ViT-B/16 X-TAIL: MoRAM 63.3 / 72.7 / 80.9; zero-shot Transfer 62.4 — spec §7)" if benchmark == "xtail"
                 else "(ViT-B/16 MTIL order I: zero-shot 69.4 / 65.3 / 65.3; ZSCL 68.1 / 75.4 / 83.6 — spec §7)")
    return "\n".join(lines)
