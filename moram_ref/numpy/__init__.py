"""moram_ref.numpy — the readable reference implementation of MoRAM, pure NumPy.

Modules (mirrored name for name by :mod:`moram_ref.torch`):
    memory      linear associative memory: write, read, crosstalk, rank-1 atoms
    activation  self-activation, one pure function per step of spec §3
    layer       MoRAMLinear: forward, lifecycle (spec §4), state dict
    loops       the slow oracle: spec §3 with explicit loops
    optim       Adam / AdamW
    losses      the CLIP two-term loss of spec §6 (with its gradient)
    baselines   LoRA and MoE-LoRA layers for the comparisons
NumPy only (torch uses autograd): backward — the hand-written backward pass.
"""

from moram_ref.numpy.layer import MoRAMLinear

__all__ = ["MoRAMLinear"]
