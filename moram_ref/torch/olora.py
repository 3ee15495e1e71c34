"""O-LoRA (Wang et al., 2023) as a baseline layer (torch only): a new LoRA per task, earlier ones frozen
and always active, and an orthogonality penalty between the new keys and every earlier task's keys.

``y = base(x) + α Σ_t B_t A_t x``; the penalty added to the loss is
``λ Σ_{t' < t} Σ_{j,k} |(A_t A_{t'}ᵀ)_{jk}|`` (O-LoRA's L1 form), computed by :func:`orthogonality_penalty`.
"""

from __future__ import annotations

import torch
from torch import nn

from moram_ref.shapes import check_input
from moram_ref.torch.baselines import _AdapterBase, _new_pair


class OLoRALinear(_AdapterBase):
    _current = ("lora_a", "lora_b")
    _grow_dim = {"frozen_a": 0, "frozen_b": 1}

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0, dtype: torch.dtype | None = None) -> None:
        super().__init__(base, rank, scale, dtype)
        d_in, d_out, dev = base.in_features, base.out_features, base.weight.device
        self.register_buffer("frozen_a", torch.zeros(0, d_in, device=dev, dtype=self.dtype))  # (T_old·r, d_in)
        self.register_buffer("frozen_b", torch.zeros(d_out, 0, device=dev, dtype=self.dtype))  # (d_out, T_old·r)
        self.lora_a: nn.Parameter | None = None
        self.lora_b: nn.Parameter | None = None

    def begin_task(self, generator: torch.Generator | None = None) -> None:
        if self.lora_a is not None:
            raise RuntimeError("begin_task() called while a task is in progress; call end_task() first")
        self.lora_a, self.lora_b = _new_pair(self.base_layer, self.rank, generator, self.dtype)

    @torch.no_grad()
    def end_task(self) -> None:
        if self.lora_a is None:
            raise RuntimeError("end_task() called with no task in progress")
        self.frozen_a = torch.cat([self.frozen_a, self.lora_a.detach()])
        self.frozen_b = torch.cat([self.frozen_b, self.scale * self.lora_b.detach()], dim=1)
        self.lora_a = self.lora_b = None

    def current_parameters(self) -> dict[str, nn.Parameter]:
        return {} if self.lora_a is None else {"lora_a": self.lora_a, "lora_b": self.lora_b}

    def penalty(self) -> torch.Tensor:
        """``Σ |A_t A_oldᵀ|`` for this layer (0 without earlier tasks or a current one)."""
        if self.lora_a is None or self.frozen_a.shape[0] == 0:
            return torch.zeros((), device=self.base_layer.weight.device)
        return (self.lora_a @ self.frozen_a.T).abs().sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("x", x, self.base_layer.in_features, self.site)  # as every adapter layer (sync-free on CUDA)
        y = self.base_layer(x)
        xc = x.to(self.dtype)
        delta = None
        if self.frozen_a.shape[0]:
            delta = nn.functional.linear(nn.functional.linear(xc, self.frozen_a), self.frozen_b)
        if self.lora_a is not None:
            cur = self.scale * nn.functional.linear(nn.functional.linear(xc, self.lora_a), self.lora_b)
            delta = cur if delta is None else delta + cur
        return y if delta is None else y + delta.to(y.dtype)


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of every O-LoRA layer's penalty (multiply by O-LoRA's λ, 0.5 in its paper)."""
    terms = [m.penalty() for m in model.modules() if isinstance(m, OLoRALinear)]
    return torch.stack(terms).sum() if terms else torch.zeros(())
