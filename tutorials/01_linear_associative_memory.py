# %% [markdown]
# # 1 · A weight matrix is an associative memory
#
# MoRAM starts from one observation (spec §1): a linear layer `W` *is* a memory of key→value pairs,
# `W = Σ_n v_n k_nᵀ`, and applying it to a query `q` returns every stored value weighted by how well
# its key matches: `W q = Σ_n v_n (k_nᵀ q)`. This tutorial stores and recalls pairs, measures the
# crosstalk between them, and compares it with theory. Equations: [theory.md](../docs/theory.md#eq-memory-write).
#
# Everything is imported from `moram_ref.numpy.memory`; nothing is redefined here.

# %%
import matplotlib.pyplot as plt
import numpy as np

from moram_ref.numpy import memory

rng = np.random.default_rng(0)

# %% [markdown]
# ## Orthonormal keys recall exactly
# With orthonormal keys every overlap `k_nᵀ k_m` (n ≠ m) is zero, so reading key `m` returns `v_m` and
# nothing else ([eq-memory-read](../docs/theory.md#eq-memory-read)).

# %%
d_in, d_out, n_pairs = 32, 8, 10
keys = np.linalg.qr(rng.standard_normal((d_in, d_in)))[0][:n_pairs]  # (N, d_in), orthonormal rows
vals = rng.standard_normal((n_pairs, d_out))  # (N, d_out)
W = memory.write_outer(keys, vals)  # (d_out, d_in) = Σ v kᵀ
print("max recall error, orthonormal keys:", np.abs(memory.read(W, keys) - vals).max())

# %% [markdown]
# ## Random keys interfere: crosstalk
# With random unit keys the overlaps are small but not zero, and every other stored pair leaks into the
# answer: `W k_m − v_m = Σ_{n≠m} v_n (k_nᵀ k_m)`. Each overlap has variance `1/d`, so the relative error
# grows like `√((N−1)/d)` ([eq-crosstalk](../docs/theory.md#eq-crosstalk)). Measured against predicted:

# %%
d = 128
ns = [2, 4, 8, 16, 32, 64, 128, 256]
measured = []
for n in ns:
    k = memory.random_unit_keys(rng, n, d)
    v = rng.standard_normal((n, 64))
    measured.append(memory.crosstalk(memory.write_outer(k, v), k, v).mean())
predicted = [memory.predicted_crosstalk(n, d) for n in ns]
for n, m, p in zip(ns, measured, predicted):
    print(f"N = {n:4d}: measured {m:.3f}   predicted √((N−1)/d) = {p:.3f}")

fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(ns, measured, "o-", label="measured (mean over pairs)")
ax.plot(ns, predicted, "k--", label="√((N−1)/d)")
ax.set_xscale("log", base=2)
ax.set_xlabel("pairs stored N (d = 128)")
ax.set_ylabel("relative recall error")
ax.legend()
plt.show()

# %% [markdown]
# The memory fills up: at `N = d` the noise is as large as the signal. This is why a single small
# adapter trained task after task forgets — new pairs overwrite old ones — and why MoRAM keeps every
# task's pairs as separate atoms that speak only when their key matches.
#
# ## The least-squares write
# Hebbian writing (sums of outer products) ignores correlations between keys. The least-squares write
# `W = Vᵀ (Kᵀ)⁺` ([eq-memory-lstsq](../docs/theory.md#eq-memory-lstsq)) recalls exactly whenever the keys
# are linearly independent, even strongly correlated ones:

# %%
corr_keys = rng.standard_normal((12, 24)) + 2.0  # correlated (they share a large common component)
corr_vals = rng.standard_normal((12, 5))
print("Hebbian write, relative error:      ", memory.crosstalk(memory.write_outer(corr_keys, corr_vals), corr_keys, corr_vals).mean().round(3))
print("least-squares write, relative error:", memory.crosstalk(memory.write_lstsq(corr_keys, corr_vals), corr_keys, corr_vals).max().round(12))

# %% [markdown]
# Gradient descent on a linear layer converges towards such a least-squares solution; MoRAM's atoms
# are trained exactly that way (tutorial 4). Next: [rank-1 atoms](02_rank1_atoms.py).
