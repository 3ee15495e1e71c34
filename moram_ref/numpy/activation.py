"""Self-activation, one pure function per step of spec §3 (NumPy reference).

Every function works on any leading shape: a token is the last axis. Index letters follow the
equations: ``r`` an atom, ``i`` an input feature, ``o`` an output feature.

    p = A x                 responses              (..., R)
    s = p / max(‖p‖₂, ε)     normalised scores      (..., R)
    keep = top-k_eff(s)      hard mask              (..., R) bool
    w = softmax(s_keep / τ)  mixing weights         (..., R), 0 off the mask
    w ← w ⊙ 1{s ≥ δ}         threshold gate         (..., R), no renormalisation
    Δ = B (w ⊙ p)            update                 (..., d_out)
"""

from __future__ import annotations

import numpy as np

from moram_ref.config import MoRAMConfig


def responses(x: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Raw key responses ``p = A x`` — theory.md#eq-responses (spec §3 step 1).

    x: (..., d_in); keys: (R, d_in) -> p: (..., R).
    """
    return x @ keys.T  # (..., R)  p_r = Σ_i A_ri x_i


def normalise(p: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scores normalised across the bank, ``s = p / max(‖p‖₂, ε)`` — theory.md#eq-normalise (step 2)."""
    norm = np.sqrt(np.sum(p * p, axis=-1, keepdims=True))  # (..., 1)
    return p / np.maximum(norm, eps)  # (..., R)


def top_k_mask(s: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest signed scores, ties to the lower atom index — theory.md#eq-topk (step 3).

    Exactly ``min(k, R)`` atoms are kept per token. Atoms strictly above the k-th largest value are
    kept; among atoms equal to it, the lowest indices fill the remaining places.
    """
    n_atoms = s.shape[-1]
    k = min(k, n_atoms)
    if k <= 0:
        return np.zeros(s.shape, dtype=bool)
    kth = -np.partition(-s, k - 1, axis=-1)[..., k - 1 : k]  # (..., 1) the k-th largest score
    above = s > kth  # (..., R)
    tied = s == kth  # (..., R)
    free_places = k - above.sum(axis=-1, keepdims=True)  # (..., 1)
    tie_rank = np.cumsum(tied, axis=-1)  # (..., R) 1-based rank among the tied, by index
    return above | (tied & (tie_rank <= free_places))  # (..., R)


def top_k_indices(s: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest signed scores, ties to the lower atom index — theory.md#eq-topk (step 3).

    Returns (..., min(k, R)) int64, ascending by atom index: the positions :func:`top_k_mask` keeps.
    Raises ValueError if a score is NaN (the rule orders real numbers; the layer's input check refuses NaN
    and inf, so the layer never gets here with one). The torch twin cannot raise without a host-device
    wait and sends such rows to its branch-free rule instead.
    """
    nan_rows = np.isnan(s).reshape(-1, s.shape[-1]).any(axis=-1)  # (rows,) over the flattened leading dims
    if nan_rows.any():
        rows = np.flatnonzero(nan_rows)
        raise ValueError(f"s: {rows.size} row(s) hold NaN scores (first: row {rows[0]} of the flattened leading "
                         "dims); top-k is defined for real-valued scores")
    return _kept_indices(top_k_mask(s, k), min(k, s.shape[-1]))


def _kept_indices(keep: np.ndarray, k: int) -> np.ndarray:
    """The positions of the ``k`` True entries of each row of ``keep`` (..., R), ascending. -> (..., k)."""
    if k == 0:
        return np.zeros((*keep.shape[:-1], 0), dtype=np.int64)
    return np.nonzero(keep.reshape(-1, keep.shape[-1]))[1].reshape(*keep.shape[:-1], k)


def masked_softmax(s: np.ndarray, keep: np.ndarray, temperature: float) -> np.ndarray:
    """Mixing weights ``w = softmax(s_keep / τ)``, exactly 0 off the mask — theory.md#eq-softmax (step 4).

    A token with no kept atom (only possible with an empty bank) gets all-zero weights.
    """
    z = np.where(keep, s / temperature, -np.inf)  # (..., R)
    z_max = np.max(z, axis=-1, keepdims=True, initial=-np.inf)  # (..., 1)
    z_max = np.where(np.isfinite(z_max), z_max, 0.0)
    e = np.where(keep, np.exp(z - z_max), 0.0)  # (..., R)
    total = e.sum(axis=-1, keepdims=True)  # (..., 1)
    return e / np.where(total > 0, total, 1.0)  # (..., R)


def threshold_gate(w: np.ndarray, s: np.ndarray, threshold: float) -> np.ndarray:
    """``w ⊙ 1{s ≥ δ}``, no renormalisation — theory.md#eq-threshold (step 5)."""
    return np.where(s >= threshold, w, 0.0)  # (..., R)


def update(w: np.ndarray, p: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The layer's update ``Δ = B (w ⊙ p)`` — the gate multiplies the raw ``p`` — theory.md#eq-update (step 6).

    w, p: (..., R); values: (d_out, R) -> Δ: (..., d_out).
    """
    return (w * p) @ values.T  # (..., d_out)  Δ_o = Σ_r B_or w_r p_r


def final_weights(p: np.ndarray, config: MoRAMConfig, training: bool):
    """The lean core of :func:`mixing_weights`: ``(s, idx, s_k, ŵ_k, w)`` with only ``w`` at full width (..., R)."""
    tr = mixing_weights(p, config, training)
    s_k = np.take_along_axis(tr["s"], tr["idx"], axis=-1)  # (..., k)
    w_soft_k = np.take_along_axis(tr["w_soft"], tr["idx"], axis=-1)  # (..., k)
    return tr["s"], tr["idx"], s_k, w_soft_k, tr["w"]


def mixing_weights(p: np.ndarray, config: MoRAMConfig, training: bool) -> dict[str, np.ndarray]:
    """Steps 2–5 of spec §3 composed — theory.md#eq-self-activation. Returns every intermediate.

    p: (..., R) -> {"s", "keep", "w_soft" (before the gate), "gated" (atoms the gate let through),
    "w" (final)}, each (..., R), and "idx" (..., k), the kept atoms ascending.
    """
    s = normalise(p, config.eps)  # (..., R)
    keep = top_k_mask(s, config.k_eff(p.shape[-1]))  # (..., R)
    w_soft = masked_softmax(s, keep, config.temperature)  # (..., R)
    if config.threshold_active(training):
        w = threshold_gate(w_soft, s, config.threshold)  # (..., R)
        gated = s >= config.threshold  # (..., R)
    else:
        w, gated = w_soft, np.ones(s.shape, dtype=bool)
    idx = _kept_indices(keep, config.k_eff(p.shape[-1]))  # (..., k)
    return {"s": s, "idx": idx, "keep": keep, "w_soft": w_soft, "gated": gated, "w": w}
