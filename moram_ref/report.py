"""``moram-ref report``: the README's and docs/results.md's tables, rendered from results files.

Numbers in README.md are never typed: they sit between two marker lines,
``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->``, and this module writes (``--write``)
or checks (``--check``) them from the results file. ``tests/test_readme_tables.py`` runs the main job and
checks that the README still says what it prints.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

import numpy as np

from moram_ref import provenance
from moram_ref.experiments import rundir, track_tables
from moram_ref.experiments.cliargs import UsageError, usable_path
from moram_ref.experiments.textcl import confusion_tables, routing_tables, sensitivity_tables
from moram_ref.experiments.textcl import tables as textcl_tables
from moram_ref.experiments.toy import ablation_tables, claims, results_check
from moram_ref.experiments.toy.demo import METRICS, cells_phrase, format_cell, seeds_phrase

HEADERS = {"transfer": "Transfer", "average": "Average", "last": "Last", "bwt": "BWT", "forgetting": "forgetting"}


def _first_differences(old: str, new: str, lines: int = 3, width: int = 160) -> str:
    """The first ``lines`` changed lines of a block, each as a ``-`` (old) and ``+`` (new) line; a long line is
    shown as a window of ``width`` characters around its first difference."""
    matcher = difflib.SequenceMatcher(a=old.splitlines(), b=new.splitlines(), autojunk=False)
    pairs = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            gone, came = matcher.a[i1:i2], matcher.b[j1:j2]
            pairs += [(gone[k] if k < len(gone) else None, came[k] if k < len(came) else None)
                      for k in range(max(len(gone), len(came)))]
    out = []
    for a, b in pairs[:lines]:
        at = next((i for i, (x, y) in enumerate(zip(a or "", b or "")) if x != y), min(len(a or ""), len(b or "")))
        lo = max(0, at - width // 3)
        for sign, line in (("-", a), ("+", b)):
            if line is not None:
                part = line[lo:lo + width]
                out.append(f"{sign} {'…' if lo else ''}{part}{'…' if lo + width < len(line) else ''}")
    return "\n".join(out + (["…"] if len(pairs) > lines else []))


def demo_table(results: dict) -> str:
    """The main job's summary as a Markdown table: one row per (stream, method), mean ± 95 % CI in %."""
    seeds = results["seeds"]
    lines = [f"| stream | method | {' | '.join(HEADERS[k] for k in METRICS)} |",
             "|---|---|" + "---|" * len(METRICS)]
    for stream, res in results["streams"].items():
        for method, cells in res["summary"].items():
            lines.append(f"| {stream} | {res['labels'][method]} | " + " | ".join(format_cell(cells[k]) for k in METRICS)
                         + " |")
    digits = results["streams"].get("digits", {})
    sweep = digits.get("sweep")
    note = f"\n\n{seeds_phrase(seeds)}; cells are {cells_phrase(seeds)}, in %."
    if {"frozen", "seq_lora"} <= set(digits.get("methods", {})):
        gain = [np.mean(np.diag(np.array(s["accuracy"])) - np.diag(np.array(f["accuracy"])))
                for s, f in zip(digits["methods"]["seq_lora"], digits["methods"]["frozen"])]
        note += (" Digits: training on a domain raises its accuracy by "
                 f"{100 * np.mean(gain):.1f} points on average over the frozen base's zero-shot "
                 "(sequential LoRA's diagonal minus the frozen base's).")
    silent = {name: [r["silent_fraction"] for r in res["methods"]["moram"]]
              for name, res in results["streams"].items() if "moram" in res["methods"]}
    if silent and len(seeds) == 1:
        note += (" Inputs that δ silences entirely at evaluation (MoRAM, layer 1): "
                 + ", ".join(f"{name} {100 * v[0]:.1f} %" for name, v in silent.items()) + ".")
    elif silent:
        note += (" Inputs that δ silences entirely at evaluation (MoRAM, layer 1, mean over seeds, and the seeds' "
                 "range): " + ", ".join(f"{name} {100 * np.mean(v):.1f} % ({100 * min(v):.1f}–{100 * max(v):.1f} %)"
                                        for name, v in silent.items()) + ".")
    if sweep:
        note += (" Validation sweep of τ on the digits stream (mean Average): "
                 + ", ".join(f"τ = {t}: {100 * v:.1f}" for t, v in zip(sweep["temperatures"], sweep["validation_average"]))
                 + f"; chosen τ = {sweep['chosen']}.")
    if results.get("environment"):  # results written before it was recorded have none
        note += (f" Computed by {provenance.describe(results['environment'])}; another NumPy or BLAS rounds "
                 "differently and gives other numbers (`moram_ref/provenance.py`).")
    return "\n".join(lines) + note


def textcl_table(results: dict) -> str:
    """One text-CL run's tables (union and per-task label spaces), as ``moram-ref text-cl`` prints them."""
    from moram_ref.experiments.textcl.run import format_table  # noqa: PLC0415

    machine = results.get("machine", {})
    where = (f"\n\n{textcl_tables.run_label(results)}: `{textcl_tables.command(results)}`, "
             f"{textcl_tables.timing(results)} (torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}).")
    return format_table(results).rstrip("\n") + where


GENERATORS = {"demo": demo_table, "ablation": ablation_tables.ablation_table, "routing": ablation_tables.routing_table,
              "takeover": ablation_tables.takeover_table, "claims": claims.claims_table,
              "textcl": textcl_table, "textcl-matrix": textcl_tables.matrix_table,
              "textcl-brief": textcl_tables.brief_table, "textcl-routing": routing_tables.routing_table,
              "textcl-shares": routing_tables.shares_table, "textcl-confusion": confusion_tables.confusion_table,
              "textcl-sensitivity": sensitivity_tables.sensitivity_table,
              "clip": lambda *runs: track_tables.table("clip", *runs), "llm": lambda *runs: track_tables.table("llm", *runs)}
# The results files each table reads: (what they are, how many at least, how many at most; None: no limit).
INPUTS = {"claims": ("the main job's results.json, the ablation's, then one or more text-CL results.json", 3, None),
          "textcl-matrix": ("one or more text-CL results.json", 1, None),
          "textcl-brief": ("one or more text-CL results.json", 1, None),
          "textcl-routing": ("one or more text-cl-routing routing_summary.json", 1, None),
          "textcl-shares": ("one or more text-cl-routing routing_summary.json", 1, None),
          "textcl-confusion": ("one or more text-cl-confusion confusion.json", 1, None),
          "textcl-sensitivity": ("one or more text-cl-sensitivity sensitivity.json", 1, None),
          "clip": ("one or more `moram-ref clip` summary.json; several: runs of one setting, averaged", 1, None),
          "llm": ("one or more `moram-ref llm` summary.json; several: runs of one setting, averaged", 1, None)}
PLOTS = {"textcl-matrix": textcl_tables.matrix_figure}
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
_P = textcl_tables.problem


def _claims_file(r, i: int) -> str | None:
    """The claims table's inputs, in order: the main job's results, the ablation's, then text-CL files."""
    if i == 0:
        ok = isinstance(r, dict) and isinstance(r.get("streams"), dict) and "studies" not in r
        return results_check.demo_problem(r) if ok else \
            "is not the main job's results.json (`moram-ref demo`), which --table claims takes first"
    if i == 1:
        ok = isinstance(r, dict) and isinstance(r.get("streams"), dict) and "studies" in r
        return results_check.ablation_problem(r) if ok else \
            "is not the ablation's results.json (`moram-ref ablation`), which --table claims takes second"
    if isinstance(r, dict) and (r.get("kind") == "text-cl routing" or "per_task" in r):
        return routing_tables.problem(r, need="moram")
    return _P(r, ("zero_shot", "moram"), coarse=True)


def _text_cl_file(r, i: int) -> str | None:
    """For the NumPy tables (the default ``demo`` among them): a text-CL file passed without its --table."""
    kind = r.get("kind") if isinstance(r, dict) else None
    if kind == "text-cl confusion":
        return "is a text-cl-confusion confusion.json: pass --table textcl-confusion"
    if kind == "text-cl sensitivity":
        return "is a text-cl-sensitivity sensitivity.json: pass --table textcl-sensitivity"
    if kind == "text-cl routing":
        return "is a text-cl-routing summary: pass --table textcl-routing or --table textcl-shares"
    if isinstance(r, dict) and {"settings", "encoder", "tasks"} <= set(r):
        return "is a text-cl results.json: pass --table textcl (or textcl-matrix, textcl-brief)"
    if (track := track_tables.track_of(r)) is not None:
        return f"is the summary.json of a `moram-ref {track}` run: pass --table {track}"
    return None


def _demo_file(r, i: int) -> str | None:
    if isinstance(r, dict) and "studies" in r:
        return "is the ablation's results.json (`moram-ref ablation`): pass --table ablation, routing or takeover"
    return _text_cl_file(r, i) or results_check.demo_problem(r)


def _ablation_file(r, i: int, table: str = "ablation") -> str | None:
    if isinstance(r, dict) and "studies" not in r and isinstance(r.get("seeds"), list) and "streams" in r:
        return "is the main job's results.json (`moram-ref demo`): pass --table demo (the default)"
    return _text_cl_file(r, i) or results_check.ablation_problem(r, table)


# Per-file checks of the inputs (their messages name the file): table -> check(file's data, its position)
FILE_CHECKS = {
    "demo": _demo_file, "ablation": _ablation_file, "routing": lambda r, i: _ablation_file(r, i, "routing"),
    "takeover": lambda r, i: _ablation_file(r, i, "takeover"),
    "textcl": lambda r, i: _P(r), "textcl-matrix": lambda r, i: _P(r),
    "textcl-brief": lambda r, i: _P(r, ("zero_shot", "moram"), coarse=True),
    "textcl-routing": lambda r, i: routing_tables.problem(r),
    "textcl-shares": lambda r, i: routing_tables.problem(r, need="moram"),
    "textcl-confusion": lambda r, i: confusion_tables.problem(r),
    "textcl-sensitivity": lambda r, i: sensitivity_tables.problem(r),
    "claims": _claims_file,
    "clip": lambda r, i: track_tables.problem(r, "clip"), "llm": lambda r, i: track_tables.problem(r, "llm"),
}


def _block(name: str) -> re.Pattern:
    name = re.escape(name)
    return re.compile(rf"(<!-- BEGIN generated: {name}(?= )[^\n]*-->\n)(.*?)(<!-- END generated: {name} -->)", re.S)


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the generated block ``name`` replaced by ``body``. ValueError if the markers are missing,
    if ``text`` holds two blocks of that name (one would go stale unseen), or if ``body`` holds a marker
    (it would end the block early, and every later --write would add a copy)."""
    pattern = _block(name)
    found = len(pattern.findall(text))
    if not found:
        raise ValueError(f"no block '<!-- BEGIN generated: {name} ... -->' … '<!-- END generated: {name} -->' found")
    if found > 1:
        raise ValueError(f"{found} blocks are named {name!r}: give each its own name (--block)")
    if "<!-- BEGIN generated:" in body or "<!-- END generated:" in body:
        raise ValueError("the rendered table holds a block marker ('<!-- … generated:'): its input's text would "
                         "end the block early")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text, count=1)


def read_block(text: str, name: str) -> str:
    match = _block(name).search(text)
    if not match:
        raise ValueError(f"no block '<!-- BEGIN generated: {name} ... -->' found")
    return match.group(2).removesuffix("\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+",
                   help="the files the table is rendered from: a run's results.json (e.g. runs/demo/results.json) "
                        "for demo, ablation, routing, takeover and textcl; one or more text-CL results.json for "
                        "textcl-matrix and textcl-brief; the main job's, the ablation's, then text-CL results.json "
                        "and routing summaries for claims; one or more routing_summary.json (text-cl-routing) for "
                        "textcl-routing and textcl-shares, confusion.json (text-cl-confusion) for textcl-confusion, "
                        "sensitivity.json (text-cl-sensitivity) for textcl-sensitivity; one or more summary.json of "
                        "`moram-ref clip` / `moram-ref llm` runs for clip / llm")
    p.add_argument("--table", default=None, choices=sorted(GENERATORS), help="which table to render (default demo)")
    p.add_argument("--block", metavar="NAME", default=None,
                   help="the generated block to --write/--check (default: the table's name; e.g. textcl:standard-2 "
                        "when a file holds several tables of one kind)")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help=f"also draw the table as a figure (only --table {' or '.join(sorted(PLOTS))})")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", help="replace the table's generated block in FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 if FILE's block differs from the results")


def run(args: argparse.Namespace) -> int:
    results = args.results if isinstance(args.results, list) else [args.results]
    # every path: not empty, UTF-8, ~ expanded, no symbolic link on the way leading nowhere (cliargs.usable_path)
    paths = [usable_path("results", str(p)) for p in results]
    for flag in ("plot", "write", "check"):
        if getattr(args, flag) is not None:
            setattr(args, flag, usable_path(f"--{flag}", str(getattr(args, flag))))
    chosen = "the default --table demo" if args.table is None else f"--table {args.table}"
    args.table = args.table or "demo"
    what, least, most = INPUTS.get(args.table, ("a results file", 1, 1))
    if len(paths) < least or (most is not None and len(paths) > most):
        count = f"{least}" if least == most else f"{least} or more" if most is None else f"{least}–{most}"
        raise UsageError(f"results: --table {args.table} takes {count} file(s) ({what}), got {len(paths)}")
    block = args.table if args.block is None else args.block
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", block):
        raise UsageError(f"--block: {block!r} is not a block name (letters, digits, '_', '.', ':', '-')")
    if args.block is not None and args.write is None and args.check is None:
        raise UsageError("--block: names the block --write or --check acts on; neither was given")
    if args.plot is not None:
        if args.table not in PLOTS:
            raise UsageError(f"--plot: --table {args.table} has no figure (only {', '.join(sorted(PLOTS))})")
        if args.plot.suffix.lower() not in PLOT_SUFFIXES or args.plot.is_dir():
            raise UsageError(f"--plot: {args.plot} is not a figure file name (ending in {', '.join(PLOT_SUFFIXES)})")
        if not args.plot.parent.is_dir():
            raise UsageError(f"--plot: cannot write {args.plot}: the folder {args.plot.parent} does not exist")
    loaded = []
    for path in paths:
        if path.exists() and not path.is_file():  # a folder, a FIFO (would block), a device (/dev/zero: endless)
            raise UsageError(f"results: {path} is not a regular file")
        try:
            loaded.append(json.loads(rundir.read_results_text(path), object_pairs_hook=rundir.unique_keys))
        except (OSError, ValueError, RecursionError) as err:  # ValueError: JSONDecodeError, an over-long integer
            raise UsageError(f"results: cannot read {path}: {err}") from None
    check = FILE_CHECKS.get(args.table)
    for i, (path, data) in enumerate(zip(paths, loaded)):
        why = check(data, i) if check else None
        if why:
            raise UsageError(f"results: {path} {why} ({chosen})")
    if args.table in ("clip", "llm"):  # a run's summary with its settings (config.json beside it), then across runs
        loaded = [track_tables.read_run(path, data) for path, data in zip(paths, loaded)]
        if why := track_tables.runs_problem(loaded, args.table):
            raise UsageError(f"results: {why} (--table {args.table})")
    names = " ".join(str(p) for p in paths)
    try:
        body = GENERATORS[args.table](*loaded)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError, OverflowError) as err:
        article = "an" if args.table[0] in "aeiou" else "a"
        raise UsageError(f"results: {names} is not {article} {args.table} results file "
                         f"({type(err).__name__}: {err})") from None
    target: Path | None = args.write or args.check
    new = text = None
    crlf = False
    if target is not None:  # the target is checked before anything is written
        flag = "--check" if args.check else "--write"
        if target.exists() and not target.is_file():
            raise UsageError(f"{flag}: {target} is not a regular file")
        try:
            raw = target.read_bytes()
            crlf = b"\r\n" in raw  # written back with the line endings it has
            if crlf and raw.count(b"\r\n") != raw.count(b"\n"):
                raise ValueError("mixes CRLF and LF line endings: make them one kind first (it is written back "
                                 "with its own)")
            text = raw.decode("utf-8").replace("\r\n", "\n")
            new = replace_block(text, block, body)
        except (OSError, ValueError) as err:
            raise UsageError(f"{'--check' if args.check else '--write'}: {target}: {err}") from None
    if args.plot is not None:
        try:
            PLOTS[args.table](loaded, args.plot)
        except (OSError, ValueError) as err:
            raise UsageError(f"--plot: cannot write {args.plot}: {err}") from None
        print(f"wrote {args.plot}")
    if target is None:
        print(body)
        return 0
    if args.check is not None:
        if new != text:
            print(f"{target}: the '{block}' table differs from {names}; first differences (- {target}, + results):")
            print(_first_differences(read_block(text, block), read_block(new, block)))
            return 1
        print(f"{target}: the '{block}' table matches {names}")
        return 0
    try:  # whole or not at all: a full disk leaves the document as it was
        # through a symbolic link to the document itself (the rename would replace the link)
        rundir.write_text(target.resolve(), new.replace("\n", "\r\n") if crlf else new)
    except OSError as err:
        print(f"moram-ref report: error: --write: {err.strerror or err}; {target} is as it was", file=sys.stderr)
        return 1
    print(f"wrote the '{block}' table into {target}")
    return 0
