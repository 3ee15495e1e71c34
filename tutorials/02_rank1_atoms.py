# %% [markdown]
# # 2 · Rank-1 atoms: every weight update is a sum of key–value pairs
#
# A LoRA update `ΔW = B A` (`A: r×d_in`, `B: d_out×r`) is a memory with `r` slots: row `A_i` is a key,
# column `B_i` its value, and `ΔW x = Σ_i B_i (A_i · x)` ([eq-atoms](../docs/theory.md#eq-atoms)). MoRAM
# treats each such pair as an independent expert, an *atom*.

# %%
import matplotlib.pyplot as plt
import numpy as np

from moram_ref.numpy import memory

rng = np.random.default_rng(1)

# %% [markdown]
# ## LoRA's `BA` is `r` atoms
# Summing the atoms one by one gives exactly the product.

# %%
d_in, d_out, r = 12, 6, 3
A = rng.standard_normal((r, d_in))  # keys, one per row
B = rng.standard_normal((d_out, r))  # values, one per column
x = rng.standard_normal(d_in)
atom_sum = sum(B[:, i] * (A[i] @ x) for i in range(r))
print("‖BAx − Σ_i B_i (A_i·x)‖ =", np.linalg.norm(memory.from_atoms(A, B) @ x - atom_sum))

# %% [markdown]
# ## Any matrix is a sum of atoms (SVD)
# `M = U Σ Vᵀ` gives atoms `A = √Σ Vᵀ`, `B = U √Σ`; keeping the `r` largest is the best rank-`r`
# approximation. The error falls as atoms are added:

# %%
M = rng.standard_normal((16, 16)) @ np.diag(np.linspace(3, 0.1, 16)) @ rng.standard_normal((16, 16)) / 4
errors = []
for rank in range(1, 17):
    a, b = memory.to_atoms(M, rank)
    errors.append(np.linalg.norm(M - memory.from_atoms(a, b)) / np.linalg.norm(M))
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(range(1, 17), errors, "o-")
ax.set_xlabel("atoms kept")
ax.set_ylabel("relative error ‖M − BA‖/‖M‖")
plt.show()
print("all 16 atoms: error", f"{errors[-1]:.1e}")

# %% [markdown]
# ## Reading an atom as a key and a value
# An atom answers a token in proportion to its key response `A_i · x`. Feed it inputs along its own key,
# orthogonal to it, and along the negative key:

# %%
a, b = memory.to_atoms(M, 1)
key = a[0] / np.linalg.norm(a[0])
ortho = rng.standard_normal(16)
ortho -= (ortho @ key) * key
for name, inp in [("along the key", key), ("orthogonal", ortho / np.linalg.norm(ortho)), ("against the key", -key)]:
    response = a[0] @ inp
    print(f"{name:16s} response {response:+.3f}  → returns {response:+.3f} × value (‖value‖ = {np.linalg.norm(b[:, 0]):.2f})")

# %% [markdown]
# In plain LoRA every atom answers every token with its raw response. MoRAM lets each atom's response
# also decide *whether* it answers — next: [self-activation](03_self_activation.py).
