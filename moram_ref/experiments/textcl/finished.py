"""A finished ``text-cl`` run folder, checked whole before an analysis reads it.

``text-cl-routing`` and ``text-cl-confusion`` both start here: :func:`plan` reads the run's recorded
settings (``config.json``), checks them, refuses a folder another process holds, checks that the encoder
folder holds weights and every file it needs can be read, reads the tasks from ``--data-root``, checks
every (method, seed) record the analysis will load
(:func:`moram_ref.experiments.textcl.state.check`: each checkpoint's tensors against their sha256, written
for this method, task, seed, data, configuration and the settings that shape a record), checks that each
record's accuracies are the ones the run published in ``matrices/``, and that the outputs can be written —
all before the encoder loads, so a damaged, unfinished or foreign run is named in one line
(:class:`~moram_ref.experiments.cliargs.UsageError`) and nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moram_ref.experiments import cliargs, rundir


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every analysis of a finished run takes: the run, where its data and encoder are now,
    and ``--no-plots``."""
    p.add_argument("run", type=cliargs.existing_dir, help="a finished `moram-ref text-cl` run folder")
    p.add_argument("--data-root", type=cliargs.existing_dir, default=None,
                   help="the task folders (default: the --data-root recorded in the run's config.json)")
    p.add_argument("--model-path", type=cliargs.existing_dir, default=None,
                   help="the encoder folder (default: the one recorded in the run's config.json, or the packaged "
                        "MiniLM); its name must be the recorded one")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only, no figures (no matplotlib needed)")


def publish(run: Path, output: str, result: dict, figure: str, draw, no_plots: bool, log) -> None:
    """Write an analysis's ``output`` (JSON of ``result``) and, unless ``no_plots``, its ``figure`` (``draw(result,
    path)``) into ``run`` together: staged, then published, all old or all new; a figure left from an earlier
    analysis is removed when none is drawn (it would not match). Says what it wrote."""
    with rundir.staging(run) as stage:
        if not no_plots:
            draw(result, stage / figure)
        (stage / output).write_text(rundir.dumps(result))
        stale = no_plots and (run / figure).is_file()
        rundir.publish(stage, run, stale=(figure,))
    log(f"wrote {run}/{output}" + ("" if no_plots else f", {figure}")
        + (f"; removed the earlier {figure}" if stale else ""))


ADVICE = ("this command reads the run as `moram-ref text-cl` wrote it: if its config.json, the data under "
          "--data-root or the encoder (--model-path) changed, undo that; a state folder that is damaged or not "
          "this run's: delete it and "
          "`moram-ref text-cl --resume` the run")


def plan(run: Path, data_root: Path | None, wanted: tuple[str, ...], outputs: tuple[str, ...],
         none_wanted: str, model_path: Path | None = None) -> tuple[dict, list[str], list, dict[tuple[str, int], dict]]:
    """Every check before any work. Returns (settings, methods, tasks, records).

    run: the run folder; data_root: ``--data-root`` (None: the recorded one); wanted: the methods the
    analysis reads, in its order (those the run trained are kept); outputs: the file names (globs allowed
    for figures' names) it will write in ``run``; none_wanted: the message's end when the run trained none of
    ``wanted``; model_path: ``--model-path`` (None: the recorded encoder folder, or the packaged MiniLM).
    ``records[(method, seed)]`` is that pair's validated ``progress.json`` record, whose accuracy rows equal
    the run's ``matrices/<method>_seed<seed>.json`` where that file exists."""
    from moram_ref.experiments.textcl import state  # noqa: PLC0415
    from moram_ref.experiments.textcl.data import SEQUENCES, load_task  # noqa: PLC0415

    record = cliargs.read_json(run / rundir.CONFIG, "run")
    if not isinstance(record, dict) or record.get("command") != "text-cl" or "settings" not in record:
        raise cliargs.UsageError(f"run: {run} does not hold a `moram-ref text-cl` run (its config.json "
                                 f"records {record.get('command') if isinstance(record, dict) else record!r})")
    settings = record["settings"]
    check_settings(settings, run / rundir.CONFIG, SEQUENCES)
    rundir.check(run, "text-cl", settings, eval_only=True, arg="run")  # in use by another process: said first
    encoder_folder = model_path or settings["model_path"]
    if encoder_folder is not None and not Path(encoder_folder).is_dir():
        raise cliargs.UsageError(f"--model-path: the encoder folder {encoder_folder} does not exist"
                                 + ("" if model_path else " (recorded in the run's config.json); pass --model-path"))
    state.check_encoder(encoder_folder)  # weights present, every file readable
    methods = [m for m in wanted if m in settings["methods"]]
    if not methods:
        raise cliargs.UsageError(f"run: {run} trained {none_wanted} (--methods {' '.join(settings['methods'])})")
    data_root = data_root or Path(settings["data_root"])
    if not data_root.is_dir():
        raise cliargs.UsageError(f"--data-root: the recorded {data_root} does not exist; pass --data-root")
    names = list(SEQUENCES[settings["sequence"]][: settings["tasks"]])
    tasks = []
    for name in names:
        try:
            tasks.append(load_task(data_root, name, max_train=settings["max_train"], max_test=settings["max_test"]))
        except (OSError, ValueError, KeyError) as exc:  # JSONDecodeError is a ValueError
            raise cliargs.UsageError(f"--data-root: cannot read task {name} under {data_root}: {exc}") from None
        if not tasks[-1].test_text:
            raise cliargs.UsageError(f"--data-root: task {name} under {data_root} has no test texts to probe")
    fingerprint, config = state.data_fingerprint(tasks), cliargs.moram_config(argparse.Namespace(**settings))
    try:
        shaping = state.shaping({**settings, "model_path": str(model_path)} if model_path else settings)
    except KeyError as exc:
        raise cliargs.UsageError(f"run: {run / rundir.CONFIG} records no {exc.args[0]} in its settings; it was "
                                 "not written by `moram-ref text-cl` as it is") from None
    records = {}
    for method in methods:  # every checkpoint read now, before the encoder loads: damage is named at once
        for seed in range(settings["seeds"]):
            where = state.folder(run, method, seed)
            try:
                found = state.check(where, method, seed, names, fingerprint, config, shaping,
                                    now="given by --model-path" if model_path else "in the run's config.json")
            except state.StateError as exc:
                raise cliargs.UsageError(f"run: {exc.path}: {exc.why}; {exc.advice or ADVICE}") from None
            if found is None or found["tasks_done"] < len(names):
                raise cliargs.UsageError(f"run: {where / state.PROGRESS} does not record every task as done (the "
                                         "run is unfinished: `text-cl --resume` it first)")
            _same_as_published(run, method, seed, found)
            records[method, seed] = found
    for pattern in outputs:
        for path in (run.glob(pattern) if "*" in pattern else [run / pattern]):
            if path.exists() and not path.is_file():
                raise cliargs.UsageError(f"run: cannot write {path}: it exists and is not a file")
    return settings, methods, tasks, records


def _same_as_published(run: Path, method: str, seed: int, record: dict) -> None:
    """The record's accuracy rows equal the run's published ``matrices/<method>_seed<seed>.json`` (when it
    exists): a state folder that is not this run's is refused, even one that records no settings."""
    import numpy as np  # noqa: PLC0415

    path = run / "matrices" / f"{method}_seed{seed}.json"
    if not path.is_file():
        return
    published = cliargs.read_json(path, "run")
    try:
        same = all(np.array_equal(np.asarray(published[k], float), np.asarray(record[k], float))
                   for k in ("union", "own"))
    except (KeyError, TypeError, ValueError):
        same = False
    if not same:
        raise cliargs.UsageError(f"run: the accuracies in {path} differ from those recorded in "
                                 f"{run / 'state' / f'{method}_seed{seed}' / 'progress.json'}: that state is not "
                                 f"the one this run published; {ADVICE}")


def unchecked_settings(records: dict[tuple[str, int], dict]) -> str | None:
    """A note naming the (method, seed) records written before records held their settings (None if none)."""
    old = [f"{m} seed {s}" for (m, s), r in records.items() if "settings" not in r]
    return (f"note: {len(old)} record(s) were written before records held their settings ({', '.join(old[:3])}"
            f"{', …' if len(old) > 3 else ''}): their settings were not compared") if old else None


def check_settings(settings, path: Path, sequences: dict) -> None:
    """The recorded settings an analysis reads, checked (a hand-edited or foreign config.json)."""
    def bad(why: str) -> cliargs.UsageError:
        return cliargs.UsageError(f"run: {path} records {why}; it was not written by `moram-ref text-cl` as it is")

    if not isinstance(settings, dict):
        raise bad(f"settings of type {type(settings).__name__}, not a mapping")
    missing = [k for k in ("methods", "sequence", "tasks", "seeds", "data_root", "model_path", "adapt_layers",
                           "placement", "max_length", "max_train", "max_test") if k not in settings]
    if missing:
        raise bad(f"no {', '.join(missing)} in its settings")
    if not isinstance(settings["methods"], list) or not all(isinstance(m, str) for m in settings["methods"]):
        raise bad(f"methods {settings['methods']!r}, not a list of names")
    if settings["sequence"] not in sequences:
        raise bad(f"sequence {settings['sequence']!r}, not one of {', '.join(sequences)}")
    n = len(sequences[settings["sequence"]])
    from moram_ref.experiments.textcl.encoder import PLACEMENTS  # noqa: PLC0415

    for key, low, high in (("tasks", 2, n), ("seeds", 1, None), ("adapt_layers", 1, None), ("max_length", 2, None),
                           ("max_train", 1, None), ("max_test", 1, None)):
        v = settings[key]
        if key in ("max_train", "max_test") and v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
            raise bad(f"{key} {v!r}, not an integer in [{low}, {high if high is not None else '∞'}]")
    if settings.get("eval_split", "test") not in ("test", "val"):
        raise bad(f"eval_split {settings['eval_split']!r}, not 'test' or 'val'")
    if settings["placement"] not in PLACEMENTS:
        raise bad(f"placement {settings['placement']!r}, not one of {', '.join(sorted(PLACEMENTS))}")
    for key, may_be_none in (("data_root", False), ("model_path", True)):
        if not (isinstance(settings[key], str) or (may_be_none and settings[key] is None)):
            raise bad(f"{key} {settings[key]!r}, not a path")
    try:
        cliargs.moram_config(argparse.Namespace(**settings))
    except (cliargs.UsageError, TypeError, ValueError, AttributeError) as exc:
        raise bad(f"MoRAM settings that do not form a configuration ({exc})") from None


def encoder(settings: dict, model_path: Path | None = None):
    """(CachedEncoder with the recorded blocks and length, the encoder record) for a run's settings;
    ``model_path`` (``--model-path``) replaces the recorded encoder folder."""
    from moram_ref.experiments.textcl.encoder import CachedEncoder, load_checked  # noqa: PLC0415
    from moram_ref.experiments.textcl.run import encoder_record  # noqa: PLC0415

    model_path = model_path or settings["model_path"]
    model, tokenizer = load_checked(model_path)
    try:
        enc = CachedEncoder(model, tokenizer, adapt_layers=settings["adapt_layers"], max_length=settings["max_length"])
    except ValueError as exc:
        raise cliargs.UsageError(f"run: the recorded settings do not fit the encoder ({exc})") from None
    return enc, encoder_record(model_path, model, settings["adapt_layers"])
