"""The granularity ablation's grouped layer: g = 1 is MoRAM, its backward is the finite-difference one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import build_numpy_layer
from moram_ref.config import MoRAMConfig
from moram_ref.experiments.toy.granularity import GroupedMoRAMLinear, unit_scores
from moram_ref.numpy.layer import TRACE_KEYS


def grouped_copy(layer, group: int) -> GroupedMoRAMLinear:
    """A grouped layer holding exactly ``layer``'s arrays."""
    out = GroupedMoRAMLinear(layer.weight, layer.bias, layer.config, group)
    out.load_state_dict(layer.state_dict())
    return out


def numeric_grad(f, arr, h=1e-6):
    g = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + h
        fp = f()
        arr[idx] = old - h
        fm = f()
        arr[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tasks=st.integers(0, 3), k=st.sampled_from([1, 2, 3, 4, 8, None]),
       training=st.booleans(), in_task=st.booleans(), temperature=st.sampled_from([0.01, 0.3, 1.0]))
def test_group_of_one_is_moram(seed, tasks, k, training, in_task, temperature):
    rng = np.random.default_rng(seed)
    cfg = MoRAMConfig(atoms_per_task=4, top_k=k, temperature=temperature, threshold=0.1, threshold_mode="eval")
    if tasks == 0 and not in_task:
        in_task = True
    moram = build_numpy_layer(rng, d_in=6, d_out=5, tasks=tasks, config=cfg, in_task=in_task)
    grouped = grouped_copy(moram, 1)
    x = rng.standard_normal((3, 2, 6))
    gy = rng.standard_normal((3, 2, 5))
    y_m, c_m = moram.forward(x, training=training)
    y_g, c_g = grouped.forward(x, training=training)
    for name in TRACE_KEYS:
        np.testing.assert_allclose(np.asarray(c_g[name], float), np.asarray(c_m[name], float), rtol=0, atol=1e-12,
                                   err_msg=f"trace entry {name}")
    g_m, g_g = moram.backward(gy, c_m), grouped.backward(gy, c_g)
    for name in ("keys", "values", "x"):
        np.testing.assert_allclose(g_g[name], g_m[name], rtol=0, atol=1e-12, err_msg=f"gradient of {name}")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tasks=st.integers(0, 2), group=st.sampled_from([2, 4]),
       units_k=st.integers(1, 3), temperature=st.sampled_from([0.3, 1.0]),
       mode=st.sampled_from(["always", "never"]))
def test_grouped_backward_equals_finite_differences(seed, tasks, group, units_k, temperature, mode):
    rng = np.random.default_rng(seed)
    cfg = MoRAMConfig(atoms_per_task=4, top_k=group * units_k, temperature=temperature, threshold=0.0,
                      threshold_mode=mode, scale=2.0)
    layer = grouped_copy(build_numpy_layer(rng, d_in=5, d_out=4, tasks=tasks, config=cfg), group)
    x = rng.standard_normal((2, 3, 5))
    gy = rng.standard_normal((2, 3, 4))
    _, cache = layer.forward(x, training=True)
    sigma = np.sort(cache["sigma"], axis=-1)
    if sigma.shape[-1] > 1 and np.min(np.diff(sigma, axis=-1)) < 1e-4:
        return  # a top-k tie: finite differences are not valid there
    if mode == "always" and np.min(np.abs(cache["sigma"])) < 1e-4:
        return  # on the threshold edge
    grads = layer.backward(gy, cache)

    def loss():
        return float(np.sum(layer.forward(x, training=True)[0] * gy))

    for name, arr in (("keys", layer.keys), ("values", layer.values), ("x", x)):
        np.testing.assert_allclose(grads[name], numeric_grad(loss, arr), rtol=1e-6, atol=1e-6,
                                   err_msg=f"gradient of {name} (group {group})")


def test_one_unit_per_task_alone_is_plain_lora(rng):
    """g = r with a single task: the one unit gets weight 1 (training, no gate), so Δ = α B A x."""
    cfg = MoRAMConfig(atoms_per_task=4, top_k=4, temperature=0.05, threshold=0.2, scale=2.0)
    layer = grouped_copy(build_numpy_layer(rng, d_in=6, d_out=5, tasks=0, config=cfg), 4)
    x = rng.standard_normal((7, 6))
    y, cache = layer.forward(x, training=True)
    lora = x @ layer.weight.T + layer.bias + 2.0 * (x @ layer.keys.T) @ layer.values.T
    np.testing.assert_allclose(y, lora, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(cache["w_u"], np.ones((7, 1)))


def test_same_number_of_atoms_active_at_every_group(rng):
    """The budget counts atoms: k = 4 keeps 4 atoms as 4, 2 or 1 units (training mode: no gate)."""
    cfg = MoRAMConfig(atoms_per_task=4, top_k=4, temperature=0.3, threshold=0.2)
    base = build_numpy_layer(rng, d_in=6, d_out=5, tasks=2, config=cfg)
    x = rng.standard_normal((9, 6))
    for group in (1, 2, 4):
        _, cache = grouped_copy(base, group).forward(x, training=True)
        assert (cache["keep"].sum(axis=-1) == 4).all(), group
        assert cache["sigma"].shape == (9, 12 // group)


def test_unit_score_is_a_projection_in_minus_one_one():
    s = np.array([[0.5, 0.5, 0.5, 0.5]])  # ‖s‖ = 1, spread evenly
    np.testing.assert_allclose(unit_scores(s, 4), [[1.0]])
    np.testing.assert_allclose(unit_scores(s, 2), [[1 / np.sqrt(2), 1 / np.sqrt(2)]])


@pytest.mark.parametrize("group, message", [(3, "divide atoms_per_task=4"), (0, "int >= 1"), (True, "int >= 1"),
                                            (4, "divide top_k=2")])
def test_bad_group_is_named(group, message):
    cfg = MoRAMConfig(atoms_per_task=4, top_k=2 if group == 4 else 4)
    with pytest.raises(ValueError, match=message):
        GroupedMoRAMLinear(np.zeros((3, 2)), None, cfg, group)
