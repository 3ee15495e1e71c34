"""Text-CL tables over runs (``report --table textcl-matrix / textcl-brief``, the claims rows): labels,
paired per-seed differences, the best-mean marks, the reproducing command, and the report flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moram_ref.cli import main
from moram_ref.experiments.textcl import routing_tables, tables
from moram_ref.experiments.textcl.run import DEFAULTS, summarise
from moram_ref.experiments.toy import claims


def _matrix(diag: float, later: float, n: int = 3) -> np.ndarray:
    """Accuracy a[t, j]: ``diag`` on learned tasks, ``later`` on the ones not learned yet."""
    a = np.full((n, n), later)
    a[np.tril_indices(n)] = diag
    return a


def fake_results(sequence="standard-1", adapt_layers=2, moram_diag=(0.8, 0.82, 0.84), lora_diag=(0.6, 0.61, 0.59)):
    """A results.json as ``text-cl`` writes it (through its own ``summarise``), from made-up matrices."""
    per = {"zero_shot": [0.3] * 3, "seq_lora": list(lora_diag), "moe_lora": [0.5, 0.52, 0.5],
           "olora": [0.7, 0.7, 0.71], "dense_moram": [0.79, 0.8, 0.8], "moram": list(moram_diag)}
    runs = {m: [{"union": _matrix(d, 0.2 if m != "zero_shot" else 0.3), "own": _matrix(d, 0.4),
                 "trainable_per_task": [0 if m == "zero_shot" else 96], "seconds": 1.0} for d in diags]
            for m, diags in per.items()}
    out = summarise(runs, ["dbpedia", "amazon", "yahoo"])
    out["settings"] = {**DEFAULTS, "sequence": sequence, "seeds": 3, "tasks": 3, "adapt_layers": adapt_layers,
                       "methods": list(per), "max_train": None, "max_test": None, "eval_split": "test"}
    out["encoder"] = {"name": "all-MiniLM-L6-v2", "blocks": 6, "adapted_blocks": adapt_layers}
    out["machine"] = {"threads": 1, "torch": "x", "python": "y"}
    out["wall_seconds"] = 600.0
    return out


def test_run_label_and_command():
    r = fake_results()
    assert tables.run_label(r) == "order 1, 3 tasks, top 2 of 6 blocks"
    assert tables.command(r) == ("moram-ref text-cl --data-root <llm-cl-benchmark-500> --sequence standard-1 "
                                 "--seeds 3 --tasks 3 --out runs/text-cl-standard-1-tasks3")  # other flags: defaults
    all_blocks = fake_results("long-4", adapt_layers=6)
    all_blocks["settings"]["tasks"] = 15
    assert tables.run_label(all_blocks).endswith("all 6 blocks")
    assert tables.command(all_blocks).endswith("--sequence long-4 --seeds 3 --adapt-layers 6 --out runs/text-cl-long-4-top6")


def test_runs_of_one_order_are_told_apart():
    """Settings that differ from the defaults name a run (label and --out); identical runs get '(run n)'."""
    base, slower = fake_results(), fake_results()
    slower["settings"].update(lr=0.001, eval_split="val")
    assert tables.run_label(slower) == "order 1, 3 tasks, top 2 of 6 blocks, lr 0.001, eval split val"
    assert tables.command(slower).endswith("--lr 0.001 --eval-split val --out runs/text-cl-standard-1-tasks3-lr0.001-eval-splitval")
    assert tables.command(base) != tables.command(slower)
    assert tables.run_labels([base, slower, fake_results()]) == [
        "order 1, 3 tasks, top 2 of 6 blocks (run 1)", "order 1, 3 tasks, top 2 of 6 blocks, lr 0.001, eval split val",
        "order 1, 3 tasks, top 2 of 6 blocks (run 2)"]
    other = fake_results()
    other["settings"].update(seeds=5, tasks=2, methods=["zero_shot", "moram"], model_path="bert-small")
    assert tables.run_label(other) == "order 1, 3 tasks, top 2 of 6 blocks, encoder bert-small"
    assert tables.command(other) == (
        "moram-ref text-cl --data-root <llm-cl-benchmark-500> --sequence standard-1 --seeds 5 --tasks 2 --methods "
        "zero_shot moram --model-path <bert-small> --out runs/text-cl-standard-1-seeds5-tasks2-zero_shot-moram-bert-small")
    from moram_ref.cli import build_parser

    recorded = build_parser("text-cl").parse_args(["text-cl", "--data-root", "."])
    assert recorded.seeds == tables.SEEDS  # the default the --out names leave out
    rows = [line.split(" | ")[0] for line in tables.matrix_table(base, base).splitlines() if line.startswith("| order")]
    assert rows[:2] == ["| order 1, 3 tasks, top 2 of 6 blocks (run 1)", "| order 1, 3 tasks, top 2 of 6 blocks (run 2)"]


def test_paired_difference_over_seeds():
    r = fake_results(moram_diag=(0.8, 0.9, 1.0), lora_diag=(0.7, 0.7, 0.7))
    d = tables.paired(r, "moram", "seq_lora", "last")
    assert d["mean"] == pytest.approx(0.2)
    assert d["ci95"] == pytest.approx(4.302652729911275 * 0.1 / np.sqrt(3))  # t(0.975, 2) · sd / √n
    del r["methods"]["moram"]["union"]["per_seed"]
    assert tables.paired(r, "moram", "seq_lora", "last") is None


def test_matrix_table_marks_the_best_adapter_per_row():
    body = tables.matrix_table(fake_results(), fake_results("standard-2"))
    last = body.split("**Average**")[0]
    assert "| order 1, 3 tasks, top 2 of 6 blocks | 30.0 ± 0.0 |" in last  # zero-shot first, never bold
    assert "**82.0 ± 5.0**" in last and last.count("**") == 2 + 2 * 2  # title + one best per row
    forgetting = body.split("**forgetting**")[1].split("**Transfer**")[0]
    assert forgetting.count("**0.0 ± 0.0**") == 2 * 5  # ties: every adapter without forgetting is best
    assert "--sequence standard-2" in body


def test_brief_table_picks_the_best_coarse_expert_per_metric():
    body = tables.brief_table(fake_results())
    assert "82.0 ± 5.0 / 70.3 ± 1.4 (O-LoRA)" in body  # Last: O-LoRA is the best coarse expert
    assert "/ 30.0 ± 0.0 |" in body  # Transfer against the frozen encoder


def test_claims_rows_are_paired_per_run():
    demo = json.loads((tables_root() / "demo.json").read_text())
    abl = json.loads((tables_root() / "ablation.json").read_text())
    body = claims.claims_table(demo, abl, fake_results(), fake_results("standard-3"))
    rows = [ln for ln in body.splitlines() if "text-CL (MiniLM)" in ln]
    assert len(rows) == 3 * 2  # Last, forgetting, Transfer for each run
    last = next(r for r in rows if r.startswith("| Better plasticity") and "order 3" in r)
    assert "seq. LoRA 60.0 ± 2.5 (Δ +22.0 ± 6.6)" in last and "holds vs seq. LoRA" in last
    transfer = next(r for r in rows if r.startswith("| Zero-shot"))
    assert "frozen 30.0 ± 0.0 (Δ -10.0 ± 0.0)" in transfer and "| does not hold |" in transfer


def tables_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.fixture
def two_runs(tmp_path):
    paths = []
    for seq in ("standard-1", "standard-2"):
        p = tmp_path / f"{seq}.json"
        p.write_text(json.dumps(fake_results(seq)))
        paths.append(str(p))
    return paths


def test_report_plot_and_named_block(two_runs, tmp_path, capsys):
    png, doc = tmp_path / "m.png", tmp_path / "doc.md"
    doc.write_text("a\n<!-- BEGIN generated: textcl:standard-2 (cmd) -->\nold\n<!-- END generated: textcl:standard-2 -->\n"
                   "<!-- BEGIN generated: textcl (cmd) -->\nkeep\n<!-- END generated: textcl -->\n")
    assert main(["report", *two_runs, "--table", "textcl-matrix", "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert main(["report", two_runs[1], "--table", "textcl", "--block", "textcl:standard-2", "--write", str(doc)]) == 0
    text = doc.read_text()
    assert "keep" in text and "old" not in text and "--sequence standard-2" in text
    assert main(["report", two_runs[1], "--table", "textcl", "--block", "textcl:standard-2", "--check", str(doc)]) == 0


def test_report_refuses_a_file_of_another_kind(capsys):
    assert main(["report", str(tables_root() / "demo.json"), "--table", "textcl-matrix"]) == 2
    assert "demo.json is not a text-cl results.json" in capsys.readouterr().err


def test_report_plot_is_drawn_only_after_the_target_checks(two_runs, tmp_path, capsys):
    png = tmp_path / "m.png"
    assert main(["report", *two_runs, "--table", "textcl-matrix", "--plot", str(png),
                 "--write", str(tmp_path / "missing.md")]) == 2
    assert "--write" in capsys.readouterr().err and not png.exists()


@pytest.mark.parametrize(("edit", "words"), [
    (lambda r: r.pop("settings"), ["older moram-ref text-cl", "'settings'"]),
    (lambda r: [e["union"].pop("per_seed") for e in r["methods"].values()], ["no per-seed summaries"]),
    (lambda r: r.__setitem__("methods", {"zero_shot": r["methods"]["zero_shot"]}), ["holds no adapter"]),
    (lambda r: r.__setitem__("kind", "text-cl routing"), ["text-cl-routing summary"]),
])
def test_report_names_the_file_that_cannot_feed_the_table(two_runs, tmp_path, capsys, edit, words):
    bad = tmp_path / "bad.json"
    r = fake_results()
    edit(r)
    bad.write_text(json.dumps(r))
    assert main(["report", two_runs[0], str(bad), "--table", "textcl-matrix"]) == 2
    err = capsys.readouterr().err
    assert f"results: {bad} " in err and two_runs[0] not in err and all(w in err for w in words), err


def test_brief_needs_moram_the_frozen_encoder_and_a_coarse_expert(tmp_path, capsys):
    bad = tmp_path / "subset.json"
    r = fake_results()
    r["methods"] = {m: r["methods"][m] for m in ("moram", "seq_lora")}
    bad.write_text(json.dumps(r))
    assert main(["report", str(bad), "--table", "textcl-brief"]) == 2
    assert "lacks zero_shot" in capsys.readouterr().err


def test_single_seed_run_renders_without_spread(tmp_path, capsys):
    from moram_ref import report

    r = fake_results()
    for e in r["methods"].values():
        for space in ("union", "own"):
            for k in ("transfer", "average", "last", "bwt", "forgetting"):
                e[space][k]["ci95"] = None
    body = report.GENERATORS["textcl"](r)
    assert "| MoRAM | 20.0 | 61.3 | 82.0 | 0.0 | 0.0 | 96 | 1 |" in body


def test_timing_says_when_a_run_was_resumed():
    r = fake_results()
    assert tables.timing(r) == "10 min wall time on 1 thread(s)"
    r.update(resumed={"moram_seed0": 2}, method_seconds=3000.0, wall_seconds=60.0)
    assert tables.timing(r) == ("50 min of training and evaluation summed over methods and seeds (resumed after a "
                                "stop; its last process ran 1 min on 1 thread(s))")
    r.update(merged_from=["part-a", "part-b"])
    assert "(assembled from 2 parts by text-cl-merge; its last process ran 1 min on 1 thread(s))" in tables.timing(r)
    r.update(merged_from=["part-a"])
    assert "(assembled from 1 part by text-cl-merge;" in tables.timing(r)


@pytest.mark.parametrize(("argv", "words"), [
    (["--table", "demo", "--plot", "x.png"], ["--plot", "--table demo has no figure"]),
    (["--table", "textcl", "--block", "a b"], ["--block", "'a b'"]),
    (["--table", "textcl-matrix", "--plot", "/proc/no/such.png"], ["--plot", "does not exist"]),
    (["--table", "textcl", "--block", ""], ["--block", "''"]),
    (["--table", "textcl-matrix", "--plot", "/tmp/x.txt"], ["--plot", "not a figure file name"]),
    (["--table", "textcl-matrix", "--plot", "/tmp"], ["--plot", "not a figure file name"]),
    (["--table", "textcl-matrix", "--plot", "/no/such/folder/m.png"], ["--plot", "does not exist"]),
])
def test_report_flag_errors_name_the_flag(two_runs, capsys, argv, words):
    assert main(["report", two_runs[0], *argv]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and len(err.strip().splitlines()) == 1, err


def test_routing_summaries_without_per_text_routing_still_render():
    """Summaries written before the per-text routing was recorded: the column says so, no per-text table,
    no per-text claims row — and with it, the per-text verdict follows its rule."""
    summary = json.loads((tables_root() / "textcl" / "standard-1.routing.json").read_text())
    old = json.loads(json.dumps(summary))
    for entry in old["methods"].values():
        del entry["summary"]["text_own"], entry["text_routing"]
    assert "| not recorded |" in routing_tables.routing_table(old)
    assert "| not recorded |" not in routing_tables.routing_table(summary)
    assert "*Per text:*" not in routing_tables.shares_table(old) and "*Per text:*" in routing_tables.shares_table(summary)
    demo = json.loads((tables_root() / "demo.json").read_text())
    abl = json.loads((tables_root() / "ablation.json").read_text())
    per_text = [r for r in claims.claims_table(demo, abl, fake_results(), summary).splitlines() if "per text" in r]
    assert len(per_text) == 1 and "per text" not in claims.claims_table(demo, abl, fake_results(), old)
    summary["methods"]["moram"]["summary"]["text_own"] = {"mean": 0.8, "ci95": 0.1, "per_seed": [0.7, 0.8, 0.9]}
    assert "| holds (rule: share of texts > 50 %, CI) |" in claims.claims_table(demo, abl, fake_results(), summary)


def _summary():
    return json.loads((tables_root() / "textcl" / "standard-1.routing.json").read_text())


def _set(path, value):
    """An edit of a routing summary: ``path`` is a list of keys/indices into it."""
    def edit(s):
        node = s
        for k in path[:-1]:
            node = node[k]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


M = ["methods", "moram"]


@pytest.mark.parametrize(("table", "edit", "words"), [
    ("textcl-routing", _set(["run", "tasks"], []), ["records tasks []", "2 or more"]),
    ("textcl-routing", _set(["run", "tasks"], ["a", "b", "c", "d", "e"]), ["texts_per_task", "expected 5"]),
    ("textcl-routing", _set(["texts_per_task"], [0, 32, 32, 32]), ["texts_per_task [0, 32, 32, 32]"]),
    ("textcl-routing", _set(["texts_per_task"], [32, 32]), ["texts_per_task", "expected 4"]),
    ("textcl-routing", _set(["run", "encoder", "blocks"], "x"), ["encoder", "whole numbers of blocks"]),
    ("textcl-routing", _set(["methods"], ["moram"]), ["methods of type list"]),
    ("textcl-routing", _set([*M, "summary", "own", "mean"], 10**400), ["summary 'own'"]),
    ("textcl-routing", _set([*M, "summary", "own", "mean"], -3.0), ["summary 'own'", "[0, 1]"]),
    ("textcl-routing", _set([*M, "summary", "own", "ci95"], -0.5), ["finite non-negative 95 % half-width"]),
    ("textcl-routing", _set([*M, "summary", "atoms99", "mean"], True), ["summary 'atoms99'"]),
    ("textcl-routing", _set([*M, "mean_share", 0, 0], [[True, True, True, True]]), ["mean_share of seed 0"]),
    ("textcl-routing", _set([*M, "mean_share", 0, 0], [["1", "1", "1", "1"]]), ["mean_share of seed 0"]),
    ("textcl-routing", _set([*M, "mean_share", 0, 0], [[-1.2, 1, 1, 1]]), ["shares in [0, 1]"]),
    ("textcl-shares", _set([*M, "text_routing", 0, 0, 0], 1.5), ["whole counts"]),
    ("textcl-shares", _set([*M, "text_routing", 0, 0, 0], 10**400), ["whole counts"]),
    ("textcl-shares", _set([*M, "text_routing", 0, 0, 0], 33), ["more texts of a task than texts_per_task"]),
    ("textcl-routing", _set(["methods"], {}), ["records methods []"]),
    ("textcl-routing", _set([*M, "summary", "own", "mean"], float("nan")), ["MoRAM: summary 'own'", "finite"]),
    ("textcl-routing", _set([*M, "summary", "text_own", "mean"], float("nan")), ["summary 'text_own'"]),
    ("textcl-routing", _set([*M, "mean_share", 0, 3], [[0.5, 0.5], [0.5, 0.5]]), ["mean_share of seed 0"]),
    ("textcl-routing", _set([*M, "mean_share", 1], [[[1, 1, 1, 1]], [[0.5] * 4, [0.5] * 4]]), ["seed 1"]),
    ("textcl-shares", _set([*M, "text_routing", 0], [[1, 2, 3]] * 4), ["text_routing is not 3 seed(s) × 4 × 4"]),
    ("textcl-shares", _set([*M, "text_routing", 0, 0, 0], -1), ["non-negative whole counts"]),
    ("textcl-shares", _set([*M, "text_routing"], []), ["text_routing is not 3 seed(s)"]),
    ("textcl-shares", lambda s: s["methods"].pop("moram"), ["has no MoRAM entry", "probed dense MoRAM"]),
    ("textcl-shares", _set(["kind"], "x"), ["is not a text-cl-routing routing_summary.json"]),
    ("claims", lambda s: s["methods"].pop("moram"), ["has no MoRAM entry"]),
    ("claims", _set([*M, "summary", "old_on_new", "mean"], float("nan")), ["summary 'old_on_new'"]),
])
def test_a_damaged_routing_summary_is_named_never_misread(tmp_path, capsys, table, edit, words):
    s = _summary()
    edit(s)
    bad = tmp_path / "bad.routing.json"
    bad.write_text(json.dumps(s))
    argv = [str(bad)] if table != "claims" else [str(tables_root() / "demo.json"),
                                                  str(tables_root() / "ablation.json"), str(bad)]
    assert main(["report", *argv, "--table", table]) == 2
    err = capsys.readouterr().err
    assert f"results: {bad} " in err and all(w in err for w in words), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("table", "slot", "words"), [
    ("claims", 0, ["is not the main job's results.json", "takes first"]),
    ("claims", 1, ["is not the ablation's results.json", "takes second"]),
    ("textcl", 0, ["is a text-cl-routing routing.json"]),
    ("textcl-shares", 0, ["cannot read", "codec"]),
])
def test_report_names_a_file_of_the_wrong_kind_or_encoding(tmp_path, capsys, table, slot, words):
    files = [tables_root() / "demo.json", tables_root() / "ablation.json", tables_root() / "textcl" / "standard-1.json"]
    if table != "claims":
        files = [tables_root() / "textcl" / "standard-1.routing.json"]
    bad = tmp_path / "bad.json"
    if words[0] == "cannot read":
        bad.write_bytes(b"\xff\xfe{\x00")
    elif table == "textcl":
        bad.write_text(json.dumps({"run": {}, "per_task": 4, "methods": {}}))
    else:
        bad.write_text((tables_root() / "textcl" / "standard-1.routing.json").read_text())
    files[slot] = bad
    assert main(["report", *map(str, files), "--table", table]) == 2
    err = capsys.readouterr().err
    assert f"{bad}" in err and all(w in err for w in words), err
    others = [str(f) for f in files if f != bad]
    assert not any(o in err for o in others), err  # only the broken file is named


def test_footnotes_of_summaries_with_different_task_counts_name_each():
    four = _summary()
    two = json.loads(json.dumps(four))
    two["run"]["tasks"] = two["run"]["tasks"][:2]
    for e in two["methods"].values():
        e["mean_share"] = [[np.asarray(st)[: t + 1, :2].tolist() for t, st in enumerate(stages[:2])]
                           for stages in e["mean_share"]]
        e["text_routing"] = [np.asarray(c)[:2, :2].tolist() for c in e["text_routing"]]
    two.pop("texts_per_task", None)
    body = routing_tables.routing_table(four, two)
    assert "25 % (4 tasks)" in body and "50 % (2 tasks)" in body
    assert "(an even spread: 50)" in routing_tables.shares_table(two)
