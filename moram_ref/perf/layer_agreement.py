"""Layer-by-layer agreement of a fused model with its eager twin, on the model's own activations.

A whole-model loss cannot see a wrong routing kernel where the adapters barely move it: on a random
Llama the bank moves the loss by ~10⁻⁴, and a kernel returning zeros passed the loss check. And comparing
the last hidden state mixes the kernel's error with bf16 rounding compounded through the depth: on the
random Llama-3.2-1B shape (CPU, ``TRITON_INTERPRET=1``, 2 × 64 tokens) a correct kernel's last hidden
state differed from eager's by 9 % of the bank's effect on it, a kernel returning zeros by 100 %.

So each attached MoRAM layer is checked alone. One forward of the eager model records every layer's
input ``x``; then each layer maps that same ``x`` — the eager layer ``y_e``, the fused twin's layer ``y_f``,
and the base layer alone ``y_0 = W0 x + b`` — with the global RNG seeded before each call (the same
dropout draw in training mode). Per layer, with ``u`` the unit roundoff of the layer's output dtype::

    bank_effect   = ‖y_e − y_0‖ / ‖y_0‖                        what the bank adds, relative to the base output
    relative_diff = ‖y_f − y_e‖ / max(‖y_e − y_0‖, u·‖y_0‖)    the fused layer's error as a share of it

``relative_diff`` is 0 for a kernel identical to eager and 1 for one that drops the bank; the floor
``u·‖y_0‖`` keeps a layer whose bank adds nothing (every token gated off) from dividing by zero. It does
not compound, since every layer sees the eager model's input. Legitimate non-zero values come from float32
routing arithmetic in another order (≈ 10⁻⁷ in ``w``), which can flip the rounding of an output element by
one unit, and from a token whose top-k is a near tie keeping another atom (its whole update then
differs). Rounding alone moves an output element by at most one unit in the last place (``2u·|y|``), so
it cannot push ``relative_diff`` past ``2u·‖y_e‖ / ‖y_e − y_0‖ ≈ 2u·(1 + e)/e`` for a bank effect ``e``; the
bound is that or ``LAYER_BOUND`` (2⁻¹⁰), whichever is larger, held by the *median* over layers (``e`` its
median too) — a wrong kernel is wrong in every layer, a near tie lands in a few — and the maximum and its
layer are recorded. ``informative``: the bound is at most 1/2, so a kernel dropping the bank (score 1) or
getting half of it wrong fails.

In training mode the backward is compared too: the gradients of ``⟨y, G⟩`` (``G`` fixed, random) with
respect to ``x`` — relative to the bank's share of it, bounded like the forward — and to the current
task's keys and values, relative to their norms, bounded by ``8u`` (the gradient of an atom passes through
a few roundings in the output dtype: the value product, the cast of ``c``, the incoming gradient).

Measured on the CPU (``TRITON_INTERPRET=1``), median over layers: on the random Llama-3.2-1B shape (bf16,
2 × 64 tokens, e = 0.044) a correct kernel's forward 0.015 (bound 0.18), ``∂/∂x`` 1.3·10⁻⁵, ``∂/∂atoms``
0.0045 (bound 0.031); on the quick tiny Llama 0.0071, 0, 0.0047; on the quick CLIP (float32) the medians
3–6·10⁻⁷, the largest layer's about 6·10⁻⁷ (bound 2⁻¹⁰). A kernel returning zeros, or zeros for the frozen
bank: forward 1.0. Of 13 mutants of the kernel, the quick CLIP and LLM steps between them catch every one
that changes a result there beyond rounding (τ ignored, ``c = w``, the gate in training, softmax over all R,
k + 1, two wrong backward terms); the other five act only on exact ties, scores exactly at δ, k > 16 or the
gate in a backward, which the kernel's own test cases (``tests/routing_triton_cases.py``, in the CUDA suite
too) pin.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moram_ref.perf.accuracy import UNIT_ROUNDOFF

LAYER_BOUND = 2.0**-10  # least bound on a median relative_diff over layers; see the module docstring
ATOM_GRAD_ROUNDINGS = 8  # ∂/∂keys, ∂/∂values: bound 8u (u of the layer's output dtype); see the module docstring


def moram_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's attached MoRAM layers by qualified name, in module order."""
    from moram_ref.torch.attach import attached_layers  # noqa: PLC0415
    from moram_ref.torch.layer import MoRAMLinear  # noqa: PLC0415

    return {n: m for n, m in attached_layers(model) if isinstance(m, MoRAMLinear)}


def layer_inputs(model: torch.nn.Module, forward: Callable[[], object]) -> dict[str, torch.Tensor]:
    """Every MoRAM layer's input during one call of ``forward()`` (no grad), by layer name.

    Raises:
        ValueError: the model has no MoRAM layer, or ``forward`` did not call one of them.
    """
    layers = moram_layers(model)
    if not layers:
        raise ValueError("layer_inputs: the model has no attached MoRAM layer")
    seen: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_module, inp, _out) -> None:  # returns None: the layer's output stays as it is
            seen.setdefault(name, inp[0].detach())
        return hook

    hooks = [layer.register_forward_hook(record(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in hooks:
            h.remove()
    missing = sorted(set(layers) - set(seen))
    if missing:
        raise ValueError(f"layer_inputs: forward() did not reach {len(missing)} MoRAM layer(s), e.g. {missing[0]}")
    return seen


@dataclass
class LayerRecord:
    """One layer's side of the comparison, on the CPU in float32: ``y`` (the layer's output), ``y0`` (its base
    layer's), ``u`` (the output dtype's unit roundoff) and, in training mode, ``grads``: the gradients of
    ``⟨y, G⟩`` for a fixed random ``G`` with respect to the input (``x``; ``x0`` through the base layer alone)
    and the current task's ``keys`` and ``values``."""

    y: torch.Tensor
    y0: torch.Tensor
    u: float
    grads: dict[str, torch.Tensor] | None = None


def _cpu(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return (torch.zeros_like(like) if t is None else t).detach().float().cpu()


def layer_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor], training: bool, seed: int = 0,
                  context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  ) -> dict[str, LayerRecord]:
    """A :class:`LayerRecord` per layer: the layer (in training or evaluation mode) and its base layer alone,
    each on ``inputs[name]``, under ``context()`` (e.g. the caller's autocast), the global RNG seeded with
    ``seed`` before each layer call (the same dropout draw). In training mode also the backward pass, with
    ``G`` drawn from ``seed + 1``. Results move to the CPU (the check holds no device memory while the steps
    are timed); the model's mode is restored afterwards."""
    layers = moram_layers(model)
    was = {name: layer.training for name, layer in layers.items()}
    out = {}
    try:
        with context():
            for name, layer in layers.items():
                layer.train(training)
                x = inputs[name].detach().requires_grad_(training)
                torch.manual_seed(seed)
                with torch.set_grad_enabled(training):
                    y, y0 = layer(x), layer.base_layer(x)
                rec = LayerRecord(_cpu(y, y), _cpu(y0, y0), UNIT_ROUNDOFF[y.dtype])
                if training:
                    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(y.device)
                    gx, gk, gv = torch.autograd.grad((y.float() * g).sum(), [x, layer.keys, layer.values],
                                                     allow_unused=True)
                    (gx0,) = torch.autograd.grad((y0.float() * g).sum(), [x])
                    rec.grads = {"x": _cpu(gx, x), "x0": _cpu(gx0, x), "keys": _cpu(gk, layer.keys),
                                 "values": _cpu(gv, layer.values)}
                out[name] = rec
    finally:
        for name, layer in layers.items():
            layer.train(was[name])
    return out


def _norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


def _relative(got: torch.Tensor, want: torch.Tensor, scale: float) -> float:
    """``‖got − want‖ / scale``; 0 when both agree exactly, ∞ when they differ and ``scale`` is 0."""
    err = _norm(got - want)
    return err / scale if scale > 0 else (0.0 if err == 0 else math.inf)


def _median_summary(diff: dict[str, float], bound: float) -> dict:
    worst = max(diff, key=lambda n: (diff[n] != diff[n], diff[n]))  # a NaN counts as worst
    med = statistics.median(diff.values())
    return {"ok": all(math.isfinite(v) for v in diff.values()) and med <= bound, "bound": bound,
            "median_relative_diff": med, "max_relative_diff": diff[worst], "worst_layer": worst}


def _against_bank(got: dict, want: dict, want0: dict, unit: float) -> dict:
    """Per layer ``‖got − want‖ / max(‖want − want0‖, u·‖want0‖)`` (the error as a share of what the bank
    adds to ``want0``, the base layer's part), summarised over layers against ``max(LAYER_BOUND,
    2u(1 + e)/e)`` for the median bank effect ``e`` (see the module docstring)."""
    diff, effect = {}, {}
    for name in want:
        added, base = _norm(want[name] - want0[name]), _norm(want0[name])
        diff[name] = _relative(got[name], want[name], max(added, unit * base))
        effect[name] = added / base if base > 0 else math.inf
    med = statistics.median(effect.values())
    bound = max(LAYER_BOUND, 2 * unit * (1 + med) / med) if med > 0 else math.inf
    return {**_median_summary(diff, bound), "median_bank_effect": med, "min_bank_effect": min(effect.values())}


def layer_agreement(eager: dict[str, LayerRecord], fused: dict[str, LayerRecord]) -> dict:
    """Compare :func:`layer_outputs` of the fused model with the eager one's (see the module docstring).

    Returns ``ok`` (the forward's median ``relative_diff`` ≤ ``bound``, every value finite, the same layers,
    and the backward's, where recorded), ``bound``, ``informative``, medians and maxima of ``relative_diff``
    and ``bank_effect``, the worst layer's name, the number of layers, and in training mode ``backward``: the
    same for the gradients — ``x``: ``∂/∂x`` relative to the bank's share of it, ``max(‖g_x − g_x0‖, u·‖g_x0‖)``,
    bounded as the forward; ``atoms``: the larger of ``∂/∂keys``, ``∂/∂values`` relative to their norms, bounded
    by ``max(LAYER_BOUND, 8u)``. Never raises on numbers (a NaN makes ``ok`` false).
    """
    if set(eager) != set(fused) or not eager:
        return {"ok": False, "informative": False, "error": f"layers differ: eager {len(eager)}, fused {len(fused)}"}
    unit = max(e.u for e in eager.values())
    out = _against_bank({n: f.y for n, f in fused.items()}, {n: e.y for n, e in eager.items()},
                        {n: e.y0 for n, e in eager.items()}, unit)
    out.update(layers=len(eager), informative=out["bound"] <= 0.5)
    if all(e.grads is not None and fused[n].grads is not None for n, e in eager.items()):
        grads = {n: (e.grads, fused[n].grads) for n, e in eager.items()}
        x = _against_bank({n: f["x"] for n, (_, f) in grads.items()}, {n: g["x"] for n, (g, _) in grads.items()},
                          {n: g["x0"] for n, (g, _) in grads.items()}, unit)
        atoms = {n: max(_relative(f[k], g[k], _norm(g[k])) for k in ("keys", "values")) for n, (g, f) in grads.items()}
        out["backward"] = {"x": x, "atoms": _median_summary(atoms, max(LAYER_BOUND, ATOM_GRAD_ROUNDINGS * unit))}
        out["backward"]["ok"] = x["ok"] and out["backward"]["atoms"]["ok"]
        out["ok"] = out["ok"] and out["backward"]["ok"]
    return out


MODES = ("train", "eval")


def eager_reference(model: torch.nn.Module, forward: Callable[[], object],
                    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict:
    """The eager model's side of the check: its layers' inputs during ``forward()`` (evaluation mode, under
    ``context()``) and :func:`layer_outputs` on them in both modes. Leaves the model in evaluation mode."""
    model.eval()
    with context():
        inputs = layer_inputs(model, forward)
    return {"inputs": inputs, "outputs": {m: layer_outputs(model, inputs, m == "train", context=context) for m in MODES}}


def checks_against(reference: dict, model: torch.nn.Module,
                   context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict:
    """``check_layers_agree_with_eager_{train,eval}``: :func:`layer_agreement` of ``model`` (the fused twin,
    same bank) on the reference's inputs, per mode."""
    return {f"check_layers_agree_with_eager_{m}": layer_agreement(want, layer_outputs(model, reference["inputs"],
                                                                                    m == "train", context=context))
            for m, want in reference["outputs"].items()}
