"""The comparison layers in PyTorch (mirror of moram_ref.numpy.baselines): sequential LoRA, MoE-LoRA.

Same interface as :class:`moram_ref.torch.layer.MoRAMLinear` (``begin_task``, ``end_task``,
``current_parameters``), so :func:`moram_ref.torch.attach.attach` puts any of them on a model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moram_ref.shapes import check_input, type_name
from moram_ref.torch.layer import _WrapsLinear


def _new_pair(base: nn.Linear, rank: int, generator: torch.Generator | None, dtype: torch.dtype):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type_name(generator)}")
    bound = 1.0 / math.sqrt(base.in_features)  # kaiming-uniform(a=√5), as MoRAM keys (spec §4)
    dev = generator.device if generator is not None else base.weight.device
    a = torch.rand(rank, base.in_features, generator=generator, dtype=torch.float64, device=dev)
    a = ((2 * a - 1) * bound).to(base.weight.device, dtype)
    return nn.Parameter(a), nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device, dtype=dtype))


class _AdapterBase(_WrapsLinear):
    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {rank!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
        self.base_layer = base
        base.requires_grad_(False)
        self.rank, self.scale = rank, float(scale)
        self.dtype = dtype or base.weight.dtype

    _current: tuple[str, ...] = ()  # names of the current-task parameters (absent between tasks)
    _grow_dim: dict[str, int] = {}  # frozen buffers and the axis along which they grow per task

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        """Create or drop the current-task parameters and resize frozen buffers to match the state."""
        dev = self.base_layer.weight.device
        for name in self._current:
            incoming = state_dict.get(prefix + name)
            setattr(self, name, None if incoming is None else nn.Parameter(
                torch.empty(incoming.shape, device=dev, dtype=self.dtype)))
        for name, axis in self._grow_dim.items():
            buf, incoming = self._buffers[name], state_dict.get(prefix + name)
            if incoming is None or incoming.ndim != buf.ndim:
                continue  # the strict load reports it
            same = all(a == b for i, (a, b) in enumerate(zip(incoming.shape, buf.shape)) if i != axis)
            if same:  # a bank of another size: make room; other shape errors are left to the strict load
                self._buffers[name] = torch.empty(incoming.shape, device=dev, dtype=buf.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LoRALinear(_AdapterBase):
    """``y = base(x) + α (x Aᵀ) Bᵀ``: one LoRA trained on through every task (never frozen)."""

    _current = ("lora_a", "lora_b")

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0, dtype: torch.dtype | None = None) -> None:
        super().__init__(base, rank, scale, dtype)
        self.lora_a: nn.Parameter | None = None
        self.lora_b: nn.Parameter | None = None

    def begin_task(self, generator: torch.Generator | None = None) -> None:
        if self.lora_a is None:
            self.lora_a, self.lora_b = _new_pair(self.base_layer, self.rank, generator, self.dtype)

    def end_task(self) -> None:
        """Nothing is frozen: sequential fine-tuning of one adapter."""

    def current_parameters(self) -> dict[str, nn.Parameter]:
        return {} if self.lora_a is None else {"lora_a": self.lora_a, "lora_b": self.lora_b}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("x", x, self.base_layer.in_features, self.site)  # as the NumPy baselines (sync-free on CUDA)
        y = self.base_layer(x)
        if self.lora_a is None:
            return y
        u = nn.functional.linear(x.to(self.dtype), self.lora_a)  # (..., r)
        return y + (self.scale * nn.functional.linear(u, self.lora_b)).to(y.dtype)


class MoELoRALinear(_AdapterBase):
    """``y = base(x) + α Σ_t π_t(x) B_t A_t x``, ``π = softmax(G x)``; earlier experts and router rows frozen."""

    _current = ("lora_a", "lora_b", "router")
    _grow_dim = {"frozen_a": 0, "frozen_b": 0, "frozen_router": 0}

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0, dtype: torch.dtype | None = None) -> None:
        super().__init__(base, rank, scale, dtype)
        d_in, d_out = base.in_features, base.out_features
        dev = base.weight.device
        self.register_buffer("frozen_a", torch.zeros(0, rank, d_in, device=dev, dtype=self.dtype))  # (T_old, r, d_in)
        self.register_buffer("frozen_b", torch.zeros(0, d_out, rank, device=dev, dtype=self.dtype))  # (T_old, d_out, r)
        self.register_buffer("frozen_router", torch.zeros(0, d_in, device=dev, dtype=self.dtype))  # (T_old, d_in)
        self.lora_a: nn.Parameter | None = None
        self.lora_b: nn.Parameter | None = None
        self.router: nn.Parameter | None = None

    def begin_task(self, generator: torch.Generator | None = None) -> None:
        if self.lora_a is not None:
            raise RuntimeError("begin_task() called while a task is in progress; call end_task() first")
        self.lora_a, self.lora_b = _new_pair(self.base_layer, self.rank, generator, self.dtype)
        self.router = nn.Parameter(torch.zeros(self.base_layer.in_features, device=self.lora_a.device, dtype=self.dtype))

    @torch.no_grad()
    def end_task(self) -> None:
        if self.lora_a is None:
            raise RuntimeError("end_task() called with no task in progress")
        self.frozen_a = torch.cat([self.frozen_a, self.lora_a.detach()[None]])
        self.frozen_b = torch.cat([self.frozen_b, self.lora_b.detach()[None]])
        self.frozen_router = torch.cat([self.frozen_router, self.router.detach()[None]])
        self.lora_a = self.lora_b = self.router = None

    def current_parameters(self) -> dict[str, nn.Parameter]:
        if self.lora_a is None:
            return {}
        return {"lora_a": self.lora_a, "lora_b": self.lora_b, "router": self.router}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("x", x, self.base_layer.in_features, self.site)  # as the NumPy baselines (sync-free on CUDA)
        y = self.base_layer(x)
        a, b, g = self.frozen_a, self.frozen_b, self.frozen_router
        if self.lora_a is not None:
            a = torch.cat([a, self.lora_a[None]])
            b = torch.cat([b, self.lora_b[None]])
            g = torch.cat([g, self.router[None]])
        if a.shape[0] == 0:
            return y
        xc = x.to(self.dtype)
        pi = torch.softmax(nn.functional.linear(xc, g), dim=-1)  # (..., T)
        u = torch.einsum("...i,tri->...tr", xc, a)  # (..., T, r)
        h = torch.einsum("...tr,tor->...to", u, b)  # (..., T, d_out)
        return y + (self.scale * torch.einsum("...t,...to->...o", pi, h)).to(y.dtype)
