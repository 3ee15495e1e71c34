"""The hand-written backward pass of the MoRAM update (NumPy only: torch uses autograd).

Derived step by step in docs/theory.md#eq-backward. Going backward from ``g_Δ = ∂L/∂Δ``:

    g_c = g_Δ B                       c = w ⊙ p (the gated responses)
    g_B = g_Δᵀ c                      (summed over tokens)
    g_w = g_c ⊙ p ⊙ gate              the gate and the top-k are hard masks
    g_z = w (g_w − Σ w g_w) / τ       softmax, on the kept atoms only
    g_p = g_c ⊙ w + (g_z − s (s·g_z)) / ‖p‖      the direct path plus the normaliser
    g_A = g_pᵀ x,  g_x = g_p A
"""

from __future__ import annotations

import numpy as np


def masked_softmax_backward(grad_w: np.ndarray, w: np.ndarray, temperature: float) -> np.ndarray:
    """Gradient of ``w = softmax(s_keep/τ)`` with respect to ``s`` — theory.md#eq-softmax-backward.

    Off-mask weights are exactly 0, so their gradient is 0 with no extra mask.
    """
    inner = np.sum(w * grad_w, axis=-1, keepdims=True)  # (..., 1)
    return w * (grad_w - inner) / temperature  # (..., R)


def normalise_backward(grad_s: np.ndarray, p: np.ndarray, s: np.ndarray, eps: float) -> np.ndarray:
    """Gradient of ``s = p / max(‖p‖, ε)`` with respect to ``p`` — theory.md#eq-normalise-backward.

    Where ``‖p‖ > ε``: ``(g_s − s (s·g_s)) / ‖p‖``; where the floor ``ε`` is active the divisor is a
    constant and the gradient is ``g_s / ε``.
    """
    norm = np.sqrt(np.sum(p * p, axis=-1, keepdims=True))  # (..., 1)
    radial = np.sum(s * grad_s, axis=-1, keepdims=True)  # (..., 1)
    on_sphere = (grad_s - s * radial) / np.maximum(norm, eps)  # (..., R)
    return np.where(norm > eps, on_sphere, grad_s / eps)  # (..., R)


def update_backward(
    grad_delta: np.ndarray,
    x: np.ndarray,
    p: np.ndarray,
    trace: dict[str, np.ndarray],
    keys: np.ndarray,
    values: np.ndarray,
    temperature: float,
    eps: float,
) -> dict[str, np.ndarray]:
    """Backward of ``Δ = B (w(p) ⊙ p)``, ``p = A x`` — theory.md#eq-backward.

    grad_delta: (N, d_out); x: (N, d_in) the (dropped-out) input that fed the keys; p, trace from
    :func:`moram_ref.numpy.activation.mixing_weights` flattened to (N, R); keys (R, d_in);
    values (d_out, R) (already scaled). Returns gradients for the whole bank: ``keys`` (R, d_in),
    ``values`` (d_out, R), ``x`` (N, d_in) through the keys only.
    """
    w, w_soft, s, gated = trace["w"], trace["w_soft"], trace["s"], trace["gated"]
    c = w * p  # (N, R)
    grad_values = grad_delta.T @ c  # (d_out, R)
    grad_c = grad_delta @ values  # (N, R)
    grad_w_soft = grad_c * p * gated  # (N, R)
    grad_s = masked_softmax_backward(grad_w_soft, w_soft, temperature)  # (N, R)
    grad_p = grad_c * w + normalise_backward(grad_s, p, s, eps)  # (N, R)
    grad_keys = grad_p.T @ x  # (R, d_in)
    grad_x = grad_p @ keys  # (N, d_in)
    return {"keys": grad_keys, "values": grad_values, "x": grad_x}
