"""Reading text-CL ``results.json`` files: run labels, paired per-seed differences, the matrix over runs.

``moram-ref report --table textcl-matrix RUN.json [RUN.json …]`` renders one table per metric (rows: runs,
i.e. sequence × adapter placement; columns: methods) and, with ``--plot``, the same as a figure. The claims
table (:mod:`moram_ref.experiments.toy.claims`) reads its text-CL rows through :func:`cells` and
:func:`paired`. Importable without torch.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from moram_ref.experiments.threads import MAX_THREADS, is_count
from moram_ref.experiments.toy.ablation_tables import paired_difference
from moram_ref.experiments.toy.demo import ci_note, format_cell

LABELS = {"zero_shot": "zero-shot", "seq_lora": "seq. LoRA", "moe_lora": "MoE-LoRA", "olora": "O-LoRA",
          "dense_moram": "dense MoRAM", "moram": "MoRAM"}
ORDER_NAMES = {"standard-1": "order 1", "standard-2": "order 2", "standard-3": "order 3", "long-4": "long (order 4)"}
COARSE = ("seq_lora", "moe_lora", "olora")
SEEDS = 3  # text-cl's default --seeds
MATRIX_METRICS = (("last", "Last", True), ("average", "Average", True), ("forgetting", "forgetting", False),
                  ("transfer", "Transfer", True))


def changed(settings: dict) -> list[tuple[str, object]]:
    """The run's settings that shape its numbers and differ from ``moram-ref text-cl``'s defaults, as
    ``(flag name, value)`` in the flags' order: ``[("lr", 0.001), ("eval_split", "val")]``. The adapted
    blocks are left out (:func:`run_label` names them)."""
    from moram_ref.experiments.textcl.run import DEFAULTS  # noqa: PLC0415  (torch-free module)

    out = [(k, settings[k]) for k, v in DEFAULTS.items() if k != "adapt_layers" and k in settings and settings[k] != v]
    out += [(k, settings[k]) for k in ("max_train", "max_test") if settings.get(k) is not None]
    if settings.get("eval_split", "test") != "test":
        out.append(("eval_split", settings["eval_split"]))
    return out


def run_label(results: dict) -> str:
    """``"order 1, 4 tasks, top 2 of 6 blocks"`` from the run's recorded settings and encoder, followed by an
    encoder other than the packaged one (``", encoder bert-small"``) and the settings that differ from the
    defaults (``", lr 0.001, eval split val"``). Seeds and methods are not in it (the tables say them)."""
    settings, enc = results["settings"], results["encoder"]
    seq = ORDER_NAMES.get(settings["sequence"], settings["sequence"])
    blocks = (f"all {enc['blocks']} blocks" if enc["adapted_blocks"] == enc["blocks"]
              else f"top {enc['adapted_blocks']} of {enc['blocks']} blocks")
    extra = "".join(f", {k.replace('_', ' ')} {v}" for k, v in changed(settings))
    encoder = f", encoder {settings['model_path']}" if settings.get("model_path") else ""
    return f"{seq}, {len(results['tasks'])} tasks, {blocks}{encoder}{extra}"


def run_labels(runs: list[dict]) -> list[str]:
    """:func:`run_label` of each run; runs that would share a label (e.g. one order run twice with the same
    settings) are told apart as ``"… (run 2)"``, ``"… (run 3)"`` in the order given."""
    labels = [run_label(r) for r in runs]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} (run {seen[label]})")
    return out


def command(results: dict) -> str:
    """The ``moram-ref text-cl`` command line that reproduces the run (flags that differ from the defaults;
    ``--model-path <NAME>`` for an encoder other than the packaged one, whose folder the user supplies). Its
    ``--out runs/text-cl-<sequence>…`` names every flag that differs from the defaults, so that the commands
    of two different runs never share a folder."""
    from moram_ref.experiments.textcl import METHODS  # noqa: PLC0415
    from moram_ref.experiments.textcl.data import SEQUENCES  # noqa: PLC0415
    from moram_ref.experiments.textcl.run import DEFAULTS  # noqa: PLC0415  (torch-free module)

    s = results["settings"]
    parts = ["moram-ref text-cl --data-root <llm-cl-benchmark-500>", f"--sequence {s['sequence']}",
             f"--seeds {s['seeds']}"]
    suffix = "" if s["seeds"] == SEEDS else f"-seeds{s['seeds']}"
    if s.get("tasks") not in (None, len(SEQUENCES.get(s["sequence"], ()))):
        parts.append(f"--tasks {s['tasks']}")
        suffix += f"-tasks{s['tasks']}"
    if list(s.get("methods", METHODS)) != list(METHODS):
        parts.append("--methods " + " ".join(s["methods"]))
        suffix += "-" + "-".join(s["methods"])
    if s.get("model_path"):  # recorded by its folder's name (run.portable)
        parts.append(f"--model-path <{s['model_path']}>")
        suffix += f"-{s['model_path']}"
    adapt = s.get("adapt_layers", DEFAULTS["adapt_layers"])
    flags = ([("adapt_layers", adapt)] if adapt != DEFAULTS["adapt_layers"] else []) + changed(s)
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in flags]
    suffix += "".join(f"-top{v}" if k == "adapt_layers" else f"-{k.replace('_', '-')}{v}" for k, v in flags)
    parts.append(f"--out runs/text-cl-{s['sequence']}{suffix}")
    return " ".join(parts)


def problem(results, needs: tuple[str, ...] = (), coarse: bool = False) -> str | None:
    """Why ``results`` cannot feed a text-CL table (None if it can): not a text-cl ``results.json``, one
    written before the run recorded its settings, or lacking the methods the table compares."""
    if isinstance(results, dict) and results.get("kind") == "text-cl routing":
        return "is a text-cl-routing summary, not a text-cl results.json"
    if isinstance(results, dict) and results.get("kind") == "text-cl confusion":
        return "is a text-cl-confusion confusion.json, not a text-cl results.json"
    if isinstance(results, dict) and {"run", "per_task", "methods"} <= set(results) and "kind" not in results:
        return "is a text-cl-routing routing.json, not a text-cl results.json"
    if not isinstance(results, dict) or not isinstance(results.get("methods"), dict):
        return "is not a text-cl results.json (no 'methods')"
    missing = [k for k in ("settings", "encoder", "tasks") if k not in results]
    if missing:
        return (f"has no {', '.join(repr(k) for k in missing)}: it was written by an older moram-ref text-cl; "
                "rerun that command for a current results.json")
    if any("per_seed" not in e.get("union", {}) for e in results["methods"].values()):
        return "has no per-seed summaries: it was written by an older moram-ref text-cl; rerun that command"
    methods = list(results["methods"])
    lacking = [m for m in needs if m not in methods]
    if lacking:
        return f"lacks {', '.join(lacking)} (the run's methods: {', '.join(methods)}); rerun with them"
    if coarse and not any(m in methods for m in COARSE):
        return f"has no coarse expert ({', '.join(COARSE)}) to compare MoRAM with (the run's methods: {', '.join(methods)})"
    if not [m for m in methods if m != "zero_shot"]:
        return "holds no adapter (only zero_shot): nothing to compare"
    return None


def timing(results: dict) -> str:
    """How long the run took: wall time, or for a resumed run the summed time of its methods and seeds;
    and the thread count its numbers were made on (they depend on it: docs/results.md, "Threads and
    reproducibility").

    A run that records each task's count (``threads``, :func:`.run.thread_counts`) is described by them;
    an older one names its last process's (``machine``), as its earlier processes were not recorded.
    """
    threads = _threads(results)
    if results.get("resumed"):
        parts = results.get("merged_from") or []
        how = (f"assembled from {len(parts)} part{'s' if len(parts) != 1 else ''} by text-cl-merge" if parts
               else "resumed after a stop")
        last = results.get("machine", {}).get("threads", "?")
        where = f"; its tasks ran on {threads}" if "threads" in results else f" on {last} thread(s)"
        return (f"{results['method_seconds'] / 60:.0f} min of training and evaluation summed over methods and "
                f"seeds ({how}; its last process ran {results['wall_seconds'] / 60:.0f} min{where})")
    return f"{results['wall_seconds'] / 60:.0f} min wall time on {threads}"


def _threads(results: dict) -> str:
    """What follows "on": ``"1 thread(s)"``, ``"1 and 2 threads (mixed)"``, and the tasks whose records do not
    say (``"1 thread(s), 2 task(s) on a count not recorded"``, or ``"a thread count not recorded"``)."""
    if "threads" not in results:
        return f"{results.get('machine', {}).get('threads', '?')} thread(s)"
    recorded = results["threads"]
    counts = recorded.get("counts") if isinstance(recorded, dict) else None
    unrecorded = recorded.get("unrecorded") if isinstance(recorded, dict) else None
    if not (valid_counts(counts, allow_empty=True) and isinstance(unrecorded, int) and not isinstance(unrecorded, bool)
            and unrecorded >= 0 and (counts or unrecorded)):
        raise ValueError(f"threads must be {{\"counts\": distinct thread counts (1 to {MAX_THREADS}) in increasing "
                         f"order, \"unrecorded\": how many tasks predate the record}}, got {json.dumps(recorded)}")
    return count_words(counts, unrecorded)


def valid_counts(counts, allow_empty: bool = False) -> bool:
    """Whether ``counts`` lists distinct thread counts in increasing order (as a run records them)."""
    return (isinstance(counts, list) and (allow_empty or bool(counts)) and all(is_count(c) for c in counts)
            and counts == sorted(set(counts)))


def count_words(counts: list, unrecorded: int = 0) -> str:
    """:func:`_threads`' words for thread ``counts`` (sorted) and ``unrecorded`` tasks."""
    said = (f"{counts[0]} thread(s)" if len(counts) == 1
            else f"{', '.join(map(str, counts[:-1]))} and {counts[-1]} threads (mixed)" if counts else "")
    if not unrecorded:
        return said or "? thread(s)"
    if not said:
        return f"a thread count not recorded ({unrecorded} task record(s) predate the record)"
    return f"{said}, {unrecorded} task(s) on a count not recorded"


def cells(results: dict, metric: str, space: str = "union") -> dict:
    """``{method: {"mean", "ci95"}}`` (fractions) of one metric."""
    return {m: e[space][metric] for m, e in results["methods"].items()}


def paired(results: dict, method: str, other: str, metric: str, space: str = "union") -> dict | None:
    """Mean and 95 % CI half-width of ``method − other`` over seeds (seed ``i`` of both drew the same
    batches); None when the file has no per-seed summaries."""
    a = results["methods"][method][space].get("per_seed")
    b = results["methods"][other][space].get("per_seed")
    if not a or not b or len(a) != len(b):
        return None
    return paired_difference([x[metric] for x in a], [y[metric] for y in b])


def _cell(stat: dict, best: bool) -> str:
    text = format_cell(stat)
    return f"**{text}**" if best else text


def matrix_table(*runs: dict) -> str:
    """One Markdown table per metric: rows are runs, columns methods; the best mean per row in bold."""
    if not runs:
        raise ValueError("no text-CL results given")
    methods = [m for m in LABELS if all(m in r["methods"] for r in runs)]
    labels = run_labels(list(runs))
    out = []
    for metric, title, higher in MATRIX_METRICS:
        out += [f"**{title}** (union labels, %)", "", "| run | " + " | ".join(LABELS[m] for m in methods) + " |",
                "|---|" + "---|" * len(methods)]
        for r, label in zip(runs, labels):
            c = cells(r, metric)
            ranked = [m for m in methods if m != "zero_shot"]
            best = (max if higher else min)(c[m]["mean"] for m in ranked)
            out.append(f"| {label} | " + " | ".join(_cell(c[m], m in ranked and c[m]["mean"] == best)
                                                           for m in methods) + " |")
        out.append("")
    seeds = sorted({next(iter(r["methods"].values()))["seeds"] for r in runs})
    walls = "; ".join(f"{label}: {timing(r)}" for r, label in zip(runs, labels))
    over = ("One seed: each cell is that run's value (no confidence interval)" if seeds == [1]
            else f"Mean ± 95 % CI half-width over {seeds[0]} seeds ({ci_note(seeds[0])})" if len(seeds) == 1
            else f"Mean ± 95 % CI half-width over {'/'.join(map(str, seeds))} seeds")
    out.append(f"{over}; bold: the best adapter's mean "
               f"(zero-shot, the frozen encoder, is not ranked). Time of each run: {walls}. Commands: "
               + "; ".join(f"`{command(r)}`" for r in runs) + ".")
    return "\n".join(out)


def matrix_figure(runs: list[dict], path: Path) -> None:
    """The matrix as bars with 95 % CI whiskers: one panel per metric, one group per run."""
    from moram_ref.plots import _pyplot  # noqa: PLC0415

    plt = _pyplot()
    methods = [m for m in LABELS if all(m in r["methods"] for r in runs)]
    width_in = max(9.0, 3.0 * len(runs) + 4)
    fig, axes = plt.subplots(2, 2, figsize=(width_in, 7.5))
    chars = max(12, int(width_in / 2 * 0.75 / len(runs) / 0.065))  # a group's width in 7-point characters
    width = 0.8 / len(methods)
    x = np.arange(len(runs))
    for ax, (metric, title, higher) in zip(axes.flat, MATRIX_METRICS):
        for i, m in enumerate(methods):
            stats = [cells(r, metric)[m] for r in runs]
            mean = [100 * s["mean"] for s in stats]
            err = [0 if s["ci95"] is None or np.isnan(s["ci95"]) else 100 * s["ci95"] for s in stats]
            low = [min(e, v) for e, v in zip(err, mean)]  # no whisker below 0: every metric here is ≥ 0
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, mean, width, yerr=[low, err], capsize=2,
                   label=LABELS[m])
        ax.set_xticks(x, [textwrap.fill(label, chars) for label in run_labels(runs)], fontsize=7)
        ax.set_title(f"{title} ({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.set_ylabel("%")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(methods), fontsize=8)
    fig.suptitle("text-CL (MiniLM), union labels: mean ± 95 % CI over seeds (whiskers cut at 0)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def brief_table(*runs: dict) -> str:
    """README's short form: per run, MoRAM against the best coarse expert on Last and forgetting, and
    MoRAM's Transfer against the frozen encoder's (union labels, mean ± 95 % CI)."""
    if not runs:
        raise ValueError("no text-CL results given")
    lines = ["| run | Last: MoRAM / best coarse expert | forgetting: MoRAM / best coarse expert | "
             "Transfer: MoRAM / frozen |", "|---|---|---|---|"]
    for r, label in zip(runs, run_labels(list(runs))):
        row = []
        for metric, higher in (("last", True), ("forgetting", False)):
            c = cells(r, metric)
            best = (max if higher else min)((m for m in COARSE if m in c), key=lambda m: c[m]["mean"])
            row.append(f"{_cell(c['moram'], False)} / {_cell(c[best], False)} ({LABELS[best]})")
        c = cells(r, "transfer")
        row.append(f"{_cell(c['moram'], False)} / {_cell(c['zero_shot'], False)}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    seeds = sorted({next(iter(r["methods"].values()))["seeds"] for r in runs})
    over = "one seed (no CI)" if seeds == [1] else f"mean ± 95 % CI over {'/'.join(map(str, seeds))} seeds"
    return "\n".join(lines) + (f"\n\nUnion of all tasks' labels, %, {over}; coarse experts: sequential LoRA, MoE-LoRA with a router, O-LoRA, with the "
                               "same adapter parameters per task as MoRAM (MoE-LoRA adds its router).")
