"""ROUGE-L F as the ``rouge`` package (pltrdy, ``Rouge().get_scores(hyp, ref)[0]["rouge-l"]["f"]``)
computes it, without its recursion: the package rebuilds each longest common subsequence with one
Python call per token, so any answer whose sentence pair has an LCS path longer than Python's
recursion limit (~1,000 tokens) raises ``RecursionError`` (spec §6).

The package's rules, reproduced exactly (``tests/test_llm_rouge.py`` compares both on generated texts
and on the shipped MeetingBank references):

* a text is split on ``"."``; every non-empty piece is a sentence, its whitespace collapsed to single
  spaces; a sentence's words are ``sentence.split(" ")`` (so a blank piece gives one empty word);
* ``m``, ``n``: the number of *distinct* words of the reference and of the prediction;
* for every (reference sentence, prediction sentence) pair, one LCS is rebuilt from the DP table
  (match → diagonal; else up when ``T[i-1, j] > T[i, j-1]``, else left) and its words are added to
  one *set* shared by all pairs; ``L`` = the size of that set;
* ``R = L / m``, ``P = L / n``, ``F = 2 P R / (P + R + 1e-8)``.

The table is filled one row at a time with NumPy: ``T[i, j] = cummax_j(match ? T[i-1, j-1] + 1 :
T[i-1, j])``, equal to the textbook recurrence because a diagonal match is never smaller than its
left neighbour. Memory is ``O(|ref sentence| · |pred sentence|)`` per pair.
"""

from __future__ import annotations

import numpy as np


def sentences(text: str) -> list[str]:
    """The package's sentence split: non-empty pieces between ``"."``, whitespace collapsed."""
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def lcs_words(x: list[str], y: list[str]) -> list[str]:
    """One longest common subsequence of ``x`` and ``y``, rebuilt with the package's tie-breaking."""
    ids: dict[str, int] = {}
    xi = np.array([ids.setdefault(w, len(ids)) for w in x], dtype=np.int64)  # (n,)
    yi = np.array([ids.setdefault(w, len(ids)) for w in y], dtype=np.int64)  # (m,)
    table = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int64)  # T (n+1, m+1)
    for i in range(1, len(x) + 1):
        prev = table[i - 1]
        candidate = np.where(yi == xi[i - 1], prev[:-1] + 1, prev[1:])  # (m,)
        table[i, 1:] = np.maximum.accumulate(candidate)
    out, i, j = [], len(x), len(y)
    while i > 0 and j > 0:
        if xi[i - 1] == yi[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1, j] > table[i, j - 1]:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def rouge_l_f(prediction: str, reference: str) -> float:
    """Summary-level ROUGE-L F on 0–1. A text with no sentence at all (e.g. ``""`` or ``"..."``, where
    the package raises) scores 0: no word of it can match."""
    hyp, ref = sentences(prediction), sentences(reference)
    if not hyp or not ref:
        return 0.0
    m = len({w for s in ref for w in s.split(" ")})
    n = len({w for s in hyp for w in s.split(" ")})
    union: set[str] = set()
    for r in ref:
        for h in hyp:
            union.update(lcs_words(r.split(" "), h.split(" ")))
    recall, precision = len(union) / m, len(union) / n
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))
