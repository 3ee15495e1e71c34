"""A linear associative memory in NumPy: store, recall, crosstalk, rank-1 atoms (spec §1).

A matrix ``W = Σ_n v_n k_nᵀ`` stores key→value pairs; reading ``W k_m`` returns ``v_m`` plus crosstalk
``Σ_{n≠m} v_n (k_nᵀ k_m)`` from the other pairs. Keys are rows of ``K (N, d_in)``, values rows of
``V (N, d_out)``; the memory ``W`` has the layer layout ``(d_out, d_in)`` (spec §2).
"""

from __future__ import annotations

import numpy as np

from moram_ref.shapes import check_ndim, check_shape


def _pairs(keys: np.ndarray, vals: np.ndarray) -> None:
    check_ndim("keys", keys, 2)
    check_ndim("vals", vals, 2)
    if keys.shape[0] != vals.shape[0]:
        raise ValueError(f"keys and vals must hold the same number of pairs, got {keys.shape} and {vals.shape}")


def write_outer(keys: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Hebbian write ``W = Σ_n v_n k_nᵀ = Vᵀ K`` — theory.md#eq-memory-write. -> (d_out, d_in)."""
    _pairs(keys, vals)
    return np.einsum("no,ni->oi", vals, keys)  # (d_out, d_in)


def write_lstsq(keys: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Least-squares write ``W = Vᵀ (Kᵀ)⁺`` minimising ``Σ_n ‖W k_n − v_n‖²`` — theory.md#eq-memory-lstsq.

    Exact recall whenever the keys are linearly independent (N ≤ d_in), whatever their angles.
    """
    _pairs(keys, vals)
    return vals.T @ np.linalg.pinv(keys.T)  # (d_out, d_in)


def read(memory: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Recall ``v̂ = W q`` for each query row — theory.md#eq-memory-read. queries (..., d_in) -> (..., d_out)."""
    check_ndim("memory", memory, 2)
    if queries.shape[-1] != memory.shape[1]:
        raise ValueError(f"queries must have shape (..., {memory.shape[1]}), got {queries.shape}")
    return np.einsum("oi,...i->...o", memory, queries)  # (..., d_out)


def crosstalk(memory: np.ndarray, keys: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Relative recall error ``‖W k_n − v_n‖ / ‖v_n‖`` per stored pair — theory.md#eq-crosstalk. -> (N,)."""
    _pairs(keys, vals)
    err = read(memory, keys) - vals  # (N, d_out)
    return np.linalg.norm(err, axis=1) / np.linalg.norm(vals, axis=1)


def predicted_crosstalk(n_pairs: int, d_in: int) -> float:
    """Expected relative crosstalk for N random unit keys in d dimensions: ``√((N−1)/d)`` — theory.md#eq-crosstalk.

    With Hebbian writing each other pair adds noise ``v_n (k_nᵀ k_m)`` whose overlap has variance
    ``1/d`` for independent random unit keys, so the noise norm grows like ``√((N−1)/d)``.
    """
    if n_pairs < 1 or d_in < 1:
        raise ValueError(f"n_pairs and d_in must be >= 1, got {n_pairs}, {d_in}")
    return float(np.sqrt((n_pairs - 1) / d_in))


def random_unit_keys(generator: np.random.Generator, n_pairs: int, d_in: int) -> np.ndarray:
    """N independent keys uniform on the unit sphere of R^d_in. -> (N, d_in)."""
    k = generator.standard_normal((n_pairs, d_in))
    return k / np.linalg.norm(k, axis=1, keepdims=True)


def to_atoms(matrix: np.ndarray, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``M (d_out, d_in)`` into rank-1 atoms by SVD — theory.md#eq-atoms.

    Returns keys ``A (r, d_in)`` and values ``B (d_out, r)`` with ``B A = M`` (up to rounding) when
    ``rank`` is None or at least rank(M); the best rank-r approximation (Eckart–Young) otherwise.
    The singular values are split evenly, ``A = √Σ Vᵀ``, ``B = U √Σ``.
    """
    check_ndim("matrix", matrix, 2)
    u, sigma, vt = np.linalg.svd(matrix, full_matrices=False)
    r = len(sigma) if rank is None else int(rank)
    if not 1 <= r <= len(sigma):
        raise ValueError(f"rank must lie in [1, {len(sigma)}], got {rank!r}")
    root = np.sqrt(sigma[:r])
    return root[:, None] * vt[:r], u[:, :r] * root[None, :]  # (r, d_in), (d_out, r)


def from_atoms(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``ΔW = B A = Σ_i B_i A_iᵀ`` — theory.md#eq-atoms. keys (r, d_in), values (d_out, r) -> (d_out, d_in)."""
    check_ndim("keys", keys, 2)
    check_shape("values", values, (-1, keys.shape[0]))
    return np.einsum("or,ri->oi", values, keys)
