"""Every bad command-line input: exit status 2, one line on stderr naming the flag (or file) and the
value, no traceback, nothing written — before any work starts. Table-driven, in-process (a few cases
run the real console entry point in a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moram_ref.cli import COMMANDS, main

TEXT_TASKS = ("dbpedia", "amazon", "yahoo", "agnews")  # text-cl standard-1 and llm olora-1


def _write_text_tasks(root: Path) -> Path:
    for t, name in enumerate(TEXT_TASKS):
        folder = root / name
        folder.mkdir(parents=True)
        labels = [f"{name}{i}" for i in range(3)]
        (folder / "labels.json").write_text(json.dumps(labels))
        for split, n in (("train", 40), ("test", 6)):
            rows = [{"prompt": f"Classify this.\ntext {t} {split} {i}\nAnswer:", "answer": labels[i % 3]}
                    for i in range(n)]
            (folder / f"{split}.json").write_text(json.dumps(rows))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from moram_ref.experiments.clip.synthetic import make_all

    base = tmp_path_factory.mktemp("cli_errors")
    roots = make_all(base / "clip")
    (base / "empty").mkdir()
    (base / "notes.txt").write_text("not a folder\n")
    (base / "busy").mkdir()
    (base / "busy" / "thesis.tex").write_text("the user's own work\n")
    (base / "nomodel").mkdir()
    (base / "unfinished").mkdir()
    (base / "unfinished" / "moram_ref_synthetic.json").write_text('{"made_by": "x", "complete": false}')
    (base / "links").mkdir()
    (base / "links" / "trace").symlink_to(base / "nowhere")
    (base / "loop").symlink_to(base / "loop")  # a link to itself: Path.exists() only says False
    (base / "garbage.pt").write_text("not a checkpoint\n")
    from moram_ref.experiments.llm.backbones import tiny_config

    tiny_config("llama", 64).save_pretrained(base / "configonly")  # a config, no tokenizer, no weights
    for held in ("real/trace/C-STANCE/train.json", "real/xtail/dtd/split.json"):  # a user's own data
        (base / held).parent.mkdir(parents=True)
        (base / held).write_text("[]")
    (base / "finished").mkdir()
    (base / "finished" / "config.json").write_text('{"command": "clip", "settings": {}, "info": {}}')
    (base / "dupnames.json").write_text('{"dtd": ["banded", "dotted"], "dtd": ["a", "b"]}')
    (base / "classnames.json").write_text(json.dumps({"datasets": {"dtd": {"classnames": {"clip": ["a", "b"]}}}}))
    return {"CLASSNAMES": base / "classnames.json", "TEXT": _write_text_tasks(base / "text"), "XTAIL": roots["xtail"], "MTIL": roots["mtil"],
            "EMPTY": base / "empty", "FILE": base / "notes.txt", "BUSY": base / "busy", "NOMODEL": base / "nomodel",
            "MISSING": base / "no" / "such" / "folder", "REAL": base / "real", "LINKS": base / "links", "UNFINISHED": base / "unfinished",
            "LOOP": base / "loop", "GARBAGE": base / "garbage.pt", "CONFIGONLY": base / "configonly", "LATIN1": base / "caf\udce9",
            "FINISHED": base / "finished", "DUPNAMES": base / "dupnames.json"}  # b"caf\xe9": a Latin-1 name, not UTF-8


def _set(rel: str, content) -> callable:
    """A data mutation: write ``content`` (JSON, or text if a str) to ``TEXT/rel``."""
    def mutate(root: Path) -> None:
        path = root / rel
        if content is None:
            path.unlink()
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
    return mutate


def _folder(rel: str) -> callable:
    """A data mutation: ``TEXT/rel`` becomes an empty folder."""
    def mutate(root: Path) -> None:
        (root / rel).unlink()
        (root / rel).mkdir()
    return mutate


ROW = {"prompt": "p", "answer": "dbpedia0"}
TC = ["text-cl", "--data-root", "TEXT", "--out", "OUT"]
LLM = ["llm", "--tiny", "llama", "--benchmark", "olora-1", "--data-root", "TEXT", "--out", "OUT"]
XT = ["clip", "--tiny", "--data-root", "XTAIL", "--datasets", "caltech101", "dtd", "eurosat", "--batch", "4", "--out", "OUT"]
MT = ["clip", "--tiny", "--benchmark", "mtil", "--data-root", "MTIL", "--datasets", "mnist", "dtd", "eurosat",
      "--out", "OUT"]
BENCH = ["bench"]

# (id, argv, strings the one stderr line must contain, data mutation or None)
CASES = [
    # top level
    ("no-command", [], ["COMMAND"], None),
    ("unknown-command", ["dem"], ["'dem'"], None),
    # demo
    ("demo-steps-0", ["demo", "--steps", "0"], ["--steps", "0"], None),
    ("demo-steps-neg", ["demo", "--steps", "-3"], ["--steps", "-3"], None),
    ("demo-steps-text", ["demo", "--steps", "ten"], ["--steps", "'ten'"], None),
    ("demo-steps-novalue", ["demo", "--steps"], ["--steps"], None),
    ("demo-seed-neg", ["demo", "--seed", "-1"], ["--seed", "-1"], None),
    ("demo-temp-0", ["demo", "--temperature", "0"], ["--temperature", "0"], None),
    ("demo-temp-nan", ["demo", "--temperature", "nan"], ["--temperature", "nan"], None),
    ("demo-temp-inf", ["demo", "--temperature", "inf"], ["--temperature", "inf"], None),
    ("demo-threshold", ["demo", "--threshold", "1.5"], ["--threshold", "1.5"], None),
    ("demo-overlap", ["demo", "--overlap", "2"], ["--overlap", "2"], None),
    ("demo-atoms-0", ["demo", "--atoms-per-task", "0"], ["--atoms-per-task", "0"], None),
    ("demo-topk-0", ["demo", "--top-k", "0"], ["--top-k", "0"], None),
    ("demo-method-twice", ["demo", "--methods", "moram", "moram"], ["--methods", "'moram'"], None),
    ("demo-method-unknown", ["demo", "--methods", "moran"], ["--methods", "'moran'"], None),
    ("demo-stream-twice", ["demo", "--streams", "recall", "recall"], ["--streams", "'recall'"], None),
    ("demo-threshold-mode", ["demo", "--threshold-mode", "sometimes"], ["--threshold-mode", "'sometimes'"], None),
    ("demo-out-file", ["demo", "--out", "FILE"], ["--out", "notes.txt"], None),
    ("demo-out-busy", ["demo", "--out", "BUSY"], ["--out", "busy", "thesis.tex"], None),
    ("demo-unknown-flag", ["demo", "--stepz", "3"], ["--stepz"], None),
    # text-cl
    ("tc-no-data-root", ["text-cl"], ["--data-root"], None),
    ("tc-data-root-missing", ["text-cl", "--data-root", "MISSING"], ["--data-root", "folder"], None),
    ("tc-data-root-file", ["text-cl", "--data-root", "FILE"], ["--data-root", "notes.txt"], None),
    ("tc-data-root-empty", ["text-cl", "--data-root", "EMPTY", "--out", "OUT"], ["--data-root", "dbpedia"], None),
    ("tc-max-length-0", TC + ["--max-length", "0"], ["--max-length", "0"], None),
    ("tc-max-length-huge", TC + ["--max-length", "100000"], ["--max-length", "100000"], None),
    ("tc-adapt-0", TC + ["--adapt-layers", "0"], ["--adapt-layers", "0"], None),
    ("tc-adapt-99", TC + ["--adapt-layers", "99"], ["--adapt-layers", "99"], None),
    ("tc-tasks-0", TC + ["--tasks", "0"], ["--tasks", "0"], None),
    ("tc-tasks-9", TC + ["--tasks", "9"], ["--tasks", "9"], None),
    ("tc-seeds-0", TC + ["--seeds", "0"], ["--seeds", "0"], None),
    ("tc-lr-neg", TC + ["--lr", "-1"], ["--lr", "-1"], None),
    ("tc-lr-nan", TC + ["--lr", "nan"], ["--lr", "nan"], None),
    ("tc-batch-0", TC + ["--batch", "0"], ["--batch", "0"], None),
    ("tc-batch-huge", TC + ["--batch", "1000"], ["--batch", "1000"], None),
    ("tc-max-train-0", TC + ["--max-train", "0"], ["--max-train", "0"], None),
    ("tc-max-test-neg", TC + ["--max-test", "-1"], ["--max-test", "-1"], None),
    ("tc-sequence", TC + ["--sequence", "standard-9"], ["--sequence", "'standard-9'"], None),
    ("tc-placement", TC + ["--placement", "mlp"], ["--placement", "'mlp'"], None),
    ("tc-eval-split", TC + ["--eval-split", "train"], ["--eval-split", "'train'"], None),
    ("tc-model-missing", TC + ["--model-path", "MISSING"], ["--model-path", "folder"], None),
    ("tc-model-no-config", TC + ["--model-path", "NOMODEL"], ["--model-path", "config.json"], None),
    ("tc-methods-twice", TC + ["--methods", "moram", "moram"], ["--methods", "'moram'"], None),
    ("tc-json-malformed", TC, ["amazon/train.json", "not valid JSON"], _set("amazon/train.json", "[{\"prompt\": ")),
    ("tc-answer-null", TC, ["yahoo/test.json", "entry 1", "'answer'", "null"],
     _set("yahoo/test.json", [ROW, {"prompt": "p", "answer": None}])),
    ("tc-no-prompt", TC, ["dbpedia/train.json", "entry 0", "'prompt'"], _set("dbpedia/train.json", [{"answer": "x"}])),
    ("tc-train-empty", TC, ["agnews/train.json", "no samples"], _set("agnews/train.json", [])),
    ("tc-train-object", TC, ["agnews/train.json", "list"], _set("agnews/train.json", {"rows": []})),
    ("tc-labels-missing", TC, ["dbpedia/labels.json"], _set("dbpedia/labels.json", None)),
    ("tc-labels-bad", TC, ["dbpedia/labels.json", "label strings"], _set("dbpedia/labels.json", [1, 2])),
    ("tc-labels-twice", TC, ["dbpedia/labels.json", "more than once", "'a'"],
     _set("dbpedia/labels.json", ["a", "b", "a"])),
    ("tc-no-known-answer", TC, ["amazon", "labels.json"],
     _set("amazon/test.json", [{"prompt": "p", "answer": "unknown"}])),
    # clip
    ("clip-no-data-root", ["clip", "--tiny"], ["--data-root"], None),
    ("clip-data-root-missing", ["clip", "--data-root", "MISSING"], ["--data-root", "folder"], None),
    ("clip-dataset-typo", XT[:4] + ["--batch", "4", "--datasets", "caltek101"], ["--datasets", "'caltek101'", "caltech101"], None),
    ("clip-dataset-twice", XT[:4] + ["--batch", "4", "--datasets", "dtd", "dtd"], ["--datasets", "'dtd'"], None),
    ("clip-mtil-dataset", MT[:6] + ["--datasets", "imagenet"], ["--datasets", "'imagenet'"], None),
    ("clip-batch-huge", XT + ["--shots", "2", "--batch", "100000"], ["--batch", "100000"], None),
    ("clip-seed-huge", XT + ["--seed", "99999999999999999999"], ["--seed", "[0, 4294967295]"], None),
    ("llm-seed-huge", LLM + ["--seed", "9223372036854775807"], ["--seed", "[0, 4294967295]"], None),
    ("clip-batch-0", XT + ["--batch", "0"], ["--batch", "0"], None),
    ("clip-data-root-empty", ["clip", "--tiny", "--data-root", "", "--datasets", "dtd"], ["--data-root", "got an empty one"], None),
    ("clip-shots-huge", XT + ["--shots", "99999999999999999999"], ["--shots", "[0, 1048576]"], None),
    ("clip-atoms-huge", XT + ["--atoms-per-task", "100000000"], ["--atoms-per-task", "[1, 65536]"], None),
    ("clip-workers-huge", XT + ["--workers", "99999999999999999999"], ["--workers", "[0, 1024]"], None),
    ("llm-eval-batch-huge", LLM + ["--eval-batch", "99999999999999999999"], ["--eval-batch", "[1, 1048576]"], None),
    ("clip-shots-neg", XT + ["--shots", "-1"], ["--shots", "-1"], None),
    ("clip-iterations-0", XT + ["--iterations", "0"], ["--iterations", "0"], None),
    ("clip-lr-0", XT + ["--lr", "0"], ["--lr", "0"], None),
    ("clip-eval-batch-0", XT + ["--eval-batch", "0"], ["--eval-batch", "0"], None),
    ("clip-workers-neg", XT + ["--workers", "-1"], ["--workers", "-1"], None),
    ("clip-seed-text", XT + ["--seed", "x"], ["--seed", "'x'"], None),
    ("clip-topk-0", XT + ["--top-k", "0"], ["--top-k", "0"], None),
    ("clip-temp-neg", XT + ["--temperature", "-1"], ["--temperature", "-1"], None),
    ("clip-encoders-twice", XT + ["--encoders", "image", "image"], ["--encoders", "'image'"], None),
    ("clip-kinds-unknown", XT + ["--kinds", "ffn"], ["--kinds", "'ffn'"], None),
    ("clip-method-unknown", XT + ["--methods", "olora"], ["--methods", "'olora'"], None),
    ("clip-verify-empty", ["clip", "--verify", "--data-root", "EMPTY"], ["--verify", "empty"], None),
    ("clip-verify-resume", XT + ["--verify", "--resume"], ["--verify", "--resume"], None),
    ("clip-resume-eval", XT + ["--resume", "--eval-only"], ["--resume", "--eval-only"], None),
    ("clip-resume-missing", XT[:-1] + ["MISSING", "--resume"], ["--resume", "folder"], None),
    ("clip-eval-missing", XT[:-1] + ["MISSING", "--eval-only"], ["--eval-only", "folder"], None),
    ("clip-out-busy", XT[:-1] + ["BUSY"], ["--out", "busy"], None),
    ("clip-model-unknown", ["clip", "--model", "ViT-Q-99", "--data-root", "XTAIL", "--datasets", "dtd"],
     ["--model", "'ViT-Q-99'"], None),
    ("clip-model-and-tiny", XT + ["--model", "ViT-B-16"], ["--model", "--tiny"], None),
    ("clip-pretrained-tiny", XT + ["--pretrained", "openai"], ["--pretrained", "--tiny"], None),
    ("clip-pretrained-file", ["clip", "--pretrained", "MISSING/w.pt", "--data-root", "XTAIL", "--datasets", "dtd"],
     ["--pretrained", "w.pt"], None),
    ("clip-order-xtail", XT + ["--order", "2"], ["--order", "mtil"], None),
    ("clip-order-bad", MT + ["--order", "3"], ["--order", "'3'"], None),
    ("clip-field-alone", MT + ["--classnames-field", "clip"], ["--classnames-field", "--classnames-json"], None),
    ("clip-classnames-missing", MT + ["--classnames-json", "MISSING/c.json"], ["--classnames-json", "c.json"], None),
    ("clip-classnames-malformed", MT + ["--classnames-json", "FILE"], ["--classnames-json", "notes.txt", "JSON"], None),
    ("clip-classnames-field", MT + ["--classnames-json", "CLASSNAMES", "--classnames-field", "nope"],
     ["--classnames-json", "'nope'"], None),
    ("clip-classnames-count", MT[:6] + ["--datasets", "dtd"] + MT[10:] + ["--classnames-json", "CLASSNAMES",
                               "--classnames-field", "clip"],
     ["--classnames-json", "classnames.json: dtd: 2 class names given"], None),
    ("clip-synthetic-verify", ["clip", "--make-synthetic", "OUT", "--verify"], ["--make-synthetic", "--verify"], None),
    ("clip-synthetic-over-real-data", ["clip", "--make-synthetic", "REAL"],
     ["--make-synthetic", "/real/xtail already holds files that --make-synthetic did not write"], None),
    ("llm-synthetic-over-real-data", ["llm", "--make-synthetic", "REAL"],
     ["--make-synthetic", "/real/trace already holds files that --make-synthetic did not write"], None),
    ("llm-synthetic-data-root", ["llm", "--make-synthetic", "OUT", "--data-root", "TEXT"],
     ["--make-synthetic and --data-root cannot be used together"], None),
    ("clip-synthetic-whole-order", ["clip", "--tiny", "--data-root", "XTAIL", "--out", "OUT"],
     ["--datasets", "holds --make-synthetic data of caltech101, dtd, eurosat only", "pass --datasets caltech101 dtd eurosat"],
     None),
    ("llm-synthetic-olora", ["llm", "--make-synthetic", "OUT", "--benchmark", "olora-1"],
     ["--make-synthetic: generates the TRACE tasks only", "olora-1"], None),
    ("llm-unknown-flag", ["llm", "--make-synthetic", "OUT", "--verify"],
     ["moram-ref llm: error: unrecognized arguments: --verify"], None),
    ("textcl-unknown-flag-first", ["text-cl", "--bogus"], ["moram-ref text-cl: error: unrecognized arguments: --bogus"],
     None),
    ("report-unknown-flag-first", ["report", "--bogus"], ["moram-ref report: error: unrecognized arguments: --bogus"],
     None),
    ("textcl-required-named", ["text-cl"], ["the following arguments are required: --data-root"], None),
    ("clip-synthetic-unused-flag", ["clip", "--make-synthetic", "OUT", "--tiny", "--lr", "0.1"],
     ["--tiny: not used with --make-synthetic"], None),
    ("llm-synthetic-dangling-link", ["llm", "--make-synthetic", "LINKS"],
     ["--make-synthetic", "is a symbolic link to", "which does not exist"], None),
    ("llm-unfinished-synthetic", ["llm", "--tiny", "llama", "--data-root", "UNFINISHED"],
     ["--data-root", "whose writing was stopped before it finished", "run --make-synthetic again"], None),
    ("clip-unfinished-synthetic", ["clip", "--tiny", "--data-root", "UNFINISHED", "--datasets", "dtd"],
     ["--data-root", "whose writing was stopped before it finished"], None),
    ("clip-out-dangling-link", XT[:-1] + ["LINKS/trace"], ["--out", "cannot be created", "symbolic link to",
     "which does not exist"], None),
    ("llm-out-inside-loop", LLM[:-1] + ["LOOP/run"], ["--out", "cannot be created", "loop of symbolic links"], None),
    ("textcl-data-root-loop", ["text-cl", "--data-root", "LOOP"], ["--data-root", "loop of symbolic links"], None),
    ("llm-out-not-utf8", LLM[:-1] + ["LATIN1"], ["--out", "caf\\xe9", "is not valid UTF-8"], None),
    ("clip-data-root-not-utf8", ["clip", "--tiny", "--data-root", "LATIN1/x"], ["--data-root", "not valid UTF-8"], None),
    ("report-results-dangling", ["report", "LINKS/trace"], ["results:", "is a symbolic link to", "which does not exist"],
     None),
    ("report-results-loop", ["report", "LOOP"], ["results:", "is a loop of symbolic links"], None),
    ("llm-model-dangling", LLM[:1] + ["--model", "LINKS/trace"] + LLM[3:], ["--model:", "is a symbolic link to"], None),
    ("llm-model-not-utf8", LLM[:1] + ["--model", "LATIN1"] + LLM[3:], ["--model:", "is not valid UTF-8"], None),
    ("clip-pretrained-empty", ["clip", "--data-root", "XTAIL", "--datasets", "dtd", "--pretrained", ""],
     ["--pretrained: expected a tag of ViT-B-16 or a weights file, got ''"], None),
    ("clip-pretrained-dangling", ["clip", "--data-root", "XTAIL", "--datasets", "dtd", "--pretrained", "LOOP/w.pt"],
     ["--pretrained:", "loop of symbolic links"], None),
    ("clip-pretrained-folder", ["clip", "--data-root", "XTAIL", "--datasets", "dtd", "--pretrained", "EMPTY"],
     ["--pretrained:", "is not a weights file"], None),
    ("clip-pretrained-garbage", ["clip", "--data-root", "XTAIL", "--datasets", "dtd", "--shots", "2", "--batch", "2",
                                 "--pretrained", "GARBAGE", "--out", "OUT"],
     ["--pretrained: open_clip could not load ViT-B-16", "garbage.pt"], None),
    ("llm-model-without-weights", LLM[:1] + ["--model", "CONFIGONLY", "--device", "cpu"] + LLM[3:],
     ["--model: transformers could not load", "configonly"], None),
    ("report-results-empty", ["report", ""], ["results: expected a file path, got an empty one"], None),
    ("report-write-empty", ["report", "CLASSNAMES", "--write", ""], ["--write: expected a file path, got an empty one"], None),
    ("llm-no-data-root", ["llm", "--tiny", "llama"], ["--data-root: required (except with --make-synthetic)"], None),
    ("clip-device-bogus", XT + ["--device", "gpu0"], ["--device", "'gpu0'"], None),
    ("clip-benchmark", ["clip", "--benchmark", "xtial"], ["--benchmark", "'xtial'"], None),
    # llm
    ("llm-no-model", ["llm", "--data-root", "TEXT"], ["--model", "--tiny"], None),
    ("llm-model-missing", LLM[:1] + ["--model", "MISSING"] + LLM[3:], ["--model", "folder"], None),
    ("llm-model-no-config", LLM[:1] + ["--model", "NOMODEL"] + LLM[3:], ["--model", "config.json"], None),
    ("llm-tiny-bogus", ["llm", "--tiny", "gpt9", "--data-root", "TEXT"], ["--tiny", "'gpt9'"], None),
    ("llm-benchmark", LLM + ["--benchmark", "trase"], ["--benchmark", "'trase'"], None),
    ("llm-max-train-neg", LLM + ["--max-train", "-1"], ["--max-train", "-1"], None),
    ("llm-max-train-0", LLM + ["--max-train", "0"], ["--max-train", "0"], None),
    ("llm-max-test-0", LLM + ["--max-test", "0"], ["--max-test", "0"], None),
    ("llm-epochs-0", LLM + ["--epochs", "0"], ["--epochs", "0"], None),
    ("llm-micro-0", LLM + ["--micro-batch", "0"], ["--micro-batch", "0"], None),
    ("llm-batch-gt-train", LLM + ["--batch", "41", "--micro-batch", "1"],
     ["--batch: 41 exceeds the 40 training samples of dbpedia", "use --batch 40 or less"], None),
    ("llm-batch-gt-max-train", LLM + ["--batch", "8", "--max-train", "5"], ["--batch: 8", "(--max-train 5)"], None),
    ("llm-micro-gt-batch", LLM + ["--batch", "8", "--micro-batch", "64"], ["--micro-batch", "64"], None),
    ("llm-lr-0", LLM + ["--lr", "0"], ["--lr", "0"], None),
    ("llm-dropout-1", LLM + ["--dropout", "1"], ["--dropout", "1"], None),
    ("llm-scale-0", LLM + ["--scale", "0"], ["--scale", "0"], None),
    ("llm-scale-huge", LLM + ["--scale", "1e308"], ["--scale", "[-1e+30, 1e+30] ≠ 0, got 1e308"], None),
    ("clip-lr-underscore", XT + ["--lr", "1_0"], ["--lr", "got '1_0'"], None),
    ("clip-model-empty", ["clip", "--model", "", "--data-root", "XTAIL", "--datasets", "dtd", "--out", "OUT"],
     ["--model: expected a model name, got an empty one"], None),
    ("clip-model-blank", ["clip", "--model", "   ", "--data-root", "XTAIL", "--datasets", "dtd", "--out", "OUT"],
     ["--model: expected a model name, got only blanks ('   ')"], None),
    ("clip-synthetic-into-a-run", ["clip", "--make-synthetic", "FINISHED"],
     ["--make-synthetic", "finished holds a run (config.json there); give a folder of its own"], None),
    ("clip-names-key-twice", MT + ["--classnames-json", "DUPNAMES"],
     ["--classnames-json", "dupnames.json: the key 'dtd' appears twice in one object"], None),
    ("llm-new-tokens-0", LLM + ["--max-new-tokens", "0"], ["--max-new-tokens", "0"], None),
    ("llm-max-prompt-0", LLM + ["--max-prompt", "0"], ["--max-prompt", "0"], None),
    ("llm-numglue", LLM + ["--numglue-mode", "exact"], ["--numglue-mode", "'exact'"], None),
    ("llm-targets-unknown", LLM + ["--targets", "query"], ["--targets", "query"], None),
    ("llm-targets-twice", LLM + ["--targets", "q_proj", "q_proj"], ["--targets", "'q_proj'"], None),
    ("llm-method-unknown", LLM + ["--methods", "moe_lora"], ["--methods", "'moe_lora'"], None),
    ("llm-fsdp-single", LLM + ["--fsdp"], ["--fsdp", "WORLD_SIZE"], None),
    ("llm-resume-eval", LLM + ["--resume", "--eval-only"], ["--resume", "--eval-only"], None),
    ("llm-resume-missing", LLM[:-1] + ["MISSING", "--resume"], ["--resume", "folder"], None),
    ("llm-eval-missing", LLM[:-1] + ["MISSING", "--eval-only"], ["--eval-only", "folder"], None),
    ("llm-device", LLM + ["--device", "cuda:99"], ["--device", "cuda:99"], None),
    ("llm-train-empty", LLM, ["yahoo/train.json", "no samples"], _set("yahoo/train.json", [])),
    ("llm-answer-null", LLM, ["amazon/train.json", "entry 1", "'answer'", "null"],
     _set("amazon/train.json", [ROW, {"prompt": "p", "answer": None}])),
    ("llm-prompt-number", LLM, ["agnews/test.json", "entry 0", "'prompt'", "7"],
     _set("agnews/test.json", [{"prompt": 7, "answer": "a"}])),
    ("llm-json-malformed", LLM, ["dbpedia/test.json", "not valid JSON", "line 1"], _set("dbpedia/test.json", "{oops")),
    ("llm-train-missing", LLM, ["dbpedia/train.json", "--skip-missing"], _set("dbpedia/train.json", None)),
    ("llm-labels-bad", LLM, ["dbpedia/labels.json"], _set("dbpedia/labels.json", {"a": 1})),
    ("llm-labels-empty", LLM, ["dbpedia/labels.json", "non-empty list"], _set("dbpedia/labels.json", [])),
    ("llm-answer-empty", LLM, ["amazon/test.json", "entry 1", "'answer' is empty"],
     _set("amazon/test.json", [ROW, {"prompt": "p", "answer": ""}])),
    ("llm-answer-blank", LLM, ["agnews/train.json", "entry 0", "'answer' is empty"],
     _set("agnews/train.json", [{"prompt": "p", "answer": " \n"}])),
    ("llm-train-folder", LLM, ["yahoo/train.json", "is not a file"], _folder("yahoo/train.json")),
    # bench
    ("bench-d-0", BENCH + ["--d", "0"], ["--d", "0"], None),
    ("bench-tasks-neg", BENCH + ["--tasks", "-1"], ["--tasks", "-1"], None),
    ("bench-repeat-0", BENCH + ["--repeat", "0"], ["--repeat", "0"], None),
    ("bench-tokens-text", BENCH + ["--tokens", "many"], ["--tokens", "'many'"], None),
    ("bench-dtype", BENCH + ["--dtype", "float16"], ["--dtype", "'float16'"], None),
    ("bench-device", BENCH + ["--device", "quantum"], ["--device", "'quantum'"], None),
    ("bench-topk-bank", BENCH + ["--tasks", "2", "--atoms-per-task", "4", "--top-k", "9"], ["--top-k", "9"], None),
    ("bench-json-dir", BENCH + ["--json", "EMPTY"], ["--json", "empty"], None),
    ("bench-json-nofolder", BENCH + ["--json", "MISSING/r.json"], ["--json", "r.json"], None),
    ("bench-json-slash", BENCH + ["--json", "EMPTY/r.json/"], ["--json", "r.json/' ends with '/', which names a folder"],
     None),
]


def _argv(argv: list[str], paths: dict[str, Path]) -> list[str]:
    def sub(a: str) -> str:
        head, _, rest = a.partition("/")
        if head in paths and rest:
            return str(paths[head] / rest) + ("/" if rest.endswith("/") else "")  # Path would drop the slash
        return str(paths[a]) if a in paths else a
    return [sub(a) for a in argv]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_enough_cases():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(case, data, tmp_path, capsys, monkeypatch):
    name, argv, expected, mutate = case
    monkeypatch.chdir(tmp_path)  # default --out folders resolve here
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    paths = dict(data, OUT=tmp_path / "out")
    if mutate is not None:
        paths["TEXT"] = tmp_path / "text"
        shutil.copytree(data["TEXT"], paths["TEXT"])
        mutate(paths["TEXT"])
    before = {k: _snapshot(v) for k, v in paths.items() if isinstance(v, Path) and v.is_dir()}
    code, out, err = _run_in_process(_argv(argv, paths), capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"exit status {code}; stderr: {err!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert "Traceback" not in out + err
    for s in expected:
        assert s in lines[0], f"{s!r} not in {lines[0]!r}"
    assert lines[0].startswith("moram-ref")
    assert not (tmp_path / "out").exists(), "a refused run must not create its --out"
    after = {k: _snapshot(v) for k, v in paths.items() if isinstance(v, Path) and v.is_dir()}
    assert after == before, "a refused run changed files"


def test_eval_only_without_checkpoints(data, tmp_path, capsys):
    """A run folder that holds a matching record but no checkpoints: --eval-only names the missing file."""
    from moram_ref.cli import build_parser
    from moram_ref.experiments import rundir
    from moram_ref.experiments.clip import run as clip

    argv = _argv(XT + ["--shots", "2", "--batch", "2", "--iterations", "1"], dict(data, OUT=tmp_path / "out"))
    args = build_parser("clip").parse_args(argv)
    clip.validate(args)
    with rundir.open_run(args.out, "clip", clip.settings_of(args)):
        pass
    before = _snapshot(tmp_path / "out")
    code, _, err = _run_in_process(argv + ["--eval-only"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--eval-only" in err and "task1.safetensors" in err
    assert _snapshot(tmp_path / "out") == before


@pytest.mark.parametrize("argv, expected", [
    (["clip", "--datasets", "caltek101", "--data-root", "XTAIL"], "did you mean 'caltech101'"),
    (["llm", "--model", "MISSING", "--data-root", "TEXT"], "--model"),
    (["demo", "--steps", "0"], "--steps"),
], ids=["clip-typo", "llm-missing-model", "demo-steps"])
def test_console_entry_point_prints_one_line(argv, expected, data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "moram_ref.cli", *_argv(argv, dict(data, OUT=tmp_path))],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2 and expected in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr + proc.stdout


CONFUSION = ["report", "--table", "textcl-confusion", "docs/results/textcl/long-4.confusion.json"]


DEMO = ["demo", "--steps", "1", "--streams", "recall", "--methods", "moram", "--no-plots", "--out", "run"]


def _console(argv: list[str], stdout, tmp_path, unbuffered: bool = False, **kwargs) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # most shells: stdout buffered
    env.update({"PYTHONPATH": str(root)}, **({"PYTHONUNBUFFERED": "1"} if unbuffered else {}))
    argv = [str(root / a) if a.startswith("docs/") else a for a in argv]
    return subprocess.run([sys.executable, "-m", "moram_ref.cli", *argv], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=tmp_path, timeout=300, **kwargs)


@pytest.mark.parametrize("argv, unbuffered, said", [
    (CONFUSION, False, ""),  # 5 kB: met by the flush at exit; report only prints, so it ends quietly
    (CONFUSION + CONFUSION[-1:] * 2, False, ""),  # 15 kB: met by print
    (DEMO, False, "moram-ref demo: its output was closed (the reader of a pipe, e.g. `head`, exited) after the "
                  "command had finished: only the end of its output was lost\n"),  # all of it buffered until exit
    (DEMO, True, "moram-ref demo: stopped: its output was closed (the reader of a pipe, e.g. `head`, exited); what "
                 "it wrote is whole\n"),  # its first line already meets the closed pipe
], ids=["buffered", "written", "demo-finished", "demo-stopped"])
def test_a_closed_output_pipe_ends_with_141(argv, unbuffered, said, tmp_path):
    """`moram-ref … | head`: when the reader has gone, 141 as after SIGPIPE, no traceback; a command that
    writes a run folder says whether it had finished or stopped."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the command writes anything
    try:
        proc = _console(argv, write, tmp_path, unbuffered)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, said)
    assert (tmp_path / "run" / "results.json").is_file() == ("finished" in said)


@pytest.mark.parametrize("copies, unbuffered", [(1, False), (3, False), (1, True)],
                         ids=["buffered", "written", "unbuffered"])
def test_a_full_disk_under_the_output_is_one_line(copies, unbuffered, tmp_path):
    with open("/dev/full", "w") as full:
        proc = _console(CONFUSION + CONFUSION[-1:] * (copies - 1), full, tmp_path, unbuffered)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("moram-ref report: error: could not write its output (No space left on device)")


def test_a_closed_standard_output_is_one_line(tmp_path):
    proc = _console(CONFUSION, None, tmp_path, preexec_fn=lambda: os.close(1))  # `moram-ref … >&-`, as `cat` does
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("moram-ref report: error: could not write its output (standard output is closed)")


def test_help_lists_every_command_and_bench_options(capsys):
    from moram_ref.cli import COMMANDS

    code, out, _ = _run_in_process(["--help"], capsys)
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()}
    assert code == 0 and set(COMMANDS) <= listed, set(COMMANDS) - listed  # a long name sits on its own line
    code, out, _ = _run_in_process(["bench", "--help"], capsys)
    assert code == 0 and "--tokens" in out and "--device" in out


def test_bench_says_where_it_wrote_its_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, printed, err = _run_in_process(["bench", "--d", "32", "--tasks", "2", "--atoms-per-task", "4", "--top-k", "2",
                                          "--tokens", "64", "--repeat", "1", "--no-numpy", "--json", str(out)], capsys)
    assert code == 0, err
    assert printed.splitlines()[-1] == f"wrote {out}" and json.loads(out.read_text())["shapes"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_help(command, capsys):
    """Each command's --help renders (exit 0) and explains every flag and argument it lists."""
    import argparse

    from moram_ref.cli import build_parser

    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    silent = [a.option_strings[-1] if a.option_strings else a.dest for a in sub._actions
              if a.dest != "help" and not (a.help or "").strip()]
    assert not silent, f"moram-ref {command}: flags without help text: {silent}"
    formatter = sub._get_formatter()
    unstated = [a.option_strings[-1] for a in sub._actions if a.option_strings and a.dest != "help"
                and not any(a.default is x for x in (None, False, [])) and a.default != []
                and "default" not in formatter._get_help_string(a)]
    assert not unstated, f"moram-ref {command}: flags whose help does not give their default: {unstated}"
    code, out, _ = _run_in_process([command, "--help"], capsys)
    assert code == 0 and "%(default)" not in out


@pytest.mark.parametrize("command, preset, extra", [("clip", "paper_clip", ()),
                                                    ("llm", "paper_llm", ("scale", "dropout"))])
def test_moram_flag_defaults_are_the_papers(command, preset, extra):
    """clip's and llm's MoRAM flags default to spec §5's column (MoRAMConfig.paper_clip / paper_llm)."""
    from moram_ref.cli import build_parser
    from moram_ref.config import MoRAMConfig

    args = build_parser(command).parse_args([command, "--data-root", ".", "--tiny", "llama"] if command == "llm"
                                            else [command])
    want = getattr(MoRAMConfig, preset)()
    for field in ("atoms_per_task", "top_k", "temperature", "threshold", *extra):
        assert getattr(args, field) == getattr(want, field), field


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from moram_ref import report

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "run", interrupted)
    assert main(["report", str(tmp_path / "x.json")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "moram-ref report: interrupted"


@pytest.mark.parametrize("argv, hint", [
    (["llm", "--data-root", "{root}", "--tiny", "llama", "--out", "{out}"],
     "; the same command with `--resume` continues the run in {out}"),
    (["llm", "--data-root", "{root}", "--tiny", "llama", "--out", "{out}", "--resume"],
     "; the same command again continues the run in {out}"),
    (["clip", "--tiny", "--data-root", "{root}", "--out", "{out}", "--eval-only"],
     "; the same command again continues the run in {out}"),
    (["text-cl-merge", "{root}", "--out", "{out}"],
     "; the same `moram-ref text-cl-merge` command again finishes the run in {out} (from the parts' records, anew)"),
    (["llm", "--data-root", "{root}", "--tiny", "llama", "--out", "{out}", "before"], ""),
])
def test_an_interrupted_run_says_how_to_continue(argv, hint, tmp_path, capsys, monkeypatch):
    """Stopped inside the run folder it writes, a resumable command says how to continue it; stopped
    before opening one (``before``), it says only "interrupted"."""
    import importlib

    from moram_ref.cli import COMMANDS
    from moram_ref.experiments import rundir

    out = tmp_path / "out"
    argv = [a.format(root=tmp_path, out=out) for a in argv]
    opens = argv[-1] != "before"
    argv = argv[:-1] if not opens else argv

    def stopped(args):
        if opens:
            with rundir.open_run(out, args.command, {"x": 1}):
                raise KeyboardInterrupt
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(COMMANDS[argv[0]][0]), "run", stopped)
    assert main(argv) == 130
    assert capsys.readouterr().err == f"moram-ref {argv[0]}: interrupted{hint.format(out=out)}\n"


def test_a_command_whose_dependencies_are_not_installed_is_one_line(capsys, monkeypatch):
    """After `make demo` alone, torch is missing: a torch command says what to install, not a traceback."""
    import importlib

    real = importlib.import_module

    def without_torch(name, *args, **kwargs):
        if name == "moram_ref.experiments.textcl.run":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_torch)
    assert main(["text-cl", "--data-root", "."]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moram-ref text-cl: error: needs the package that provides 'torch'")
    assert "make install-dev" in err


@pytest.mark.parametrize("unbuffered", [False, True], ids=["finished", "stopped"])
def test_a_closed_pipe_that_also_held_standard_error_still_ends_with_141(unbuffered, tmp_path):
    """`moram-ref … 2>&1 | head`: the line saying what happened has nowhere to go; the status still says it."""
    read, write = os.pipe()
    os.close(read)
    try:
        root = Path(__file__).resolve().parents[1]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        env.update({"PYTHONPATH": str(root)}, **({"PYTHONUNBUFFERED": "1"} if unbuffered else {}))
        proc = subprocess.run([sys.executable, "-m", "moram_ref.cli", *DEMO], stdout=write, stderr=write,
                              env=env, cwd=tmp_path, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 141


def test_training_that_diverges_is_one_line_naming_the_layer(data, tmp_path, capsys):
    """NaN/inf activations (here: a learning rate of 10¹²) end the run with one line: the first adapted
    layer they reach, the last training step taken, and the cause — no traceback; the tasks finished before stay."""
    argv = _argv(XT + ["--shots", "2", "--iterations", "3", "--methods", "moram", "--lr", "1e12"],
                 dict(data, OUT=tmp_path / "out"))
    code, _, err = _run_in_process(argv, capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("moram-ref clip: error: x contains NaN or inf (")
    for said in ("; it is the input of adapted layer '", "; met after moram task 1/3 (", ") step ",
                 "the last training step taken: training diverged (try a smaller --lr, in a new --out)"):
        assert said in err, (said, err)


def test_a_nan_training_loss_is_one_line_naming_the_step(data, tmp_path, capsys, monkeypatch):
    """A loss that turns NaN ends the run at the next progress line (or the overflow it causes), naming the
    first step whose loss was NaN — read on the device, without a sync per step — and the cause."""
    from moram_ref.experiments.clip import train

    calls = []
    real = train.two_term_loss

    def poisoned(*a, **k):  # the second step's loss is NaN (and so are its gradients)
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(train, "two_term_loss", poisoned)
    argv = _argv(XT + ["--shots", "2", "--iterations", "3", "--methods", "moram"], dict(data, OUT=tmp_path / "out"))
    code, _, err = _run_in_process(argv, capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "; the training loss was first NaN or inf at moram task 1/3 (" in err, err
    assert ") step 2/" in err and err.rstrip().endswith("training diverged (try a smaller --lr, in a new --out)"), err


def test_an_infinite_gradient_norm_is_one_line_naming_the_step_and_scale(data, tmp_path, capsys):
    """--scale 1e30 multiplies the values' gradients past float32's range: the LLM track clips the infinite
    norm to a zero update, so the loss stays finite while nothing is learnt. The run stops at the next
    progress line naming the first such step, and says what to lower."""
    argv = _argv(LLM + ["--max-train", "8", "--batch", "4", "--micro-batch", "4", "--epochs", "1", "--max-test", "2",
                        "--max-new-tokens", "2", "--methods", "moram", "--scale", "1e30"], dict(data, OUT=tmp_path / "out"))
    code, _, err = _run_in_process(argv, capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("moram-ref llm: error: the gradient norm is inf at moram task 1/4 (dbpedia) step 2/2"), err
    assert "; the gradient norm was first NaN or inf at moram task 1/4 (dbpedia) step 1/2" in err, err
    assert err.rstrip().endswith("training diverged (try a smaller --lr or --scale, in a new --out)"), err


def test_weights_open_clip_cannot_load_are_one_line_and_leave_no_run_folder(data, tmp_path, capsys, monkeypatch):
    """Offline without the weights in the cache, open_clip raises a RuntimeError after the run folder was made:
    one line naming --pretrained, and no folder left that would refuse the next run's other settings."""
    import open_clip

    def offline(*_, **__):
        raise RuntimeError("Failed to download weights for tag 'openai': offline")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    out = tmp_path / "out"
    code, _, err = _run_in_process(["clip", "--data-root", str(data["XTAIL"]), "--datasets", "dtd", "--shots", "2",
                                    "--batch", "2", "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--pretrained: open_clip could not load ViT-B-16 'openai' (RuntimeError: Failed to download" in err, err
    assert not out.exists()


def test_a_failed_device_side_assertion_is_one_line(tmp_path, capsys, monkeypatch):
    """On CUDA the NaN/inf check is a device-side assertion; torch raises a RuntimeError at the next
    synchronisation and the GPU is unusable: one line and exit 1, not a CUDA traceback."""
    from moram_ref import report

    def failed(args):
        raise RuntimeError("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA` to enable "
                           "device-side assertions.\n")

    monkeypatch.setattr(report, "run", failed)
    assert main(["report", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moram-ref report: error: a check on the GPU failed") and "--lr" in err


@pytest.mark.parametrize("complete", ['"false"', "0", "null"])
def test_a_marker_that_does_not_say_complete_true_is_refused(complete, tmp_path, capsys):
    root = tmp_path / "syn"
    root.mkdir()
    (root / "moram_ref_synthetic.json").write_text('{"made_by": "moram-ref llm --make-synthetic", "complete": '
                                                   f'{complete}}}')
    code, _, err = _run_in_process(["llm", "--tiny", "llama", "--data-root", str(root)], capsys)
    assert code == 2 and "whose writing was stopped before it finished" in err


@pytest.mark.parametrize("command", ["clip", "llm"])
@pytest.mark.parametrize("fails", ["first marker", "data", "last marker"])
def test_a_full_disk_during_make_synthetic_names_the_folder_and_what_it_leaves(command, fails, tmp_path, capsys,
                                                                                 monkeypatch):
    """A full disk fails a write with an OSError naming no file: one line naming the folder and what is left.
    The marker is written whole (temporary file, rename) before the data, as unfinished, and rewritten finished
    after it: a failure there leaves no empty marker, and data written is refused until generated again."""
    import errno
    import pathlib

    calls = []

    def full_on_second_call(real):
        def write(*a, **k):
            calls.append(1)
            if len(calls) == failing:
                if real is os.fdopen:
                    os.close(a[0])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*a, **k)
        return write

    # the markers are written first for every folder (clip: xtail, then mtil), the data, then the markers again
    failing = {"first marker": 1, "data": 2, "last marker": 3 if command == "clip" else 2}[fails]
    if fails == "data":
        name = "write_bytes" if command == "clip" else "write_text"
        monkeypatch.setattr(pathlib.Path, name, full_on_second_call(getattr(pathlib.Path, name)))
    else:  # the marker's whole-file write (rundir.write_text)
        monkeypatch.setattr(os, "fdopen", full_on_second_call(os.fdopen))
    root = tmp_path / "syn"
    first = root / ("xtail" if command == "clip" else "trace")
    code, _, err = _run_in_process([command, "--make-synthetic", str(root)], capsys)
    assert code == 1 and err.count("\n") == 1, err
    monkeypatch.undo()
    marker = first / "moram_ref_synthetic.json"
    if fails == "first marker":
        assert f"could not write {marker} (No space left on device); no folder is left marked unfinished" in err, err
        assert not marker.exists() and list(first.iterdir()) == []  # nothing written, no temporary file left
        return
    said = (f"could not write the data under {root}" if fails == "data" else f"could not write {marker}")
    left = f"{root / 'mtil'}, {root / 'xtail'}" if command == "clip" else str(first)
    assert f"{said} (No space left on device); marked unfinished, so runs refuse it until --make-synthetic " \
           f"completes it: {left}\n" in err, err
    assert json.loads(marker.read_text())["complete"] is False
    run = (["clip", "--tiny", "--datasets", "dtd"] if command == "clip" else ["llm", "--tiny", "llama"])
    code, _, err = _run_in_process(run + ["--data-root", str(first), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "whose writing was stopped before it finished" in err, err


@pytest.mark.parametrize("command", ["clip", "llm"])
def test_make_synthetic_into_a_folder_another_process_is_writing_is_refused(command, tmp_path, capsys):
    """Two --make-synthetic into one folder would interleave their files: the second is refused, naming the
    first's pid, and writes nothing; once the first has finished (its lock released), the folder is usable."""
    import fcntl

    root = tmp_path / "syn"
    root.mkdir()
    with open(root / ".lock", "a+") as held:  # what a running --make-synthetic (or a run) holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        code, _, err = _run_in_process([command, "--make-synthetic", str(root)], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"--make-synthetic: {root} is being written by another process (pid 4242); wait for it" in err, err
        assert sorted(p.name for p in root.iterdir()) == [".lock"]
    code, _, err = _run_in_process([command, "--make-synthetic", str(root)], capsys)
    assert code == 0, err
    assert (root / ".lock").read_text() == f"{os.getpid()}\n"  # the pid of the one that wrote
    (root / ".lock").unlink()
    (root / ".lock").mkdir()
    code, _, err = _run_in_process([command, "--make-synthetic", str(root)], capsys)
    assert code == 2 and f"{root / '.lock'} (the folder's lock) exists and is not a file; remove it" in err, err
    (root / ".lock").rmdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's\n")
    for target in (precious, tmp_path / "nowhere"):  # the pid written into a lock would land there
        (root / ".lock").symlink_to(target)
        code, _, err = _run_in_process([command, "--make-synthetic", str(root)], capsys)
        assert code == 2 and f"{root / '.lock'} (the folder's lock) is a symbolic link, to {target}" in err, err
        (root / ".lock").unlink()
    assert precious.read_text() == "the user's\n" and not (tmp_path / "nowhere").exists()


def test_a_damaged_marker_is_refused_not_read_as_real_data(tmp_path, capsys):
    root = tmp_path / "trace"
    root.mkdir()
    (root / "moram_ref_synthetic.json").write_text("")  # what a full disk left before markers were written whole
    code, _, err = _run_in_process(["llm", "--tiny", "llama", "--data-root", str(root)], capsys)
    assert code == 2 and "moram_ref_synthetic.json that cannot be read as JSON" in err and "run --make-synthetic again" in err


@pytest.mark.parametrize("argv, usage", [
    (["text-cl", "--help"], "usage: moram-ref text-cl [-h] --data-root DATA_ROOT "),
    (["text-cl-merge", "--bogus", "--help"], "usage: moram-ref text-cl-merge [-h] --out OUT "),
])
def test_help_still_shows_required_flags_as_required(argv, usage, capsys):
    """The look for unknown flags (required arguments off) must not reach --help's usage line."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0 and capsys.readouterr().out.startswith(usage)
