"""A deliberately slow MoRAM forward: explicit loops over tokens and atoms (the oracle, style habit 9).

Nothing here is vectorised and nothing calls :mod:`moram_ref.numpy.activation`: it is spec §3
written out with Python scalars so that the fast layer can be checked against it in float64.
"""

from __future__ import annotations

import math

import numpy as np

from moram_ref.config import MoRAMConfig


def forward_loops(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    keys: np.ndarray,
    values: np.ndarray,
    config: MoRAMConfig,
    training: bool = False,
) -> np.ndarray:
    """``y = W0 x + b0 + Σ_i w_i (A_i·x) B_i`` token by token — theory.md#eq-output.

    x (N, d_in); weight (d_out, d_in); keys (R, d_in); values (d_out, R) effective (scaled).
    No dropout (the oracle is for deterministic comparisons).
    """
    n_tokens, d_in = x.shape
    d_out, n_atoms = values.shape
    y = np.zeros((n_tokens, d_out), dtype=np.float64)
    k_eff = config.k_eff(n_atoms)
    gate_on = config.threshold_active(training)
    for t in range(n_tokens):
        xt = [float(v) for v in x[t]]
        # base layer
        for o in range(d_out):
            acc = sum(float(weight[o, i]) * xt[i] for i in range(d_in))
            y[t, o] = acc + (float(bias[o]) if bias is not None else 0.0)
        if n_atoms == 0:
            continue
        # step 1: responses
        p = [sum(float(keys[a, i]) * xt[i] for i in range(d_in)) for a in range(n_atoms)]
        # step 2: normalise across the bank
        norm = max(math.sqrt(sum(v * v for v in p)), config.eps)
        s = [v / norm for v in p]
        # step 3: top-k on signed scores, ties to the lower index (sort by (-s, index))
        order = sorted(range(n_atoms), key=lambda a: (-s[a], a))
        kept = set(order[:k_eff])
        # step 4: softmax over the kept atoms
        z_max = max(s[a] / config.temperature for a in kept)
        e = {a: math.exp(s[a] / config.temperature - z_max) for a in kept}
        total = sum(e.values())
        w = [e[a] / total if a in kept else 0.0 for a in range(n_atoms)]
        # step 5: threshold, no renormalisation
        if gate_on:
            w = [w[a] if s[a] >= config.threshold else 0.0 for a in range(n_atoms)]
        # steps 6-7: Σ_i w_i (A_i·x) B_i
        for a in range(n_atoms):
            if w[a] == 0.0:
                continue
            for o in range(d_out):
                y[t, o] += w[a] * p[a] * float(values[o, a])
    return y
