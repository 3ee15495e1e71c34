"""The granularity ablation's layer: MoRAM's self-activation routing over *units* of ``g`` atoms.

The paper's central argument is that rank-1 atoms (``g = 1``) route better than coarser experts. To test
it with everything else fixed, this layer groups each task's ``r`` atoms into ``r / g`` units of ``g``
consecutive atoms and routes the units exactly as MoRAM routes atoms (spec §3), with one weight per unit:

    p = A x_d                              responses of every atom         (..., R)
    s = p / max(‖p‖₂, ε)                    normalised across the bank      (..., R)
    σ_u = Σ_{i∈u} s_i / √g                  a unit's score                  (..., U),  U = R / g
    keep = top-k_u(σ),  k_u = k / g         the same number of atoms active (k) at every g
    w_u = softmax(σ_keep / τ) ⊙ 1{σ_u ≥ δ}  one weight per unit             (..., U)
    Δ = Σ_u w_u Σ_{i∈u} B_i p_i = B (w_atom ⊙ p),  w_atom_i = w_{u(i)}

Why ``σ_u = Σ s_i / √g``: it is the projection of ``s`` on the unit's direction ``1_u / √g``, so it lies
in [−1, 1] like ``s`` (1 when the whole response is the unit's, spread evenly over its atoms); τ and δ
keep their meaning at every ``g``. (The mean ``Σ s_i / g`` would shrink every score by ``√g`` and so
quietly change the effective temperature and threshold.) At ``g = 1`` every step is MoRAM's, operation
for operation (the test checks it against :class:`moram_ref.numpy.layer.MoRAMLinear` to 1e-12); at
``g = r`` each task's LoRA is one expert routed by its own mean score: a coarse MoE with no router.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moram_ref.config import MoRAMConfig
from moram_ref.numpy import activation, backward
from moram_ref.numpy.layer import MoRAMLinear, _as_float_array
from moram_ref.shapes import check_last_dim, check_shape


def unit_scores(s: np.ndarray, group: int) -> np.ndarray:
    """``σ_u = Σ_{i∈u} s_i / √g`` over consecutive units of ``group`` atoms: (..., R) -> (..., R / g)."""
    return s.reshape(*s.shape[:-1], -1, group).sum(axis=-1) / np.sqrt(group)  # (..., U)


class GroupedMoRAMLinear(MoRAMLinear):
    """MoRAMLinear whose routing picks units of ``group`` atoms (the module docstring gives the equations).

    Args:
        weight, bias, config: as :class:`MoRAMLinear`; ``config.top_k`` counts *atoms* (None: every unit).
        group: ``g`` ≥ 1, dividing ``config.atoms_per_task`` and ``config.top_k`` (so ``k / g`` units hold
            exactly ``k`` atoms). Units never straddle two tasks.
    Raises:
        ValueError naming ``group`` when it is not such an int.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, config: MoRAMConfig, group: int) -> None:
        super().__init__(weight, bias, config)
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be an int >= 1, got {group!r}")
        if config.atoms_per_task % group:
            raise ValueError(f"group={group} must divide atoms_per_task={config.atoms_per_task}")
        if config.top_k is not None and config.top_k % group:
            raise ValueError(f"group={group} must divide top_k={config.top_k} (the budget counts atoms)")
        self.group = group
        units_k = None if config.top_k is None else config.top_k // group
        self.unit_config = config.__class__(**{**config.to_dict(), "top_k": units_k})

    def forward(
        self, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """x (..., d_in) -> y (..., d_out) and a cache; ``cache["w"]`` is the per-atom weight ``w_atom``."""
        x = _as_float_array("x", x)
        check_last_dim("x", x, self.d_in)
        if x.dtype != self.weight.dtype:
            raise ValueError(f"x dtype {x.dtype} differs from the layer's dtype {self.weight.dtype}")
        if not isinstance(training, bool):
            raise ValueError(f"training must be a bool, got {training!r}")
        drop = self.config.dropout if training else 0.0
        if drop > 0 and not isinstance(rng, np.random.Generator):
            raise ValueError("rng (a numpy.random.Generator) is required when training with dropout > 0")
        mask = None if drop == 0 else (rng.random(x.shape) >= drop) / (1.0 - drop)  # (..., d_in)
        x_d = x if mask is None else (x * mask).astype(x.dtype)
        keys, values = self.bank()
        y0 = x @ self.weight.T if self.bias is None else x @ self.weight.T + self.bias  # (..., d_out)
        g, cfg = self.group, self.unit_config
        p = activation.responses(x_d, keys)  # (..., R)
        s = activation.normalise(p, cfg.eps)  # (..., R)
        sigma = unit_scores(s, g)  # (..., U)
        keep_u = activation.top_k_mask(sigma, cfg.k_eff(sigma.shape[-1]))  # (..., U)
        w_soft_u = activation.masked_softmax(sigma, keep_u, cfg.temperature)  # (..., U)
        if cfg.threshold_active(training):
            w_u, gated_u = activation.threshold_gate(w_soft_u, sigma, cfg.threshold), sigma >= cfg.threshold
        else:
            w_u, gated_u = w_soft_u, np.ones(sigma.shape, dtype=bool)
        w = np.repeat(w_u, g, axis=-1)  # (..., R) each atom carries its unit's weight
        delta = activation.update(w, p, values)  # (..., d_out)
        y = y0 + delta
        atom = lambda a: np.repeat(a, g, axis=-1)  # noqa: E731  unit-level -> atom-level, for traces
        cache = {"x": x, "x_d": x_d, "mask": mask, "p": p, "s": s, "sigma": sigma, "w_soft_u": w_soft_u,
                 "gated_u": gated_u, "w_u": w_u, "keep": atom(keep_u), "w_soft": atom(w_soft_u),
                 "gated": atom(gated_u), "w": w, "delta": delta, "y": y}
        return y, cache

    __call__ = forward

    def backward(self, grad_y: np.ndarray, cache: dict[str, Any]) -> dict[str, np.ndarray]:
        """Gradients for the current atoms and the input, as :meth:`MoRAMLinear.backward`, through units.

        ``g_w_u = Σ_{i∈u} g_c_i p_i`` (gated), softmax backward on units, ``g_s_i = g_σ_{u(i)} / √g``,
        then the normaliser's backward and ``g_p = g_c ⊙ w_atom + g_p(normaliser)``.
        """
        grad_y = _as_float_array("grad_y", grad_y)
        check_shape("grad_y", grad_y, tuple(cache["y"].shape))
        g, cfg = self.group, self.unit_config
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (N, ·)
        keys, values = self.bank()
        x_d, p, s, w = (flat(cache[k]) for k in ("x_d", "p", "s", "w"))
        gy = flat(grad_y)  # (N, d_out)
        grad_values = gy.T @ (w * p)  # (d_out, R)
        grad_c = gy @ values  # (N, R)
        grad_w_u = (grad_c * p).reshape(len(gy), -1, g).sum(axis=-1) * flat(cache["gated_u"])  # (N, U)
        grad_sigma = backward.masked_softmax_backward(grad_w_u, flat(cache["w_soft_u"]), cfg.temperature)  # (N, U)
        grad_s = np.repeat(grad_sigma, g, axis=-1) / np.sqrt(g)  # (N, R)
        grad_p = grad_c * w + backward.normalise_backward(grad_s, p, s, cfg.eps)  # (N, R)
        n_frozen = self.frozen_keys.shape[0]
        grad_x_d = (grad_p @ keys).reshape(cache["x"].shape)  # (..., d_in)
        if cache["mask"] is not None:
            grad_x_d = grad_x_d * cache["mask"]
        return {
            "keys": (grad_p.T @ x_d)[n_frozen:],  # (r, d_in)
            "values": self.config.scale * grad_values[:, n_frozen:],  # (d_out, r)
            "x": (grad_y @ self.weight + grad_x_d).astype(grad_y.dtype),
        }


def grouped_factory(group: int):
    """A ``make_layer``-like factory for the toy streams: every method name builds a grouped MoRAM layer."""

    def make(method: str, weight: np.ndarray, bias: np.ndarray | None, config: MoRAMConfig) -> GroupedMoRAMLinear:
        return GroupedMoRAMLinear(weight, bias, config, group)

    return make
