"""NumPy vs torch: the same parameters (created once in NumPy, loaded into torch) give the same
forward in every mode and the same gradients (torch autograd vs the NumPy hand-written backward).

Failures name the first intermediate that diverges (p → s → keep → w_soft → gated → w → delta → y).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TEST_DEVICE, build_numpy_layer
from moram_ref.config import MoRAMConfig
from moram_ref.torch.layer import TRACE_KEYS, MoRAMLinear

# float32 tolerance table (relative to the largest magnitude of the quantity), measured, with margin
TOL32 = {"p": 1e-5, "s": 1e-5, "w_soft": 1e-4, "w": 1e-4, "delta": 1e-4, "y": 1e-4}


def to_torch(np_layer, dtype=torch.float64, device=TEST_DEVICE) -> MoRAMLinear:
    d_out, d_in = np_layer.weight.shape
    base = torch.nn.Linear(d_in, d_out, bias=np_layer.bias is not None).to(device, dtype)
    layer = MoRAMLinear(base, np_layer.config)
    state = {k: torch.from_numpy(v).to(device, dtype) for k, v in np_layer.state_dict().items() if v is not None}
    layer.load_state_dict(state)
    return layer


def first_divergence(np_trace: dict, t_trace: dict, rtol: float, atol: float, tol_table=None) -> str | None:
    for name in TRACE_KEYS:
        a = np.asarray(np_trace[name])
        t = t_trace[name].detach().cpu()
        b = t.numpy() if t.dtype == torch.bool else t.to(torch.float64).numpy()
        if a.dtype == bool:
            if not np.array_equal(a, b):
                idx = np.argwhere(a != b)[0]
                return f"{name} differs first at index {tuple(idx)}"
            continue
        scale = max(np.abs(a).max(), 1.0)
        tol = (tol_table or {}).get(name, rtol) * scale + atol
        diff = np.abs(a - b)
        if diff.max() > tol:
            idx = np.unravel_index(np.argmax(diff), diff.shape)
            return f"{name} differs first: max |diff| {diff.max():.3e} at {idx} (tolerance {tol:.1e})"
    return None


layer_cases = dict(
    seed=st.integers(0, 2**32 - 1), d_in=st.integers(1, 9), d_out=st.integers(1, 6), tasks=st.integers(0, 4),
    r=st.integers(1, 5), k=st.integers(1, 12), min_active=st.sampled_from([1, 2]),
    temperature=st.floats(0.01, 2.0), threshold=st.floats(-0.6, 0.9), training=st.booleans(),
    mode=st.sampled_from(["eval", "always", "never"]), scale=st.sampled_from([1.0, 2.0, 0.5]),
    in_task=st.booleans(), lead=st.sampled_from([(4,), (2, 3), (1, 1, 2)]),
)


@settings(max_examples=80, deadline=None)
@given(**layer_cases)
def test_forward_float64_matches_numpy(seed, d_in, d_out, tasks, r, k, min_active, temperature, threshold,
                                       training, mode, scale, in_task, lead):
    rng = np.random.default_rng(seed)
    cfg = MoRAMConfig(atoms_per_task=r, top_k=k, min_active=min_active, temperature=temperature,
                      threshold=threshold, threshold_mode=mode, scale=scale)
    np_layer = build_numpy_layer(rng, d_in, d_out, tasks, cfg, in_task=in_task or tasks == 0)
    t_layer = to_torch(np_layer)
    x = rng.standard_normal((*lead, d_in))
    np_trace = np_layer.trace(x, training=training)
    t_trace = t_layer.trace(torch.from_numpy(x).to(TEST_DEVICE), training=training)
    where = first_divergence(np_trace, t_trace, rtol=1e-9, atol=1e-12)
    assert where is None, where


@settings(max_examples=60, deadline=None)
@given(**layer_cases)
def test_forward_float32_within_tolerance_table(seed, d_in, d_out, tasks, r, k, min_active, temperature,
                                                threshold, training, mode, scale, in_task, lead):
    rng = np.random.default_rng(seed)
    cfg = MoRAMConfig(atoms_per_task=r, top_k=k, min_active=min_active, temperature=max(temperature, 0.05),
                      threshold=threshold, threshold_mode=mode, scale=scale)
    np_layer = build_numpy_layer(rng, d_in, d_out, tasks, cfg, in_task=in_task or tasks == 0)
    x = rng.standard_normal((*lead, d_in))
    np_trace = np_layer.trace(x, training=training)
    s = np_trace["s"]
    # float32 may legitimately reorder near-ties or flip a score sitting on δ: such draws are covered by
    # the dedicated tie/threshold tests, not by the tolerance table
    if s.shape[-1] > 1:
        gaps = np.abs(s[..., :, None] - s[..., None, :]) + np.eye(s.shape[-1])
        if gaps.min() < 1e-4 or np.abs(s - threshold).min() < 1e-4:
            return
    t_trace = to_torch(np_layer, torch.float32).trace(torch.from_numpy(x).float().to(TEST_DEVICE), training=training)
    where = first_divergence(np_trace, t_trace, rtol=0.0, atol=1e-6, tol_table=TOL32)
    assert where is None, where


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tasks=st.integers(0, 3), r=st.integers(1, 4), k=st.integers(1, 8),
       temperature=st.floats(0.05, 2.0), mode=st.sampled_from(["always", "never"]),
       threshold=st.floats(-0.3, 0.5), scale=st.sampled_from([1.0, 2.0]), min_active=st.sampled_from([1, 2]))
def test_autograd_matches_numpy_backward(seed, tasks, r, k, temperature, mode, threshold, scale, min_active):
    rng = np.random.default_rng(seed)
    cfg = MoRAMConfig(atoms_per_task=r, top_k=k, temperature=temperature, threshold=threshold,
                      threshold_mode=mode, scale=scale, min_active=min_active)
    np_layer = build_numpy_layer(rng, 6, 5, tasks, cfg, in_task=True)
    t_layer = to_torch(np_layer).train()
    x = rng.standard_normal((3, 4, 6))
    gy = rng.standard_normal((3, 4, 5))
    _, cache = np_layer.forward(x, training=True)
    np_grads = np_layer.backward(gy, cache)
    xt = torch.from_numpy(x).to(TEST_DEVICE).requires_grad_(True)
    (t_layer(xt) * torch.from_numpy(gy).to(TEST_DEVICE)).sum().backward()
    for name, t_grad in (("keys", t_layer.keys.grad), ("values", t_layer.values.grad), ("x", xt.grad)):
        ref = np_grads[name]
        np.testing.assert_allclose(t_grad.cpu().numpy(), ref, rtol=1e-9, atol=1e-11 * max(1.0, np.abs(ref).max()),
                                   err_msg=f"gradient of {name}")


def test_bfloat16_runs_with_float32_routing(rng):
    np_layer = build_numpy_layer(rng, 8, 6, 2, MoRAMConfig(atoms_per_task=4, top_k=3, temperature=0.5))
    layer = to_torch(np_layer, torch.bfloat16)
    x = torch.from_numpy(rng.standard_normal((5, 8))).bfloat16().to(TEST_DEVICE)
    tr = layer.trace(x)
    assert tr["p"].dtype == torch.float32 and tr["w"].dtype == torch.float32 and tr["y"].dtype == torch.bfloat16
    ref = np_layer.forward(x.double().cpu().numpy())[0]
    assert np.abs(tr["y"].detach().double().cpu().numpy() - ref).max() < 0.1 * max(1.0, np.abs(ref).max())


def test_ties_agree_with_numpy_exactly():
    from moram_ref.numpy import activation as na
    from moram_ref.torch import activation as ta

    s = np.array([[0.5, 0.2, 0.5, 0.5, 0.1], [0.0] * 5, [0.3, 0.3, 0.9, 0.3, 0.3], [-0.1, -0.1, -0.1, 0.2, -0.1]])
    for k in range(0, 6):
        assert np.array_equal(ta.top_k_mask(torch.from_numpy(s), k).numpy(), na.top_k_mask(s, k))


@pytest.mark.parametrize("training", [True, False])
def test_threshold_exactly_on_delta_agrees(training):
    from moram_ref.numpy import activation as na
    from moram_ref.torch import activation as ta

    s = np.array([[0.2, 0.1999999999999, 0.20000000001, -0.2]])
    w = np.full_like(s, 0.25)
    assert np.array_equal(ta.threshold_gate(torch.from_numpy(w), torch.from_numpy(s), 0.2).numpy(),
                          na.threshold_gate(w, s, 0.2))


def test_loops_oracle_in_torch_equals_layer(rng):
    from moram_ref.torch.loops import forward_loops

    np_layer = build_numpy_layer(rng, 5, 4, 3)
    t_layer = to_torch(np_layer)
    x = torch.from_numpy(rng.standard_normal((6, 5))).to(TEST_DEVICE)
    keys, values = t_layer.bank()
    for training in (True, False):
        t_layer.train(training)
        y_loop = forward_loops(x, t_layer.base_layer.weight, t_layer.base_layer.bias, keys, values,
                               t_layer.config, training)
        torch.testing.assert_close(t_layer(x), y_loop, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_lean_final_weights_match_the_full_trace(training):
    from moram_ref.numpy import activation as na
    from moram_ref.torch import activation as ta

    rng = np.random.default_rng(3)
    p = rng.standard_normal((6, 11))
    cfg = MoRAMConfig(atoms_per_task=4, top_k=3, temperature=0.2, threshold=0.15)
    full = na.mixing_weights(p, cfg, training)
    for (name, a), b in zip((("s", full["s"]), ("idx", full["idx"]), ("w", full["w"])),
                            (na.final_weights(p, cfg, training)[i] for i in (0, 1, 4))):
        np.testing.assert_array_equal(a, b, err_msg=name)
    s, idx, s_k, w_soft_k, w = ta.final_weights(torch.from_numpy(p), cfg, training)
    np.testing.assert_allclose(w.numpy(), full["w"], rtol=1e-12, atol=1e-15)
    assert np.array_equal(np.sort(idx.numpy(), axis=-1), full["idx"])
    np.testing.assert_allclose(np.sort(w_soft_k.numpy(), -1), np.sort(np.take_along_axis(full["w_soft"], full["idx"], -1), -1), rtol=1e-12)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_atoms=st.integers(1, 40), k=st.integers(1, 42), levels=st.integers(1, 5),
       lead=st.sampled_from([(7,), (2, 3), (1, 1, 5)]), dtype=st.sampled_from([torch.float32, torch.float64]),
       rule=st.sampled_from(["top_k_indices", "_top_k_indices_branch_free"]))
def test_top_k_indices_with_ties_equal_numpy(seed, n_atoms, k, levels, lead, dtype, rule):
    """Scores from a handful of levels (±0.0 among them) make ties at the boundary the rule, not the exception;
    levels = 5: continuous scores, no ties (the CPU's one-topk shortcut answers). Both torch rules."""
    from moram_ref.numpy import activation as na
    from moram_ref.torch import activation as ta

    rng = np.random.default_rng(seed)
    if levels == 5:
        s = rng.standard_normal((*lead, n_atoms))
    else:
        s = rng.choice(np.array([0.0, -0.0, 0.5, -0.25, 1.0])[: levels + 1], size=(*lead, n_atoms))
    s_t = torch.from_numpy(s).to(dtype)
    got = getattr(ta, rule)(s_t, k).numpy()
    want = na.top_k_indices(s_t.double().numpy(), k)  # on the scores as torch sees them (float32 may tie two)
    assert got.shape == want.shape and got.dtype == np.int64
    assert np.array_equal(np.sort(got, axis=-1), want), f"kept {np.sort(got, axis=-1)} instead of {want}"


def test_cpu_top_k_shortcut_decides_per_row():
    """The eager CPU top-k answers tie-free rows with one topk and the others with the branch-free rule, row by
    row: a row's indices (their order too, which sums follow) never depend on a tie in another row; a NaN
    row takes the branch-free rule, as on CUDA and under torch.compile."""
    from moram_ref.torch import activation as ta

    gen = torch.Generator().manual_seed(0)
    free = torch.randn(1, 12, generator=gen)  # no ties
    tied = torch.tensor([[0.5, 1.0, 0.5, 0.5, -1.0, 0.5, 0.2, 0.1, 0.0, 0.3, 0.4, 0.5]])  # four 0.5 at the boundary
    nan = torch.tensor([[float("nan"), 1.0, 2.0, 3.0] + [0.0] * 8])
    alone = ta.top_k_indices(free, 3)
    together = ta.top_k_indices(torch.cat([free, tied, nan]), 3)
    assert torch.equal(together[0], alone[0])  # same atoms in the same order, whatever the other rows hold
    assert torch.equal(together[1:], ta._top_k_indices_branch_free(torch.cat([tied, nan]), 3))
    assert sorted(together[1].tolist()) == [0, 1, 2]  # the tied 0.5s go to the lowest indices
