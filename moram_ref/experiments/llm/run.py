"""``moram-ref llm``: one command per experiment — train through a sequence, evaluate after every task,
print the matrix, OP and both BWTs; resumable; ``torchrun`` for several processes."""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

from moram_ref import metrics
from moram_ref.config import MoRAMConfig

LABELS = {"zero_shot": "frozen (zero-shot)", "seq_lora": "sequential LoRA", "olora": "O-LoRA",
          "dense_moram": "dense MoRAM", "moram": "MoRAM"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from moram_ref.experiments.llm.data import SEQUENCES
    from moram_ref.experiments.llm import METHODS

    p.add_argument("--benchmark", default="trace", choices=sorted(SEQUENCES), help="task sequence")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("runs/llm"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a local folder (or hub name) for AutoModelForCausalLM.from_pretrained")
    src.add_argument("--tiny", choices=["llama", "qwen2", "gemma"], help="a tiny random decoder (CPU tests)")
    p.add_argument("--methods", nargs="+", default=["moram"], choices=METHODS)
    p.add_argument("--resume", action="store_true", help="continue from the last finished task")
    p.add_argument("--eval-only", action="store_true", help="re-evaluate the saved per-task checkpoints")
    p.add_argument("--skip-missing", action="store_true", help="leave out tasks whose train/test file is absent")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="epochs per task (default: the paper's TRACE epochs)")
    p.add_argument("--batch", type=int, default=32, help="effective batch (gradient accumulation)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--max-prompt", type=int, default=1024)
    p.add_argument("--max-answer", type=int, default=512)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--numglue-mode", default="numeric", choices=["numeric", "accuracy"])
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--targets", nargs="+", default=["q_proj", "k_proj", "v_proj", "o_proj"])
    p.add_argument("--atoms-per-task", type=int, default=8)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.03)
    p.add_argument("--threshold", type=float, default=0.2)
    p.add_argument("--scale", type=float, default=2.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--bf16", action="store_true", help="bf16 weights (GPU)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--fsdp", action="store_true", help="shard the frozen model over the torchrun processes (FSDP2)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def _setup_dist():
    import torch

    from moram_ref.experiments.llm.train import Dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(torch.distributed.get_rank(), world)


def build(args, tasks, out: Path, seed: int):
    """(model, tokenizer): a pretrained model, or a tiny one with a tokenizer trained on the task text."""
    import torch

    from moram_ref.experiments.llm import backbones

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model:
        model, tok = backbones.load_pretrained(args.model, dtype, device)
    else:
        from transformers import AutoTokenizer

        tok_dir = out / "tokenizer"
        if (tok_dir / "tokenizer.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(tok_dir))
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
    from moram_ref.experiments.llm.data import load_sequence
    from moram_ref.experiments.llm.train import LLMSettings, run_sequence
    from moram_ref.experiments.progress import printer

    dist = _setup_dist()
    tasks, skipped = load_sequence(args.data_root, args.benchmark, args.skip_missing, args.max_train, args.max_test)
    if skipped and dist.rank == 0:
        log(f"skipped (missing split): {skipped}")
    config = MoRAMConfig(atoms_per_task=args.atoms_per_task, top_k=args.top_k, temperature=args.temperature,
                         threshold=args.threshold, scale=args.scale, dropout=args.dropout)
    summary = {}
    for method in args.methods:
        out = args.out / method
        out.mkdir(parents=True, exist_ok=True)
        settings = LLMSettings(method=method, epochs=args.epochs, batch=args.batch, micro_batch=args.micro_batch,
                               lr=args.lr, max_prompt=args.max_prompt, max_answer=args.max_answer,
                               max_new_tokens=args.max_new_tokens, eval_batch=args.eval_batch,
                               numglue_mode=args.numglue_mode, seed=args.seed, targets=tuple(args.targets), moram=config,
                               fsdp=args.fsdp)
        model, tok = build(args, tasks, args.out, args.seed)
        quiet = dist.rank != 0  # one process reports
        matrix = run_sequence(model, tok, tasks, settings, out, resume=args.resume, eval_only=args.eval_only, dist=dist,
                              log=None if quiet else log, on_step=None if quiet else printer(PRINT_EVERY, log))
        summary[method] = _finish(matrix, [t.name for t in tasks], out, settings)
    if dist.rank == 0:
        log("\n" + format_table(summary, [t.name for t in tasks]))
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _finish(matrix: np.ndarray, names: list[str], out: Path, settings) -> dict:
    result = {"tasks": names, "matrix": matrix.tolist(), "op": metrics.op(matrix), "bwt": metrics.bwt(matrix),
              "bwt_clipped": metrics.bwt_clipped(matrix), "numglue_mode": settings.numglue_mode}
    (out / "matrix.json").write_text(json.dumps(result, indent=1))
    with open(out / "matrix.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["after \\ on"] + names)
        for name, row in zip(names, matrix):
            w.writerow([name] + ["" if np.isnan(v) else f"{v:.2f}" for v in row])
    return result


def format_table(summary: dict, names: list[str]) -> str:
    lines = []
    for method, r in summary.items():
        lines.append(f"{LABELS[method]} — scores (0–100), row = after task, column = task")
        lines.append("            " + " ".join(f"{n[:9]:>9}" for n in names))
        for name, row in zip(names, r["matrix"]):
            lines.append(f"{name[:11]:<11} " + " ".join("        ·" if np.isnan(v) else f"{v:9.1f}" for v in row))
        lines.append("")
    lines.append("method               OP     BWT   BWT(clipped, paper's positive)")
    for method, r in summary.items():
        lines.append(f"{LABELS[method]:<18} {r['op']:6.2f} {r['bwt']:7.2f} {-r['bwt_clipped'] + 0.0:8.2f}")
    return "\n".join(lines)
