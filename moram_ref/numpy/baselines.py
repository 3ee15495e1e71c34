"""The comparison layers in NumPy: sequential LoRA and MoE-LoRA with a learned router.

Both follow MoRAMLinear's interface (``begin_task``, ``end_task``, ``forward``, ``backward``,
``parameters``) so one training loop drives every method with the same trainable atoms per task.

* ``LoRALinear``: one rank-r LoRA ``ΔW = α B A`` trained on through every task (never frozen).
* ``MoELoRALinear``: one rank-r expert per task plus a linear router ``π = softmax(G x)`` over the
  experts so far; earlier experts and their router rows are frozen, the new ones train. This is the
  coarse-grained (one gate per expert) design the paper argues against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moram_ref.numpy.layer import _as_float_array
from moram_ref.shapes import check_last_dim, check_ndim, type_name


class _AdapterBase:
    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, rank: int, scale: float = 1.0) -> None:
        weight = _as_float_array("weight", weight)
        check_ndim("weight", weight, 2)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {rank!r}")
        self.weight = weight.copy()
        self.bias = None if bias is None else _as_float_array("bias", bias).copy()
        self.rank, self.scale = rank, float(scale)

    @property
    def d_in(self) -> int:
        return self.weight.shape[1]

    @property
    def d_out(self) -> int:
        return self.weight.shape[0]

    def _base(self, x: np.ndarray) -> np.ndarray:
        x = _as_float_array("x", x)
        check_last_dim("x", x, self.d_in)
        y0 = np.einsum("...i,oi->...o", x, self.weight)  # (..., d_out)
        return y0 if self.bias is None else y0 + self.bias

    def _new_pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type_name(rng)}")
        bound = 1.0 / np.sqrt(self.d_in)  # kaiming-uniform(a=√5), as for MoRAM keys (spec §4)
        a = rng.uniform(-bound, bound, size=(self.rank, self.d_in)).astype(self.weight.dtype)
        return a, np.zeros((self.d_out, self.rank), self.weight.dtype)


class LoRALinear(_AdapterBase):
    """``y = x W0ᵀ + b0 + α (x Aᵀ) Bᵀ``, one LoRA kept training through all tasks."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, rank: int, scale: float = 1.0) -> None:
        super().__init__(weight, bias, rank, scale)
        self.lora_a: np.ndarray | None = None  # (r, d_in)
        self.lora_b: np.ndarray | None = None  # (d_out, r)

    def begin_task(self, rng: np.random.Generator) -> None:
        if self.lora_a is None:  # created once; later tasks keep training the same pair
            self.lora_a, self.lora_b = self._new_pair(rng)

    def end_task(self) -> None:
        """Nothing is frozen: sequential fine-tuning of one adapter."""

    def current_parameters(self) -> dict[str, np.ndarray]:
        return {} if self.lora_a is None else {"lora_a": self.lora_a, "lora_b": self.lora_b}

    def forward(self, x: np.ndarray, training: bool = False, rng: Any = None) -> tuple[np.ndarray, dict]:
        y = self._base(x)
        if self.lora_a is None:
            return y, {"x": x, "u": None}
        u = np.einsum("...i,ri->...r", x, self.lora_a)  # (..., r)
        y = y + self.scale * np.einsum("...r,or->...o", u, self.lora_b)
        return y, {"x": x, "u": u}

    def backward(self, grad_y: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
        grad_x = np.einsum("...o,oi->...i", grad_y, self.weight)
        if cache["u"] is None:
            return {"x": grad_x}
        x, u = cache["x"].reshape(-1, self.d_in), cache["u"].reshape(-1, self.rank)
        gy = grad_y.reshape(-1, self.d_out)
        grad_u = self.scale * gy @ self.lora_b  # (N, r)
        return {
            "lora_a": grad_u.T @ x,  # (r, d_in)
            "lora_b": self.scale * gy.T @ u,  # (d_out, r)
            "x": grad_x + (grad_u @ self.lora_a).reshape(grad_x.shape),
        }


class MoELoRALinear(_AdapterBase):
    """``y = x W0ᵀ + b0 + α Σ_t π_t(x) B_t A_t x`` with ``π = softmax(G x)`` over the experts so far."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, rank: int, scale: float = 1.0) -> None:
        super().__init__(weight, bias, rank, scale)
        self.experts: list[tuple[np.ndarray, np.ndarray]] = []  # frozen (A_t, B_t)
        self.router_rows: list[np.ndarray] = []  # frozen router rows g_t (d_in,)
        self.current: dict[str, np.ndarray] = {}

    def begin_task(self, rng: np.random.Generator) -> None:
        if self.current:
            raise RuntimeError("begin_task() called while a task is in progress; call end_task() first")
        a, b = self._new_pair(rng)
        self.current = {"lora_a": a, "lora_b": b, "router": np.zeros(self.d_in, self.weight.dtype)}

    def end_task(self) -> None:
        if not self.current:
            raise RuntimeError("end_task() called with no task in progress")
        self.experts.append((self.current["lora_a"].copy(), self.current["lora_b"].copy()))
        self.router_rows.append(self.current["router"].copy())
        self.current = {}

    def current_parameters(self) -> dict[str, np.ndarray]:
        return self.current

    def _all(self) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        pairs = self.experts + ([(self.current["lora_a"], self.current["lora_b"])] if self.current else [])
        rows = self.router_rows + ([self.current["router"]] if self.current else [])
        return [a for a, _ in pairs], [b for _, b in pairs], np.stack(rows) if rows else None

    def forward(self, x: np.ndarray, training: bool = False, rng: Any = None) -> tuple[np.ndarray, dict]:
        y = self._base(x)
        a_s, b_s, router = self._all()
        if not a_s:
            return y, {"x": x}
        logits = np.einsum("...i,ti->...t", x, router)  # (..., T)
        pi = np.exp(logits - logits.max(axis=-1, keepdims=True))
        pi /= pi.sum(axis=-1, keepdims=True)  # (..., T)
        us = [np.einsum("...i,ri->...r", x, a) for a in a_s]  # T × (..., r)
        hs = [self.scale * np.einsum("...r,or->...o", u, b) for u, b in zip(us, b_s)]  # T × (..., d_out)
        y = y + sum(pi[..., t : t + 1] * h for t, h in enumerate(hs))
        return y, {"x": x, "pi": pi, "us": us, "hs": hs}

    def backward(self, grad_y: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
        grad_x = np.einsum("...o,oi->...i", grad_y, self.weight)
        if "pi" not in cache:
            return {"x": grad_x}
        a_s, b_s, router = self._all()
        gy, x = grad_y.reshape(-1, self.d_out), cache["x"].reshape(-1, self.d_in)
        pi = cache["pi"].reshape(-1, len(a_s))  # (N, T)
        grad_pi = np.stack([np.sum(gy * h.reshape(-1, self.d_out), axis=1) for h in cache["hs"]], axis=1)
        grad_logits = pi * (grad_pi - np.sum(pi * grad_pi, axis=1, keepdims=True))  # (N, T)
        gx = grad_logits @ router  # (N, d_in)
        grads: dict[str, np.ndarray] = {}
        for t, (a, b, u) in enumerate(zip(a_s, b_s, cache["us"])):
            gh = pi[:, t : t + 1] * gy * self.scale  # (N, d_out)
            gu = gh @ b  # (N, r)
            gx = gx + gu @ a
            if t == len(a_s) - 1 and self.current:
                grads["lora_a"] = gu.T @ x
                grads["lora_b"] = gh.T @ u.reshape(-1, self.rank)
                grads["router"] = grad_logits[:, t] @ x
        grads["x"] = grad_x + gx.reshape(grad_x.shape)
        return grads
