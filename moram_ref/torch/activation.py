"""Self-activation, one pure function per step of spec §3 (PyTorch mirror of moram_ref.numpy.activation).

Same names, argument order and defaults as the NumPy module; every function is differentiable where
the spec says gradients flow (the top-k and the threshold are hard masks).
"""

from __future__ import annotations

import torch

from moram_ref.config import MoRAMConfig


def responses(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Raw key responses ``p = A x`` — theory.md#eq-responses (spec §3 step 1).

    x: (..., d_in); keys: (R, d_in) -> p: (..., R).
    """
    return torch.nn.functional.linear(x, keys)  # (..., R)


def normalise(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scores normalised across the bank, ``s = p / max(‖p‖₂, ε)`` — theory.md#eq-normalise (step 2)."""
    norm = torch.linalg.vector_norm(p, dim=-1, keepdim=True)  # (..., 1)
    return p / norm.clamp_min(eps)  # (..., R)


def top_k_mask(s: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest signed scores, ties to the lower atom index — theory.md#eq-topk (step 3)."""
    n_atoms = s.shape[-1]
    k = min(k, n_atoms)
    if k <= 0:
        return torch.zeros_like(s, dtype=torch.bool)
    kth = torch.topk(s, k, dim=-1, sorted=True).values[..., k - 1 :]  # (..., 1) the k-th largest score
    above = s > kth  # (..., R)
    tied = s == kth  # (..., R)
    free_places = k - above.sum(dim=-1, keepdim=True)  # (..., 1)
    tie_rank = torch.cumsum(tied.to(torch.int32), dim=-1)  # (..., R) 1-based rank among the tied
    return above | (tied & (tie_rank <= free_places))  # (..., R)


def masked_softmax(s: torch.Tensor, keep: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mixing weights ``w = softmax(s_keep / τ)``, exactly 0 off the mask — theory.md#eq-softmax (step 4)."""
    z = (s / temperature).masked_fill(~keep, float("-inf"))  # (..., R)
    z_max = z.amax(dim=-1, keepdim=True).detach()  # (..., 1)
    z_max = torch.where(torch.isfinite(z_max), z_max, torch.zeros_like(z_max))
    e = torch.exp(z - z_max).masked_fill(~keep, 0.0)  # (..., R)
    total = e.sum(dim=-1, keepdim=True)  # (..., 1)
    return e / torch.where(total > 0, total, torch.ones_like(total))  # (..., R)


def threshold_gate(w: torch.Tensor, s: torch.Tensor, threshold: float) -> torch.Tensor:
    """``w ⊙ 1{s ≥ δ}``, no renormalisation — theory.md#eq-threshold (step 5)."""
    return w.masked_fill(s < threshold, 0.0)  # (..., R)


def update(w: torch.Tensor, p: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The layer's update ``Δ = B (w ⊙ p)`` — the gate multiplies the raw ``p`` — theory.md#eq-update (step 6).

    w, p: (..., R); values: (d_out, R) -> Δ: (..., d_out).
    """
    return torch.nn.functional.linear(w * p, values)  # (..., d_out)


def mixing_weights(p: torch.Tensor, config: MoRAMConfig, training: bool) -> dict[str, torch.Tensor]:
    """Steps 2–5 of spec §3 composed — theory.md#eq-self-activation. Returns every intermediate.

    p: (..., R) -> {"s", "keep", "w_soft", "gated", "w"}, each (..., R).
    """
    s = normalise(p, config.eps)  # (..., R)
    keep = top_k_mask(s.detach(), config.k_eff(p.shape[-1]))  # (..., R)
    w_soft = masked_softmax(s, keep, config.temperature)  # (..., R)
    if config.threshold_active(training):
        gated = s.detach() >= config.threshold  # (..., R)
        w = threshold_gate(w_soft, s.detach(), config.threshold)  # (..., R)
    else:
        gated = torch.ones_like(keep)
        w = w_soft
    return {"s": s, "keep": keep, "w_soft": w_soft, "gated": gated, "w": w}
