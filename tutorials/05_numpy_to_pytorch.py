# %% [markdown]
# # 5 · From NumPy to PyTorch
#
# `moram_ref.torch` mirrors `moram_ref.numpy` name for name. Its `MoRAMLinear` wraps a frozen `nn.Linear`
# (kept as `base_layer`), stores the frozen atoms as buffers and the current task's atoms as parameters, and
# takes its mode from `module.training`: in training mode the threshold $\delta$ is off, in evaluation mode it
# is on (tutorial 3). Here we load the *same* parameters into both layers and compare every intermediate in
# both modes, compare autograd with NumPy's hand-written backward, and then attach MoRAM to a small model.
#
# Convention (every tutorial): weights have the `nn.Linear` layout $(d_\text{out}, d_\text{in})$; tokens are the
# rows of `x`, so the base layer computes `x @ W0.T + b0`. Both libraries use the same names for the arrays
# (`base_layer.weight`, `frozen_keys (R_old, d_in)`, `frozen_values (d_out, R_old)`, `keys`, `values`), so a
# NumPy `state_dict` loads into the torch layer as it is.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.numpy.layer import MoRAMLinear as NumpyMoRAM
from moram_ref.torch import attach
from moram_ref.torch.layer import MoRAMLinear as TorchMoRAM

FIGURES = Path(os.environ.get("MORAM_FIGURES", "runs/tutorial-figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
if "inline" not in plt.get_backend():  # run as a script, not in a notebook: say where the figures go
    print(f"figures are saved under {FIGURES.resolve()}")
rng = np.random.default_rng(5)

# %% [markdown]
# ## The same layer in both libraries
# A bank from three tasks of 4 atoms each (two frozen, the third still training), scale $\alpha = 2$, top-3,
# $\tau = 0.2$ and $\delta = 0.3$. We pick these so that the threshold really binds: with 12 atoms, a kept atom
# often has a score below 0.3, so training mode (no threshold) and evaluation mode (threshold) give different
# weights, and the comparison below exercises both.

# %%
cfg = MoRAMConfig(atoms_per_task=4, top_k=3, temperature=0.2, threshold=0.3, scale=2.0)
np_layer = NumpyMoRAM(rng.standard_normal((6, 10)), rng.standard_normal(6), cfg)
for task in range(3):
    np_layer.begin_task(rng)
    np_layer.values[...] = rng.standard_normal(np_layer.values.shape)  # stand-in for trained values
    if task < 2:
        np_layer.end_task()

t_layer = TorchMoRAM(torch.nn.Linear(10, 6).double(), cfg)
t_layer.load_state_dict({k: torch.from_numpy(v) for k, v in np_layer.state_dict().items()})
print(t_layer)
print("atoms: frozen", tuple(t_layer.frozen_keys.shape), "current", tuple(t_layer.keys.shape))
assert t_layer.n_atoms == np_layer.n_atoms == 12

# %% [markdown]
# ## Every intermediate agrees, in both modes (float64)
# `trace` returns $p, s$, the top-k mask, $w$ before and after the threshold, $\Delta$ and $y$.

# %%
x = rng.standard_normal((16, 10))  # (N, d_in) 16 tokens
traces = {}
for training in (True, False):
    a = np_layer.trace(x, training=training)
    b = t_layer.trace(torch.from_numpy(x), training=training)
    worst = {k: float(np.abs(np.asarray(a[k], float) - b[k].detach().double().numpy()).max())
             for k in ("p", "s", "keep", "w_soft", "w", "delta", "y")}
    traces["training" if training else "evaluation"] = {"numpy": a, "torch": b}
    print(f"{'training' if training else 'evaluation':10s} max |NumPy − torch|:", {k: f"{v:.0e}" for k, v in worst.items()})
    assert max(worst.values()) < 1e-12

w_train = traces["training"]["torch"]["w"].detach().numpy()
w_eval = traces["evaluation"]["torch"]["w"].detach().numpy()
gated_off = (w_train > 0) & (w_eval == 0)  # kept atoms the threshold switched off
print(f"the threshold removed {gated_off.sum()} kept atoms in {np.any(gated_off, axis=1).sum()} of 16 tokens; "
      f"Σw per token in evaluation: {np.round(w_eval.sum(1), 2)}")
assert gated_off.any(), "the threshold binds: the two modes differ"
assert not np.allclose(traces["training"]["torch"]["y"].detach().numpy(), traces["evaluation"]["torch"]["y"].detach().numpy())

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for ax, (name, w) in zip(axes, [("training mode\n(no threshold)", w_train),
                                ("evaluation mode (δ = 0.3)\n× = kept, but s < δ", w_eval)]):
    im = ax.imshow(w.T, cmap="magma", vmin=0, vmax=1, aspect="auto")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("token")
    for g in (4, 8):
        ax.axhline(g - 0.5, color="cyan", lw=0.8)
rows, cols = np.nonzero(gated_off)
axes[1].plot(rows, cols, "x", color="cyan", ms=6)
axes[0].set_ylabel("atom (task 1 | task 2 | current task)")
fig.colorbar(im, ax=axes, label="final weight w")
fig.suptitle("torch MoRAMLinear: the same tokens in the two modes", fontsize=10, y=1.06)
fig.savefig(FIGURES / "05_training_vs_evaluation.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# The torch module does not take a `training` argument in its forward: it follows `module.train()` /
# `module.eval()`, as every PyTorch layer does. `trace(x, training=...)` above switched it temporarily.

# %%
t_layer.eval()
y_eval = t_layer(torch.from_numpy(x)).detach().numpy()
t_layer.train()
y_train = t_layer(torch.from_numpy(x)).detach().numpy()
print("module.eval() matches NumPy evaluation:", np.allclose(y_eval, np_layer.forward(x, training=False)[0], atol=1e-12),
      "| module.train() matches NumPy training:", np.allclose(y_train, np_layer.forward(x, training=True)[0], atol=1e-12))
assert np.allclose(y_eval, np_layer.forward(x, training=False)[0], atol=1e-12)
assert np.allclose(y_train, np_layer.forward(x, training=True)[0], atol=1e-12)

# %% [markdown]
# ## Gradients: autograd vs the hand-written backward
# For a random upstream gradient $G = \partial L/\partial y$, NumPy's `backward` and torch's autograd must give the
# same gradients for the current keys and values (the frozen atoms get none).

# %%
G = rng.standard_normal((16, 6))
_, cache = np_layer.forward(x, training=True)
np_grads = np_layer.backward(G, cache)
t_layer.train()
t_layer.zero_grad()
(t_layer(torch.from_numpy(x)) * torch.from_numpy(G)).sum().backward()
gap_keys = np.abs(t_layer.keys.grad.numpy() - np_grads["keys"]).max()
gap_values = np.abs(t_layer.values.grad.numpy() - np_grads["values"]).max()
print(f"keys max |Δ| {gap_keys:.1e}   values max |Δ| {gap_values:.1e}   "
      f"(largest gradient entries {np.abs(np_grads['keys']).max():.2f}, {np.abs(np_grads['values']).max():.2f})")
assert gap_keys < 1e-12 and gap_values < 1e-12
assert [name for name, prm in t_layer.named_parameters() if prm.requires_grad] == ["keys", "values"]

# %% [markdown]
# The test suite checks this on many random cases (`tests/test_torch_equivalence.py`: random shapes, banks,
# $k$, $\tau$, $\delta$, `min_active`, scales and threshold modes, float64 to 1e-9 and float32 within a tolerance
# table), drives both through the whole task lifecycle (`tests/test_torch_stateful.py`), and checks that the
# two libraries offer the same names (`tests/test_api_parity.py`).
#
# ## Attaching to a model
# `attach` swaps chosen `nn.Linear` layers of a model for MoRAM layers that wrap them, and freezes everything
# else. With an empty bank a MoRAM layer returns exactly its base layer's output, so attaching changes
# nothing; `begin_task` adds trainable atoms; `end_task` freezes them; `detach` puts the original layers back.

# %%
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.GELU(), torch.nn.Linear(32, 3))
inputs, targets = torch.randn(8, 10), torch.randn(8, 3)
before = model(inputs).detach()
replaced = attach.attach(model, MoRAMConfig(atoms_per_task=4, top_k=4, temperature=0.1), ["0", "2"])
print("replaced:", list(replaced), "| output unchanged at attach time:", torch.equal(model(inputs), before))
assert torch.equal(model(inputs), before)

attach.begin_task(model, torch.Generator().manual_seed(0))
counts = attach.parameter_count(model)
print("parameters:", counts, "= 4 atoms × (10 + 32) + 4 atoms × (32 + 3)")
assert counts["trainable"] == 4 * (10 + 32) + 4 * (32 + 3)
assert sum(p.requires_grad for p in model.parameters()) == 4, "only the two layers' keys and values train"

opt = torch.optim.AdamW(attach.trainable_parameters(model), lr=1e-2)
attach.set_training(model, True)
losses = []
for _ in range(50):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    opt.step()
    losses.append(loss.item())
attach.set_training(model, False)
trained = model(inputs).detach()
attach.end_task(model)
print(f"loss {losses[0]:.3f} → {losses[-1]:.3f};  end_task left the output bit-identical:",
      torch.equal(model(inputs), trained))
assert losses[-1] < 0.5 * losses[0] and not torch.equal(trained, before)
assert torch.equal(model(inputs), trained)
attach.detach(model)
print("after detach the original model is back, bit for bit:", torch.equal(model(inputs), before))
assert torch.equal(model(inputs), before)

# %% [markdown]
# ## Exercises (predict, then run the cell)
# 1. With `threshold_mode="always"`, do the training and evaluation traces still differ?
# 2. Right after `attach` and `begin_task` (fresh atoms, zero values), is the model's output still exactly the
#    original? And after `begin_task` on a model whose bank already holds a trained task?
# 3. Load the NumPy state into a *float32* torch layer. How close is it to float64 NumPy: 1e-12, 1e-6 or 1e-2?

# %%
# 1. No: the threshold now applies in both modes.
always = TorchMoRAM(torch.nn.Linear(10, 6).double(), MoRAMConfig(**{**cfg.to_dict(), "threshold_mode": "always"}))
always.load_state_dict({k: torch.from_numpy(v) for k, v in np_layer.state_dict().items()})
same = torch.equal(always.trace(torch.from_numpy(x), training=True)["y"], always.trace(torch.from_numpy(x), training=False)["y"])
print("1. training and evaluation identical with threshold_mode='always':", same)
assert same
# 2. Yes on a fresh model (zero values add exactly 0); no with a trained bank (fresh keys change the routing).
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.GELU(), torch.nn.Linear(32, 3))
before = model(inputs).detach()
attach.attach(model, MoRAMConfig(atoms_per_task=4, top_k=2, temperature=0.1), ["0", "2"])
generator = torch.Generator().manual_seed(0)
attach.begin_task(model, generator)
fresh_same = torch.equal(model(inputs), before)
for _, layer in attach.attached_layers(model):
    torch.nn.init.normal_(layer.values, std=0.5, generator=generator)  # stand-in for training
attach.end_task(model)
with_bank = model(inputs).detach()
attach.begin_task(model, generator)
bank_same = torch.equal(model(inputs), with_bank)
print(f"2. fresh model unchanged by begin_task: {fresh_same};  model with a trained bank unchanged: {bank_same}")
assert fresh_same and not bank_same
# 3. About float32's rounding: |Δy| near 1e-6 on outputs of size ~8, i.e. ~1e-7 relative (float32's unit
#    roundoff is 6e-8).
t32 = TorchMoRAM(torch.nn.Linear(10, 6), cfg)
t32.load_state_dict({k: torch.from_numpy(v).float() for k, v in np_layer.state_dict().items()})
t32.eval()
gap32 = np.abs(t32(torch.from_numpy(x).float()).detach().numpy() - np_layer.forward(x)[0]).max()
print(f"3. float32 torch vs float64 NumPy: max |Δy| = {gap32:.1e} (|y| up to {np.abs(np_layer.forward(x)[0]).max():.1f})")
assert 1e-9 < gap32 < 1e-4

# %% [markdown]
# Next: [MoRAM on CLIP](06_clip_backbone.py).
