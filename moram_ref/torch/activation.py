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


def top_k_indices(s: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest signed scores, ties to the lower atom index — theory.md#eq-topk (step 3).

    s: (..., R) -> (..., min(k, R)) int64, in no particular order: the atoms :func:`top_k_mask` keeps.
    On CUDA and while ``torch.compile`` traces: :func:`_top_k_indices_branch_free` (nothing waits for the
    device, no graph break). On a CPU in eager mode, where reading a value back costs no device wait, one
    ``topk`` answers for every row with exactly ``k`` scores ≥ its k-th largest (its choice is then the
    rule's); the other rows (a tie at the boundary, or a NaN score) take the branch-free rule, decided per
    row, so a row's result never depends on the other rows. Both are exact (tested against NumPy); the CPU
    shortcut saves the second ``topk`` (≈ 4 % of the layer's evaluation forward, docs/performance.md). Where
    a shortcut row lists its atoms in another order than the branch-free rule would, sums over them round
    differently (float32: a few units in the last place). NaN scores, which the layer never produces (its
    input check refuses NaN and inf), follow the branch-free rule on every path.
    """
    k = min(k, s.shape[-1])
    if k > 0 and s.device.type == "cpu" and not torch.compiler.is_compiling():
        values, idx = torch.topk(s, k, dim=-1, sorted=False)  # (..., k)
        kth = values.amin(dim=-1, keepdim=True)  # (..., 1)
        other = (s >= kth).sum(dim=-1, keepdim=True) != k  # (..., 1) a boundary tie (> k), or NaN (0)
        if not bool(other.any()):
            return idx
        return torch.where(other, _top_k_indices_branch_free(s, k), idx)  # (..., k)
    return _top_k_indices_branch_free(s, k)


def _top_k_indices_branch_free(s: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`top_k_indices` without reading anything back, for CUDA and ``torch.compile(fullgraph=True)``.

    A first ``topk`` finds the k-th largest score ``s_(k)``; each atom then gets an integer rank key —
    ``R`` above ``s_(k)``, ``R-1-r`` for atom ``r`` equal to it, ``-1`` below — unique among the tied, so a
    second ``topk`` on the keys takes every atom above ``s_(k)`` (at most k-1 of them) and fills the other
    places with the tied atoms of lowest index. ``torch.topk`` alone leaves the order of ties unspecified.
    """
    n_atoms = s.shape[-1]
    k = min(k, n_atoms)
    if k <= 0:
        return torch.zeros(*s.shape[:-1], 0, dtype=torch.long, device=s.device)
    kth = _kth_largest(s, k)  # (..., 1)
    rank = torch.arange(n_atoms - 1, -1, -1, dtype=torch.int32, device=s.device)  # (R,) R-1-r: lower index ranks higher
    key = torch.where(s > kth, n_atoms, torch.where(s == kth, rank, -1))  # (..., R) int32
    return torch.topk(key, k, dim=-1, sorted=False).indices  # (..., k)


def top_k_mask(s: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest signed scores, ties to the lower atom index — theory.md#eq-topk (step 3).

    Exactly ``min(k, R)`` atoms are kept per token: those strictly above the k-th largest value, then,
    among atoms equal to it, the lowest indices.
    """
    k = min(k, s.shape[-1])
    if k <= 0:
        return torch.zeros_like(s, dtype=torch.bool)
    kth = _kth_largest(s, k)  # (..., 1)
    above = s > kth  # (..., R)
    tied = s == kth  # (..., R)
    free_places = k - above.sum(dim=-1, keepdim=True)  # (..., 1)
    tie_rank = torch.cumsum(tied.to(torch.int32), dim=-1)  # (..., R) 1-based rank among the tied
    return above | (tied & (tie_rank <= free_places))  # (..., R)


def _kth_largest(s: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest score of each row, (..., R) -> (..., 1) (its value is unique even where its atom is not)."""
    return torch.topk(s, k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)


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

    p: (..., R) -> {"s", "keep", "w_soft", "gated", "w"}, each (..., R), and "idx" (..., k), the kept
    atoms (from :func:`top_k_indices`). The softmax and the gate run
    on the ``k`` kept scores only (gathered by :func:`top_k_indices`) and are scattered back: the same
    numbers as :func:`masked_softmax` and :func:`threshold_gate` on the dense mask (tested), at a
    fraction of the cost when ``k ≪ R``.
    """
    s, idx, s_k, w_soft_k, w = final_weights(p, config, training)
    keep = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, idx, True)  # (..., R)
    if config.threshold_active(training):
        w_soft = torch.zeros_like(s).scatter(-1, idx, w_soft_k)  # (..., R)
        gated = s.detach() >= config.threshold  # (..., R)
    else:
        w_soft, gated = w, torch.ones_like(keep)
    return {"s": s, "idx": idx, "keep": keep, "w_soft": w_soft, "gated": gated, "w": w}


def final_weights(p: torch.Tensor, config: MoRAMConfig, training: bool):
    """The lean core of :func:`mixing_weights` (what the layer's forward needs): ``(s, idx, s_k, ŵ_k, w)``.

    Only the final weights ``w`` are materialised at full width (..., R); the kept scores ``s_k`` and
    their softmax ``ŵ_k`` stay (..., k).
    """
    s = normalise(p, config.eps)  # (..., R)
    idx = top_k_indices(s.detach(), config.k_eff(p.shape[-1]))  # (..., k)
    s_k = s.gather(-1, idx)  # (..., k)
    w_soft_k = torch.softmax(s_k / config.temperature, dim=-1)  # (..., k)
    w_k = w_soft_k.masked_fill(s_k.detach() < config.threshold, 0.0) if config.threshold_active(training) else w_soft_k
    w = torch.zeros_like(s).scatter(-1, idx, w_k)  # (..., R)
    return s, idx, s_k, w_soft_k, w
