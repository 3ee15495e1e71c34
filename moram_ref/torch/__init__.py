"""moram_ref.torch — the PyTorch port of MoRAM with the semantics of moram_ref.numpy.

Mirrored modules (same names, argument order, defaults): memory, activation, layer, loops, optim,
losses, baselines. Torch-only (the explicit exception list, see tests/test_api_parity.py):
attach (put layers on any model), checkpoint (safetensors + JSON metadata), olora (the O-LoRA
baseline layer), split_attention (open_clip's fused attention as four linear layers), routing_triton
(self-activation fused into one Triton kernel per direction, for CUDA; equal to activation + layer).
"""

from moram_ref.torch.layer import MoRAMLinear

__all__ = ["MoRAMLinear"]
