# %% [markdown]
# # 1 · A weight matrix is an associative memory
#
# MoRAM starts from one observation: a linear layer $W$ *is* a memory of key→value pairs,
# $W = \sum_n v_n k_n^\top$, and applying it to a query $q$ returns every stored value weighted by how
# well its key matches: $W q = \sum_n v_n \, (k_n^\top q)$. This tutorial stores and recalls pairs,
# measures the interference between them (crosstalk), checks it against theory, and shows the write that
# removes it. Equations: [theory.md](../docs/theory.md#eq-memory-write).
#
# **One convention for every tutorial.** A token is a vector $x \in \mathbb{R}^{d_\text{in}}$; a weight
# matrix has the layout of PyTorch's `nn.Linear`, $W$ of shape $(d_\text{out}, d_\text{in})$, so the
# layer computes $W x$ for one token. In code, tokens are stacked as the *rows* of an array `X` of shape
# `(N, d_in)`, and $W x$ for all of them is `X @ W.T`. Keys and values are rows too: `K (N, d_in)`,
# `V (N, d_out)`, and the memory is $W = V^\top K$.
#
# Every claim below is followed by the code that shows it and an `assert` on it: if a claim stops being
# true, running this file fails. Everything comes from `moram_ref.numpy.memory`; nothing is redefined.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from moram_ref.numpy import memory

FIGURES = Path(os.environ.get("MORAM_FIGURES", "runs/tutorial-figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
if "inline" not in plt.get_backend():  # run as a script, not in a notebook: say where the figures go
    print(f"figures are saved under {FIGURES.resolve()}")
rng = np.random.default_rng(0)

# %% [markdown]
# ## Orthonormal keys recall exactly
# With orthonormal keys every overlap $k_n^\top k_m$ ($n \ne m$) is zero, so reading key $m$ returns
# $v_m$ and nothing else ([eq-memory-read](../docs/theory.md#eq-memory-read)).

# %%
d_in, d_out, n_pairs = 32, 8, 10
keys = np.linalg.qr(rng.standard_normal((d_in, d_in)))[0][:n_pairs]  # (N, d_in), orthonormal rows
vals = rng.standard_normal((n_pairs, d_out))  # (N, d_out)
W = memory.write_outer(keys, vals)  # (d_out, d_in) = Σ_n v_n k_nᵀ
recall_error = np.abs(memory.read(W, keys) - vals).max()
print(f"max recall error, orthonormal keys: {recall_error:.1e}")
assert recall_error < 1e-12

# %% [markdown]
# ## Random keys interfere: crosstalk
# With random unit keys the overlaps are small but not zero, and every other stored pair leaks into the
# answer: $W k_m - v_m = \sum_{n \ne m} v_n (k_n^\top k_m)$. For independent unit keys in $d$ dimensions
# each overlap has mean 0 and variance $1/d$, and the $N-1$ leaks are independent, so the *mean square*
# of the relative error $\lVert W k_m - v_m\rVert / \lVert v_m\rVert$ is about $(N-1)/d$: its root mean
# square (RMS) is $\sqrt{(N-1)/d}$ ([eq-crosstalk](../docs/theory.md#eq-crosstalk)).
#
# That is a statement about an average over random draws, so we measure the RMS over many draws (about
# 4,000 stored pairs for every $N$), not the error of one draw: with $N = 2$ a single draw holds just two
# overlaps and says little. (The measured RMS sits about 1.6 % above the formula, for a reason we can
# name: each error is divided by its own $\lVert v_m\rVert$, and for 64 Gaussian entries
# $\mathbb{E}[1/\lVert v\rVert^2] = 1/62$, not $1/64$, so the RMS is $\sqrt{64/62} \approx 1.016$ times the formula.)

# %%
d = 128
ns = [2, 4, 8, 16, 32, 64, 128, 256]
measured = []
for n in ns:
    errors = []
    for _ in range(max(4, 4096 // n)):  # repeat the experiment until ~4,000 pairs were recalled
        k = memory.random_unit_keys(rng, n, d)  # (n, d)
        v = rng.standard_normal((n, 64))  # (n, 64)
        errors.append(memory.crosstalk(memory.write_outer(k, v), k, v))  # (n,) relative errors
    errors = np.concatenate(errors)
    measured.append(float(np.sqrt(np.mean(errors**2))))  # RMS over all recalled pairs
predicted = [memory.predicted_crosstalk(n, d) for n in ns]
for n, m, p in zip(ns, measured, predicted):
    print(f"N = {n:4d}: measured RMS {m:.3f}   predicted √((N−1)/d) = {p:.3f}   ratio {m / p:.3f}")
assert all(abs(m / p - 1) < 0.05 for m, p in zip(measured, predicted)), "theory and measurement agree within 5 %"

fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.plot(ns, measured, "o-", label="measured RMS (≈4,000 pairs per point)")
ax.plot(ns, predicted, "k--", label=r"predicted $\sqrt{(N-1)/d}$")
ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
ax.axvline(d, color="0.6", lw=0.8, ls=":")
ax.text(d * 1.05, 0.1, "N = d", color="0.4", fontsize=8)
ax.set_xscale("log", base=2)
ax.set_xlabel("pairs stored N (d = 128, unit keys)")
ax.set_ylabel("relative recall error ‖Wk − v‖/‖v‖")
ax.set_title("Hebbian memory: crosstalk grows like √((N−1)/d)", fontsize=10)
ax.legend(fontsize=8)
fig.savefig(FIGURES / "01_crosstalk.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# The memory fills up: at $N = d$ the noise is as large as the signal (relative error ≈ 1).

# %%
at_d = measured[ns.index(d)]
print(f"relative error at N = d = {d}: {at_d:.3f}")
assert 0.9 < at_d < 1.1

# %% [markdown]
# This is why a single small adapter trained task after task forgets: new pairs are written over old ones
# in the same few slots (tutorial 4 shows it happen). MoRAM keeps every task's pairs as separate rank-1 *atoms* that speak only when
# their key matches the input (tutorials 2 and 3).
#
# ## Correlated keys, and the least-squares write
# Hebbian writing (summing outer products) ignores correlations between keys. To see correlation and not
# just length, we keep every key at unit length and vary only how much the keys share: each key is a
# random direction plus a common component of strength $c$, then normalised. Larger $c$ means larger
# overlaps $k_n^\top k_m$, so larger crosstalk.
#
# The least-squares write $W = V^\top (K^\top)^{+}$ ([eq-memory-lstsq](../docs/theory.md#eq-memory-lstsq))
# minimises $\sum_n \lVert W k_n - v_n\rVert^2$; it recalls exactly whenever the keys are linearly
# independent ($N \le d_\text{in}$), however strongly correlated.

# %%
n_corr, d_corr = 12, 24
shared_strengths = [0.0, 0.5, 1.0, 2.0, 4.0]
hebbian_err, lstsq_err, mean_overlap = [], [], []
Z = rng.standard_normal((n_corr, d_corr)) / np.sqrt(d_corr)  # (N, d) the random parts, drawn once
V = rng.standard_normal((n_corr, 5))  # (N, 5)
for c in shared_strengths:
    K = Z + c / np.sqrt(d_corr)  # (N, d) plus a shared component of norm c
    K /= np.linalg.norm(K, axis=1, keepdims=True)  # unit keys: only their angles differ
    overlaps = (K @ K.T)[~np.eye(n_corr, dtype=bool)]
    mean_overlap.append(float(np.mean(np.abs(overlaps))))
    hebbian_err.append(float(memory.crosstalk(memory.write_outer(K, V), K, V).mean()))
    lstsq_err.append(float(memory.crosstalk(memory.write_lstsq(K, V), K, V).max()))
    print(f"c = {c:3.1f}: mean |kₙ·kₘ| = {mean_overlap[-1]:.2f}   Hebbian error {hebbian_err[-1]:.2f}   "
          f"least-squares error {lstsq_err[-1]:.1e}")
assert np.all(np.diff(mean_overlap) > 0), "a stronger shared component means larger overlaps"
assert np.all(np.diff(hebbian_err) > 0), "Hebbian crosstalk grows with the overlaps"
assert max(lstsq_err) < 1e-10, "least squares recalls exactly, correlated or not"

fig, ax = plt.subplots(figsize=(5.5, 3.3))
ax.plot(mean_overlap, hebbian_err, "o-", label="Hebbian write  W = Vᵀ K")
ax.plot(mean_overlap, np.maximum(lstsq_err, 1e-16), "s-", label="least-squares write  W = Vᵀ (Kᵀ)⁺")
ax.set_yscale("log")
ax.set_xlabel("mean overlap |kₙ·kₘ| between unit keys (N = 12, d = 24)")
ax.set_ylabel("relative recall error")
ax.set_title("Correlated keys: Hebbian crosstalk vs exact least squares", fontsize=10)
ax.legend(fontsize=8)
fig.savefig(FIGURES / "01_correlated_keys.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# Exactness needs independent keys: with more keys than dimensions ($N > d_\text{in}$) no matrix can
# recall them all, and least squares only finds the best compromise.

# %%
K_over = memory.random_unit_keys(rng, 40, d_corr)  # 40 keys in 24 dimensions
V_over = rng.standard_normal((40, 5))
over_err = memory.crosstalk(memory.write_lstsq(K_over, V_over), K_over, V_over).mean()
print(f"least squares with N = 40 > d = {d_corr}: mean relative error {over_err:.2f}")
assert over_err > 0.1

# %% [markdown]
# ## Gradient descent finds the least-squares write
# Training a linear layer by gradient descent on $L(W) = \tfrac12 \sum_n \lVert W k_n - v_n\rVert^2$,
# starting from $W = 0$, converges to exactly this solution: every gradient $\sum_n (W k_n - v_n)
# k_n^\top$ lies in the span of the keys, so from zero it reaches the least-squares write of smallest
# norm, which is $V^\top (K^\top)^{+}$. MoRAM's atoms are trained the same way (tutorial 4).

# %%
K = rng.standard_normal((n_corr, d_corr)) / np.sqrt(d_corr) + 2.0 / np.sqrt(d_corr)
K /= np.linalg.norm(K, axis=1, keepdims=True)  # correlated unit keys (c = 2)
V = rng.standard_normal((n_corr, 5))
W_gd = np.zeros((5, d_corr))  # (d_out, d_in)
lr = 1.0 / np.linalg.eigvalsh(K.T @ K).max()  # a safe step: 1 / largest curvature
for _ in range(20000):
    grad = (K @ W_gd.T - V).T @ K  # (d_out, d_in)  Σ_n (W k_n − v_n) k_nᵀ
    W_gd -= lr * grad
W_ls = memory.write_lstsq(K, V)
gap = np.linalg.norm(W_gd - W_ls) / np.linalg.norm(W_ls)
print(f"‖W_gd − W_lstsq‖ / ‖W_lstsq‖ = {gap:.1e}")
assert gap < 1e-6

# %% [markdown]
# ## Exercises (predict, then run the cell)
# 1. With $d = 512$ instead of 128, what RMS crosstalk do you expect for $N = 64$ unit keys?
# 2. Scale every orthonormal key of the first section by 2 (keep the Hebbian write). What does reading
#    key $m$ now return?
# 3. With 24 keys in 24 dimensions (square and invertible), what error does the least-squares write
#    leave? And the Hebbian write?

# %%
# 1. √(63/512) ≈ 0.35
k = memory.random_unit_keys(rng, 64, 512)
v = rng.standard_normal((64, 64))
rms = np.sqrt(np.mean(memory.crosstalk(memory.write_outer(k, v), k, v) ** 2))
print(f"1. measured RMS {rms:.3f}, predicted {memory.predicted_crosstalk(64, 512):.3f}")
assert abs(rms / memory.predicted_crosstalk(64, 512) - 1) < 0.15
# 2. W (2k) = Σ v (2k)ᵀ(2k) = 4 v: four times the value (the keys' length enters squared)
twice = memory.read(memory.write_outer(2 * keys, vals), 2 * keys)
print("2. read / value =", np.round((twice / vals).mean(), 6))
assert np.allclose(twice, 4 * vals)
# 3. least squares: 0 (K is invertible); Hebbian: an error about as large as the value itself (each of the
#    other 23 keys adds its value with a weight of about 1/√24: √(23/24) ≈ 1 before corrections). The
#    per-value correction is larger here than for the 64-entry values above: with 5 entries,
#    E[1/‖v‖²] = 1/(5 − 2) instead of 1/5, so the printed mean lands near 1.1–1.2
K_sq = memory.random_unit_keys(rng, 24, 24)
V_sq = rng.standard_normal((24, 5))
print(f"3. least squares {memory.crosstalk(memory.write_lstsq(K_sq, V_sq), K_sq, V_sq).max():.1e}, "
      f"Hebbian {memory.crosstalk(memory.write_outer(K_sq, V_sq), K_sq, V_sq).mean():.2f}")
assert memory.crosstalk(memory.write_lstsq(K_sq, V_sq), K_sq, V_sq).max() < 1e-8
assert 0.7 < memory.crosstalk(memory.write_outer(K_sq, V_sq), K_sq, V_sq).mean() < 1.5  # about the value's size

# %% [markdown]
# Next: [rank-1 atoms](02_rank1_atoms.py), where a weight *update* is split into key–value pairs.
