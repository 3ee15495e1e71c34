"""A linear associative memory in PyTorch (mirror of moram_ref.numpy.memory; spec §1)."""

from __future__ import annotations

import math

import torch

from moram_ref.shapes import check_ndim, check_shape


def _pairs(keys: torch.Tensor, vals: torch.Tensor) -> None:
    check_ndim("keys", keys, 2)
    check_ndim("vals", vals, 2)
    if keys.shape[0] != vals.shape[0]:
        raise ValueError(f"keys and vals must hold the same number of pairs, got {tuple(keys.shape)} and {tuple(vals.shape)}")


def write_outer(keys: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Hebbian write ``W = Σ_n v_n k_nᵀ = Vᵀ K`` — theory.md#eq-memory-write. -> (d_out, d_in)."""
    _pairs(keys, vals)
    return torch.einsum("no,ni->oi", vals, keys)


def write_lstsq(keys: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Least-squares write ``W = Vᵀ (Kᵀ)⁺`` — theory.md#eq-memory-lstsq."""
    _pairs(keys, vals)
    return vals.T @ torch.linalg.pinv(keys.T)


def read(memory: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Recall ``v̂ = W q`` — theory.md#eq-memory-read. queries (..., d_in) -> (..., d_out)."""
    check_ndim("memory", memory, 2)
    if queries.shape[-1] != memory.shape[1]:
        raise ValueError(f"queries must have shape (..., {memory.shape[1]}), got {tuple(queries.shape)}")
    return torch.einsum("oi,...i->...o", memory, queries)


def crosstalk(memory: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Relative recall error ``‖W k_n − v_n‖ / ‖v_n‖`` per stored pair — theory.md#eq-crosstalk."""
    _pairs(keys, vals)
    err = read(memory, keys) - vals
    return torch.linalg.vector_norm(err, dim=1) / torch.linalg.vector_norm(vals, dim=1)


def predicted_crosstalk(n_pairs: int, d_in: int) -> float:
    """Expected relative crosstalk for N random unit keys in d dimensions: ``√((N−1)/d)`` — theory.md#eq-crosstalk."""
    if n_pairs < 1 or d_in < 1:
        raise ValueError(f"n_pairs and d_in must be >= 1, got {n_pairs}, {d_in}")
    return math.sqrt((n_pairs - 1) / d_in)


def random_unit_keys(generator: torch.Generator, n_pairs: int, d_in: int) -> torch.Tensor:
    """N independent keys uniform on the unit sphere of R^d_in (float64). -> (N, d_in)."""
    k = torch.randn(n_pairs, d_in, generator=generator, dtype=torch.float64)
    return k / torch.linalg.vector_norm(k, dim=1, keepdim=True)


def to_atoms(matrix: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``M (d_out, d_in)`` into rank-1 atoms by SVD, ``A = √Σ Vᵀ``, ``B = U √Σ`` — theory.md#eq-atoms."""
    check_ndim("matrix", matrix, 2)
    u, sigma, vt = torch.linalg.svd(matrix, full_matrices=False)
    r = len(sigma) if rank is None else int(rank)
    if not 1 <= r <= len(sigma):
        raise ValueError(f"rank must lie in [1, {len(sigma)}], got {rank!r}")
    root = sigma[:r].sqrt()
    return root[:, None] * vt[:r], u[:, :r] * root[None, :]


def from_atoms(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``ΔW = B A = Σ_i B_i A_iᵀ`` — theory.md#eq-atoms. keys (r, d_in), values (d_out, r) -> (d_out, d_in)."""
    check_ndim("keys", keys, 2)
    check_shape("values", values, (-1, keys.shape[0]))
    return torch.einsum("or,ri->oi", values, keys)
