# %% [markdown]
# # 3 · Self-activation, one step at a time
#
# Every atom's key response `p_i = A_i · x` both routes and carries the update (spec §3). For one token:
#
# 1. `p = A x` — responses ([eq-responses](../docs/theory.md#eq-responses))
# 2. `s = p / max(‖p‖, ε)` — normalised across the bank ([eq-normalise](../docs/theory.md#eq-normalise))
# 3. keep the `k` largest signed `s` ([eq-topk](../docs/theory.md#eq-topk))
# 4. `w = softmax(s_keep / τ)` ([eq-softmax](../docs/theory.md#eq-softmax))
# 5. `w ← w ⊙ 1{s ≥ δ}`, no renormalisation ([eq-threshold](../docs/theory.md#eq-threshold))
# 6. `Δ = B (w ⊙ p)` ([eq-update](../docs/theory.md#eq-update))
#
# Each step is a small function in `moram_ref.numpy.activation`; we call them one by one.

# %%
import matplotlib.pyplot as plt
import numpy as np

from moram_ref.config import MoRAMConfig
from moram_ref.numpy import activation

rng = np.random.default_rng(3)
R, d_in, d_out = 12, 8, 4
A = rng.standard_normal((R, d_in)) / np.sqrt(d_in)
B = rng.standard_normal((d_out, R))
x = rng.standard_normal(d_in)

p = activation.responses(x, A)
s = activation.normalise(p)
keep = activation.top_k_mask(s, 4)
w_soft = activation.masked_softmax(s, keep, temperature=0.1)
w = activation.threshold_gate(w_soft, s, threshold=0.2)
delta = activation.update(w, p, B)
print("p    ", np.round(p, 2))
print("s    ", np.round(s, 2), "  ‖s‖ =", np.linalg.norm(s).round(3))
print("keep ", keep.astype(int))
print("w    ", np.round(w_soft, 3), "  Σ =", w_soft.sum().round(3))
print("gated", np.round(w, 3), "  Σ =", w.sum().round(3), "(no renormalisation)")
print("Δ    ", np.round(delta, 3))

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 2.6), sharex=True)
for ax, (name, v) in zip(axes, [("p (responses)", p), ("s (normalised)", s), ("w before δ", w_soft), ("w final", w)]):
    ax.bar(range(R), v, color=["C1" if k else "C0" for k in keep])
    ax.set_title(name, fontsize=9)
axes[1].axhline(0.2, color="k", ls="--", lw=0.8)
axes[0].set_xlabel("atom (orange: kept by top-k)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What each knob does
# * `k` is a budget: at most `k` atoms per token.
# * `τ` sharpens: `τ → 0` is winner-take-all, large `τ` spreads the weight evenly over the kept atoms.
# * `δ` switches atoms off whose normalised score is too small, and does not renormalise. Because
#   `‖s‖ = 1` across the whole bank, a typical score is about `1/√R`: with a fixed `δ`, a growing bank
#   silences more and more atoms (watch for this; the demo prints how many inputs lose every atom).
#
# `mixing_weights` composes steps 2–5 with a `MoRAMConfig`:

# %%
for tau in (0.01, 0.1, 1.0):
    cfg = MoRAMConfig(atoms_per_task=R, top_k=4, temperature=tau, threshold=0.2)
    tr = activation.mixing_weights(p, cfg, training=False)
    print(f"τ = {tau:<5} weights on kept atoms: {np.round(tr['w'][tr['keep']], 3)}")

bank_sizes = [8, 32, 128, 512]
silenced = []
for size in bank_sizes:
    ps = rng.standard_normal((2000, size))  # responses of random atoms
    sc = activation.normalise(ps)
    silenced.append(np.mean(np.all(sc < 0.2, axis=1)))
print("share of tokens with no score ≥ 0.2:", dict(zip(bank_sizes, np.round(silenced, 3))))

# %% [markdown]
# Next: [learning little by little](04_learning_little_by_little.py), where atoms are trained and frozen.
