"""The O-LoRA task data (JSON) for the text experiment: sequences, what the encoder sees, splits.

Layout under ``--data-root``: one folder per task with ``train.json``, ``test.json`` (lists of
``{"prompt", "answer"}``) and ``labels.json``. The prompts carry an instruction and, for most tasks, an
``Option: …`` line listing the labels: that would leak the label set into the input, so the encoder sees
the passage alone — the instruction line, the ``Option:`` line and the trailing ``Answer:`` are removed,
for every method alike. O-LoRA's ``eval.json`` equals ``test.json``: validation is carved out of
``train.json`` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

SEQUENCES = {
    "standard-1": ("dbpedia", "amazon", "yahoo", "agnews"),
    "standard-2": ("dbpedia", "amazon", "agnews", "yahoo"),
    "standard-3": ("yahoo", "amazon", "agnews", "dbpedia"),
    "long-4": ("MNLI", "CB", "WiC", "COPA", "QQP", "BoolQA", "RTE", "IMDB", "yelp", "amazon", "SST-2",
               "dbpedia", "agnews", "MultiRC", "yahoo"),
}


@dataclass
class TaskData:
    name: str
    labels: list[str]  # label strings, in labels.json order
    prompts: list[str]  # one per label, from the task's template
    train_text: list[str]
    train_y: np.ndarray  # (N,) indices into labels
    val_text: list[str]
    val_y: np.ndarray
    test_text: list[str]
    test_y: np.ndarray
    dropped: dict[str, int]  # samples whose answer is not a label (e.g. MNLI's "-"), per split


def templates() -> dict[str, str]:
    raw = json.loads(resources.files("moram_ref.experiments.textcl").joinpath("templates.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def passage(prompt: str) -> str:
    """The text the encoder sees: the prompt without instruction, option list and answer cue."""
    lines = prompt.split("\n")[1:]  # the first line is the instruction
    lines = [ln for ln in lines if not ln.startswith("Option:")]
    text = "\n".join(lines).strip()
    if text.endswith("Answer:"):
        text = text[: -len("Answer:")].rstrip()
    return text


def _read(folder: Path, split: str) -> list[dict]:
    path = folder / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path} (expected the O-LoRA/TRACE JSON layout under --data-root)")
    return json.loads(path.read_text())


def load_task(data_root: str | Path, name: str, val_fraction: float = 0.1, max_train: int | None = None,
              max_test: int | None = None, seed: int = 0) -> TaskData:
    """Read one task; carve a validation split out of train (fixed by ``seed``, separate from training seeds)."""
    folder = Path(data_root) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"task folder {folder} not found under --data-root {data_root}")
    labels_path = folder / "labels.json"
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path} missing: the text experiment needs classification tasks")
    labels = json.loads(labels_path.read_text())
    template = templates().get(name)
    if template is None:
        raise KeyError(f"no prompt template for task {name!r}; add one to templates.json")

    dropped: dict[str, int] = {}

    def encode(rows: list[dict], split: str) -> tuple[list[str], np.ndarray]:
        kept = [r for r in rows if r["answer"] in labels]  # unlabelled rows (MNLI's "-") are dropped, counted
        dropped[split] = len(rows) - len(kept)
        if not kept:
            raise ValueError(f"{name}/{split}.json has no answer among labels.json {labels}")
        return [passage(r["prompt"]) for r in kept], np.array([labels.index(r["answer"]) for r in kept])

    train_text, train_y = encode(_read(folder, "train"), "train")
    test_text, test_y = encode(_read(folder, "test"), "test")
    order = np.random.default_rng(seed).permutation(len(train_text))
    n_val = int(round(val_fraction * len(order)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if max_train is not None:
        train_idx = train_idx[:max_train]
    test_idx = np.arange(len(test_text))[:max_test]
    return TaskData(
        name=name, labels=labels, prompts=[template.format(label=lb) for lb in labels],
        train_text=[train_text[i] for i in train_idx], train_y=train_y[train_idx],
        val_text=[train_text[i] for i in val_idx], val_y=train_y[val_idx],
        test_text=[test_text[i] for i in test_idx], test_y=test_y[test_idx], dropped=dropped,
    )
