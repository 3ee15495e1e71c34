"""Adam / AdamW in NumPy, for training the current atoms of the NumPy reference (and the demo's baselines).

The update is the textbook one (Kingma & Ba, with decoupled weight decay as in Loshchilov & Hutter),
matching ``torch.optim.AdamW`` (and ``torch.optim.Adam`` when ``weight_decay = 0``).
"""

from __future__ import annotations

import numpy as np

from moram_ref.config import check_adam_hyperparameters


class Adam:
    """Adam over a dict of named arrays, updated in place — theory.md#eq-adam.

    ``m ← β1 m + (1-β1) g``, ``v ← β2 v + (1-β2) g²``, ``θ ← θ(1 - lr·λ) - lr · m̂ / (√v̂ + ε)``.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        check_adam_hyperparameters(lr, betas, eps, weight_decay)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.state: dict[str, dict[str, np.ndarray | int]] = {}

    def reset(self) -> None:
        """Forget moments (a new task starts with fresh atoms)."""
        self.state.clear()

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update every ``params[name]`` in place from ``grads[name]``."""
        for name, grad in grads.items():
            if name not in params:
                raise ValueError(f"grads has {name!r}, which is not among params {sorted(params)}")
            param = params[name]
            if grad.shape != param.shape:
                raise ValueError(f"grad {name!r} has shape {grad.shape}, param has {param.shape}")
            st = self.state.setdefault(name, {"t": 0, "m": np.zeros_like(param), "v": np.zeros_like(param)})
            b1, b2 = self.betas
            st["t"] = int(st["t"]) + 1
            st["m"] = b1 * st["m"] + (1 - b1) * grad
            st["v"] = b2 * st["v"] + (1 - b2) * grad * grad
            m_hat = st["m"] / (1 - b1 ** st["t"])
            v_hat = st["v"] / (1 - b2 ** st["t"])
            if self.weight_decay:
                param *= 1 - self.lr * self.weight_decay
            param -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(param.dtype)
