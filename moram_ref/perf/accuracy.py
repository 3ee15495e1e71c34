"""Self-checks for the benchmarks: every implementation against a float64 reference, with error bounds.

The reference is computed in float64 from the *same* (already rounded) inputs and parameters, with the
library's exact functions (spec §3: ``normalise``, ``top_k_mask``, ``masked_softmax``, ``threshold_gate``).
What remains is the arithmetic of the implementation, bounded per output element by standard forward
error analysis (Higham, *Accuracy and Stability of Numerical Algorithms*, §2–3):

* a dot product of length ``n`` accumulated in unit roundoff ``u_acc`` (float32 on CPUs and in cuBLAS)
  errs by at most ``γ_n = n·u_acc / (1 − n·u_acc)`` times the sum of the absolute products;
* every rounding of a result to the storage dtype (unit roundoff ``u``: 2⁻⁸ for bfloat16, 2⁻²⁴ for
  float32) adds at most ``u`` times its magnitude. A layer output passes through a few such roundings
  (base product, cuBLAS split-K partial sums, Δ, the sum, the cast of ``w ⊙ p``); ``ROUNDINGS = 8``
  covers them with room;
* the routing is where MoRAM is sensitive: an error ``Δs`` in a kept score moves its logit by ``Δs/τ``
  (τ = 0.01: a factor 100). If every kept logit moves by at most ``m``, every softmax weight changes by
  a factor within ``[e^{−2m}, e^{2m}]`` (the numerator by ``e^{±m}``, the denominator too), so
  ``|Δw_i| ≤ (e^{2m} − 1)·w_i`` — exact, not first order. ``Δs`` itself comes from the responses
  ``p = A x``: ``|Δp_i| ≤ ε_p·(|A||x|)_i`` with ``ε_p`` the routing dtype's roundings plus ``γ_{d_in}``,
  and ``s = p/‖p‖`` inherits ``|Δs_i| ≲ (|Δp_i| + |s_i|·‖Δp‖)/‖p‖``.
* a token whose top-k is decided by a margin smaller than these errors (the k-th and (k+1)-th responses
  closer than ``2·max |Δp|``: the order of ``s`` is the order of ``p``), or whose kept score lies within
  ``Δs`` of the threshold δ, may legitimately route differently: such tokens are *near a tie*, counted
  and left out of the comparison.

A check returns numbers (violations, max |diff|, max diff/bound, near-tie tokens), never raises.
"""

from __future__ import annotations

import math

import torch

from moram_ref.torch import activation

ROUNDINGS = 8
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
ACCUMULATE = 2.0**-24  # float32 accumulation in matrix products (CPU BLAS, cuBLAS; TF32 off, torch's default)


def unit_roundoff(dtype: torch.dtype) -> float:
    return UNIT_ROUNDOFF[dtype]


def tf32_unit(x: torch.Tensor) -> float:
    """Where float32 products run on TF32 tensor cores (``allow_tf32``), each operand is rounded to 10 bits:
    a product errs by at most ``2·2⁻¹¹`` relative on top of the accumulation (0 otherwise)."""
    on = x.is_cuda and x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return 2 * 2.0**-11 if on else 0.0


def gamma(n: int, u: float = ACCUMULATE) -> float:
    """``γ_n = n·u / (1 − n·u)``, the relative error bound of a length-``n`` accumulation."""
    return n * u / (1.0 - n * u)


def moram_reference(layer, x: torch.Tensor, training: bool, route_dtype: torch.dtype) -> dict:
    """float64 reference output of ``layer`` on ``x`` and its per-element error bound (see module doc).

    ``route_dtype``: the dtype in which the implementation computes ``p = A x`` (float32 for the layer,
    the input dtype for the authors' style). Returns ``y`` (N, d_out), ``bound`` (N, d_out), ``tie`` (N,).
    """
    cfg = layer.config
    keys, values = (t.double() for t in layer.bank())  # (R, d_in), (d_out, R) with α folded in
    w0 = layer.base_layer.weight.double()  # (d_out, d_in)
    bias = layer.base_layer.bias
    b0 = bias.double() if bias is not None else w0.new_zeros(w0.shape[0])  # (d_out,)
    xd = x.detach().double()  # (N, d_in)
    n_atoms, d_in = keys.shape
    u_out, u_r = unit_roundoff(x.dtype), unit_roundoff(route_dtype)
    p = xd @ keys.T  # (N, R)
    s = activation.normalise(p, cfg.eps)  # (N, R)
    k = cfg.k_eff(n_atoms)
    keep = activation.top_k_mask(s, k)  # (N, R)
    w = activation.masked_softmax(s, keep, cfg.temperature)  # (N, R)
    gate = cfg.threshold_active(training)
    if gate:
        w = activation.threshold_gate(w, s, cfg.threshold)
    c = w * p  # (N, R)
    y = xd @ w0.T + b0 + c @ values.T  # (N, d_out)
    # the responses' error and what it does to the scores
    # |Δp| ≤ u_r|p| (rounding p to its dtype) + γ_d·(|x||a|) (float32 accumulation) + u_r·(|x||a|) where a
    # half-precision product may round its split-K partial sums (cuBLAS's reduced-precision reduction)
    half = route_dtype in (torch.bfloat16, torch.float16)
    partial = u_r if half and x.is_cuda and _reduced_reduction(route_dtype) else 0.0
    e_p = u_r * p.abs() + (gamma(d_in) + partial + tf32_unit(x)) * (xd.abs() @ keys.abs().T)  # (N, R)
    norm = torch.linalg.vector_norm(p, dim=-1, keepdim=True)  # (N, 1)
    e_norm = torch.linalg.vector_norm(e_p, dim=-1, keepdim=True)  # (N, 1)
    ds = 1.1 * (e_p + s.abs() * e_norm) / norm + 4 * u_r * s.abs()  # (N, R) 1.1: second-order slack
    tie = (e_norm / norm).squeeze(-1) > 0.05  # too close to p = 0 for the first-order bound
    if k < n_atoms:  # the selection depends on p alone (s = p/‖p‖ keeps its order): compare in p
        order = torch.topk(s, k + 1, dim=-1).indices[:, k - 1 :]  # (N, 2) the k-th and (k+1)-th atoms
        pk = p.gather(-1, order)  # (N, 2)
        slack = 2 * e_p.amax(-1) + 4 * u_r * pk.abs().amax(-1)  # both moved, plus the division's rounding
        tie |= pk[:, 0] - pk[:, 1] <= slack
    if gate:
        tie |= ((s - cfg.threshold).abs() <= ds).logical_and(keep).any(-1)
    m = (ds * keep).amax(-1, keepdim=True) / cfg.temperature  # (N, 1) largest kept-logit error
    rho = torch.expm1(2 * m) + 4 * u_r  # (N, 1) relative error of every weight
    e_route = (w * (rho * p.abs() + (1 + rho) * e_p)) @ values.abs().T  # (N, d_out)
    base_mag = xd.abs() @ w0.abs().T + b0.abs()  # (N, d_out)
    update_mag = ((1 + rho) * c.abs()) @ values.abs().T  # (N, d_out)
    unit = ROUNDINGS * u_out + tf32_unit(x)
    bound = (unit + gamma(d_in + n_atoms)) * (base_mag + update_mag) + e_route
    delta_bound = (unit + gamma(n_atoms)) * update_mag + e_route
    return {"y": y, "bound": bound, "tie": tie, "rho_max": float(rho[~tie].max()) if bool((~tie).any()) else None,
            "delta": c @ values.T, "delta_bound": delta_bound, "base_mag": base_mag, "d_in": d_in}


def _reduced_reduction(dtype: torch.dtype) -> bool:
    m = torch.backends.cuda.matmul
    return bool(m.allow_bf16_reduced_precision_reduction if dtype == torch.bfloat16
                else m.allow_fp16_reduced_precision_reduction)


def lora_reference(base, lora_a, lora_b, x: torch.Tensor) -> dict:
    """float64 reference of plain LoRA and its per-element bound (no routing: arithmetic only)."""
    xd = x.detach().double()
    w0, a, b = (t.detach().double() for t in (base.weight, lora_a, lora_b))
    b0 = base.bias.detach().double()
    y = xd @ w0.T + b0 + (xd @ a.T) @ b.T
    base_mag = xd.abs() @ w0.abs().T + b0.abs()
    update_mag = (xd.abs() @ a.abs().T) @ b.abs().T
    unit = ROUNDINGS * unit_roundoff(x.dtype) + 2 * tf32_unit(x) + gamma(x.shape[-1] + a.shape[0])
    return {"y": y, "bound": unit * (base_mag + update_mag), "tie": torch.zeros(x.shape[0], dtype=torch.bool,
                                                                                device=x.device),
            "delta": (xd @ a.T) @ b.T, "delta_bound": unit * update_mag, "base_mag": base_mag, "d_in": x.shape[-1]}


def compare(out: torch.Tensor, ref: dict, base_out: torch.Tensor | None = None, same_base: bool = True) -> dict:
    """Count elements whose error exceeds the bound, on tokens not near a routing tie.

    With ``base_out`` (the frozen base layer's own output ``ŷ0``, computed by the same code on the same
    input), also the tighter *update check*: ``ŷ − ŷ0`` against ``Δ_ref``. The base product's error then
    cancels, except for the roundings of ``y0`` and of the sum (``2u(|ŷ0| + |ŷ|)``) and a different
    float32 accumulation order (``2γ_d (|x||W0| + |b0|)``); where the implementation may compute its base
    product differently (``same_base=False``: compiled or fused code) and a half-precision product may
    round its partial sums, ``2u (|x||W0| + |b0|)`` as well. bf16 rounding of the base output is then no
    longer what limits what the check can see.
    """
    err = (out.detach().double() - ref["y"]).abs()  # (N, d_out)
    ok_rows = ~ref["tie"]
    ratio = err[ok_rows] / ref["bound"][ok_rows].clamp_min(1e-300)
    violations = int((ratio > 1).sum())
    update = None
    if base_out is not None:
        u = unit_roundoff(out.dtype)
        y_hat, y0_hat = out.detach().double(), base_out.detach().double()
        base_unit = 2 * gamma(ref["d_in"]) + 2 * tf32_unit(out)
        if not same_base and out.is_cuda and out.dtype in (torch.bfloat16, torch.float16) \
                and _reduced_reduction(out.dtype):
            base_unit += 2 * u
        bound_u = 2 * u * (y0_hat.abs() + y_hat.abs()) + base_unit * ref["base_mag"] + ref["delta_bound"]
        ratio_u = ((y_hat - y0_hat - ref["delta"]).abs() / bound_u.clamp_min(1e-300))[ok_rows]
        update = {"violations": int((ratio_u > 1).sum()),
                  "max_diff_over_bound": float(ratio_u.max()) if ratio_u.numel() else 0.0}
    failed = [name for name, bad in (("output", violations > 0), ("finite", not bool(torch.isfinite(out).all())),
                                     ("update", update is not None and update["violations"] > 0)) if bad]
    return {
        "ok": not failed,
        "failed": failed,  # which part failed: the output bound, finiteness, the (tighter) update check
        "update_check": update,
        "violations": violations,
        "checked_elements": int(ratio.numel()),
        "tokens": int(out.shape[0]),
        "near_tie_tokens": int(ref["tie"].sum()),
        "max_abs_diff": float(err.max()) if err.numel() else 0.0,
        "max_abs_diff_checked": float(err[ok_rows].max()) if ratio.numel() else 0.0,
        "max_diff_over_bound": float(ratio.max()) if ratio.numel() else 0.0,
        "median_bound": float(ref["bound"].median()),
        "weight_error_factor_max": ref.get("rho_max"),
        # above 1 the routing bound allows any weight to double: the check then only catches gross errors
        "routing_bound_informative": ref.get("rho_max") is None or ref["rho_max"] <= 1.0,
    }


def grad_tolerance(dtype: torch.dtype, rho_max: float | None) -> float:
    """Normwise relative tolerance for gradients: each entry sums products of a few rounded factors
    (≤ ``ROUNDINGS`` roundings of ``u`` each), and, where routing runs in low precision, the weights'
    relative error ``ρ`` enters the gradient at most twice (``w`` and ``∂w/∂s``)."""
    return 2 * ROUNDINGS * unit_roundoff(dtype) + 2 * (rho_max or 0.0)


def compare_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], tol: float) -> dict:
    """Normwise relative error ``‖g − g_ref‖ / ‖g_ref‖`` per tensor, against ``tol``. ``informative``: whether
    ``tol < 1`` (a tolerance of 1 or more passes a gradient of the right size and any direction: routing in
    bf16, as the authors' style does, flips enough decisions to make the bound so; the errors stay recorded)."""
    rel = {}
    for name, ref in want.items():
        g = got.get(name)
        if g is None:
            rel[name] = math.inf
            continue
        denom = float(torch.linalg.vector_norm(ref))
        rel[name] = float(torch.linalg.vector_norm(g.double() - ref)) / (denom if denom > 0 else 1.0)
    return {"ok": all(v <= tol for v in rel.values()), "relative_error": rel, "tolerance": tol, "informative": tol < 1}


LOSS_BOUND = 2.0**-5  # relative; see loss_agreement


def loss_agreement(eager: list[float], fused: list[float], checked: int, plain: float | None = None) -> dict:
    """The fused kernel's losses against the eager reference's in a whole-model step section (same model,
    seed and batches): ``|fused - eager| / |eager|`` per step, the first ``checked`` steps in ``relative_diff``,
    held to ``LOSS_BOUND`` (3 %), the later ones in ``later_relative_diff``, only recorded. A loose bound, on
    purpose: it catches a kernel that routes or differentiates wrongly, not rounding. Routing and reductions run in another order in the kernel,
    a near-tie may keep another atom, and at τ = 0.01 training amplifies such a difference step by step
    (docs/results.md, "Threads and reproducibility": 27-fold in step 2), so later steps are only recorded.

    ``plain``: the model's step-0 loss without the adapters. ``bank_effect`` = ``|eager[0] − plain| / |plain|``,
    what the adapters change; ``informative`` = ``bank_effect ≥ 2·LOSS_BOUND``: only then can a kernel that
    drops or misweights the bank miss the bound (a random Llama's bank moves its loss by ~10⁻⁴: there the
    check cannot tell, and says so; :mod:`moram_ref.perf.layer_agreement` compares the models layer by layer).
    """
    diffs = [abs(f - e) / max(abs(e), 1e-30) for e, f in zip(eager, fused)]
    head = diffs[:checked]
    effect = None if plain is None or not eager else abs(eager[0] - plain) / max(abs(plain), 1e-30)
    return {"ok": bool(head) and all(d <= LOSS_BOUND for d in head), "relative_diff": head, "checked_steps": checked,
            "later_relative_diff": diffs[checked:],  # recorded, not held to the bound (see above)
            "bound": LOSS_BOUND, "bank_effect": effect, "informative": effect is not None and effect >= 2 * LOSS_BOUND}
