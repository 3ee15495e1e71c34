"""SARI (Xu et al., 2016) as the Hugging Face ``sari`` metric computes it, written here so that no
metric code is fetched from a hub (spec §6, §10).

That metric adapts tensor2tensor's SARI: sentences are lower-cased and tokenised with sacreBLEU's 13a
rules, n-grams up to 4; keep = F1 of keep precision and recall, deletion = precision only, addition =
F1; 0/0 counts as 1 (so a prediction that matches exactly scores 100); corpus SARI is the mean of the
sentence scores, on 0–100. It differs from EASSE's SARI.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period and comma unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash when preceded by a digit
]


def tokenize_13a(line: str) -> str:
    """sacreBLEU's 13a tokenisation (mteval-v13a), returning space-separated tokens."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


def normalize(sentence: str) -> str:
    return tokenize_13a(sentence.lower())


def _ngrams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _sari_ngram(s: list[str], c: list[str], refs: list[list[str]], numref: int) -> tuple[float, float, float]:
    r_counter = Counter(g for r in refs for g in r)
    s_rep = Counter({g: n * numref for g, n in Counter(s).items()})
    c_rep = Counter({g: n * numref for g, n in Counter(c).items()})
    # keep
    keep = s_rep & c_rep
    keep_good = keep & r_counter
    keep_all = s_rep & r_counter
    keep_p = sum(keep_good[g] / keep[g] for g in keep) / len(keep) if keep else 1.0
    keep_r = sum(keep_good[g] for g in keep) / sum(keep_all.values()) if keep_all else 1.0
    keep_f = 2 * keep_p * keep_r / (keep_p + keep_r) if keep_p + keep_r > 0 else 0.0
    # deletion (precision only)
    delete = s_rep - c_rep
    delete_good = delete - r_counter
    del_p = sum(delete_good[g] / delete[g] for g in delete) / len(delete) if delete else 1.0
    # addition
    add = set(c_rep) - set(s_rep)
    add_good = add & set(r_counter)
    add_all = set(r_counter) - set(s_rep)
    add_p = len(add_good) / len(add) if add else 1.0
    add_r = len(add_good) / len(add_all) if add_all else 1.0
    add_f = 2 * add_p * add_r / (add_p + add_r) if add_p + add_r > 0 else 0.0
    return keep_f, del_p, add_f


def sari_sentence(source: str, prediction: str, references: Sequence[str]) -> dict[str, float]:
    """SARI of one sentence and its keep / deletion / addition parts, each on 0–1 (already normalised input)."""
    s, c = source.split(" "), prediction.split(" ")
    refs = [r.split(" ") for r in references]
    parts = [_sari_ngram(_ngrams(s, n), _ngrams(c, n), [_ngrams(r, n) for r in refs], len(refs)) for n in (1, 2, 3, 4)]
    keep, delete, add = (sum(p[i] for p in parts) / 4 for i in range(3))
    return {"sari": (keep + delete + add) / 3, "keep": keep, "deletion": delete, "addition": add}


def corpus_sari(sources: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean sentence SARI over the corpus, on 0–100, with its three parts."""
    if not len(sources) == len(predictions) == len(references):
        raise ValueError(f"sources, predictions and references must have one entry each per sample, got "
                         f"{len(sources)}, {len(predictions)}, {len(references)}")
    if not sources:
        raise ValueError("corpus_sari needs at least one sample")
    scores = [sari_sentence(normalize(s), normalize(p), [normalize(r) for r in refs])
              for s, p, refs in zip(sources, predictions, references)]
    return {k: 100 * sum(sc[k] for sc in scores) / len(scores) for k in scores[0]}
