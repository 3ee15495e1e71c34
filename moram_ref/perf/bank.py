"""A bank of trained-looking frozen tasks on a model with MoRAM attached, for the GPU check's whole-model steps."""

from __future__ import annotations

import torch


def fill_bank(model, tasks: int, gen: torch.Generator) -> None:
    """End the open task and ``tasks − 2`` more, each with random values N(0, 0.02²) (from ``gen``, on the CPU),
    and begin the last: ``tasks − 1`` frozen tasks and an open one (spec §4)."""
    from moram_ref.torch import attach as A  # noqa: PLC0415
    from moram_ref.torch.layer import MoRAMLinear  # noqa: PLC0415

    for _ in range(tasks - 1):
        with torch.no_grad():
            for _, layer in A.attached_layers(model):
                if isinstance(layer, MoRAMLinear):
                    layer.values.copy_(0.02 * torch.randn(layer.values.shape, generator=gen))
        A.end_task(model)
        A.begin_task(model, gen)
