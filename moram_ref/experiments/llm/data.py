"""Task data for the LLM track: the benchmark's JSON layout, task sequences, answer-only tokenisation.

Layout under ``--data-root``: ``<task>/{train,eval,test}.json``, each a list of ``{"prompt", "answer"}``
(and ``labels.json`` for classification tasks). A missing split is a clear error naming the file, unless
the caller chose to skip such tasks (the shipped copy of MeetingBank has no ``train.json``).

Tokenisation (spec §5): ``prompt`` then ``answer`` + EOS; the loss covers the answer tokens only
(labels are -100 on the prompt). Prompts longer than ``max_prompt`` keep their *end* (where the
question and the answer cue are); answers longer than ``max_answer`` are cut. Every truncation is
counted and reported, never silent. :func:`write_trace_shaped` writes generated tasks in this layout
(tests and CPU demos without the real data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from moram_ref.experiments import rundir

SEQUENCES = {
    "trace": ("C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten"),
    "olora-1": ("dbpedia", "amazon", "yahoo", "agnews"),
    "olora-2": ("dbpedia", "amazon", "agnews", "yahoo"),
    "olora-3": ("yahoo", "amazon", "agnews", "dbpedia"),
    "olora-long": ("MNLI", "CB", "WiC", "COPA", "QQP", "BoolQA", "RTE", "IMDB", "yelp", "amazon", "SST-2",
                   "dbpedia", "agnews", "MultiRC", "yahoo"),
}
# epochs per task in the paper's TRACE runs (spec §5); other sequences use --epochs
TRACE_EPOCHS = {"C-STANCE": 2, "FOMC": 1, "MeetingBank": 3, "Py150": 2, "ScienceQA": 1, "NumGLUE-cm": 2,
                "NumGLUE-ds": 2, "20Minuten": 3}
MAX_PROMPT = {"MeetingBank": 4096}  # tokens; every other task: 1024 (spec §5)


class MissingSplitError(FileNotFoundError):
    """A task's split file is absent."""


@dataclass
class Task:
    name: str
    train: list[dict]
    test: list[dict]
    labels: list[str] | None = None


def read_split(data_root: str | Path, task: str, split: str) -> list[dict]:
    path = Path(data_root) / task / f"{split}.json"
    if not path.is_file():
        raise MissingSplitError(f"{path} is missing (task {task}, split {split}); "
                                f"pass --skip-missing to leave such tasks out")
    rows = json.loads(path.read_text())
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict) or not {"prompt", "answer"} <= set(r)]
    if bad:
        raise ValueError(f"{path}: entries {bad[:5]} lack 'prompt'/'answer'")
    return rows


def load_sequence(data_root: str | Path, sequence: str | list[str], skip_missing: bool = False,
                  max_train: int | None = None, max_test: int | None = None) -> tuple[list[Task], list[str]]:
    """The tasks of a sequence (a name from SEQUENCES or a list of task folders); returns (tasks, skipped)."""
    names = list(SEQUENCES[sequence]) if isinstance(sequence, str) else list(sequence)
    tasks, skipped = [], []
    for name in names:
        try:
            train, test = read_split(data_root, name, "train"), read_split(data_root, name, "test")
        except MissingSplitError:
            if not skip_missing:
                raise
            skipped.append(name)
            continue
        labels_path = Path(data_root) / name / "labels.json"
        labels = json.loads(labels_path.read_text()) if labels_path.is_file() else None
        tasks.append(Task(name, train[:max_train], test[:max_test], labels))
    if not tasks:
        raise ValueError(f"no task of {names} could be loaded from {data_root}")
    return tasks, skipped


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list[list[int]]  # -100 on prompt tokens
    truncated: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "answer": 0})


def encode_prompt(tokenizer, prompt: str, max_prompt: int) -> tuple[list[int], bool]:
    """Prompt token ids (with the tokenizer's BOS, if any), keeping the last ``max_prompt``; and whether cut."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if len(ids) <= max_prompt:
        return ids, False
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else []
    return bos + ids[len(ids) - (max_prompt - len(bos)):], True


def encode_examples(tokenizer, rows: list[dict], max_prompt: int = 1024, max_answer: int = 512) -> Encoded:
    """Answer-only training examples: ``prompt ⧺ answer ⧺ EOS`` with labels -100 on the prompt."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs an eos_token")
    out = Encoded([], [])
    for row in rows:
        p_ids, cut = encode_prompt(tokenizer, row["prompt"], max_prompt)
        out.truncated["prompt"] += cut
        a_ids = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        if len(a_ids) > max_answer:
            a_ids = a_ids[:max_answer]
            out.truncated["answer"] += 1
        a_ids = a_ids + [tokenizer.eos_token_id]
        out.input_ids.append(p_ids + a_ids)
        out.labels.append([-100] * len(p_ids) + a_ids)
    return out


def collate(batch_ids: list[list[int]], batch_labels: list[list[int]], pad_id: int):
    """Right-padded tensors for training: input_ids, attention_mask, labels (-100 on padding)."""
    import torch  # noqa: PLC0415

    length = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), length), dtype=torch.long)
    labels = torch.full((len(batch_ids), length), -100, dtype=torch.long)
    for i, (x, y) in enumerate(zip(batch_ids, batch_labels)):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, mask, labels


# prompt templates (instruction, answer cue) and answer makers for generated TRACE-shaped tasks
_SHAPES = {
    "C-STANCE": ("判断以下文本对指定对象的态度，选择一项：A.支持，B.反对，C.中立。输出A，B或者C。\n文本：\n{text}\n对象：\n{topic}\n态度：",
                 lambda rng, words: "ABC"[rng.integers(3)]),
    "FOMC": ("What is the monetary policy stance for the following text? A. dovish, B. hawkish, C. neutral. "
             "Choose one from A, B and C.\nText: {text}\nStance:", lambda rng, words: "ABC"[rng.integers(3)]),
    "ScienceQA": ("Question: {text}\nOptions:\nA. {topic}\nB. {text}\n\nAnswer:",
                  lambda rng, words: "AB"[rng.integers(2)] + "\n" + " ".join(rng.choice(words, 6))),
    "Py150": ("<s> def {topic} ( self ) : <EOL> {text} <EOL>", lambda rng, words: " ".join(rng.choice(words, 3))),
    "NumGLUE-cm": ("Solve the following math problem.\nQuestion:\n{text}\nAnswer:",
                   lambda rng, words: str(int(rng.integers(0, 100)))),
    "NumGLUE-ds": ("Solve the following math problem.\nQuestion:\n{text}\nAnswer:",
                   lambda rng, words: str(int(rng.integers(0, 100)))),
    "20Minuten": ("Provide a simplified version of the following text.\n{text}\n\nSimplification:",
                  lambda rng, words: " ".join(rng.choice(words, 8))),
    "MeetingBank": ("Write a summary of the following meeting transcripts.\nMeeting transcripts:\n{text}\nSummary:",
                    lambda rng, words: " ".join(rng.choice(words, 10))),
}


def write_trace_shaped(root: str | Path, names: tuple[str, ...] = SEQUENCES["trace"], n_train: int = 8,
                       n_test: int = 4, seed: int = 0) -> Path:
    """Write generated tasks in the benchmark's layout (``root/<task>/{train,eval,test}.json``) for tests and
    CPU demos when the real data is absent: each task's instruction and answer cue as in TRACE, random
    words as text, answers of the task's kind (a letter, a number, code words, a sentence). Returns ``root``."""
    import numpy as np  # noqa: PLC0415

    unknown = [n for n in names if n not in _SHAPES]
    if unknown:
        raise ValueError(f"names must be among {sorted(_SHAPES)}, got unknown {unknown}")
    words = np.array("the of rate policy market price growth code value return self data model energy plant "
                     "cell water light river city council vote bill frog eyes pond number total".split())
    rng = np.random.default_rng(seed)
    for name in names:
        template, answer = _SHAPES[name]
        rows = [{"prompt": template.format(text=" ".join(rng.choice(words, int(rng.integers(5, 20)))),
                                           topic=" ".join(rng.choice(words, 2))),
                 "answer": answer(rng, words)} for _ in range(n_train + n_test)]
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.json").write_text(json.dumps(rows[:n_train], ensure_ascii=False, indent=1))
        for split in ("eval", "test"):
            (folder / f"{split}.json").write_text(json.dumps(rows[n_train:], ensure_ascii=False, indent=1))
    return Path(root)


SYNTHETIC_MARKER = "moram_ref_synthetic.json"  # written first at the root --make-synthetic fills
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 32, 8  # rows per task: enough for the tiny pipeline check's --max-train/--max-test


def make_synthetic(directory: str | Path) -> Path:
    """``moram-ref llm --make-synthetic DIR``: the TRACE tasks, generated (:func:`write_trace_shaped`,
    ``SYNTHETIC_TRAIN`` training and ``SYNTHETIC_TEST`` evaluation/test rows each), in ``DIR/trace``, marked by
    ``SYNTHETIC_MARKER`` (written first). Returns the data root. A pipeline check for users without the
    benchmark: the answers are random, so the scores mean nothing."""
    root = Path(directory) / "trace"
    root.mkdir(parents=True, exist_ok=True)

    def mark(complete: bool) -> None:  # unfinished first: a stopped run leaves a folder refused until rewritten
        rundir.write_json(root / SYNTHETIC_MARKER,  # whole or not at all, also on a full disk
                          {"made_by": "moram-ref llm --make-synthetic", "tasks": list(SEQUENCES["trace"]),
                           "complete": complete, "note": "random words and answers: a pipeline check, not a benchmark"})

    mark(False)
    write_trace_shaped(root, n_train=SYNTHETIC_TRAIN, n_test=SYNTHETIC_TEST)
    mark(True)
    return root
