# %% [markdown]
# # 3 · Self-activation, one step at a time
#
# MoRAM has no router. Every atom's key response $p_i = A_i \cdot x$ both decides whether the atom fires
# and carries its update. For one token $x$ ([eq-self-activation](../docs/theory.md#eq-self-activation)):
#
# 1. $p = A x$: the raw responses of all $R$ atoms of the bank ([eq-responses](../docs/theory.md#eq-responses))
# 2. $s = p / \max(\lVert p\rVert_2, \varepsilon)$: normalised *across the bank* ([eq-normalise](../docs/theory.md#eq-normalise))
# 3. keep the $k$ largest **signed** scores $s_i$ ([eq-topk](../docs/theory.md#eq-topk))
# 4. $w = \operatorname{softmax}(s_\text{kept} / \tau)$, 0 elsewhere ([eq-softmax](../docs/theory.md#eq-softmax))
# 5. $w \leftarrow w \odot \mathbb{1}\{s \ge \delta\}$, with no renormalisation, in evaluation mode
#    ([eq-threshold](../docs/theory.md#eq-threshold))
# 6. $\Delta = B\,(w \odot p)$: the weights multiply the **raw** responses ([eq-update](../docs/theory.md#eq-update))
#
# and the layer returns $y = W_0 x + b_0 + \Delta$. (Convention, as in every tutorial: $A$ is $(R, d_\text{in})$,
# $B$ is $(d_\text{out}, R)$, $W_0$ is $(d_\text{out}, d_\text{in})$; tokens are the rows of `X`, so $p = Ax$ for all
# of them is `X @ A.T`.) Each step is a small function of
# `moram_ref.numpy.activation`; `mixing_weights` composes steps 2–5 from a `MoRAMConfig`. We use the
# paper's CLIP settings, $\tau = 0.01$ and $\delta = 0.2$, on a bank of $R = 12$ atoms with $k = 4$, and
# assert every claim where it is made.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from moram_ref.config import MoRAMConfig
from moram_ref.numpy import activation
from moram_ref.numpy.layer import MoRAMLinear

FIGURES = Path(os.environ.get("MORAM_FIGURES", "runs/tutorial-figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
if "inline" not in plt.get_backend():  # run as a script, not in a notebook: say where the figures go
    print(f"figures are saved under {FIGURES.resolve()}")
rng = np.random.default_rng(3)
R, d_in, d_out, k = 12, 16, 4, 4
tau, delta_thr = 0.01, 0.2
A = rng.standard_normal((R, d_in)) / np.sqrt(d_in)  # (R, d_in) keys, one atom per row
B = rng.standard_normal((d_out, R))  # (d_out, R) values, one atom per column
config = MoRAMConfig(atoms_per_task=R, top_k=k, temperature=tau, threshold=delta_thr)

X = rng.standard_normal((2000, d_in))  # (N, d_in) random tokens, as rows
P = activation.responses(X, A)  # (N, R)
S = activation.normalise(P)  # (N, R)
silenced_tokens = np.flatnonzero(np.all(S < delta_thr, axis=1))
kept_tokens = np.flatnonzero(np.any(S >= delta_thr, axis=1))
print(f"{len(kept_tokens)} of {len(X)} random tokens have at least one score ≥ δ; {len(silenced_tokens)} have none")
assert len(kept_tokens) > 0.9 * len(X) and len(silenced_tokens) > 0

# %% [markdown]
# ## Two tokens: one kept, one silenced
# Most tokens have at least one atom whose score reaches $\delta$: they receive an update. A few have none:
# in evaluation mode the threshold then removes every weight, $\Delta = 0$, and the layer returns exactly
# what the frozen base layer returns. We follow one token of each kind through the six steps.

# %%
examples = {"kept token": kept_tokens[0], "silenced token": silenced_tokens[0]}
traces = {}
for name, n in examples.items():
    p = activation.responses(X[n], A)  # (R,)
    s = activation.normalise(p)  # (R,)
    keep = activation.top_k_mask(s, k)  # (R,) bool
    w_soft = activation.masked_softmax(s, keep, temperature=tau)  # (R,) before the threshold
    w = activation.threshold_gate(w_soft, s, threshold=delta_thr)  # (R,) final (evaluation mode)
    delta = activation.update(w, p, B)  # (d_out,)
    traces[name] = {"p": p, "s": s, "keep": keep, "w_soft": w_soft, "w": w, "delta": delta}
    print(f"--- {name}")
    print("p      ", np.round(p, 2))
    print("s      ", np.round(s, 3), f"  ‖s‖ = {np.linalg.norm(s):.3f}  largest {s.max():.4f} vs δ = {delta_thr}")
    print("keep   ", keep.astype(int))
    print("w (τ)  ", np.round(w_soft, 4), f"  Σ = {w_soft.sum():.3f}")
    print("w final", np.round(w, 4), f"  Σ = {w.sum():.3f}  (no renormalisation)")
    print("Δ      ", np.round(delta, 3))

kept, silenced = traces["kept token"], traces["silenced token"]
for t in traces.values():
    assert np.isclose(np.linalg.norm(t["s"]), 1.0), "s lies on the unit sphere"
    assert t["keep"].sum() == k and np.isclose(t["w_soft"].sum(), 1.0), "k atoms kept, softmax sums to 1"
    assert set(np.argsort(-t["s"])[:k]) == set(np.flatnonzero(t["keep"])), "the k largest signed scores"
assert kept["w"].max() > 0.99 and np.linalg.norm(kept["delta"]) > 0, "the kept token gets an update, from one atom"
assert np.all(silenced["s"] < delta_thr) and np.all(silenced["w"] == 0), "every weight of the silenced token is 0"
assert np.all(silenced["delta"] == 0), "so its update is exactly 0"

fig, axes = plt.subplots(2, 4, figsize=(13, 5), sharex=True)
for row, (name, t) in enumerate(traces.items()):
    colors = ["C1" if kk else "C0" for kk in t["keep"]]
    for ax, (label, v) in zip(axes[row], [("p = A x", t["p"]), ("s = p/‖p‖", t["s"]),
                                          ("w before δ", t["w_soft"]), ("w final (evaluation)", t["w"])]):
        ax.bar(range(R), v, color=colors)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(range(0, R, 2))
        ax.set_title(f"{name}: {label}", fontsize=9)
    axes[row, 1].axhline(delta_thr, color="k", ls="--", lw=0.8)
    axes[row, 1].text(R - 0.5, delta_thr, " δ", va="bottom", ha="right", fontsize=8)
    axes[row, 3].set_ylim(0, 1.05)
    axes[row, 2].set_ylim(0, 1.05)
    if not t["w"].any():
        axes[row, 3].text(R / 2, 0.5, "all weights 0: Δ = 0\n(no score reaches δ)", ha="center", fontsize=9)
for ax in axes[1]:
    ax.set_xlabel("atom i (orange: kept by top-k)")
fig.suptitle(f"Self-activation of two tokens (R = {R}, k = {k}, τ = {tau}, δ = {delta_thr})", fontsize=10)
fig.tight_layout()
fig.savefig(FIGURES / "03_two_tokens.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# With $\tau = 0.01$ the kept token's weight sits almost entirely on one atom: the softmax is close to
# winner-take-all (the next sections put numbers on this). The silenced token's kept atoms still have
# softmax weights summing to 1, but none of their scores reaches $\delta$, so the final weights are all 0.
#
# ## The top-k is signed: strong negative responses are dropped
# Step 3 keeps the largest *signed* scores, not the largest $\lvert s\rvert$. An atom whose key points away
# from the input has a large negative response and is dropped, even when it is the strongest response of
# all. Here is a token where that happens:

# %%
KEEP = activation.top_k_mask(S, k)  # (N, R) for all 2,000 tokens
strongest_dropped = np.abs(np.where(KEEP, 0.0, P)).max(axis=1) > np.abs(np.where(KEEP, P, 0.0)).max(axis=1)  # (N,)
n = int(np.flatnonzero(strongest_dropped)[0])
keep_x = KEEP[n]
print("p       ", np.round(P[n], 2))
print("kept    ", keep_x.astype(int))
print(f"largest |p| among kept {np.abs(P[n, keep_x]).max():.2f}, among dropped {np.abs(P[n, ~keep_x]).max():.2f}")
print(f"{strongest_dropped.sum()} of {len(X)} tokens drop an atom stronger (in |p|) than every atom they keep")
assert np.abs(P[n, ~keep_x]).max() > np.abs(P[n, keep_x]).max()

# %% [markdown]
# Why signed? Atom $i$ adds $w_i\, p_i\, B_i$: "if the input looks like my key, add my value, in proportion".
# Selecting by $\lvert p\rvert$ would also fire the atom on inputs pointing *away* from its key, where it
# would subtract its value: every atom would own a double cone $\pm A_i$ of input space instead of one side
# of it. With the signed rule, $x$ and $-x$ are answered by different atoms: their kept sets are disjoint
# whenever $2k \le R$, because $-x$ keeps the $k$ lowest scores of $x$.

# %%
keep_minus = activation.top_k_mask(activation.normalise(activation.responses(-X[n], A)), k)
print("kept for  x:", np.flatnonzero(keep_x), "   kept for −x:", np.flatnonzero(keep_minus))
assert not np.any(keep_x & keep_minus)

fig, ax = plt.subplots(figsize=(6.5, 3))
ax.bar(np.arange(R) - 0.2, P[n], width=0.4, color=["C1" if kk else "C0" for kk in keep_x], label="x")
ax.bar(np.arange(R) + 0.2, -P[n], width=0.4, color=["C3" if kk else "0.7" for kk in keep_minus], label="−x")
ax.axhline(0, color="k", lw=0.5)
ax.set_xlabel("atom i")
ax.set_ylabel("response p_i (left bar x, right bar −x)")
ax.set_title("Signed top-4: orange kept for x, red kept for −x", fontsize=10)
fig.savefig(FIGURES / "03_signed_top_k.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Why the bank is normalised across atoms, not per key
# A per-key cosine $\cos_i = A_i \cdot x / (\lVert A_i\rVert \lVert x\rVert)$ would judge every atom alone.
# MoRAM's $s = p/\lVert p\rVert$ makes the atoms *compete*: $\sum_i s_i^2 = 1$, so
#
# * atoms that answer the same inputs split the score: add a copy of an atom and both copies' scores drop;
# * so at most $1/\delta^2 = 25$ atoms can pass $\delta = 0.2$, however many agree with the token: a bank of 100
#   atoms all pointing almost along $x$ has a cosine near 1 for each, and a score near $1/\sqrt{100} = 0.1$;
# * a key's length counts: a longer key wins more of the score (a per-key cosine ignores it), so training
#   can make an atom more or less assertive by scaling its key;
# * every atom in the bank, including atoms with zero values, moves everybody's scores. That is how a new
#   task's atoms take over new inputs, and why `begin_task` changes routing (the figure at the end).
#
# Both rules ignore the token's length: $s(cx) = s(x)$ for $c > 0$.

# %%
x = X[kept_tokens[0]]
s_x = activation.normalise(activation.responses(x, A))
j = int(np.argmax(s_x))
A_copy = np.concatenate([A, A[j : j + 1]])  # the best atom twice
s_copy = activation.normalise(activation.responses(x, A_copy))
A_long = A.copy()
A_long[j] *= 2.0  # the best atom's key twice as long
s_long = activation.normalise(activation.responses(x, A_long))
cosine = (A @ x) / (np.linalg.norm(A, axis=1) * np.linalg.norm(x))
cosine_long = (A_long @ x) / (np.linalg.norm(A_long, axis=1) * np.linalg.norm(x))
print(f"best atom {j}: s = {s_x[j]:.3f}; with a copy of it in the bank, each copy s = {s_copy[j]:.3f}")
print(f"key twice as long: s = {s_long[j]:.3f} (per-key cosine {cosine[j]:.3f} → {cosine_long[j]:.3f})")
assert np.allclose(activation.normalise(activation.responses(3.0 * x, A)), s_x), "s(3x) = s(x)"
assert np.isclose(s_copy[j], s_copy[-1]) and s_copy[j] < s_x[j], "copies split the score"
assert s_long[j] > s_x[j] and np.isclose(cosine_long[j], cosine[j]), "key length counts for s, not for the cosine"
A_crowd = x / np.linalg.norm(x) + 0.05 * rng.standard_normal((100, d_in)) / np.sqrt(d_in)  # 100 keys along x
s_crowd = activation.normalise(activation.responses(x, A_crowd))
cos_crowd = (A_crowd @ x) / (np.linalg.norm(A_crowd, axis=1) * np.linalg.norm(x))
print(f"100 atoms along x: cosines {cos_crowd.min():.3f}..{cos_crowd.max():.3f}, scores {s_crowd.min():.3f}..{s_crowd.max():.3f}, "
      f"atoms passing δ: {np.sum(s_crowd >= delta_thr)}")
assert cos_crowd.min() > 0.99 and np.sum(s_crowd >= delta_thr) == 0

# %% [markdown]
# ### A growing bank and a fixed threshold
# Because $\lVert s\rVert = 1$ is shared by all $R$ atoms, the score of an atom that merely happens to
# respond shrinks as the bank grows. For random responses $s_{\max} = \max_i p_i / \lVert p\rVert$ is
# roughly the largest of $R$ standard normal draws divided by $\sqrt{R}$. The classical estimate of that
# largest draw is $m_R = \sqrt{2\ln R} - \frac{\ln\ln R + \ln 4\pi}{2\sqrt{2\ln R}}$; its leading term alone,
# $\sqrt{2\ln R / R}$ for $s_{\max}$, overestimates it: by about 40 % at $R = 4$, still 20 % at
# $R = 1024$ (the table below). From $R \approx 64$ on,
# $m_R / \sqrt{R}$ follows the measured median of $s_{\max}$ within a few per cent (it is an asymptotic
# estimate: poor for a handful of atoms), and both fall below $\delta = 0.2$ near $R \approx 170$ (computed
# below). A token that matches *no* atom is then silenced: the layer hands it
# to the frozen base model unchanged. A token that matches an atom (its input lies along that atom's key)
# keeps a score well above $\delta$.
#
# For small banks the picture is different: with only a few atoms, all scores stay below 0.2 only when
# almost every response is negative, which becomes rarer as $R$ grows. So the share of silenced random
# tokens first *falls* and then rises: it is not monotone in $R$. We measure both kinds of token with
# unit keys in $d_\text{in} = 64$ dimensions:

# %%
bank_sizes = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
silenced_random, silenced_aligned, largest_random = [], [], []
for size in bank_sizes:
    keys = rng.standard_normal((size, 64))
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)  # (size, 64) unit keys
    random_tokens = rng.standard_normal((2000, 64))  # match no key in particular
    owner = rng.integers(0, size, 2000)
    aligned_tokens = keys[owner] + 0.3 * rng.standard_normal((2000, 64)) / 8  # along one key, plus noise
    for tokens, out in [(random_tokens, silenced_random), (aligned_tokens, silenced_aligned)]:
        scores = activation.normalise(activation.responses(tokens, keys))  # (2000, size)
        out.append(float(np.mean(np.all(scores < delta_thr, axis=1))))
    largest_random.append(activation.normalise(activation.responses(random_tokens, keys)).max(axis=1))  # (2000,)

median_largest = [float(np.median(m)) for m in largest_random]  # measured s_max per bank size
lead = np.sqrt(2 * np.log(bank_sizes))
estimate = (lead - (np.log(np.log(bank_sizes)) + np.log(4 * np.pi)) / (2 * lead)) / np.sqrt(bank_sizes)  # m_R/√R
for size, a, b, med, est in zip(bank_sizes, silenced_random, silenced_aligned, median_largest, estimate):
    print(f"R = {size:5d}: silenced random tokens {100 * a:5.1f} %   silenced aligned tokens {100 * b:5.1f} %   "
          f"median largest score {med:.3f}   m_R/√R = {est:.3f}   √(2 ln R / R) = {np.sqrt(2 * np.log(size) / size):.3f}")
grid = np.arange(100, 401, 10)  # where the typical largest score crosses δ, in steps of 10
lead = np.sqrt(2 * np.log(grid))
estimated = int(grid[np.argmax((lead - (np.log(np.log(grid)) + np.log(4 * np.pi)) / (2 * lead)) / np.sqrt(grid) < delta_thr)])
medians = []
for size in grid:
    keys = rng.standard_normal((size, 64))
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    medians.append(np.median(activation.normalise(activation.responses(rng.standard_normal((2000, 64)), keys)).max(axis=1)))
crossing = int(grid[np.argmax(np.array(medians) < delta_thr)])
print(f"the typical largest score falls below δ = {delta_thr}: estimate m_R/√R at R = {estimated}, "
      f"measured median at R = {crossing}")
assert 150 <= estimated <= 170 and 150 <= crossing <= 200
lowest = int(np.argmin(silenced_random))
assert 0 < lowest < len(bank_sizes) - 1, "not monotone: falls, then rises"
assert silenced_random[0] > silenced_random[lowest] and silenced_random[-1] > 0.99
assert max(silenced_aligned) == 0.0, "a token along an atom's key is never silenced here"

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(bank_sizes, 100 * np.array(silenced_random), "o-", label="random tokens (match no atom)")
ax.plot(bank_sizes, 100 * np.array(silenced_aligned), "s-", label="tokens along one atom's key")
ax.axvline(crossing, color="0.6", ls=":", lw=0.8)
ax.text(crossing * 1.05, 50, "median largest score = δ", fontsize=8, color="0.4")
ax.set_xscale("log", base=2)
ax.set_xlabel("atoms in the bank R (unit keys, d_in = 64)")
ax.set_ylabel("tokens with no score ≥ δ (%)")
ax.set_title(f"Silenced by the threshold δ = {delta_thr} (evaluation mode)", fontsize=10)
ax.legend(fontsize=8)
fig.savefig(FIGURES / "03_bank_size.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Temperature: what τ = 0.01 means in numbers
# For two kept atoms, $w_i / w_j = e^{(s_i - s_j)/\tau}$. With $\tau = 0.01$ a score gap of 0.01 is a factor
# $e \approx 2.7$, and a gap of 0.05 is a factor $e^5 \approx 150$. Scores live in $[-1, 1]$ with
# $\sum s^2 = 1$; in our bank of 12 the best two scores of a random token are typically about 0.1 apart,
# so the winner takes nearly everything. We sweep $\tau$ in **training mode** (no threshold, so what we
# see is the softmax alone) over the 2,000 random tokens.

# %%
w1, w2 = activation.masked_softmax(np.array([0.31, 0.30]), np.array([True, True]), temperature=tau)
print(f"scores 0.31 vs 0.30 at τ = {tau}: weights {w1:.3f} / {w2:.3f}, ratio {w1 / w2:.3f} = e")
assert np.isclose(w1 / w2, np.e)
top_two = np.sort(S, axis=1)[:, -2:]  # (N, 2)
gaps = top_two[:, 1] - top_two[:, 0]
print(f"gap between the two best scores: median {np.median(gaps):.3f}; below 0.01 for {100 * np.mean(gaps < 0.01):.1f} % of tokens")
assert 0.05 < np.median(gaps) < 0.2

taus = np.logspace(-3, 1, 17)
w_max, effective = [], []
for t in taus:
    w_t = activation.mixing_weights(P, MoRAMConfig(atoms_per_task=R, top_k=k, temperature=t), training=True)["w"]
    w_max.append(float(np.median(w_t.max(axis=1))))
    effective.append(float(np.median(1.0 / np.sum(w_t**2, axis=1))))  # 1/Σw²: 1 = one atom, k = uniform
at_paper = effective[int(np.argmin(np.abs(taus - 0.01)))]
print(f"τ = 0.01: median effective number of atoms {at_paper:.4f}; τ = 10: {effective[-1]:.3f} (k = {k})")
assert w_max[0] > 0.999 and effective[0] < 1.001, "τ → 0: winner takes all"
assert abs(effective[-1] - k) < 0.01, "large τ: uniform over the k kept atoms"
assert np.all(np.diff(effective) >= -1e-9), "the weights spread monotonically as τ grows"
assert at_paper < 1.01

fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].semilogx(taus, w_max, "o-")
axes[0].axhline(1 / k, color="0.5", ls=":", lw=0.8)
axes[0].set_ylabel("median largest weight max_i w_i")
axes[1].semilogx(taus, effective, "o-")
axes[1].axhline(k, color="0.5", ls=":", lw=0.8)
axes[1].set_ylabel("median effective atoms 1/Σw²")
for ax in axes:
    ax.axvline(0.01, color="C3", ls="--", lw=0.8)
    ax.text(0.011, np.mean(ax.get_ylim()), " paper (CLIP) τ = 0.01", color="C3", fontsize=8)
    ax.set_xlabel("temperature τ")
fig.suptitle(f"Temperature sweep, training mode (R = {R}, k = {k}, 2,000 random tokens)", fontsize=10)
fig.savefig(FIGURES / "03_temperature.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## The budget k
# $k$ caps how many atoms a token may use. How much it matters depends on $\tau$: at $\tau = 0.01$ the
# weight is already on one or two atoms, so raising $k$ beyond two changes the update very little; at
# $\tau = 1$ every kept atom gets a real share and $k$ changes the update a lot. We measure the mean over
# tokens of the relative change of $\Delta$ against keeping all atoms ($k = R$), in training mode.

# %%
ks = list(range(1, R + 1))
change = {}
for t in (0.01, 0.1, 1.0):
    deltas = []
    for kk in ks:
        w_k = activation.mixing_weights(P, MoRAMConfig(atoms_per_task=R, top_k=kk, temperature=t), training=True)["w"]
        deltas.append(activation.update(w_k, P, B))  # (N, d_out)
    full = deltas[-1]
    change[t] = [float(np.mean(np.linalg.norm(dk - full, axis=1) / np.linalg.norm(full, axis=1))) for dk in deltas]
    print(f"τ = {t:<4}: mean ‖Δ_k − Δ_R‖/‖Δ_R‖ for k = 1..{R}:", np.array2string(np.array(change[t]), precision=4))
assert change[0.01][0] < 0.1, "τ = 0.01: k = 1 changes the update by a few percent at most"
assert change[0.01][1] < 0.01 and change[0.01][3] < 1e-3, "τ = 0.01: beyond k = 2 the update barely changes"
assert change[1.0][3] > 1.0, "τ = 1: k matters"

fig, ax = plt.subplots(figsize=(6, 3.5))
for t, c in change.items():
    ax.plot(ks[:-1], np.maximum(c[:-1], 1e-7), "o-", label=f"τ = {t}")
ax.set_yscale("log")
ax.set_xlabel("k (atoms kept per token)")
ax.set_ylabel("mean ‖Δ_k − Δ_R‖ / ‖Δ_R‖ (floor 1e-7)")
ax.set_title(f"How much the budget k matters (R = {R}, training mode)", fontsize=10)
ax.legend(fontsize=8)
fig.savefig(FIGURES / "03_top_k.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# At $\tau = 0.01$, $k = 1$ already changes the update by only a few percent on average (the printout; the
# tokens whose best two scores nearly tie — about 5 % have a gap below 0.01, see above — carry that
# change), and from $k = 2$ on by well under 1 %. So with the paper's temperature $k$ acts as a safety cap,
# and $\tau$ decides how many atoms really answer.

# %% [markdown]
# ## Why the weights multiply the raw response p, not s
# Step 6 uses $\Delta = B\,(w \odot p)$. Two consequences:
#
# * **The update scales with the input**, like the linear layer it adapts: $w$ does not change when $x$ is
#   scaled ($s$ does not), and $p$ is linear, so $\Delta(cx) = c\,\Delta(x)$ for $c > 0$. With $s$ in place
#   of $p$ the update would ignore the token's length (and never exceed $\lVert B\rVert$).
# * **Where the routing is settled, an atom is a plain LoRA atom**: if atom $j$ holds all the weight,
#   $\Delta = B_j\, (A_j \cdot x)$, the rank-1 key–value read of tutorials 1 and 2. The gate chooses *which*
#   memory answers; the memory answers linearly.

# %%
x = X[kept_tokens[0]]
tr = activation.mixing_weights(activation.responses(x, A), config, training=False)
tr3 = activation.mixing_weights(activation.responses(3.0 * x, A), config, training=False)
d1 = activation.update(tr["w"], activation.responses(x, A), B)
d3 = activation.update(tr3["w"], activation.responses(3.0 * x, A), B)
with_s = [activation.update(t["w"], t["s"], B) for t in (tr, tr3)]
j = int(np.argmax(tr["w"]))
print(f"Δ(3x) / Δ(x) = {np.round(d3 / d1, 6)};   with s instead of p: {np.round(with_s[1] / with_s[0], 6)}")
print(f"weight of the winning atom {j}: {tr['w'][j]:.6f};  ‖Δ − B_j (A_j·x)‖/‖Δ‖ = "
      f"{np.linalg.norm(d1 - B[:, j] * (A[j] @ x)) / np.linalg.norm(d1):.1e}")
assert np.allclose(d3, 3.0 * d1) and np.allclose(with_s[1], with_s[0])
assert np.linalg.norm(d1 - B[:, j] * (A[j] @ x)) / np.linalg.norm(d1) < 1e-3

# %% [markdown]
# ## A threshold at evaluation only
# The paper applies $\delta$ only at evaluation (`threshold_mode="eval"`, the default; `"always"` and
# `"never"` are the alternatives). What that implies:
#
# * Training never sees the threshold, so the gradient reaches every kept atom; the function that is
#   evaluated differs from the one that was trained by exactly the contributions the gate removes,
#   $B\,((w_\text{train} - w_\text{eval}) \odot p)$.
# * A token silenced at evaluation was *updated* during training: the atoms learned to help it, but at test
#   time it gets the base layer's output. For familiar inputs (some atom's score above $\delta$) at
#   $\tau = 0.01$ the gate removes almost nothing, because the removed atoms carried almost no weight.
# * Since training ignores $\delta$, it can be changed after training without retraining.

# %%
layer = MoRAMLinear(rng.standard_normal((d_out, d_in)), None, config)
state = layer.state_dict()
state["frozen_keys"], state["frozen_values"] = A, B  # our bank, as trained atoms
layer.load_state_dict(state)
y_train, c_train = layer.forward(X, training=True)
y_eval, c_eval = layer.forward(X, training=False)
assert np.allclose(y_train - y_eval, activation.update(c_train["w"] - c_eval["w"], c_train["p"], B))
rel = np.linalg.norm(y_train - y_eval, axis=1) / np.linalg.norm(c_train["delta"], axis=1)  # (N,)
familiar = np.any(c_eval["s"] >= delta_thr, axis=1)
print(f"silenced tokens: {np.sum(~familiar)}, their update at evaluation is 0, in training "
      f"{np.median(np.linalg.norm(c_train['delta'][~familiar], axis=1)):.2f} (median norm)")
print(f"familiar tokens: median relative train/eval difference {np.median(rel[familiar]):.1e}; "
      f"above 1 % for {100 * np.mean(rel[familiar] > 0.01):.1f} % of them")
assert np.all(c_eval["delta"][~familiar] == 0) and np.all(np.linalg.norm(c_train["delta"][~familiar], axis=1) > 0)
assert np.median(rel[familiar]) < 1e-6 and np.mean(rel[familiar] > 0.01) < 0.05
other_delta = MoRAMLinear(layer.weight, None, MoRAMConfig(atoms_per_task=R, top_k=k, temperature=tau, threshold=0.5))
other_delta.load_state_dict(layer.state_dict())
assert np.array_equal(other_delta.forward(X, training=True)[0], y_train), "training never sees δ"

# %% [markdown]
# ## Routing geometry on a circle, and what `begin_task` does to it
# With a 2-D input we can see every direction at once. Take a bank of 3 trained atoms (keys at 20°, 140°
# and 260°, of different lengths) and feed every unit input $x = (\cos\theta, \sin\theta)$. Each panel stacks
# the final weights $w_i(\theta)$ (evaluation mode, $k = 2$): the widest band is the winning atom, and white
# is weight the threshold removed (no renormalisation). Triangles mark the key directions. The top row shows three temperatures. The bottom row is the same
# bank after `begin_task()` added 3 fresh atoms (random keys, **zero values**, drawn in grey). They return
# nothing, but they join the normaliser and the top-k, so they take weight away from the old atoms: the
# layer's output changes before any training.

# %%
theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
circle = np.stack([np.cos(theta), np.sin(theta)], axis=1)  # (720, 2) unit inputs
angles, lengths = np.deg2rad([20, 140, 260]), np.array([1.0, 0.7, 1.3])
bank_keys = lengths[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (3, 2)
bank_values = rng.standard_normal((2, 3))  # (d_out = 2, 3)
geometry = {}
for tau_g in (0.01, 0.1, 1.0):
    cfg = MoRAMConfig(atoms_per_task=3, top_k=2, temperature=tau_g, threshold=delta_thr)
    layer = MoRAMLinear(np.eye(2), None, cfg)
    state = layer.state_dict()
    state["frozen_keys"], state["frozen_values"] = bank_keys, bank_values
    layer.load_state_dict(state)
    before = layer.forward(circle)[1]
    layer.begin_task(np.random.default_rng(7))  # the same fresh keys for every τ
    after = layer.forward(circle)[1]
    geometry[tau_g] = {"before": before, "after": after, "fresh": layer.keys.copy()}

before, after = geometry[0.01]["before"], geometry[0.01]["after"]
winner_share = before["w"].max(axis=1) / np.maximum(before["w"].sum(axis=1), 1e-300)
moved = np.abs(after["delta"] - before["delta"]).max(axis=1) > 1e-9
print(f"τ = 0.01, before begin_task: the winner holds > 99 % of the weight at {100 * np.mean(winner_share > 0.99):.0f} % of directions")
print(f"after begin_task: old atoms' total weight fell at {100 * np.mean(after['w'][:, :3].sum(1) < before['w'].sum(1) - 1e-9):.0f} % "
      f"of directions; Δ changed at {100 * np.mean(moved):.0f} %")
assert np.mean(winner_share > 0.99) > 0.8
assert np.all(after["delta"][:, :] == after["w"][:, :3] * after["p"][:, :3] @ bank_values.T), "fresh atoms add nothing"
assert moved.any(), "begin_task changed the output although the new values are zero"

fig, axes = plt.subplots(2, 3, figsize=(13, 5.6), sharex=True, sharey=True)
colors = ["C0", "C1", "C2", "0.55", "0.7", "0.85"]
for col, (tau_g, g) in enumerate(geometry.items()):
    for row, stage in enumerate(("before", "after")):
        ax = axes[row, col]
        w_g = g[stage]["w"]  # (720, R)
        ax.stackplot(np.rad2deg(theta), w_g.T, colors=colors[: w_g.shape[1]], lw=0)
        key_set = bank_keys if stage == "before" else np.concatenate([bank_keys, g["fresh"]])
        for i, key in enumerate(key_set):
            ax.plot(np.rad2deg(np.arctan2(key[1], key[0])) % 360, 1.07, "v", color=colors[i], mec="k", ms=8,
                    label=f"atom {i} ({'trained' if i < 3 else 'fresh, value 0'})")
        ax.set_ylim(0, 1.13)
        ax.set_title(f"τ = {tau_g}, {'trained bank (3 atoms)' if stage == 'before' else 'after begin_task (+3 fresh)'}",
                     fontsize=9)
for ax in axes[1]:
    ax.set_xlabel("input direction θ (degrees); ▼ key directions")
for ax in axes[:, 0]:
    ax.set_ylabel("stacked weights w_i")
axes[1, 0].legend(fontsize=7, loc="lower left", ncol=2)
fig.suptitle("Which atom wins for each input direction (k = 2, δ = 0.2, evaluation mode)", fontsize=10)
fig.tight_layout()
fig.savefig(FIGURES / "03_routing_geometry.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# Reading the figure: at $\tau = 0.01$ each trained atom owns a sector of directions around its key, with
# sharp borders; at $\tau = 1$ two atoms share most directions, and where the second one's score is below
# $\delta$ the threshold removes its share (white), so the weights sum to less than 1. After `begin_task`
# the fresh atoms win whole sectors at $\tau = 0.01$: there the layer's update collapses (to what an old
# runner-up still contributes near the borders) until training gives the fresh atoms values.

# %%
fresh_wins = after["w"].argmax(axis=1) >= 3
norm_before = np.median(np.linalg.norm(before["delta"][fresh_wins], axis=1))
norm_after = np.median(np.linalg.norm(after["delta"][fresh_wins], axis=1))
print(f"τ = 0.01: fresh atoms win {100 * np.mean(fresh_wins):.0f} % of directions; median ‖Δ‖ there "
      f"{norm_before:.2f} before begin_task, {norm_after:.1e} after")
white = geometry[1.0]["before"]["w"].sum(axis=1) < 1 - 1e-9
print(f"τ = 1: the threshold removes weight at {100 * np.mean(white):.0f} % of directions")
assert fresh_wins.any() and norm_after < 0.1 * norm_before and white.any()

# %% [markdown]
# ## Exercises (predict, then run the cell)
# 1. With $k = 1$, what is $\sum_i w_i$ before the threshold, for any token?
# 2. Double every key ($A \to 2A$). Which of $p$, $s$, $w$, $\Delta$ change, and how?
# 3. For a bank of $R = 256$ random atoms, roughly what share of random tokens does $\delta = 0.1$ silence
#    (instead of 0.2)? Use $m_R / \sqrt{R}$ (not the cruder $\sqrt{2 \ln R / R}$, which is above 0.2 there).

# %%
# 1. Exactly 1: one kept atom, softmax over one entry.
w_k1 = activation.mixing_weights(P, MoRAMConfig(atoms_per_task=R, top_k=1, temperature=tau), training=True)["w"]
print("1. Σw with k = 1:", np.unique(np.round(w_k1.sum(axis=1), 12)))
assert np.allclose(w_k1.sum(axis=1), 1.0)
# 2. p doubles, s and w are unchanged, Δ doubles (it multiplies p).
t1 = activation.mixing_weights(activation.responses(X, A), config, training=False)
t2 = activation.mixing_weights(activation.responses(X, 2 * A), config, training=False)
d_a = activation.update(t1["w"], activation.responses(X, A), B)
d_2a = activation.update(t2["w"], activation.responses(X, 2 * A), B)
print("2. s unchanged:", np.allclose(t1["s"], t2["s"]), " w unchanged:", np.allclose(t1["w"], t2["w"]),
      " Δ doubled:", np.allclose(d_2a, 2 * d_a))
assert np.allclose(t1["s"], t2["s"]) and np.allclose(t1["w"], t2["w"]) and np.allclose(d_2a, 2 * d_a)
# 3. At R = 256 the median largest score is about 0.17 (printed above): well above δ = 0.1, so almost
#    no token is silenced at δ = 0.1 — but below δ = 0.2, where most are.
keys = rng.standard_normal((256, 64))
scores = activation.normalise(activation.responses(rng.standard_normal((2000, 64)), keys))
print(f"3. silenced at δ = 0.1: {100 * np.mean(np.all(scores < 0.1, axis=1)):.2f} %  (δ = 0.2: "
      f"{100 * np.mean(np.all(scores < 0.2, axis=1)):.0f} %)")
assert np.mean(np.all(scores < 0.1, axis=1)) < 0.01

# %% [markdown]
# Next: [learning little by little](04_learning_little_by_little.py), where atoms are trained and frozen.
