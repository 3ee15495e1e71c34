# %% [markdown]
# # 2 · Rank-1 atoms: every weight update is a sum of key–value pairs
#
# A LoRA update $\Delta W = B A$ ($A$: $r \times d_\text{in}$, $B$: $d_\text{out} \times r$) is a memory with
# $r$ slots: row $A_i$ is a key, column $B_i$ its value, and
# $\Delta W x = \sum_i B_i \, (A_i \cdot x)$ ([eq-atoms](../docs/theory.md#eq-atoms)). MoRAM treats each such
# pair as an independent expert, an *atom*. This tutorial checks that identity, builds atoms from any
# matrix, and then shows the point that makes MoRAM a modelling choice rather than a rewriting of LoRA:
# the split of $BA$ into atoms is not unique, LoRA does not care which split you take, MoRAM does.
#
# Convention (as in every tutorial): a token $x$ has $d_\text{in}$ entries, weights have PyTorch's
# `nn.Linear` layout $(d_\text{out}, d_\text{in})$, and a batch of tokens is the rows of `X`, so $\Delta W x$
# for all of them is `X @ dW.T`.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from moram_ref.config import MoRAMConfig
from moram_ref.numpy import memory
from moram_ref.numpy.layer import MoRAMLinear

FIGURES = Path(os.environ.get("MORAM_FIGURES", "runs/tutorial-figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
if "inline" not in plt.get_backend():  # run as a script, not in a notebook: say where the figures go
    print(f"figures are saved under {FIGURES.resolve()}")
rng = np.random.default_rng(1)

# %% [markdown]
# ## LoRA's BA is r atoms
# Summing the atoms one by one gives exactly the product.

# %%
d_in, d_out, r = 12, 6, 3
A = rng.standard_normal((r, d_in))  # keys, one per row
B = rng.standard_normal((d_out, r))  # values, one per column
x = rng.standard_normal(d_in)
atom_sum = sum(B[:, i] * (A[i] @ x) for i in range(r))  # Σ_i B_i (A_i·x)
gap = np.linalg.norm(memory.from_atoms(A, B) @ x - atom_sum)
print(f"‖BAx − Σ_i B_i (A_i·x)‖ = {gap:.1e}")
assert gap < 1e-12

# %% [markdown]
# ## Any matrix is a sum of atoms (SVD)
# $M = U \Sigma V^\top$ gives atoms $A = \sqrt{\Sigma}\, V^\top$, $B = U \sqrt{\Sigma}$. Keeping the $r$
# largest is the best rank-$r$ approximation (Eckart–Young), and its error is known in advance:
# $\lVert M - B_r A_r\rVert_F^2 = \sum_{j > r} \sigma_j^2$. The error falls with every atom added, and all
# 16 atoms rebuild $M$ exactly.

# %%
M = rng.standard_normal((16, 16)) @ np.diag(np.linspace(3, 0.1, 16)) @ rng.standard_normal((16, 16)) / 4
sigma = np.linalg.svd(M, compute_uv=False)
errors, predicted = [], []
for rank in range(1, 17):
    a, b = memory.to_atoms(M, rank)  # (rank, 16), (16, rank)
    errors.append(np.linalg.norm(M - memory.from_atoms(a, b)) / np.linalg.norm(M))
    predicted.append(np.sqrt(np.sum(sigma[rank:] ** 2)) / np.linalg.norm(M))
print("relative error by atoms kept:", np.round(errors, 3))
assert np.all(np.diff(errors) < 0), "every atom added lowers the error"
assert np.allclose(errors, predicted, atol=1e-12), "the error is exactly the dropped singular values"
assert errors[-1] < 1e-12, "all atoms rebuild M"

fig, ax = plt.subplots(figsize=(5.5, 3.3))
ax.plot(range(1, 17), errors, "o-", label="measured ‖M − BA‖/‖M‖")
ax.plot(range(1, 17), predicted, "k+", ms=10, label="√(Σ dropped σ²)/‖M‖")
ax.set_yscale("log")
ax.set_xlabel("atoms kept r (largest singular values first)")
ax.set_ylabel("relative error")
ax.set_title("SVD atoms: the best rank-r approximation", fontsize=10)
ax.legend(fontsize=8)
fig.savefig(FIGURES / "02_svd_atoms.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Reading an atom as a key and a value
# An atom answers a token in proportion to its key response $A_i \cdot x$: fully along its own key, not at
# all orthogonal to it, and with the *negative* of its value against it. In plain LoRA every atom answers
# every token this way, whatever the sign.

# %%
a, b = memory.to_atoms(M, 1)
key_length = np.linalg.norm(a[0])
key = a[0] / key_length
ortho = rng.standard_normal(16)
ortho -= (ortho @ key) * key
ortho /= np.linalg.norm(ortho)
responses = {}
for name, inp in [("along the key", key), ("orthogonal", ortho), ("against the key", -key)]:
    responses[name] = a[0] @ inp
    print(f"{name:16s} response {responses[name]:+.3f} → returns {responses[name]:+.3f} × value")
assert np.isclose(responses["along the key"], key_length)
assert abs(responses["orthogonal"]) < 1e-12
assert np.isclose(responses["against the key"], -key_length)

# %% [markdown]
# ## The split into atoms is not unique
# For any invertible $r \times r$ matrix $G$, $BA = (BG)(G^{-1}A)$: the atoms $A' = G^{-1} A$ (keys) and
# $B' = B G$ (values) give the same product, hence the same LoRA layer. Their responses are different,
# though: $p' = A' x = G^{-1} p$.
#
# MoRAM decides per atom, from the responses $p$, which atoms fire and with what weight (tutorial 3). So
# the same $BA$ split two ways gives two *different* MoRAM layers. We load both splits as a bank of frozen
# atoms into the library's `MoRAMLinear` (with top-2 of 4 atoms, so the per-atom choice matters, and the
# threshold $\delta = 0.2$ of tutorial 3, which in evaluation mode silences an atom whose normalised response
# stays below it) and feed 500 random tokens to each. For $G$ we take an orthogonal matrix (this one is a
# reflection; a rotation would do as well): it mixes the atoms without changing their overall scale.

# %%
d_in, d_out, r = 12, 6, 4
W0 = rng.standard_normal((d_out, d_in))  # the frozen base layer
A = rng.standard_normal((r, d_in)) / np.sqrt(d_in)  # (r, d_in)
B = rng.standard_normal((d_out, r))  # (d_out, r)
G = np.linalg.qr(rng.standard_normal((r, r)))[0]  # orthogonal: mixes the atoms (invertible, G⁻¹ = Gᵀ)
A2, B2 = np.linalg.solve(G, A), B @ G  # G⁻¹A, BG
X = rng.standard_normal((500, d_in))  # (N, d_in) tokens as rows
config = MoRAMConfig(atoms_per_task=r, top_k=2, temperature=0.01, threshold=0.2)

lora = {}
moram = {}
for name, (keys, values) in {"split 1": (A, B), "split 2": (A2, B2)}.items():
    lora[name] = X @ memory.from_atoms(keys, values).T  # (N, d_out)  ΔW x for every token
    layer = MoRAMLinear(W0, None, config)
    state = layer.state_dict()
    state["frozen_keys"], state["frozen_values"] = keys, values  # a bank of r trained atoms
    layer.load_state_dict(state)
    y, _ = layer.forward(X)  # evaluation mode
    moram[name] = y - X @ W0.T  # (N, d_out)  MoRAM's update Δ
lora_gap = np.abs(lora["split 1"] - lora["split 2"]).max()
moram_gap = np.linalg.norm(moram["split 1"] - moram["split 2"]) / np.linalg.norm(moram["split 1"])
print(f"LoRA : max |Δ₁ − Δ₂| = {lora_gap:.1e}")
print(f"MoRAM: ‖Δ₁ − Δ₂‖/‖Δ₁‖ = {moram_gap:.2f}")
assert lora_gap < 1e-12, "LoRA only sees the product BA"
assert moram_gap > 0.3, "MoRAM sees the atoms"

fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True, sharey=True)
for ax, (name, out) in zip(axes, [("plain LoRA", lora), ("MoRAM (top-2 of 4 atoms)", moram)]):
    ax.scatter(out["split 1"].ravel(), out["split 2"].ravel(), s=3, alpha=0.4)
    lim = np.abs(np.concatenate([lora["split 1"].ravel(), moram["split 1"].ravel()])).max()
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.7)
    ax.set_title(f"{name}: same BA, two atom splits", fontsize=9)
    ax.set_xlabel("update with atoms (A, B)  [500 tokens × 6 outputs]")
axes[0].set_ylabel("update with atoms (G⁻¹A, BG)")
fig.savefig(FIGURES / "02_atom_split.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# Which splits *do* leave MoRAM unchanged? Re-ordering the atoms ($G$ a permutation) and scaling all of
# them by the same positive number ($G = cI$, $c > 0$): the normalised scores $s = p/\lVert p\rVert$ are then
# only permuted or unchanged, and each atom's contribution $w_i\, p_i\, B_i$ is the same. Scaling atoms by
# *different* factors ($G$ diagonal) keeps every atom's value path $p_i B_i$ but changes the scores, so it
# changes which atoms fire.

# %%
variants = {
    "permutation": np.eye(r)[[2, 0, 3, 1]],
    "c·I, c = 3": 3.0 * np.eye(r),
    "diag(0.5, 1, 2, 3)": np.diag([0.5, 1.0, 2.0, 3.0]),
}
gaps = {}
for name, g in variants.items():
    layer = MoRAMLinear(W0, None, config)
    state = layer.state_dict()
    state["frozen_keys"], state["frozen_values"] = np.linalg.solve(g, A), B @ g
    layer.load_state_dict(state)
    gaps[name] = np.abs(layer.forward(X)[0] - X @ W0.T - moram["split 1"]).max()
    print(f"G = {name:18s} max |Δ change| = {gaps[name]:.1e}")
assert gaps["permutation"] < 1e-12 and gaps["c·I, c = 3"] < 1e-12
assert gaps["diag(0.5, 1, 2, 3)"] > 0.1

# %% [markdown]
# So per-atom gating is a real modelling choice: it asks the atoms to be the *right* rank-1 directions,
# not just to multiply out to the right matrix. Training chooses them (tutorial 4): each atom's key learns
# where in input space it should fire, and its value what it should return there.
#
# ## Exercises (predict, then run the cell)
# 1. From the singular values `sigma` alone, what relative error do 8 SVD atoms of `M` leave?
# 2. Flip the sign of one atom ($G = \operatorname{diag}(-1, 1, 1, 1)$). LoRA is unchanged. Is MoRAM?
# 3. With every atom kept and a large temperature (`top_k=None`, `temperature=100`, no threshold),
#    MoRAM weights all atoms almost equally, $w_i \approx 1/r$. What does the update then become, and
#    does the split still matter?

# %%
# 1. √(σ₉² + … + σ₁₆²) / ‖M‖
print(f"1. predicted {np.sqrt(np.sum(sigma[8:] ** 2)) / np.linalg.norm(M):.4f}, measured {errors[7]:.4f}")
assert np.isclose(np.sqrt(np.sum(sigma[8:] ** 2)) / np.linalg.norm(M), errors[7])
# 2. No: the flipped atom's score changes sign, so top-k keeps it where it used to drop it and vice versa.
flip = np.diag([-1.0, 1.0, 1.0, 1.0])
layer = MoRAMLinear(W0, None, config)
state = layer.state_dict()
state["frozen_keys"], state["frozen_values"] = flip @ A, B @ flip
layer.load_state_dict(state)
flip_gap = np.abs(layer.forward(X)[0] - X @ W0.T - moram["split 1"]).max()
print(f"2. max |Δ change| with one atom's sign flipped: {flip_gap:.2f}")
assert flip_gap > 0.1
# 3. Δ ≈ (1/r) B p = (1/r) BA x: LoRA scaled by 1/r, so the split (almost) stops mattering.
flat = MoRAMConfig(atoms_per_task=r, top_k=None, temperature=100.0, threshold_mode="never")
flat_out = {}
for name, (keys, values) in {"split 1": (A, B), "split 2": (A2, B2)}.items():
    layer = MoRAMLinear(W0, None, flat)
    state = layer.state_dict()
    state["frozen_keys"], state["frozen_values"] = keys, values
    layer.load_state_dict(state)
    flat_out[name] = layer.forward(X)[0] - X @ W0.T
to_lora = np.linalg.norm(flat_out["split 1"] - lora["split 1"] / r) / np.linalg.norm(lora["split 1"] / r)
split_gap = np.linalg.norm(flat_out["split 1"] - flat_out["split 2"]) / np.linalg.norm(flat_out["split 1"])
print(f"3. ‖Δ − BAx/r‖/‖BAx/r‖ = {to_lora:.3f};  between the two splits: {split_gap:.3f}")
assert to_lora < 0.05 and split_gap < 0.1

# %% [markdown]
# In plain LoRA every atom answers every token with its raw response. MoRAM lets each atom's response
# also decide *whether* it answers — next: [self-activation](03_self_activation.py).
