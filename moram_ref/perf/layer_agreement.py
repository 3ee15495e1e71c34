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
``u·‖y_0‖`` keeps a layer whose bank adds nothing (every token gated off) from dividing by zero. It does not compound, since every layer sees the eager
model's input. Legitimate non-zero values come from float32 routing arithmetic in another order (≈ 10⁻⁷
in ``w``), which can flip the rounding of an output element by one unit, and from a token whose top-k is
a near tie keeping another atom (its whole update then differs). Rounding alone moves an output element by
at most one unit in the last place (``2u·|y|``), so it cannot push ``relative_diff`` past
``2u·‖y_e‖ / ‖y_e − y_0‖ ≈ 2u·(1 + e)/e`` for a bank effect ``e``; the bound is that or ``LAYER_BOUND``,
whichever is larger, held by the *median* over layers (``e`` its median too) — a wrong kernel is wrong in
every layer, a near tie lands in a few — and the maximum and its layer are recorded. ``informative``: the
bound is at most 1/2, so a kernel dropping the bank (score 1) or getting half of it wrong fails.
Measured on the CPU (``TRITON_INTERPRET=1``): a correct kernel 0.7 % (tiny Llama, e = 0.24) and 1.5 %
(Llama-3.2-1B shape, e = 0.045, bound 0.18); one returning zeros, or zeros for the frozen bank, 100 %.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable

import torch

from moram_ref.perf.accuracy import UNIT_ROUNDOFF

LAYER_BOUND = 2.0**-4  # least bound on the median relative_diff over layers; see the module docstring


def moram_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's attached MoRAM layers by qualified name, in module order."""
    from moram_ref.torch.layer import MoRAMLinear  # noqa: PLC0415

    return {n: m for n, m in model.named_modules() if isinstance(m, MoRAMLinear)}


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


def layer_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor], training: bool, seed: int = 0,
                  context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``(y, y_0, u)`` per layer: the layer (in training or evaluation mode) and its base layer alone, each on
    ``inputs[name]``, widened to float32 and moved to the CPU (the check holds no device memory while the
    steps are timed), and the unit roundoff ``u`` of the layer's output dtype; under ``context()`` (e.g. the caller's autocast), the global RNG seeded with
    ``seed`` before each layer call. The model's mode is restored afterwards."""
    layers = moram_layers(model)
    was = {name: layer.training for name, layer in layers.items()}
    out = {}
    try:
        with torch.no_grad(), context():
            for name, layer in layers.items():
                x = inputs[name]
                layer.train(training)
                torch.manual_seed(seed)
                y = layer(x)
                out[name] = (y.float().cpu(), layer.base_layer(x).float().cpu(), UNIT_ROUNDOFF[y.dtype])
    finally:
        for name, layer in layers.items():
            layer.train(was[name])
    return out


def layer_agreement(eager: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
                    fused: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> dict:
    """Compare :func:`layer_outputs` of the fused model with the eager one's (see the module docstring).

    Returns ``ok`` (median ``relative_diff`` ≤ ``bound``, every value finite, the same layers), ``bound``,
    ``informative``, medians and maxima of ``relative_diff`` and ``bank_effect``, the worst layer's name, the
    number of layers. Never raises on numbers (a NaN makes ``ok`` false).
    """
    if set(eager) != set(fused) or not eager:
        return {"ok": False, "informative": False, "error": f"layers differ: eager {len(eager)}, fused {len(fused)}"}
    diff, effect = {}, {}
    unit = 0.0
    for name, (y_e, y_0, u) in eager.items():
        y_f = fused[name][0]
        added, base = float(torch.linalg.vector_norm(y_e - y_0)), float(torch.linalg.vector_norm(y_0))
        floor = max(added, u * base)
        err = float(torch.linalg.vector_norm(y_f - y_e))
        diff[name] = err / floor if floor > 0 else (0.0 if err == 0 else float("inf"))
        effect[name] = added / base if base > 0 else float("inf")
        unit = max(unit, u)
    worst = max(diff, key=lambda n: (diff[n] != diff[n], diff[n]))  # a NaN counts as worst
    med_diff, med_effect = statistics.median(diff.values()), statistics.median(effect.values())
    finite = all(math.isfinite(v) for v in diff.values())
    bound = max(LAYER_BOUND, 2 * unit * (1 + med_effect) / med_effect) if med_effect > 0 else math.inf
    return {"ok": finite and med_diff <= bound, "bound": bound, "layers": len(diff),
            "median_relative_diff": med_diff, "max_relative_diff": diff[worst], "worst_layer": worst,
            "median_bank_effect": med_effect, "min_bank_effect": min(effect.values()),
            "informative": bound <= 0.5}


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
