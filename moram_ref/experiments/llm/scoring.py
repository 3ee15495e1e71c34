"""How TRACE scores an answer (spec §6), computed locally: no metric code is fetched from a hub.

Every score is a mean over *all* test samples on 0–100; an empty prediction counts 0.
* accuracy (C-STANCE, FOMC, NumGLUE, O-LoRA tasks): strip the prediction, cut it to the target's
  length, compare exactly — a prediction that *starts* with the right label counts;
* ScienceQA: the first character of prediction and target (the choice letter);
* NumGLUE, ``numglue_mode="numeric"`` (the authors' released code): the final number — from
  ``\\boxed{}`` if present, else the last number in the text — compared numerically;
* ROUGE-L (MeetingBank): per-sample ``rouge-l`` F as the ``rouge`` package defines it, averaged
  (:mod:`~moram_ref.experiments.llm.rouge_l`: the same numbers, no recursion limit on long answers);
* edit similarity (Py150): placeholders normalised on both sides, then the Levenshtein ratio
  (``rapidfuzz.fuzz.ratio``, equal to ``fuzzywuzzy``'s), averaged;
* SARI (20Minuten): :mod:`moram_ref.experiments.llm.sari`, with the input as source and one reference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from moram_ref.experiments.llm.rouge_l import rouge_l_f
from moram_ref.experiments.llm.sari import corpus_sari

METRIC_OF_TASK = {
    "C-STANCE": "accuracy", "FOMC": "accuracy", "MeetingBank": "rouge_l", "Py150": "edit_similarity",
    "ScienceQA": "first_char_accuracy", "NumGLUE-cm": "numglue", "NumGLUE-ds": "numglue", "20Minuten": "sari",
}


def _check(predictions: Sequence[str], targets: Sequence[str]) -> None:
    for name, texts in (("predictions", predictions), ("targets", targets)):
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            bad = texts if isinstance(texts, str) else next(t for t in texts if not isinstance(t, str))
            raise TypeError(f"{name} must be a sequence of str, got {type(texts).__name__} holding {bad!r:.60}")
    if len(predictions) != len(targets):
        raise ValueError(f"predictions and targets differ in length: {len(predictions)} vs {len(targets)}")
    if not targets:
        raise ValueError("no samples to score")


def accuracy(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Prefix-exact accuracy: ``pred.strip()[:len(target)] == target``."""
    _check(predictions, targets)
    hits = sum(p.strip()[: len(t)] == t for p, t in zip(predictions, targets))
    return 100.0 * hits / len(targets)


def first_char_accuracy(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """ScienceQA: the first character of prediction and target compared (empty prediction: wrong)."""
    _check(predictions, targets)
    hits = sum(bool(p.strip()) and p.strip()[0] == t.strip()[0] for p, t in zip(predictions, targets))
    return 100.0 * hits / len(targets)


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?|-?\.\d+")


def final_number(text: str) -> float | None:
    """The number inside the last ``\\boxed{…}`` if any, else the last number in the text."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    candidates = _NUMBER.findall(boxed[-1]) if boxed else _NUMBER.findall(text)
    if not candidates:
        return None
    return float(candidates[-1].replace(",", ""))  # the pattern admits only float() syntax once "," is gone


def numeric_accuracy(predictions: Sequence[str], targets: Sequence[str], rel_tol: float = 1e-6) -> float:
    """NumGLUE as the authors' released code scores it: the final numbers compared numerically."""
    _check(predictions, targets)
    hits = 0
    for p, t in zip(predictions, targets):
        a, b = final_number(p), final_number(t)
        hits += a is not None and b is not None and math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    return 100.0 * hits / len(targets)


def rouge_l(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Mean per-sample ROUGE-L F, equal to the ``rouge`` package's on every text it can score and
    computed without its recursion (:mod:`moram_ref.experiments.llm.rouge_l`): long answers score
    what they earn. An empty (blank) prediction or target scores 0."""
    _check(predictions, targets)
    total = sum(rouge_l_f(p, t) for p, t in zip(predictions, targets) if p.strip() and t.strip())
    return 100.0 * total / len(targets)


_PLACEHOLDER = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def normalize_code(code: str) -> str:
    """Py150 placeholders: ``<NUM_LIT>`` → ``0``; ``<STR_LIT>``, ``<CHAR_LIT>`` dropped; ``<X_LIT:v>`` → ``v``."""
    code = _PLACEHOLDER.sub(lambda m: m.group(2), code)
    return code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")


def edit_similarity(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Mean Levenshtein ratio (0–100) after placeholder normalisation on both sides."""
    from rapidfuzz import fuzz  # noqa: PLC0415  (the 'llm' extra)

    _check(predictions, targets)
    return sum(fuzz.ratio(normalize_code(p), normalize_code(t)) for p, t in zip(predictions, targets)) / len(targets)


def sari(predictions: Sequence[str], targets: Sequence[str], sources: Sequence[str]) -> float:
    """Corpus SARI (0–100) with the inputs as sources and one reference per sample."""
    _check(predictions, targets)
    return corpus_sari(sources, predictions, [[t] for t in targets])["sari"]


def score_task(task: str, predictions: Sequence[str], targets: Sequence[str], sources: Sequence[str] | None = None,
               numglue_mode: str = "numeric") -> float:
    """The task's metric (spec §6). O-LoRA tasks and unknown tasks: prefix-exact accuracy."""
    metric = METRIC_OF_TASK.get(task, "accuracy")
    if metric == "numglue":
        if numglue_mode not in ("numeric", "accuracy"):
            raise ValueError(f"numglue_mode must be 'numeric' or 'accuracy', got {numglue_mode!r}")
        return numeric_accuracy(predictions, targets) if numglue_mode == "numeric" else accuracy(predictions, targets)
    if metric == "sari":
        if sources is None:
            raise ValueError(f"task {task} is scored with SARI, which needs the sources (inputs)")
        return sari(predictions, targets, sources)
    return {"accuracy": accuracy, "first_char_accuracy": first_char_accuracy, "rouge_l": rouge_l,
            "edit_similarity": edit_similarity}[metric](predictions, targets)
