# %% [markdown]
# # 6 · MoRAM on CLIP
#
# The paper's main setting (spec §5): MoRAM in every block of **both** CLIP encoders, on the attention
# q, k, v and output projections and the MLP's `c_fc`, `c_proj`; `r = k = 16`, `τ = 0.01`, `δ = 0.2` at
# evaluation. open_clip fuses q/k/v into one `nn.MultiheadAttention`, so the attention is first replaced
# by an equal module with four separate linear layers.
#
# By default this tutorial uses a *tiny random* open_clip model and three small synthetic domains in
# the CoOp layout, so it runs anywhere in seconds. Set `REAL=1` on a GPU machine with the OpenAI weights
# cached to use `ViT-B-16` instead (and point `--data-root` at real data with `moram-ref clip`).

# %%
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.experiments.clip import backbone
from moram_ref.experiments.clip.data import load_domain
from moram_ref.experiments.clip.probes import map_layer, probe
from moram_ref.experiments.clip.synthetic import make_coop_dataset
from moram_ref.experiments.clip.train import ClipSettings, evaluate, train_task
from moram_ref.torch import attach

REAL = os.environ.get("REAL") == "1"
model, _, transform, tokenizer = backbone.load_clip("ViT-B-16", "openai") if REAL else backbone.tiny_clip(seed=0)

# %% [markdown]
# ## The attention, split — same function
# `backbone.prepare` (already applied by the loaders) swapped every fused attention; here we check on a
# fresh tiny model that the outputs did not move.

# %%
import open_clip  # noqa: E402

torch.manual_seed(0)
fused = open_clip.CLIP(embed_dim=32, vision_cfg={"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                                 "head_width": 32},
                       text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}).double()
images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
with torch.no_grad():
    before = fused.encode_image(images)
    print("replaced:", backbone.prepare(fused))
    print("max |Δ| after the split:", (fused.encode_image(images) - before).abs().max().item())

# %% [markdown]
# ## Attach MoRAM to both encoders

# %%
config = MoRAMConfig.paper_clip(atoms_per_task=8, top_k=8)
targets = backbone.target_regex(["image", "text"], ["attention", "mlp"])
replaced = attach.attach(model, config, targets)
print(f"{len(replaced)} linear layers adapted, e.g.", list(replaced)[:3])

# %% [markdown]
# ## Three small domains, one X-TAIL step each
# Each domain brings its own classes; after each task every domain is scored over the union of all
# classes (task-agnostic), with the two-term loss of spec §6 during training.

# %%
root = Path(tempfile.mkdtemp())
keys = ["caltech101", "dtd", "eurosat"]
for i, key in enumerate(keys):
    make_coop_dataset(root, key, seed=i)
domains = [load_domain(root, k) for k in keys]
print("prompts of the first domain:", domains[0].prompts)
settings = ClipSettings(shots=4, iterations=int(os.environ.get("TUTORIAL_STEPS", 10)), batch=8, lr=5e-3, moram=config)
print("zero-shot accuracy (%):", evaluate(model, tokenizer, transform, domains, settings, "cpu", root).round(1))
matrix = []
for t in range(len(domains)):
    train_task(model, tokenizer, transform, domains, t, settings, "cpu", root / "manifests", root)
    matrix.append(evaluate(model, tokenizer, transform, domains, settings, "cpu", root))
    print(f"after task {t + 1}:", matrix[-1].round(1))

# %% [markdown]
# A tiny random CLIP has no zero-shot ability and learns little in ten steps — the numbers above only show
# that the loop runs. With `REAL=1` and the real datasets, `moram-ref clip --benchmark xtail` is the full run.
#
# ## Which atoms fire for which image tokens
# The paper's Fig. 1: final weights `w` at the image encoder's attention k-projection of a middle block,
# atoms grouped by the task that added them.

# %%
import matplotlib.pyplot as plt  # noqa: E402

p = probe(model, transform, domains)
print("layer:", p["map_layer"] == map_layer(model), p["map_layer"])
fig, axes = plt.subplots(1, len(domains), figsize=(12, 3))
for ax, (key, w) in zip(axes, p["maps"].items()):
    ax.imshow(np.asarray(w).T, aspect="auto", cmap="magma", vmin=0, vmax=1)
    ax.set_title(f"an image of {key}", fontsize=9)
    ax.set_xlabel("image token")
axes[0].set_ylabel("atom (8 per task)")
plt.tight_layout()
plt.show()
print("atoms carrying 99 % of the weight, per image-encoder layer:",
      {k.split("resblocks.")[1]: round(v, 2) for k, v in p["n99"].items()})
