"""TRACE scoring on hand-made cases (spec §6), SARI on the published worked examples, LLM metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moram_ref import metrics
from moram_ref.experiments.llm import scoring
from moram_ref.experiments.llm.sari import corpus_sari, tokenize_13a


def test_sari_worked_example():
    got = corpus_sari(["About 95 species are currently accepted."], ["About 95 you now get in."],
                      [["About 95 species are currently known.", "About 95 species are now accepted.",
                        "95 species are now accepted."]])
    assert got["sari"] == pytest.approx(26.953601953601954, abs=1e-12)
    assert got["keep"] == pytest.approx(22.527472527472526, abs=1e-9)
    assert got["deletion"] == pytest.approx(50.0) and got["addition"] == pytest.approx(8.333333333333332)


def test_sari_identity_scores_100():
    got = corpus_sari(["About 95 species are currently accepted."], ["About 95 species are currently accepted."],
                      [["About 95 species are currently accepted ."]])
    assert got["sari"] == pytest.approx(100.0)


def test_13a_tokenisation():
    assert tokenize_13a("Hello, world. It costs 3.50-4 $!") == "Hello , world . It costs 3.50 - 4 $ !"


def test_prefix_accuracy_and_empty_prediction():
    assert scoring.accuracy(["  B) yes", "", "A"], ["B", "A", "A"]) == pytest.approx(200 / 3)


def test_scienceqa_first_character():
    assert scoring.first_char_accuracy(["C because", "", "a"], ["C", "B", "A"]) == pytest.approx(100 / 3)


def test_numglue_final_number_boxed_and_last():
    assert scoring.final_number("so \\boxed{1,250.5} and 7") == 1250.5
    assert scoring.final_number("first 3, then 7.25") == 7.25
    assert scoring.final_number("no number") is None
    assert scoring.numeric_accuracy(["It is 7.0.", "12", ""], ["7", "13", "1"]) == pytest.approx(100 / 3)
    assert scoring.score_task("NumGLUE-cm", ["07"], ["7"], numglue_mode="accuracy") == 0.0  # prefix rule
    assert scoring.score_task("NumGLUE-cm", ["07"], ["7"], numglue_mode="numeric") == 100.0


def test_edit_similarity_placeholders():
    assert scoring.normalize_code("x = <NUM_LIT> + <STR_LIT:abc> <STR_LIT> <CHAR_LIT>") == "x = 0 + abc  "
    assert scoring.edit_similarity(["a = <NUM_LIT>"], ["a = 0"]) == 100.0
    assert scoring.edit_similarity([""], ["abc"]) == 0.0


def test_rouge_l_with_the_rouge_package():
    same = scoring.rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == pytest.approx(100.0, abs=1e-4)
    assert scoring.rouge_l(["", "x"], ["a b", "y"]) == 0.0


def test_sari_task_needs_sources():
    with pytest.raises(ValueError, match="sources"):
        scoring.score_task("20Minuten", ["a"], ["b"])


def test_op_and_both_bwts_on_a_hand_made_matrix():
    nan = math.nan
    a = np.array([[60.0, nan, nan], [50.0, 70.0, nan], [40.0, 75.0, 80.0]])
    assert metrics.op(a) == pytest.approx(65.0)
    assert metrics.bwt(a) == pytest.approx(((40 - 60) + (75 - 70)) / 2)
    assert metrics.bwt_clipped(a) == pytest.approx(((40 - 60) + 0 + 0) / 3)
