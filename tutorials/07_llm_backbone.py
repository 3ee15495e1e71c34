# %% [markdown]
# # 7 · MoRAM on a causal language model — a pipeline check
#
# The paper's LLM setting (spec §5): MoRAM on the attention q, k, v, o projections of a decoder, `r = k = 8`
# atoms per task, `τ = 0.03`, `δ = 0.2` at evaluation, scale 2 on the current atoms (folded in at
# `end_task`), adapter dropout 0.1; the loss covers the answer tokens only; answers are decoded greedily
# and scored with TRACE's metrics.
#
# **What this page is.** No pretrained language model ships offline, so by default this tutorial builds a
# *tiny random* LLaMA-style decoder (2 layers, width 64) and trains one task of a few dozen generated
# examples. Such a model answers nonsense before and after: the page checks that every step of the
# pipeline does what the method says (what is adapted, what is learned, what is frozen), not that MoRAM
# helps. No full TRACE run has been made in this project yet (it needs a GPU and model weights), so there
# is no stored figure of one to show here; [tutorial 8](08_real_evidence_on_cpu.py) shows real results.
#
# **Settings you can change** (environment variables, read once below):
#
# - `DATA_ROOT`: the benchmark folder (`llm-cl-benchmark-500`, TRACE's JSON layout). Unset: two small tasks
#   are generated in that layout in a temporary folder, so the page runs anywhere, from any directory.
# - `MODEL_PATH`: a local folder with a Hugging Face causal LM (e.g. Llama-3.2-1B-Instruct). Unset: the
#   tiny random decoder. A real model runs on the GPU if there is one (bf16), else on the CPU (float32).

# %%
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.experiments.llm import backbones, data, scoring
from moram_ref.experiments.llm.generate import generate
from moram_ref.experiments.llm.train import Dist, LLMSettings, train_task
from moram_ref.torch import attach

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL_PATH = os.environ.get("MODEL_PATH")  # None: a tiny random decoder
DATA_ROOT = os.environ.get("DATA_ROOT")  # None: generated tasks in the benchmark's layout
if DATA_ROOT and not Path(DATA_ROOT, "C-STANCE").is_dir():
    raise SystemExit(f"DATA_ROOT={DATA_ROOT!r} has no C-STANCE folder: point DATA_ROOT at the benchmark folder "
                     "(the one holding C-STANCE/, ScienceQA/, …), or unset it to use generated tasks")

# %% [markdown]
# ## The data layout: one folder per task, `{prompt, answer}` rows
# A TRACE task is a folder with `train.json` and `test.json`, each a list of `{"prompt": …, "answer": …}`.
# Without `DATA_ROOT` we write two such tasks: a stance task (answer A, B or C, like C-STANCE) and a
# two-choice question (answer A or B, like ScienceQA, whose answers start with the choice letter).

# %%
if DATA_ROOT is None:
    DATA_ROOT = Path(tempfile.mkdtemp()) / "trace-shaped"
    rng = np.random.default_rng(0)
    topics = ["school uniforms", "night trains", "city parks", "solar roofs", "four-day weeks"]
    stance_words = {"A": "strongly support", "B": "am against", "C": "have no opinion on"}
    rows: dict[str, list[dict]] = {"C-STANCE": [], "ScienceQA": []}
    for i in range(30):
        topic, stance = topics[i % len(topics)], "ABC"[i % 3]
        rows["C-STANCE"].append({"prompt": f"Text: I {stance_words[stance]} {topic}.\nTarget: {topic}\n"
                                           "Stance (A. favor, B. against, C. neutral):", "answer": stance})
        a, b = rng.choice(50, size=2, replace=False)
        rows["ScienceQA"].append({"prompt": f"Question: which number is larger?\nChoices:\nA. {a}\nB. {b}\nAnswer:",
                                  "answer": ("A" if a > b else "B") + " because it is the larger number."})
    for name, task_rows in rows.items():
        (DATA_ROOT / name).mkdir(parents=True)
        (DATA_ROOT / name / "train.json").write_text(json.dumps(task_rows[:24]))
        (DATA_ROOT / name / "test.json").write_text(json.dumps(task_rows[24:]))

tasks, skipped = data.load_sequence(DATA_ROOT, ["C-STANCE", "ScienceQA"], max_train=24, max_test=6)
print("a prompt:", tasks[0].train[0]["prompt"][-160:].replace("\n", " | "))
print("its answer:", repr(tasks[0].train[0]["answer"]))
assert [t.name for t in tasks] == ["C-STANCE", "ScienceQA"] and not skipped
assert all(len(t.train) == 24 and len(t.test) == 6 for t in tasks)

# %% [markdown]
# ## A model, and MoRAM attached to q, k, v, o
# `attach` swaps each matching `nn.Linear` for a MoRAM layer that keeps the original as `base_layer`.
# Before the first task the bank is empty (`R = 0`), so the model computes exactly what it computed
# before ([eq-output](../docs/theory.md#eq-output)): we check that on the logits, bit for bit.

# %%
if MODEL_PATH:
    model, tok = backbones.load_pretrained(MODEL_PATH, torch.bfloat16 if DEVICE == "cuda" else torch.float32, DEVICE)
else:
    tok = backbones.build_tokenizer([r["prompt"] + " " + r["answer"] for t in tasks for r in t.train], vocab_size=800)
    model = backbones.tiny_model("llama", len(tok), seed=0).to(DEVICE)
probe_ids = tok([tasks[0].test[0]["prompt"]], return_tensors="pt")["input_ids"].to(DEVICE)
with torch.no_grad():
    logits_before = model(probe_ids).logits

config = MoRAMConfig.paper_llm()
print(config)
replaced = attach.attach(model, config, backbones.ATTENTION_TARGETS)
print(f"{len(replaced)} layers adapted, e.g. {list(replaced)[:4]}")
with torch.no_grad():
    logits_attached = model(probe_ids).logits
assert len(replaced) == 4 * model.config.num_hidden_layers  # q, k, v, o in every decoder layer
assert torch.equal(logits_before, logits_attached)  # an empty bank changes nothing

# %% [markdown]
# ## Answer-only training examples
# Each example is `prompt ⧺ answer ⧺ EOS`; the prompt's tokens get the label -100, so only the answer and
# the EOS token are learned.

# %%
enc = data.encode_examples(tok, tasks[0].train[:1], max_prompt=256, max_answer=32)
labels = enc.labels[0]
answer_ids = tok(tasks[0].train[0]["answer"], add_special_tokens=False)["input_ids"]
learned = [x for x in labels if x != -100]
print("tokens:", len(enc.input_ids[0]), "of which learned:", len(learned))
assert learned == answer_ids + [tok.eos_token_id]  # exactly the answer, then EOS

# %% [markdown]
# ## One task of training: only the new atoms move
# `train_task` runs `begin_task` (8 fresh atoms per layer), the epochs over the task, and `end_task`.
# Everything else (the decoder's own weights) stays frozen; we check that on one base weight.

# %%
settings = LLMSettings(method="moram", epochs=1, batch=8, micro_batch=4, max_prompt=256, max_answer=32,
                       max_new_tokens=8, moram=config)
first = next(iter(replaced))  # e.g. model.layers.0.self_attn.q_proj
base_weight = model.get_submodule(first).base_layer.weight.detach().clone()
info = train_task(model, tok, tasks[0], 0, settings, Dist())
layers = [m for _, m in attach.attached_layers(model)]
print("trained:", info, "| atoms per layer now:", layers[0].n_atoms)
assert all(m.n_atoms == config.atoms_per_task for m in layers)
assert info["trainable"] == sum(config.atoms_per_task * (m.base_layer.in_features + m.base_layer.out_features)
                                for m in layers)  # r keys and r values per layer, nothing else
assert torch.equal(model.get_submodule(first).base_layer.weight, base_weight)
assert not list(attach.trainable_parameters(model))  # after end_task nothing is trainable
moved = max(float(m.frozen_values.abs().max()) for m in layers)  # the atoms' values started at exactly 0
print(f"largest trained value of the new atoms: {moved:.2e}")
assert moved > 0  # the new atoms did move

# %% [markdown]
# ## Greedy answers and TRACE scores
# Each task has its own metric (spec §6): accuracy on the answer's first characters for C-STANCE, the
# choice letter for ScienceQA; all on 0–100.

# %%
scores = {}
for task in tasks:
    preds = generate(model, tok, [r["prompt"] for r in task.test], max_new_tokens=8, batch_size=6, max_prompt=256)
    scores[task.name] = scoring.score_task(task.name, preds, [r["answer"] for r in task.test],
                                           [r["prompt"] for r in task.test])
    print(f"{task.name}: {scoring.METRIC_OF_TASK[task.name]} {scores[task.name]:.1f}; first answer {preds[0]!r}")
assert all(0 <= s <= 100 for s in scores.values())

# %% [markdown]
# A tiny random model answers nonsense, as expected: the point was the pipeline. The full sequence, with a
# checkpoint and an evaluation row after every task, resume, and several processes, is one command:
# `moram-ref llm --benchmark trace --model <path> --data-root … --out runs/trace` (see
# [Experiments](../docs/experiments.md)).
#
# ## Exercises (predict, then run the cell)
# 1. A second task adds atoms to every layer. How many atoms will each adapted layer hold after
#    `train_task(model, tok, tasks[1], 1, settings, Dist())`?
# 2. `attach.detach(model)` puts the original linear layers back. Will the logits on `probe_ids` then equal
#    `logits_before` exactly, or only approximately?
# 3. An empty answer: what does `scoring.score_task("C-STANCE", [""], ["A"], ["…"])` return?

# %%
# 1. 16: r = 8 more per task, the first task's 8 frozen.
train_task(model, tok, tasks[1], 1, settings, Dist())
print("1. atoms per layer after two tasks:", layers[0].n_atoms)
assert all(m.n_atoms == 2 * config.atoms_per_task for m in layers)
# 2. Exactly: detach restores the very modules that were wrapped, untouched by training.
attach.detach(model)
with torch.no_grad():
    same = torch.equal(model(probe_ids).logits, logits_before)
print("2. logits after detach equal the original ones exactly:", same)
assert same
# 3. 0: an empty prediction counts 0 for accuracy (spec §6), it is not skipped.
empty = scoring.score_task("C-STANCE", [""], ["A"], ["…"])
print("3. score of an empty answer:", empty)
assert empty == 0
