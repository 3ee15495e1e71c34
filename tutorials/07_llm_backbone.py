# %% [markdown]
# # 7 · MoRAM on a causal language model
#
# The paper's LLM setting (spec §5): MoRAM on the attention q, k, v, o projections of a decoder, `r = k = 8`
# atoms per task, `τ = 0.03`, `δ = 0.2` at evaluation, scale 2 on the current atoms (folded in at
# `end_task`), adapter dropout 0.1; the loss covers the answer tokens only; evaluation is greedy.
#
# By default this tutorial builds a *tiny random* LLaMA-style decoder and trains a tokenizer on the task
# text, so it runs anywhere offline. For a real model, set `MODEL_PATH` to a local folder (e.g.
# Llama-3.2-1B-Instruct) — on a GPU.

# %%
import os
from pathlib import Path

import torch

from moram_ref.config import MoRAMConfig
from moram_ref.experiments.llm import backbones, data, scoring
from moram_ref.experiments.llm.generate import generate
from moram_ref.experiments.llm.train import Dist, LLMSettings, train_task
from moram_ref.torch import attach

DATA_ROOT = Path(os.environ.get("DATA_ROOT", Path.cwd().parent / "shared" / "data" / "llm-cl-benchmark-500"))
MODEL_PATH = os.environ.get("MODEL_PATH")  # None: a tiny random decoder

tasks, skipped = data.load_sequence(DATA_ROOT, ["C-STANCE", "ScienceQA"], max_train=24, max_test=6)
print("a TRACE prompt:", tasks[0].train[0]["prompt"][:200].replace("\n", " "), "…")
print("its answer:", tasks[0].train[0]["answer"])

# %% [markdown]
# ## A model, and MoRAM attached to q, k, v, o

# %%
if MODEL_PATH:
    model, tok = backbones.load_pretrained(MODEL_PATH, torch.bfloat16, "cuda")
else:
    tok = backbones.build_tokenizer([r["prompt"] + " " + r["answer"] for t in tasks for r in t.train], vocab_size=800)
    model = backbones.tiny_model("llama", len(tok), seed=0)
config = MoRAMConfig.paper_llm()
replaced = attach.attach(model, config, backbones.ATTENTION_TARGETS)
print(f"{len(replaced)} layers adapted, e.g. {list(replaced)[:4]}")

# %% [markdown]
# ## Answer-only training examples
# The prompt's tokens get label -100: only the answer (and EOS) is learned.

# %%
enc = data.encode_examples(tok, tasks[0].train[:1], max_prompt=256, max_answer=32)
labels = enc.labels[0]
print("tokens:", len(enc.input_ids[0]), "of which learned:", sum(x != -100 for x in labels))

# %% [markdown]
# ## One task of training, then greedy answers and TRACE scoring

# %%
settings = LLMSettings(method="moram", epochs=1, batch=8, micro_batch=4, max_prompt=256, max_answer=32,
                       max_new_tokens=8, moram=config)
info = train_task(model, tok, tasks[0], 0, settings, Dist())
print("trained:", info)
print("atoms per layer now:", next(m for _, m in attach.attached_layers(model)).n_atoms)
for task in tasks:
    preds = generate(model, tok, [r["prompt"] for r in task.test], max_new_tokens=8, batch_size=6, max_prompt=256)
    score = scoring.score_task(task.name, preds, [r["answer"] for r in task.test], [r["prompt"] for r in task.test])
    print(f"{task.name}: {scoring.METRIC_OF_TASK[task.name]} {score:.1f}; first answer {preds[0]!r}")

# %% [markdown]
# A tiny random model answers nonsense — the point is the pipeline. The full sequence, with a checkpoint
# and an evaluation row after every task, resume, and several processes, is one command:
# `moram-ref llm --benchmark trace --model <path> --data-root … --out runs/trace` (see docs/experiments.md).
