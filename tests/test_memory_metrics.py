"""The associative memory (spec §1) and the continual-learning metrics (spec §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moram_ref import metrics
from moram_ref.numpy import memory


def test_orthogonal_keys_recall_exactly(rng):
    keys = np.linalg.qr(rng.standard_normal((16, 16)))[0][:10]  # 10 orthonormal rows
    vals = rng.standard_normal((10, 4))
    w = memory.write_outer(keys, vals)
    np.testing.assert_allclose(memory.read(w, keys), vals, atol=1e-12)
    assert memory.crosstalk(w, keys, vals).max() < 1e-12


def test_least_squares_write_recalls_correlated_keys(rng):
    keys = rng.standard_normal((8, 12)) + 3.0  # strongly correlated, independent
    vals = rng.standard_normal((8, 5))
    assert memory.crosstalk(memory.write_outer(keys, vals), keys, vals).mean() > 1.0
    np.testing.assert_allclose(memory.read(memory.write_lstsq(keys, vals), keys), vals, atol=1e-9)


def test_crosstalk_grows_like_sqrt_n_over_d(rng):
    d = 256
    for n in (8, 32, 128):
        measured = np.mean([memory.crosstalk(memory.write_outer(k, v), k, v).mean()
                            for k, v in ((memory.random_unit_keys(rng, n, d), rng.standard_normal((n, 64)))
                                         for _ in range(5))])
        predicted = memory.predicted_crosstalk(n, d)
        assert abs(measured - predicted) < 0.15 * predicted, (n, measured, predicted)


def test_atoms_round_trip_and_truncation(rng):
    m = rng.standard_normal((6, 9))
    a, b = memory.to_atoms(m)
    assert a.shape == (6, 9) and b.shape == (6, 6)
    np.testing.assert_allclose(memory.from_atoms(a, b), m, atol=1e-12)
    a2, b2 = memory.to_atoms(m, rank=2)
    s = np.linalg.svd(m, compute_uv=False)
    assert np.isclose(np.linalg.norm(m - memory.from_atoms(a2, b2)), np.sqrt(np.sum(s[2:] ** 2)))
    with pytest.raises(ValueError, match="rank"):
        memory.to_atoms(m, rank=7)


def test_lora_is_r_atoms(rng):
    a, b = rng.standard_normal((3, 7)), rng.standard_normal((5, 3))
    x = rng.standard_normal(7)
    atoms = sum(b[:, i] * (a[i] @ x) for i in range(3))
    np.testing.assert_allclose(memory.from_atoms(a, b) @ x, atoms, atol=1e-12)


def test_clip_metrics_on_a_hand_made_matrix():
    a = np.array([[0.5, 0.2, 0.1], [0.4, 0.8, 0.3], [0.3, 0.7, 0.9]])
    assert math.isclose(metrics.transfer(a), (0.2 + (0.1 + 0.3) / 2) / 2)
    assert math.isclose(metrics.average(a), np.mean([0.4, 0.5666666666666667, 0.4333333333333333]))
    assert math.isclose(metrics.last(a), (0.3 + 0.7 + 0.9) / 3)
    assert math.isclose(metrics.bwt(a), ((0.3 - 0.5) + (0.7 - 0.8)) / 2)
    assert math.isclose(metrics.bwt_clipped(a), ((0.3 - 0.5) + (0.7 - 0.8) + 0.0) / 3)
    assert metrics.summary(a)["forgetting"] > 0


def test_genuine_zero_is_a_value_and_nan_is_an_error():
    a = np.array([[0.0, 0.0], [0.0, 0.0]])
    assert metrics.transfer(a) == 0.0 and metrics.last(a) == 0.0 and metrics.bwt(a) == 0.0
    with pytest.raises(ValueError, match="missing"):
        metrics.last(np.array([[1.0, np.nan], [np.nan, np.nan]]))
    with pytest.raises(ValueError, match="square"):
        metrics.average(np.zeros((2, 3)))


def test_positive_backward_transfer_is_not_clipped_away():
    a = np.array([[0.5, 0.0], [0.9, 0.6]])
    assert metrics.bwt(a) == pytest.approx(0.4) and metrics.bwt_clipped(a) == 0.0
    assert metrics.op(a) == pytest.approx((0.9 + 0.6) / 2)


def test_confidence_interval_on_known_numbers():
    mean, half = metrics.confidence_interval(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and half == pytest.approx(4.302652729 * 1.0 / math.sqrt(3), rel=1e-6)
    mean, half = metrics.confidence_interval(np.array([5.0]))
    assert mean == 5.0 and math.isnan(half)
    assert metrics.half_width_factor(3) == pytest.approx(4.302652729 / math.sqrt(3), rel=1e-6)
    assert metrics.half_width_factor(10) == pytest.approx(2.262157163 / math.sqrt(10), rel=1e-6)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="n must be an int >= 2"):
            metrics.half_width_factor(bad)


def test_atoms_for_mass():
    w = np.array([[0.5, 0.3, 0.15, 0.05], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_array_equal(metrics.atoms_for_mass(w, 0.99), [4, 1, 0, 4])
    np.testing.assert_array_equal(metrics.atoms_for_mass(w, 0.8), [2, 1, 0, 4])
    gated = np.array([[0.3, 0.0, 0.1]])  # after the threshold: mass is relative to what is left
    np.testing.assert_array_equal(metrics.atoms_for_mass(gated, 0.7), [1])
    with pytest.raises(ValueError, match="non-negative"):
        metrics.atoms_for_mass(np.array([[-0.1, 1.1]]))
