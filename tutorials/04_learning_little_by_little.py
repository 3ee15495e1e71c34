# %% [markdown]
# # 4 · Learning little by little: growth, freezing, forgetting
#
# The lifecycle (spec §4): `begin_task()` appends `r` fresh atoms (random keys, zero values) — which
# already changes the routing of every input, since the new keys join the normaliser and the top-k —
# then only those atoms train; `end_task()` freezes them, folding the scale into the values so nothing
# changes ([eq-end-task](../docs/theory.md#eq-end-task)).
#
# We run the demo's associative-recall stream (5 tasks, each with its own region of input space)
# for four methods with the same trainable atoms per task, using the library's own functions.

# %%
import matplotlib.pyplot as plt
import numpy as np

from moram_ref import metrics
from moram_ref.config import MoRAMConfig
from moram_ref.experiments.toy import recall
from moram_ref.experiments.toy.methods import LABELS
from moram_ref.numpy.layer import MoRAMLinear

settings = recall.RecallSettings(steps=200)
stream = recall.make_stream(settings, np.random.default_rng(0))
config = MoRAMConfig(atoms_per_task=8, top_k=8, temperature=0.1, threshold=0.2)

# %% [markdown]
# ## `begin_task` changes routing, `end_task` changes nothing

# %%
layer = MoRAMLinear(stream["weight"], None, config)
gen = np.random.default_rng(1)
layer.begin_task(gen)
layer.values[...] = gen.standard_normal(layer.values.shape)  # pretend it was trained
layer.end_task()
probe = stream["tasks"][0]["keys"]
y_before, c_before = layer.forward(probe)
layer.begin_task(gen)  # new keys, zero values
y_after, c_after = layer.forward(probe)
print("weights of the old atoms changed:", not np.allclose(c_after["w"][:, :8], c_before["w"]))
layer.end_task()
y_frozen, _ = layer.forward(probe)
print("end_task left the output bit-identical:", np.array_equal(y_frozen, layer.forward(probe)[0]))

# %% [markdown]
# ## Four methods, one stream

# %%
results = {}
for method in ("seq_lora", "moe_lora", "dense_moram", "moram"):
    results[method] = recall.run_method(method, config, settings, stream, seed=1)
    s = metrics.summary(results[method]["accuracy"])
    print(f"{LABELS[method]:<18} Average {100 * s['average']:5.1f}  Last {100 * s['last']:5.1f}  "
          f"forgetting {100 * s['forgetting']:5.1f}")

fig, axes = plt.subplots(1, 4, figsize=(13, 3))
for ax, (method, res) in zip(axes, results.items()):
    ax.imshow(res["accuracy"], vmin=0, vmax=1)
    ax.set_title(LABELS[method], fontsize=9)
    ax.set_xlabel("task evaluated")
axes[0].set_ylabel("after task")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Which atoms fire for which task
# Rows: the atoms added by each task; columns: the keys of each task. A diagonal pattern is the
# paper's claim: old atoms keep firing for their own inputs, new atoms for new ones.

# %%
mass = results["moram"]["activation_mass"]
print(np.round(mass, 2))
plt.figure(figsize=(4, 3.4))
plt.imshow(mass, cmap="magma", vmin=0, vmax=1)
plt.xlabel("inputs of task")
plt.ylabel("atoms of task")
plt.colorbar(label="Σ w")
plt.show()

# %% [markdown]
# Sequential LoRA overwrites its single memory; MoE-LoRA's router must learn to separate tasks with one
# gate per expert and drifts; MoRAM's atoms route themselves. Next: [the same layer in PyTorch](05_numpy_to_pytorch.py).
