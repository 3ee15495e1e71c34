"""The torch associative memory (moram_ref.torch.memory) against the NumPy reference, on random cases
(hypothesis): the equations of docs/theory.md §1, one function per backend, equal to float64 rounding."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moram_ref.numpy import memory as nm
from moram_ref.torch import memory as tm

EPS = np.finfo(np.float64).eps


def _close(t: torch.Tensor, a: np.ndarray, scale: float = 1.0) -> None:
    """``t`` equals ``a`` within float64 rounding of a few dozen operations, times ``scale`` (a condition number)."""
    np.testing.assert_allclose(t.numpy(), a, rtol=0, atol=1e3 * EPS * scale * max(1.0, float(np.abs(a).max(initial=0))))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), d_in=st.integers(1, 12), d_out=st.integers(1, 6))
def test_torch_memory_equals_numpy(seed, n, d_in, d_out):
    """eq-memory-write, eq-memory-read, eq-crosstalk, eq-memory-lstsq and eq-atoms in torch: the NumPy
    reference's values. The least-squares write and the truncated atoms depend on how well the problem is
    conditioned, so those are compared where it determines them (tolerance × condition number; the truncated
    reconstruction through its Eckart–Young error, which is unique even where the subspace is not)."""
    rng = np.random.default_rng(seed)
    keys, vals, queries = rng.standard_normal((n, d_in)), rng.standard_normal((n, d_out)), rng.standard_normal((3, d_in))
    k, v = torch.from_numpy(keys), torch.from_numpy(vals)

    w_np = nm.write_outer(keys, vals)
    w = tm.write_outer(k, v)
    _close(w, w_np)
    _close(tm.read(w, torch.from_numpy(queries)), nm.read(w_np, queries))
    _close(tm.crosstalk(w, k, v), nm.crosstalk(w_np, keys, vals), scale=float(np.abs(vals).max() / np.linalg.norm(vals, axis=1).min()))

    cond = float(np.linalg.cond(keys))
    if cond < 1e6:  # full rank and well enough conditioned for pinv to be determined to float64 rounding
        _close(tm.write_lstsq(k, v), nm.write_lstsq(keys, vals), scale=cond**2)

    m = rng.standard_normal((d_out, d_in))
    a, b = tm.to_atoms(torch.from_numpy(m))
    a_np, b_np = nm.to_atoms(m)
    assert a.shape == a_np.shape and b.shape == b_np.shape
    _close(tm.from_atoms(a, b), nm.from_atoms(a_np, b_np))  # B A = M in both (the SVD's signs may differ)
    _close(torch.linalg.vector_norm(a, dim=1), np.linalg.norm(a_np, axis=1))  # ‖A_i‖ = √σ_i in both
    rank = max(1, min(d_in, d_out) // 2)
    a, b = tm.to_atoms(torch.from_numpy(m), rank=rank)
    a_np, b_np = nm.to_atoms(m, rank=rank)
    _close(torch.linalg.matrix_norm(torch.from_numpy(m) - tm.from_atoms(a, b)).reshape(1),
           np.array([np.linalg.norm(m - nm.from_atoms(a_np, b_np))]))


def test_torch_predicted_crosstalk_and_unit_keys_equal_numpy():
    for n, d in ((1, 1), (8, 256), (128, 64)):
        assert tm.predicted_crosstalk(n, d) == nm.predicted_crosstalk(n, d)
    keys = tm.random_unit_keys(torch.Generator().manual_seed(0), 50, 16)
    assert keys.shape == (50, 16) and keys.dtype == torch.float64
    torch.testing.assert_close(torch.linalg.vector_norm(keys, dim=1), torch.ones(50, dtype=torch.float64))
