"""``moram-ref text-cl-merge``: one text-cl run assembled from parts that trained disjoint methods.

Every (method, seed) pair of a text-cl run is independent of the others: its batch generator and its
fresh atoms start from the seed alone, and the frozen encoder's cached blocks are the same for all
(``tests/test_textcl_resume.py::test_each_method_and_seed_is_independent_of_the_others_in_the_run``). So
a run's methods can be split across processes (or machines that see the data at the same path; the
``--data-root`` is a recorded setting) — the same command with ``--methods`` subsets
and one ``--out`` each — and the parts merged afterwards into the run that trains them all::

    moram-ref text-cl … --methods seq_lora moe_lora olora --out runs/part-a   # one process
    moram-ref text-cl … --methods zero_shot dense_moram moram --out runs/part-b  # another
    moram-ref text-cl-merge --out runs/whole runs/part-a runs/part-b

The merge checks the parts (text-cl runs whose settings agree except ``--methods``, the methods disjoint,
none in use), copies their per-task records (``state/``, :mod:`.state`) into ``--out``, records there the
settings with every part's methods, and then runs ``text-cl --resume`` on ``--out``: every record is
validated against the task data, finished pairs are restored, unfinished ones continue from their last
finished task (and pairs no part started are trained), and ``results.json``, ``table.md`` and the figures
are written as by one uninterrupted run. A part may be unfinished or still to be resumed; its records are
copied as they are. If the assembly is interrupted, ``text-cl --resume`` on ``--out`` (the command is
printed) finishes it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from pathlib import Path

from moram_ref.experiments import cliargs, rundir, threads

KNOWN = {"data_root", "sequence", "tasks", "seeds", "methods", "steps", "batch", "lr", "adapt_layers", "placement",
         "max_length", "atoms_per_task", "top_k", "temperature", "threshold", "max_train", "max_test", "eval_split",
         "model_path"}  # the settings a text-cl config.json records (run.settings_of); tested against the parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("parts", nargs="+", type=cliargs.existing_dir, metavar="PART",
                   help="one or more text-cl run folders, finished or not, with the same settings except "
                        "--methods (disjoint); the merged run trains the union of their methods, each on the "
                        "thread count of its part")
    p.add_argument("--out", type=cliargs.out_dir, required=True,
                   help="the merged run folder: new, empty, or holding a text-cl run with the merged settings "
                        "(that run is replaced; what it loses is named)")
    p.add_argument("--no-plots", action="store_true",
                   help="tables and results.json only, no figures (no matplotlib needed)")


def plan(parts: list[Path], out: Path) -> dict:
    """Every check before any work; returns ``{"settings", "info", "owner", "parts"}``: the merged settings
    (methods in the canonical order), the first part's ``info`` with each method's part's starting thread
    count (``threads_by_method``: a pair no part started trains on it, :mod:`..threads`), which part holds
    each method, and each part's recorded settings.

    Each part is checked as ``text-cl --resume`` would check it (its settings, the task data, every record:
    damaged, foreign or stale records are named; a part in use is refused). Raises
    :class:`~moram_ref.experiments.cliargs.UsageError` naming the part: settings that differ from the
    first part's (flag, both values), a method in two parts, a part given twice, or an ``--out`` that holds
    another run or is one of the parts.
    """
    from moram_ref.experiments.textcl import METHODS  # noqa: PLC0415
    from moram_ref.experiments.textcl import run as textcl  # noqa: PLC0415

    resolved = [p.resolve() for p in parts]
    for part, where in zip(parts, resolved):
        if resolved.count(where) > 1:
            raise cliargs.UsageError(f"PART: {part} is given twice")
    if out.resolve() in resolved:
        raise cliargs.UsageError(f"--out: {out} is one of the parts; merge into a new folder")
    records = []
    for part in parts:
        if not (part / rundir.CONFIG).is_file():
            raise cliargs.UsageError(f"PART: {part} does not hold a `moram-ref text-cl` run (no {rundir.CONFIG})")
        record = cliargs.read_json(part / rundir.CONFIG, "PART")
        if not isinstance(record, dict) or record.get("command") != "text-cl" \
                or not isinstance(record.get("settings"), dict):
            raise cliargs.UsageError(f"PART: {part} does not hold a `moram-ref text-cl` run")
        rundir.check(part, "text-cl", record["settings"], resume=True, arg="PART")  # in use: named as a part
        unknown = sorted(set(record["settings"]) - KNOWN)
        if unknown:
            raise cliargs.UsageError(f"PART: {part / rundir.CONFIG} records settings text-cl does not have: "
                                     + ", ".join(map(str, unknown)))
        try:
            textcl.validate(_parse(argv_of(record["settings"], part, no_plots=True), part))
        except cliargs.UsageError as exc:
            raise cliargs.UsageError(f"PART {part}: {exc}") from None
        records.append(record)
    first = records[0]["settings"]
    owner: dict[str, Path] = {}
    for part, record in zip(parts, records):
        settings = record["settings"]
        diff = rundir.differences({k: v for k, v in first.items() if k != "methods"},
                                  {k: v for k, v in settings.items() if k != "methods"})
        if diff:
            values = "; ".join(d.replace("recorded ", "").replace("now ", "") for d in diff)
            raise cliargs.UsageError(f"PART: {part} has other settings than {parts[0]} (flag: value in "
                                     f"{parts[0].name}, value in {part.name}): {values}")
        for method in settings["methods"]:
            if method in owner:
                raise cliargs.UsageError(f"PART: method {method} is in both {owner[method]} and {part}; "
                                         "each method must come from one part")
            owner[method] = part
    merged = {**first, "methods": [m for m in METHODS if m in owner]}
    rundir.check(out, "text-cl", merged)  # empty, new, or an earlier merge with these settings
    recorded = {part: record["settings"] for part, record in zip(parts, records)}
    counts = {}  # a pair no part started runs on its part's starting count (a merged part: its method's part's)
    for method, part in owner.items():
        count = (threads.part_counts(part, recorded[part]["methods"], "PART").get(method)
                 or threads.started_on(part, "PART"))
        if count is not None:
            counts[method] = count
    info = {k: v for k, v in records[0].get("info", {}).items() if k not in ("threads", "threads_by_method")}
    info["threads"] = threads.current()  # the merged run's own start: its cache, and pairs of parts without one
    info["threads_by_method"] = counts
    return {"settings": merged, "info": info, "owner": owner, "parts": recorded}


def _parse(argv: list[str], part: Path) -> argparse.Namespace:
    """``argv`` parsed by text-cl's parser; a value it refuses is a UsageError naming ``part``'s config."""
    from moram_ref.cli import build_parser  # noqa: PLC0415

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return build_parser("text-cl").parse_args(argv)
    except SystemExit:
        why = said.getvalue().strip().partition("error: ")[2] or said.getvalue().strip()
        raise cliargs.UsageError(f"PART: {part / rundir.CONFIG} records a setting text-cl refuses: {why}") from None


def argv_of(settings: dict, out: Path, no_plots: bool) -> list[str]:
    """The ``text-cl --resume`` command line whose recorded settings are ``settings``."""
    argv = ["text-cl", "--out", str(out), "--resume"] + (["--no-plots"] if no_plots else [])
    for key, value in settings.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


def run(args: argparse.Namespace, log=print) -> dict:
    from moram_ref.experiments.textcl import run as textcl  # noqa: PLC0415
    from moram_ref.experiments.textcl import state  # noqa: PLC0415

    merged = plan(args.parts, args.out)
    settings, owner = merged["settings"], merged["owner"]
    argv = argv_of(settings, args.out, args.no_plots)
    resume = _parse(argv, args.parts[0])
    if textcl.settings_of(resume) != settings:  # the command line must record exactly the merged settings
        raise cliargs.UsageError(f"PART: the settings of {args.parts[0]} cannot be given as text-cl flags "
                                 f"({'; '.join(rundir.differences(settings, textcl.settings_of(resume)))})")
    with contextlib.ExitStack() as held:
        for part, recorded in merged["parts"].items():  # no part may change while its records are copied
            held.enter_context(rundir.open_run(part, "text-cl", recorded, resume=True, arg="PART",
                                                   reads_only=True))
        held.enter_context(rundir.open_run(args.out, "text-cl", settings, info=merged["info"]))
        stage = held.enter_context(rundir.staging(args.out))
        copied = []
        for method, part in owner.items():
            for seed in range(settings["seeds"]):
                source = state.folder(part, method, seed)
                if (source / state.PROGRESS).is_file():
                    shutil.copytree(source, state.folder(stage, method, seed))
                    copied.append(f"{method} seed {seed} from {part}")
        with rundir.uninterrupted():  # the records replace an earlier merge's run together
            removed = rundir.remove(args.out, textcl.EARLIER_RUN)
            if (stage / "state").is_dir():
                (stage / "state").replace(args.out / "state")
    if removed:
        log(f"replaced the earlier run in {args.out}: removed its {', '.join(removed)}")
    log(f"copied {len(copied)} record(s) into {args.out / 'state'}" + (": " + "; ".join(copied) if copied else ""))
    log("assembling: moram-ref " + " ".join(argv))
    resume.merged_from = [str(p) for p in args.parts]
    return textcl.run(resume, log=log)
