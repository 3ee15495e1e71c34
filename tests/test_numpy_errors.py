"""Bad input gets a clear error naming the argument, and leaves the layer unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import build_numpy_layer
from moram_ref.config import MoRAMConfig
from moram_ref.numpy.layer import MoRAMLinear


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"atoms_per_task": 0}, "atoms_per_task"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -1.01}, "threshold"),
        ({"threshold_mode": "train"}, "threshold_mode"),
        ({"min_active": 0}, "min_active"),
        ({"dropout": 1.0}, "dropout"),
        ({"eps": 0.0}, "eps"),
        ({"scale": 0.0}, "scale"),
        ({"atoms_per_task": True}, "atoms_per_task"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoRAMConfig(**kwargs)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown MoRAMConfig field"):
        MoRAMConfig.from_dict({"top_k": 3, "tau": 0.1})


def _snapshot(layer):
    return {k: (None if v is None else v.copy()) for k, v in layer.state_dict().items()}


def _same(a, b):
    return all((a[k] is None and b[k] is None) or np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("make_input", "match"),
    [
        (lambda rng: rng.standard_normal((3, 7)), "x must have shape"),
        (lambda rng: rng.standard_normal(5), "x must have shape"),
        (lambda rng: rng.standard_normal((3, 6)).astype(np.float32), "dtype"),
        (lambda rng: rng.integers(0, 3, (3, 6)), "float32 or float64"),
        (lambda rng: np.full((3, 6), np.nan), "NaN"),
        (lambda rng: [[0.0] * 6], "numpy.ndarray"),
    ],
)
def test_bad_forward_inputs_leave_layer_unchanged(rng, make_input, match):
    layer = build_numpy_layer(rng, tasks=2)
    before = _snapshot(layer)
    with pytest.raises(ValueError, match=match):
        layer.forward(make_input(rng))
    assert _same(before, _snapshot(layer))


def test_bad_training_flag(rng):
    layer = build_numpy_layer(rng, tasks=1)
    with pytest.raises(ValueError, match="training"):
        layer.forward(rng.standard_normal((2, 6)), training=1)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update(frozen_values=s["frozen_values"][:, :-1]), "frozen_values"),
        (lambda s: s.update(frozen_keys=s["frozen_keys"][:, :-1]), "frozen_keys"),
        (lambda s: s.update(keys=s["keys"][:-1]), "keys"),
        (lambda s: s.update(values=s["values"][:-1]), "values"),
        (lambda s: s.update(values=s["values"].astype(np.float32)), "this layer.s dtype float64"),
        (lambda s: s.pop("frozen_keys"), "missing"),
        (lambda s: s.update(extra=np.zeros(3)), "unexpected"),
        (lambda s: s.update(keys=s["keys"] * np.nan), "NaN"),
        (lambda s: s.update({"base_layer.bias": np.zeros(4)}), "base_layer.bias"),
    ],
)
def test_inconsistent_state_is_rejected_atomically(rng, edit, match):
    layer = build_numpy_layer(rng, tasks=2)
    state = layer.state_dict()
    before = _snapshot(layer)
    edit(state)
    with pytest.raises(ValueError, match=match):
        layer.load_state_dict(state)
    assert _same(before, _snapshot(layer))


def test_lifecycle_misuse(rng):
    layer = build_numpy_layer(rng, tasks=1, in_task=True)
    with pytest.raises(RuntimeError, match="begin_task"):
        layer.begin_task(rng)
    layer.end_task()
    with pytest.raises(RuntimeError, match="end_task"):
        layer.end_task()
    with pytest.raises(ValueError, match="rng"):
        layer.begin_task(42)


def test_constructor_errors(rng):
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        MoRAMLinear(rng.standard_normal(4), None, MoRAMConfig())
    with pytest.raises(ValueError, match="bias"):
        MoRAMLinear(rng.standard_normal((4, 3)), rng.standard_normal(3), MoRAMConfig())
    with pytest.raises(ValueError, match="config"):
        MoRAMLinear(rng.standard_normal((4, 3)), None, {"top_k": 2})


def test_state_round_trip_any_bank_size(rng):
    for tasks in (0, 1, 4):
        src = build_numpy_layer(rng, tasks=tasks, in_task=tasks % 2 == 1)
        dst = MoRAMLinear(np.zeros((5, 6)), np.zeros(5), src.config)
        dst.load_state_dict(src.state_dict())
        x = rng.standard_normal((3, 6))
        assert np.array_equal(dst.forward(x)[0], src.forward(x)[0])


def test_top_k_indices_refuses_nan_scores():
    """The rule orders real numbers: a NaN score is named, not a reshape error from the rows that kept fewer."""
    from moram_ref.numpy.activation import top_k_indices

    s = np.array([[0.1, 0.4, 0.2], [np.nan, np.nan, np.nan]])
    with pytest.raises(ValueError, match=r"s: 1 row\(s\) hold NaN scores \(first: row 1"):
        top_k_indices(s, 2)
    assert np.array_equal(top_k_indices(s[:1], 2), [[1, 2]])
