"""The hand-written backward against central finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import build_numpy_layer
from moram_ref.config import MoRAMConfig


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


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tasks=st.integers(0, 3), r=st.integers(1, 3), k=st.integers(1, 6),
       temperature=st.floats(0.2, 2.0), mode=st.sampled_from(["always", "never"]), scale=st.sampled_from([1.0, 2.0]))
def test_backward_equals_finite_differences(seed, tasks, r, k, temperature, mode, scale):
    rng = np.random.default_rng(seed)
    cfg = MoRAMConfig(atoms_per_task=r, top_k=k, temperature=temperature, threshold=0.0,
                      threshold_mode=mode, scale=scale)
    layer = build_numpy_layer(rng, d_in=5, d_out=4, tasks=tasks, config=cfg)
    x = rng.standard_normal((2, 3, 5))
    gy = rng.standard_normal((2, 3, 4))
    y, cache = layer.forward(x, training=True)
    grads = layer.backward(gy, cache)

    def loss():
        return float(np.sum(layer.forward(x, training=True)[0] * gy))

    # finite differences are only valid away from top-k ties and threshold edges: skip those draws
    s = cache["s"]
    srt = np.sort(s, axis=-1)
    if s.shape[-1] > 1 and np.min(np.abs(np.diff(srt, axis=-1))) < 1e-4:
        return
    if mode == "always" and np.min(np.abs(s)) < 1e-4:
        return
    for name, arr in (("keys", layer.keys), ("values", layer.values), ("x", x)):
        num = numeric_grad(loss, arr)
        np.testing.assert_allclose(grads[name], num, rtol=1e-6, atol=1e-6, err_msg=f"gradient of {name}")


def test_backward_shapes_and_no_gradient_for_frozen_atoms(rng):
    layer = build_numpy_layer(rng, tasks=2)
    x = rng.standard_normal((4, 6))
    _, cache = layer.forward(x, training=True)
    grads = layer.backward(np.ones((4, 5)), cache)
    assert grads["keys"].shape == layer.keys.shape and grads["values"].shape == layer.values.shape
    assert grads["x"].shape == x.shape
    assert set(grads) == {"keys", "values", "x"}


def test_backward_with_dropout_matches_finite_differences(rng):
    cfg = MoRAMConfig(atoms_per_task=3, top_k=3, temperature=0.5, dropout=0.3, threshold_mode="never")
    layer = build_numpy_layer(rng, tasks=1, config=cfg)
    x = rng.standard_normal((3, 6))
    gy = rng.standard_normal((3, 5))
    _, cache = layer.forward(x, training=True, rng=np.random.default_rng(7))
    grads = layer.backward(gy, cache)

    def loss():
        return float(np.sum(layer.forward(x, training=True, rng=np.random.default_rng(7))[0] * gy))

    for name, arr in (("keys", layer.keys), ("values", layer.values), ("x", x)):
        np.testing.assert_allclose(grads[name], numeric_grad(loss, arr), rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("cls", ["LoRALinear", "MoELoRALinear"])
def test_baseline_backward(rng, cls):
    from moram_ref.numpy import baselines

    layer = getattr(baselines, cls)(rng.standard_normal((4, 6)), rng.standard_normal(4), 2, scale=1.5)
    for t in range(3):
        layer.begin_task(rng)
        for v in layer.current_parameters().values():
            v[...] = rng.standard_normal(v.shape)
        if t < 2:
            layer.end_task()
    x, gy = rng.standard_normal((3, 6)), rng.standard_normal((3, 4))
    grads = layer.backward(gy, layer.forward(x)[1])

    def loss():
        return float(np.sum(layer.forward(x)[0] * gy))

    for name, arr in [*layer.current_parameters().items(), ("x", x)]:
        np.testing.assert_allclose(grads[name], numeric_grad(loss, arr), rtol=1e-6, atol=1e-7, err_msg=name)


def test_two_term_loss_gradient(rng):
    from moram_ref.numpy.losses import two_term_loss

    e = rng.standard_normal((6, 4))
    c = rng.standard_normal((5, 4))
    labels = np.array([2, 3, 3, 4, 2, 4])
    loss, grads = two_term_loss(e, c, labels, n_masked=2, logit_scale=3.0)
    f_e = lambda: two_term_loss(e, c, labels, 2, 3.0)[0]  # noqa: E731
    np.testing.assert_allclose(grads["image"], numeric_grad(f_e, e), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grads["class"], numeric_grad(f_e, c), rtol=1e-6, atol=1e-8)
