"""ROUGE-L without recursion: equal to the ``rouge`` package wherever it scores, and long answers
(which make the package recurse past Python's limit) score what they earn, not 0 (issue #10)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import shared_data

from moram_ref.experiments.llm import scoring
from moram_ref.experiments.llm.rouge_l import rouge_l_f

MEETINGBANK = shared_data("llm-cl-benchmark-500", "MeetingBank")


def package_f(prediction: str, reference: str) -> float:
    rouge = pytest.importorskip("rouge")
    return rouge.Rouge().get_scores(prediction, reference)[0]["rouge-l"]["f"]


def generated_pairs(n_pairs: int, seed: int = 0) -> list[tuple[str, str]]:
    """Texts from a small vocabulary with repeats, periods, blank pieces and odd spacing."""
    rng = np.random.default_rng(seed)
    vocab = ["the", "cat", "sat", "on", "mat", "a", "council", "vote", "City", "city", "", ".", " . ", "  "]
    pairs = []
    for _ in range(n_pairs):
        texts = []
        for _ in range(2):
            words = rng.choice(vocab, size=int(rng.integers(1, 40)))
            texts.append(" ".join(words) + ("." if rng.random() < 0.5 else ""))
        pairs.append((texts[0], texts[1]))
    return pairs


def scorable(prediction: str, reference: str) -> bool:
    """Where the package returns a score (it raises when a side has no sentence at all)."""
    return bool(prediction.strip() and reference.strip()
                and [s for s in prediction.split(".") if s] and [s for s in reference.split(".") if s])


def test_equals_the_package_on_generated_texts():
    pairs = [p for p in generated_pairs(300) if scorable(*p)]
    assert len(pairs) > 250
    for prediction, reference in pairs:
        assert rouge_l_f(prediction, reference) == pytest.approx(package_f(prediction, reference), abs=1e-12), (
            prediction, reference)


@pytest.mark.skipif(not MEETINGBANK.is_dir(), reason=f"the shared MeetingBank data ({MEETINGBANK}) is not present; set MORAM_SHARED_DATA to the folder that holds clip/ and llm-cl-benchmark-500/")
def test_equals_the_package_on_meetingbank_references():
    rows = json.loads((MEETINGBANK / "test.json").read_text())[:40]
    answers = [r["answer"] for r in rows]
    for i, reference in enumerate(answers):
        for prediction in (reference, answers[(i + 1) % len(answers)], reference[: len(reference) // 2]):
            if scorable(prediction, reference):
                assert rouge_l_f(prediction, reference) == pytest.approx(package_f(prediction, reference), abs=1e-12)


def test_long_identical_answers_score_100():
    rng = np.random.default_rng(1)
    text = " ".join(f"w{int(i)}" for i in rng.integers(0, 400, size=1200))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default; torch.compile and Jupyter raise it, which hides the failure
    try:
        with pytest.raises(RecursionError):  # the package itself cannot score it (it recurses per token)
            package_f(text, text)
    finally:
        sys.setrecursionlimit(limit)
    assert scoring.rouge_l([text], [text]) == pytest.approx(100.0, abs=1e-4)


def test_long_answer_scores_what_it_earns():
    ref = " ".join(f"w{i}" for i in range(1500))
    half = " ".join(f"w{i}" for i in range(0, 1500, 2))  # every other word: P = 1, R = 1/2
    assert scoring.rouge_l([half], [ref]) == pytest.approx(100 * 2 * 0.5 / 1.5, abs=1e-4)


def test_texts_with_no_sentence_score_zero_by_rule():
    assert rouge_l_f("...", "a b") == 0.0
    assert rouge_l_f("a b", "") == 0.0
    assert scoring.rouge_l(["", "..."], ["a b", "a"]) == 0.0


def test_final_number_never_raises_on_random_text():
    rng = np.random.default_rng(2)
    alphabet = list("0123456789,.-eE+ x\\boxed{}")
    for _ in range(2000):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 20))))
        value = scoring.final_number(text)
        assert value is None or isinstance(value, float)
