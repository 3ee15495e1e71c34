"""MoRAMLinear in NumPy: a frozen linear layer plus a growing bank of rank-1 atoms (spec §3–§4).

The layer holds arrays and calls the pure functions of :mod:`moram_ref.numpy.activation`; its
backward calls :mod:`moram_ref.numpy.backward`. Weight layout as torch's ``nn.Linear`` (spec §2):
``weight (d_out, d_in)``, ``keys A (R, d_in)``, ``values B (d_out, R)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moram_ref.config import MoRAMConfig
from moram_ref.numpy import activation, backward
from moram_ref.shapes import check_last_dim, check_layer_state, check_ndim, check_shape, key_mismatch, type_name

TRACE_KEYS = ("p", "s", "keep", "w_soft", "gated", "w", "delta", "y")  # equal in both backends
STATE_KEYS = ("base_layer.weight", "base_layer.bias", "frozen_keys", "frozen_values", "keys", "values")


def _as_float_array(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name} must be float32 or float64, got dtype {value.dtype}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name} contains NaN or inf ({int(np.sum(~np.isfinite(value)))} entries)")
    return value


class MoRAMLinear:
    """``y = x W0ᵀ + b0 + B (w(x) ⊙ A x)`` with a growing, freezing bank — theory.md#eq-output.

    Args:
        weight: frozen ``W0`` (d_out, d_in), float32 or float64; the layer's dtype.
        bias: frozen ``b0`` (d_out,) or None.
        config: a :class:`MoRAMConfig`.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, config: MoRAMConfig) -> None:
        if not isinstance(config, MoRAMConfig):
            raise ValueError(f"config must be a MoRAMConfig, got {type(config).__name__}")
        weight = _as_float_array("weight", weight)
        check_ndim("weight", weight, 2)
        d_out, d_in = weight.shape
        if bias is not None:
            bias = _as_float_array("bias", bias)
            check_shape("bias", bias, (d_out,))
            if bias.dtype != weight.dtype:
                raise ValueError(f"bias dtype {bias.dtype} differs from weight dtype {weight.dtype}")
        self.config = config
        self.weight = weight.copy()
        self.bias = None if bias is None else bias.copy()
        self.frozen_keys = np.zeros((0, d_in), weight.dtype)  # (R_old, d_in)
        self.frozen_values = np.zeros((d_out, 0), weight.dtype)  # (d_out, R_old)
        self.keys = np.zeros((0, d_in), weight.dtype)  # (r or 0, d_in)  the current task's atoms
        self.values = np.zeros((d_out, 0), weight.dtype)  # (d_out, r or 0)

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.weight.shape[1]

    @property
    def d_out(self) -> int:
        return self.weight.shape[0]

    @property
    def n_atoms(self) -> int:
        """``R``: atoms that take part in routing now (frozen + current)."""
        return self.frozen_keys.shape[0] + self.keys.shape[0]

    @property
    def in_task(self) -> bool:
        return self.keys.shape[0] > 0

    def current_parameters(self) -> dict[str, np.ndarray]:
        """The trainable arrays: the current task's atoms only (updated in place by the optimiser)."""
        return {"keys": self.keys, "values": self.values}

    # --- the bank ------------------------------------------------------------------------------
    def bank(self) -> tuple[np.ndarray, np.ndarray]:
        """All keys ``A`` (R, d_in) and effective values ``B`` (d_out, R), frozen first (spec §2).

        The current values carry the scale ``α``; frozen values already hold it (spec §4).
        """
        keys = np.concatenate([self.frozen_keys, self.keys], axis=0)  # (R, d_in)
        values = np.concatenate([self.frozen_values, self.config.scale * self.values], axis=1)  # (d_out, R)
        return keys, values

    # --- lifecycle (spec §4) -------------------------------------------------------------------
    def begin_task(self, rng: np.random.Generator) -> None:
        """Append ``r`` fresh atoms: keys ``U(-1/√d_in, 1/√d_in)``, values 0 — theory.md#eq-begin-task."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type_name(rng)}")
        if self.in_task:
            raise RuntimeError("begin_task() called while a task is in progress; call end_task() first")
        bound = 1.0 / np.sqrt(self.d_in)
        r = self.config.atoms_per_task
        self.keys = rng.uniform(-bound, bound, size=(r, self.d_in)).astype(self.weight.dtype)
        self.values = np.zeros((self.d_out, r), self.weight.dtype)

    def end_task(self) -> None:
        """Freeze the current atoms into the bank, folding ``α`` into the values — theory.md#eq-end-task."""
        if not self.in_task:
            raise RuntimeError("end_task() called with no task in progress; call begin_task() first")
        self.frozen_keys, self.frozen_values = self.bank()
        self.keys = np.zeros((0, self.d_in), self.weight.dtype)
        self.values = np.zeros((self.d_out, 0), self.weight.dtype)

    # --- forward / backward --------------------------------------------------------------------
    def forward(
        self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Spec §3 on any leading shape: x (..., d_in) -> y (..., d_out), and a cache for backward.

        ``rng`` draws the adapter-dropout mask; it is required only when training with dropout > 0.
        """
        x = _as_float_array("x", x)
        check_last_dim("x", x, self.d_in)
        if x.dtype != self.weight.dtype:
            raise ValueError(f"x dtype {x.dtype} differs from the layer's dtype {self.weight.dtype}")
        if not isinstance(training, bool):
            raise ValueError(f"training must be a bool, got {training!r}")
        drop = self.config.dropout if training else 0.0
        if drop > 0 and not isinstance(rng, np.random.Generator):
            raise ValueError("rng (a numpy.random.Generator) is required when training with dropout > 0")
        mask = None
        x_d = x
        if drop > 0:
            mask = (rng.random(x.shape) >= drop) / (1.0 - drop)  # (..., d_in) inverted dropout
            x_d = (x * mask).astype(x.dtype)
        keys, values = self.bank()
        y0 = x @ self.weight.T  # (..., d_out)
        if self.bias is not None:
            y0 = y0 + self.bias
        p = activation.responses(x_d, keys)  # (..., R)
        trace = activation.mixing_weights(p, self.config, training)
        delta = activation.update(trace["w"], p, values)  # (..., d_out)
        y = y0 + delta  # (..., d_out)
        cache = {"x": x, "x_d": x_d, "mask": mask, "p": p, **trace, "delta": delta, "y": y}
        return y, cache

    __call__ = forward

    def trace(self, x: np.ndarray, training: bool = False) -> dict[str, np.ndarray]:
        """Every intermediate of spec §3 (``p, s, idx, keep, w_soft, gated, w, delta, y``; ``idx`` the kept atoms'
        indices, the same set in both backends, in an order each backend's top-k leaves), for comparisons."""
        _, cache = self.forward(x, training=training)
        return {k: cache[k] for k in (*TRACE_KEYS, "idx")}

    def backward(self, grad_y: np.ndarray, cache: dict[str, Any]) -> dict[str, np.ndarray]:
        """Gradients for the current atoms and the input — theory.md#eq-backward.

        Returns ``keys`` (r, d_in), ``values`` (d_out, r) (empty when no task is in progress) and
        ``x`` (..., d_in). Frozen atoms and the base layer receive no gradient.
        """
        grad_y = _as_float_array("grad_y", grad_y)
        check_shape("grad_y", grad_y, tuple(cache["y"].shape))
        lead = cache["x"].shape[:-1]
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (N, ·)
        keys, values = self.bank()
        trace = {name: flat(cache[name]) for name in ("s", "w_soft", "gated", "w")}
        grads = backward.update_backward(
            flat(grad_y), flat(cache["x_d"]), flat(cache["p"]), trace, keys, values,
            self.config.temperature, self.config.eps,
        )
        n_frozen = self.frozen_keys.shape[0]
        grad_x_d = grads["x"].reshape(*lead, self.d_in)
        if cache["mask"] is not None:
            grad_x_d = grad_x_d * cache["mask"]
        grad_x = grad_y @ self.weight + grad_x_d  # (..., d_in)
        return {
            "keys": grads["keys"][n_frozen:],  # (r, d_in)
            "values": self.config.scale * grads["values"][:, n_frozen:],  # (d_out, r)
            "x": grad_x.astype(grad_y.dtype),
        }

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray | None]:
        """Copies of every array under the names shared with the torch layer (spec §2)."""
        return {
            "base_layer.weight": self.weight.copy(),
            "base_layer.bias": None if self.bias is None else self.bias.copy(),
            "frozen_keys": self.frozen_keys.copy(),
            "frozen_values": self.frozen_values.copy(),
            "keys": self.keys.copy(),
            "values": self.values.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a bank of any size into this layer (same ``d_in``, ``d_out``, bias or not, ``r``);
        everything is checked before anything is assigned (``shapes.check_layer_state``, shared with torch)."""
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict, got {type(state).__name__}")
        missing = [k for k in STATE_KEYS if k not in state]
        unknown = sorted(set(state) - set(STATE_KEYS))
        if missing or unknown:
            raise ValueError(f"state keys mismatch: {key_mismatch(missing, unknown)}")
        arrays = {k: _as_float_array(k, v) for k, v in state.items() if v is not None or k != "base_layer.bias"}
        check_layer_state(state, "", self.d_out, self.d_in, self.bias is not None, self.config.atoms_per_task)
        dtypes = {a.dtype for a in arrays.values()}
        if dtypes != {self.weight.dtype}:
            raise ValueError(f"state arrays must all have this layer's dtype {self.weight.dtype}, "
                             f"got {sorted(map(str, dtypes))}")
        bias = state["base_layer.bias"]
        self.weight, self.bias = arrays["base_layer.weight"].copy(), None if bias is None else bias.copy()
        self.frozen_keys, self.frozen_values = arrays["frozen_keys"].copy(), arrays["frozen_values"].copy()
        self.keys, self.values = arrays["keys"].copy(), arrays["values"].copy()
