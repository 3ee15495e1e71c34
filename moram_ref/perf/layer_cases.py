"""The layer cases of the benchmarks and the callables they compare, built once for CPU and GPU runs.

Every callable includes the frozen base layer ``y0 = x W0ᵀ + b0`` (as a real adapted layer does):

* MoRAM (:class:`~moram_ref.torch.layer.MoRAMLinear`): training with ``R − r`` frozen atoms and ``r``
  current ones; evaluation after ``end_task()`` (spec §4), every atom frozen;
* plain LoRA of rank ``R`` (all ``R`` atoms trainable) beside the same frozen base;
* the authors' style: the bank concatenated from its per-task pieces on every call, ``topk`` + a scattered
  mask + a dense softmax over all ``R`` scores, the dense value product; responses in the input dtype (as
  under autocast), the normaliser and softmax in float32;
* evaluation with the bank's responses in the base layer's product (:func:`stacked_eval_forward`), a
  candidate of issue #11 point 4.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
from torch import nn

from moram_ref.config import MoRAMConfig
from moram_ref.torch.layer import MoRAMLinear


@dataclass(frozen=True)
class LayerCase:
    """One layer shape: ``d_in = d_out = d``, a bank of ``tasks × r`` atoms, ``k`` kept, ``tokens`` rows."""

    name: str
    d: int
    tasks: int
    r: int
    k: int
    tokens: int
    temperature: float = 0.01
    threshold: float = 0.2

    @property
    def n_atoms(self) -> int:
        return self.tasks * self.r

    def config(self, **overrides) -> MoRAMConfig:
        return MoRAMConfig(atoms_per_task=self.r, top_k=self.k, temperature=self.temperature,
                           threshold=self.threshold, **overrides)


# Issue #11's cases. CLIP-like: ViT-B-16 width, X-TAIL's 10 tasks × 16 atoms, 64 images × 197 tokens;
# LLM-like: Llama-3.2-1B width, 8 tasks × 8 atoms (τ = 0.03), 8 × 512 tokens; big bank: 64 tasks × 16.
CASES = {
    "clip_like": LayerCase("clip_like", d=768, tasks=10, r=16, k=16, tokens=12_608),
    "llm_like": LayerCase("llm_like", d=2048, tasks=8, r=8, k=8, tokens=4096, temperature=0.03),
    "big_bank": LayerCase("big_bank", d=4096, tasks=64, r=16, k=16, tokens=8192),
}
QUICK_CASES = {name: dataclasses.replace(c, d=32, tasks=3, r=4, k=4, tokens=64) for name, c in CASES.items()}
# the quick big bank differs from the quick CLIP-like case, and its k > 16 takes the kernel's other top-k path
QUICK_CASES["big_bank"] = dataclasses.replace(CASES["big_bank"], d=32, tasks=8, r=4, k=20, tokens=64)


def config_with_kernel(config: MoRAMConfig, routing_kernel: str) -> MoRAMConfig:
    """``config`` with ``routing_kernel`` set ("torch": the reference functions; "triton": fused).

    Where the field does not exist yet, "torch" is what the layer does anyway; any other kernel raises
    ``TypeError`` (callers record it as not available).
    """
    if "routing_kernel" not in {f.name for f in dataclasses.fields(MoRAMConfig)}:
        if routing_kernel == "torch":
            return config
        raise TypeError("MoRAMConfig has no field 'routing_kernel' in this version")
    return dataclasses.replace(config, routing_kernel=routing_kernel)


def fused_config(config: MoRAMConfig, device: str) -> MoRAMConfig:
    """``config`` with the fused Triton routing kernel, or ``TypeError`` saying why it does not apply here
    (no ``routing_kernel`` field in this version, or neither CUDA nor ``TRITON_INTERPRET=1``)."""
    fused = config_with_kernel(config, "triton")
    if not str(device).startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        raise TypeError(f"routing_kernel='triton' runs on CUDA (or under TRITON_INTERPRET=1), not on {device}")
    return fused


@dataclass
class LayerBench:
    """A MoRAM layer mid-task, a plain LoRA of the same total rank, and the input, on one device/dtype."""

    case: LayerCase
    layer: MoRAMLinear
    lora_a: nn.Parameter  # (R, d_in)
    lora_b: nn.Parameter  # (d_out, R)
    x: torch.Tensor  # (N, d_in)

    @property
    def base(self) -> nn.Linear:
        return self.layer.base_layer


def build(case: LayerCase, dtype: torch.dtype, device: str, seed: int = 0,
          config: MoRAMConfig | None = None) -> LayerBench:
    """Random but trained-looking parameters (values ``N(0, 0.02²)``), reproducible from ``seed`` on any device."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cfg = config or config_with_kernel(case.config(), "torch")  # "eager": the reference routing functions
    base = nn.Linear(case.d, case.d)
    with torch.no_grad():
        base.weight.copy_(torch.randn(case.d, case.d, generator=gen) / case.d**0.5)
        base.bias.copy_(torch.randn(case.d, generator=gen) * 0.1)
    layer = MoRAMLinear(base.to(device, dtype), cfg)
    for t in range(case.tasks):
        layer.begin_task(gen)
        with torch.no_grad():
            layer.values.copy_(torch.randn(layer.values.shape, generator=gen).to(device, dtype) * 0.02)
        if t < case.tasks - 1:
            layer.end_task()
    n = case.n_atoms
    lora_a = nn.Parameter((torch.randn(n, case.d, generator=gen) / case.d**0.5).to(device, dtype))
    lora_b = nn.Parameter((torch.randn(case.d, n, generator=gen) * 0.02).to(device, dtype))
    x = torch.randn(case.tokens, case.d, generator=gen).to(device, dtype)
    return LayerBench(case, layer, lora_a, lora_b, x)


def twin(layer: MoRAMLinear, config: MoRAMConfig) -> MoRAMLinear:
    """A second layer with the same base, bank and current atoms, under another ``config`` (e.g. a kernel)."""
    other = MoRAMLinear(layer.base_layer, config)
    other.load_state_dict(layer.state_dict())
    return other.train(layer.training)


def freeze_for_eval(*layers: MoRAMLinear) -> None:
    """Evaluation happens after ``end_task()`` (spec §4): the whole bank frozen, one block."""
    for layer in layers:
        if layer.in_task:
            layer.end_task()
        layer.eval()


def lora_forward(bench: LayerBench, x: torch.Tensor) -> torch.Tensor:
    """``x W0ᵀ + b0 + (x Aᵀ) Bᵀ``: plain LoRA of rank R beside the frozen base."""
    lin = nn.functional.linear
    return bench.base(x) + lin(lin(x, bench.lora_a), bench.lora_b)  # (N, d_out)


def authors_forward(layer: MoRAMLinear, x: torch.Tensor) -> torch.Tensor:
    """The authors' style (see the module docstring); same function as ``layer(x)`` up to rounding."""
    cfg, r = layer.config, layer.config.atoms_per_task
    key_pieces = list(layer.frozen_keys.split(r))  # per-task pieces, joined anew on every call
    value_pieces = list(layer.frozen_values.split(r, dim=1))
    if layer.in_task:
        key_pieces.append(layer.keys)
        value_pieces.append(layer.values * cfg.scale)
    keys, values = torch.cat(key_pieces), torch.cat(value_pieces, dim=1)  # (R, d_in), (d_out, R)
    p = nn.functional.linear(x, keys)  # (N, R) in the input dtype
    pf = p.float()
    s = pf / torch.linalg.vector_norm(pf, dim=-1, keepdim=True).clamp_min(cfg.eps)  # (N, R)
    idx = s.detach().topk(cfg.k_eff(keys.shape[0]), dim=-1).indices  # (N, k)
    keep = torch.zeros_like(s, dtype=torch.bool).scatter(-1, idx, True)  # (N, R)
    w = torch.softmax((s / cfg.temperature).masked_fill(~keep, float("-inf")), dim=-1)  # (N, R)
    if cfg.threshold_active(layer.training):
        w = w * (s.detach() >= cfg.threshold)
    return layer.base_layer(x) + nn.functional.linear((w * pf).to(x.dtype), values)  # (N, d_out)


def train_step(fn, x: torch.Tensor):
    """A callable running ``fn`` forward and backward from a fresh leaf copy of ``x`` (as inside a network)."""
    def step():
        xi = x.detach().requires_grad_(True)
        fn(xi).sum().backward()
    return step


def stack_for_eval(layer: MoRAMLinear) -> torch.Tensor:
    """``[W0; A]`` (d_out + R, d_in): the base weight over the whole frozen bank's keys, one operand, made once
    after ``end_task()``. Raises ``ValueError`` if a task is open or the keys are in another dtype than ``W0``
    (a bf16 ``W0`` with float32 keys: rounding the keys would break the precision policy)."""
    if layer.in_task:
        raise ValueError("stack_for_eval: a task is open (call end_task() first; evaluation uses a frozen bank)")
    w0 = layer.base_layer.weight  # (d_out, d_in)
    if layer.frozen_keys.dtype != w0.dtype:
        raise ValueError(f"stack_for_eval: the keys are {layer.frozen_keys.dtype}, the base weight {w0.dtype}")
    return torch.cat([w0.detach(), layer.frozen_keys.detach()])  # (d_out + R, d_in)


def stacked_eval_forward(layer: MoRAMLinear, stacked: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in evaluation, with ``x [W0; A]ᵀ`` as one product: (..., d_in) -> (..., d_out).

    The product runs with float32 output (bf16/fp16 on CUDA: ``torch.mm(..., out_dtype=torch.float32)``,
    tensor cores with float32 accumulation; elsewhere on the exactly widened operands), so ``p`` is what the
    precision policy asks (docs/semantics.md#precision); ``y0 = z[:, :d_out] + b0`` is rounded to ``x``'s
    dtype as the base layer's output is (its rounding may differ from the base GEMM's by an ulp). Routing as
    the layer does it (the fused kernel where ``routing_kernel`` selects it, else the reference functions),
    then ``y0 + c Bᵀ`` in ``x``'s dtype.
    """
    from moram_ref.torch import activation, routing_triton  # noqa: PLC0415

    cfg, d_out = layer.config, layer.d_out
    x2 = x.reshape(-1, x.shape[-1])  # (N, d_in)
    if x2.is_cuda and x2.dtype in (torch.bfloat16, torch.float16):
        z = torch.mm(x2, stacked.T, out_dtype=torch.float32)  # (N, d_out + R)
    else:
        z = x2.float() @ stacked.float().T if x2.dtype != torch.float64 else x2 @ stacked.T
    bias = layer.base_layer.bias
    y0 = (z[:, :d_out] + (bias.to(z.dtype) if bias is not None else 0)).to(x.dtype)  # (N, d_out)
    p = z[:, d_out:]  # (N, R)
    if routing_triton.use_triton(cfg, p, p.shape[-1]):
        c = routing_triton.gated_responses(p, None, cfg, training=False, c_dtype=x.dtype)[0]
    else:
        c = (activation.final_weights(p, cfg, False)[-1] * p).to(x.dtype)  # (N, R)
    return torch.addmm(y0, c, layer.frozen_values.T).reshape(*x.shape[:-1], d_out)
