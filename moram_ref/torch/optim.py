"""Adam / AdamW over a dict of named tensors (mirror of moram_ref.numpy.optim).

The experiments use ``torch.optim.AdamW`` directly; this class exists so that the NumPy and torch
references can be driven by the same rules step for step (the stateful test) and so that the update
rule is visible. It equals ``torch.optim.AdamW`` (tested).
"""

from __future__ import annotations

import torch

from moram_ref.config import check_adam_hyperparameters


class Adam:
    """Adam over a dict of named tensors, updated in place — theory.md#eq-adam."""

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        check_adam_hyperparameters(lr, betas, eps, weight_decay)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.state: dict[str, dict] = {}

    def reset(self) -> None:
        """Forget moments (a new task starts with fresh atoms)."""
        self.state.clear()

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        """Update every ``params[name]`` in place from ``grads[name]``."""
        for name, grad in grads.items():
            if name not in params:
                raise ValueError(f"grads has {name!r}, which is not among params {sorted(params)}")
            param = params[name]
            if grad.shape != param.shape:
                raise ValueError(f"grad {name!r} has shape {tuple(grad.shape)}, param has {tuple(param.shape)}")
            st = self.state.setdefault(name, {"t": 0, "m": torch.zeros_like(param), "v": torch.zeros_like(param)})
            b1, b2 = self.betas
            st["t"] += 1
            st["m"] = b1 * st["m"] + (1 - b1) * grad
            st["v"] = b2 * st["v"] + (1 - b2) * grad * grad
            m_hat = st["m"] / (1 - b1 ** st["t"])
            v_hat = st["v"] / (1 - b2 ** st["t"])
            if self.weight_decay:
                param.mul_(1 - self.lr * self.weight_decay)
            param.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))
