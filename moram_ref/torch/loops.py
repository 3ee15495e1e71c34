"""The slow oracle for torch tensors: delegates to :func:`moram_ref.numpy.loops.forward_loops`.

The oracle is plain Python arithmetic on floats, independent of either backend's vectorised code, so
both backends share one copy of it; this mirror converts tensors in and out.
"""

from __future__ import annotations

import torch

from moram_ref.config import MoRAMConfig
from moram_ref.numpy import loops as np_loops


def forward_loops(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    config: MoRAMConfig,
    training: bool = False,
) -> torch.Tensor:
    """``y = W0 x + b0 + Σ_i w_i (A_i·x) B_i`` token by token — theory.md#eq-output. Returns float64."""
    as_np = lambda t: None if t is None else t.detach().to("cpu", torch.float64).numpy()  # noqa: E731
    y = np_loops.forward_loops(as_np(x), as_np(weight), as_np(bias), as_np(keys), as_np(values), config, training)
    return torch.from_numpy(y).to(x.device)
