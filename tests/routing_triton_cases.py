"""The fused Triton routing kernels equal the torch reference (style habit 16): the cases.

Run by ``tests/test_routing_triton.py`` in a fresh process with ``TRITON_INTERPRET=1`` (Triton's interpreter,
on the CPU; the variable must be set before triton is imported, hence the separate process), or directly on
a GPU machine, compiled: ``pytest tests/routing_triton_cases.py``. Not collected by a plain ``pytest`` run
(the name does not start with ``test_``).

``moram_ref.torch.routing_triton.gated_responses`` against ``gated_responses_ref`` (= ``activation.final_weights``
then ``c = w ⊙ p``, routing in float32): the kept set exactly, ``w`` and ``c`` to tolerances derived below, and
the backward against float64 autograd through the reference. Both top-k rules (k rounds of argmax; bisection
on the float bits) run on every case.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("triton", reason="triton does not import (CPU-only torch build); the fused kernel needs it")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("the kernels need CUDA, or TRITON_INTERPRET=1 (see tests/test_routing_triton.py)",
                allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda"

from moram_ref.config import MoRAMConfig  # noqa: E402
from moram_ref.torch import routing_triton as RT  # noqa: E402
from moram_ref.torch.activation import final_weights  # noqa: E402
from moram_ref.torch.layer import MoRAMLinear  # noqa: E402

U32 = 2.0**-24  # unit roundoff of float32
U_BF16 = 2.0**-8  # unit roundoff of bfloat16
# A result stored in bf16 may differ from torch's by < 1 ulp ≤ 2·U_BF16 relative: Triton's interpreter truncates
# float32 -> bf16 where torch and the GPU round to nearest. Tolerance: twice that.
RTOL_BF16 = 4 * U_BF16


@pytest.fixture(params=["argmax", "bisect"])
def rule(request, monkeypatch):
    """Force one top-k rule: k rounds of argmax for every k, or the bit bisection for every k."""
    monkeypatch.setattr(RT, "ARGMAX_MAX_K", 10**9 if request.param == "argmax" else 0)
    return request.param


def make_p(seed: int, n: int, r: int, pattern: str, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """(n, r) responses: Gaussian, or with exact ties (few distinct dyadic values, all-zero rows, -0.0)."""
    rng = np.random.default_rng(seed)
    if pattern == "gauss":
        p = rng.standard_normal((n, r))
    else:  # ties: dyadic values, so that norms and scores are exact in float32 in both implementations
        p = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0], size=(n, r))
        p = np.where(p == 0, rng.choice([-0.0, 0.0], size=(n, r)), p)  # -0.0 and +0.0: equal scores, a tie
        p[0] = 0.0  # an all-zero row: the first k_eff atoms are kept
        if n > 1:
            p[1] = -0.0 if r % 2 else 0.5  # all equal (signed zeros, or one repeated value)
    return (torch.from_numpy(p) * scale).to(device=DEVICE, dtype=dtype)


def tolerance_w(tau: float) -> float:
    """|Δw| bound: s agrees to a few ulp, z = s/τ to a few ulp of 1/τ, so ŵ's relative error is ≲ c·u·(1 + 1/τ).

    Both sides round in float32 (u = 2⁻²⁴); |z| ≤ 1/τ, and exp turns an absolute error of z into a relative one.
    """
    return 16 * U32 * (1 + 1 / tau)


def routed(pa, pb, config, training):
    ca, cb, w = RT.gated_responses(pa, pb, config, training, return_weights=True)
    return torch.cat([ca, cb], dim=-1), w


def check_forward(pa, pb, config, training):
    """Kernel vs reference: kept set exactly, then w and c to their tolerances."""
    c, w = routed(pa, pb, config, training)
    c_ref_a, c_ref_b, w_ref = RT.gated_responses_ref(pa, pb, config, training)
    c_ref = torch.cat([c_ref_a, c_ref_b], dim=-1)
    # the kept set does not depend on τ, δ or the mode: with a flat softmax and no gate, kept ⇔ w > 0
    flat = dataclasses.replace(config, temperature=1e3, threshold_mode="never")
    p = torch.cat([pa, pb], dim=-1).float()
    s, idx = final_weights(p, flat, False)[:2]
    keep_ref = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, idx, True)
    keep = routed(pa, pb, flat, False)[1] > 0
    bad = (keep != keep_ref).nonzero()
    assert not len(bad), f"kept set differs first at (row, atom) {bad[0].tolist()}: p row {p[bad[0][0]].tolist()}"
    tol = tolerance_w(config.temperature)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=tol, msg=lambda m: f"w: {m}")
    p_max = p.abs().amax(dim=-1, keepdim=True)  # (N, 1)
    rtol = 2 * U32 if p.dtype == pa.dtype else RTOL_BF16  # c is rounded to p's dtype
    err = (c.double() - c_ref.double()).abs()
    bound = tol * p_max.double() * (1 + rtol) + rtol * c_ref.double().abs()
    assert (err <= bound).all(), f"c: max excess {(err - bound).max().item():.3g} ({pa.dtype})"


def check_backward(pa, pb, config, training, seed):
    """Kernel gradient vs float64 autograd through the reference, per-row tolerance from a bound."""
    g = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((pa.shape[0], pa.shape[1] + pb.shape[1])))
    g = g.to(device=DEVICE, dtype=pa.dtype)  # ∂L/∂c, exact in float64 too
    pa_, pb_ = pa.clone().requires_grad_(), pb.clone().requires_grad_()
    ca, cb = RT.gated_responses(pa_, pb_, config, training)
    # each block's incoming gradient its own contiguous tensor (row strides r_old and r, as in the layer):
    # a kernel that swapped the two strides passed when both were views of one (N, R) gradient
    g_a, g_b = g[:, : pa.shape[1]].contiguous(), g[:, pa.shape[1]:].contiguous()
    grad = torch.cat(torch.autograd.grad((ca, cb), (pa_, pb_), (g_a, g_b)), dim=-1).double()
    p64 = torch.cat([pa, pb], dim=-1).double().requires_grad_()
    c64 = final_weights(p64, config, training)[-1] * p64
    (grad_ref,) = torch.autograd.grad(c64, p64, g.double())
    # |g_p| ≤ |g|·(1 + 4|p|/(τ·max(‖p‖, ε))) =: M per row; float32 routing errs by ≲ c·u·(1 + 1/τ) of M
    den = torch.linalg.vector_norm(p64.detach(), dim=-1, keepdim=True).clamp_min(config.eps)
    big = g.double().abs().amax(-1, keepdim=True) * (1 + 4 * p64.detach().abs().amax(-1, keepdim=True)
                                                     / (config.temperature * den))
    rtol = 0.0 if pa.dtype == torch.float32 else RTOL_BF16
    bound = 64 * U32 * (1 + 1 / config.temperature) * big + rtol * grad_ref.abs()
    err = (grad - grad_ref).abs()
    assert (err <= bound).all(), f"∂L/∂p: worst err/bound {(err / bound).max().item():.3g} at {(err / bound).argmax()}"


CASE = dict(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 5),
    r_old=st.integers(0, 40),
    r=st.integers(0, 24),
    k=st.one_of(st.none(), st.integers(1, 70)),
    min_active=st.integers(1, 3),
    tau=st.sampled_from([0.01, 0.03, 0.3, 1.0, 4.0]),
    delta=st.sampled_from([-1.0, -0.2, 0.0, 0.2, 0.5, 1.0]),
    mode=st.sampled_from(["eval", "always", "never"]),
    training=st.booleans(),
    pattern=st.sampled_from(["gauss", "ties"]),
    scale=st.sampled_from([1.0, 1e-3, 1e-30]),  # 1e-30: ‖p‖ < ε, the floor of the normaliser
    eps=st.sampled_from([1e-12, 0.5, 5.0]),  # 0.5, 5: the floor ε > ‖p‖ for some rows
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)


def build(case):
    r_old, r = case["r_old"], case["r"]
    if r_old + r == 0:
        r = 1
    cfg = MoRAMConfig(top_k=case["k"], min_active=case["min_active"], temperature=case["tau"],
                      threshold=case["delta"], threshold_mode=case["mode"], eps=case["eps"])
    scale = case["scale"] if case["dtype"] == torch.float32 else max(case["scale"], 1e-3)  # bf16 keeps its range
    p = make_p(case["seed"], case["n"], r_old + r, case["pattern"], scale, case["dtype"])
    return p[:, :r_old].contiguous(), p[:, r_old:].contiguous(), cfg


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # ~10 s each
@given(**CASE)
def test_forward_and_backward_equal_the_reference(rule, seed, n, r_old, r, k, min_active, tau, delta, mode,
                                                  training, pattern, scale, eps, dtype):
    case = dict(seed=seed, n=n, r_old=r_old, r=r, k=k, min_active=min_active, tau=tau, delta=delta, mode=mode,
                training=training, pattern=pattern, scale=scale, eps=eps, dtype=dtype)
    pa, pb, cfg = build(case)
    check_forward(pa, pb, cfg, training)
    check_backward(pa, pb, cfg, training, seed)


LARGE = [("argmax", 1, 1), ("argmax", 2048, 5), ("argmax", 2048, 40), ("bisect", 1, 1), ("bisect", 7, 3),
         ("bisect", 2048, 5), ("bisect", 2048, 700), ("bisect", 1500, 1500)]  # k rounds of argmax: small k only


@pytest.mark.parametrize("rule_, r_total, k", LARGE)
@pytest.mark.parametrize("pattern", ["gauss", "ties"])
def test_large_banks(monkeypatch, rule_, r_total, k, pattern):
    monkeypatch.setattr(RT, "ARGMAX_MAX_K", 10**9 if rule_ == "argmax" else 0)
    cfg = MoRAMConfig(top_k=k, temperature=0.01, threshold=0.0, threshold_mode="always")
    p = make_p(r_total + k, 2, r_total, pattern, 1.0, torch.float32)
    split = r_total // 3
    check_forward(p[:, :split].contiguous(), p[:, split:].contiguous(), cfg, training=True)
    check_backward(p[:, :split].contiguous(), p[:, split:].contiguous(), cfg, True, seed=k)


def test_score_exactly_on_delta_is_kept_and_leading_dims_are_kept():
    # p = (3, 4) ⇒ ‖p‖ = 5 and s = (0.6, 0.8) exactly rounded in both: δ = 0.6 keeps the first atom (s ≥ δ)
    cfg = MoRAMConfig(top_k=2, temperature=1.0, threshold=0.6, threshold_mode="always")
    p = torch.tensor([[[3.0, 4.0]], [[3.0, -4.0]]], device=DEVICE)  # (2, 1, 2)
    c_old, c_cur, w = RT.gated_responses(p[..., :1], p[..., 1:], cfg, training=True, return_weights=True)
    assert c_old.shape == (2, 1, 1) and c_cur.shape == (2, 1, 1) and w.shape == (2, 1, 2)
    assert (w[:, 0, 0] > 0).all() and w[1, 0, 1] == 0  # on δ kept; s = -0.8 < δ gated
    torch.testing.assert_close(w, RT.gated_responses_ref(p[..., :1], p[..., 1:], cfg, True)[2], rtol=0, atol=1e-6)


def test_empty_blocks_and_no_tokens():
    cfg = MoRAMConfig(top_k=2)
    p = torch.randn(3, 4, device=DEVICE)
    for pa, pb in ((p, None), (None, p), (p, p[:, :0]), (p[:, :0], p)):
        c_a, c_b, w = RT.gated_responses(pa, pb, cfg, training=False, return_weights=True)
        ref = RT.gated_responses_ref(pa, pb, cfg, False)
        torch.testing.assert_close(torch.cat([c_a, c_b], -1), torch.cat(ref[:2], -1), rtol=0, atol=1e-6)
    c_a, c_b = RT.gated_responses(torch.zeros(0, 3, device=DEVICE), torch.zeros(0, 2, device=DEVICE), cfg, True)
    assert c_a.shape == (0, 3) and c_b.shape == (0, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("blocks", ["frozen+current", "frozen only", "current only"])
@pytest.mark.parametrize("training", [True, False])
def test_layer_with_triton_equals_layer_with_torch(dtype, blocks, training):
    cfg = MoRAMConfig(atoms_per_task=5, top_k=4, temperature=0.05, threshold=0.1, threshold_mode="eval",
                      routing_kernel="torch")
    gen = torch.Generator().manual_seed(3)
    layers = {}
    for kernel in ("torch", "triton", "float64"):
        torch.manual_seed(0)
        kind = "torch" if kernel == "float64" else kernel
        layer = MoRAMLinear(torch.nn.Linear(6, 7), dataclasses.replace(cfg, routing_kernel=kind), dtype=torch.float32)
        for t in range(0 if blocks == "current only" else 2):
            layer.begin_task(torch.Generator().manual_seed(t))
            layer.values.data.normal_(generator=torch.Generator().manual_seed(10 + t))
            layer.end_task()
        if blocks != "frozen only":
            layer.begin_task(torch.Generator().manual_seed(9))
            layer.values.data.normal_(generator=torch.Generator().manual_seed(19))
        layer.to(device=DEVICE, dtype=dtype).train(training)
        if kernel == "float64":  # the same rounded parameters, computed in float64
            layer.to(dtype=torch.float64)
        layer.record = True
        layers[kernel] = layer
    x = torch.randn(2, 3, 6, generator=gen).to(device=DEVICE, dtype=dtype)
    out = {}
    for kernel, layer in layers.items():
        xr = x.clone().to(torch.float64 if kernel == "float64" else dtype).requires_grad_()
        y = layer(xr)
        y.square().sum().backward()
        grads = {f"{name}.grad": q.grad for name, q in layer.current_parameters().items()}
        out[kernel] = {"y": y, "x.grad": xr.grad, **grads, "w": layer.last_weights}
    assert out["triton"].keys() == out["torch"].keys()
    if dtype == torch.float32:
        for name, a in out["triton"].items():
            torch.testing.assert_close(a, out["torch"][name], rtol=1e-5, atol=1e-5,
                                       msg=lambda m, name=name: f"{name}: {m}")
        return
    # bf16: both paths round c, y and the gradients to bf16 (docs/semantics.md#precision), and Triton's
    # interpreter truncates float32 -> bf16 where torch rounds, so they may land on opposite sides of the
    # float64 result (x.grad of y.square().sum() sums 7 products of bf16-rounded terms). The kernel must
    # be as close to float64 on the same rounded operands as the torch reference is, up to four bf16 ulps
    # (a truncated c and a truncated output, each summed over the 6 tokens of a gradient).
    for name, a in out["triton"].items():
        ref, b = out["float64"][name], out["torch"][name].double()
        err_kernel, err_torch = (a.double() - ref).abs(), (b - ref).abs()
        allowed = 2 * err_torch + 4 * 2.0**-8 * (ref.abs() + ref.abs().mean())  # bf16 ulps at the tensor's scale
        worst = (err_kernel - allowed).max().item()
        assert worst <= 0, f"{name}: the kernel is further from float64 than allowed by {worst:.3g}"


def test_c_in_the_value_products_dtype():
    """c in a dtype other than p's (the layer passes the value product's, docs/semantics.md#precision)."""
    cfg = MoRAMConfig(top_k=3, temperature=0.03)
    p = make_p(5, 4, 12, "gauss", 1.0, torch.float32).requires_grad_()
    c_a, c_b = RT.gated_responses(p[:, :5], p[:, 5:], cfg, training=True, c_dtype=torch.bfloat16)
    r_a, r_b, _ = RT.gated_responses_ref(p[:, :5], p[:, 5:], cfg, True, c_dtype=torch.bfloat16)
    assert c_a.dtype == c_b.dtype == torch.bfloat16
    torch.testing.assert_close(torch.cat([c_a, c_b], -1), torch.cat([r_a, r_b], -1), rtol=RTOL_BF16, atol=1e-6)
    g = torch.randn(4, 12, dtype=torch.bfloat16, device=DEVICE)
    (grad,) = torch.autograd.grad(torch.cat([c_a, c_b], -1), p, g)
    (grad_ref,) = torch.autograd.grad(torch.cat([r_a, r_b], -1), p, g)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-4 * grad_ref.abs().max().item())


@pytest.mark.parametrize("training", [True, False])
def test_layer_compiles_whole_with_the_kernel(training):
    """A custom op: torch.compile(fullgraph=True) keeps it as one node; compiled equals eager."""
    cfg = MoRAMConfig(atoms_per_task=4, top_k=3, temperature=0.05, threshold=0.1, routing_kernel="triton")
    layer = MoRAMLinear(torch.nn.Linear(5, 3), cfg).to(DEVICE)
    for t in range(2):
        layer.begin_task(torch.Generator().manual_seed(t))
        layer.values.data.normal_(generator=torch.Generator().manual_seed(10 + t))
        if t == 0:
            layer.end_task()
    layer.train(training)
    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    outs = []
    for f in (layer, compiled):
        y = f(x)
        y.square().sum().backward()
        outs.append((y.detach(), layer.keys.grad.clone(), layer.values.grad.clone()))
        layer.zero_grad()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stacked_evaluation_with_the_kernel_equals_the_layer(dtype):
    """gpu_check's ``stacked_fused``: ``[W0; A] x`` as one product, then the fused routing, equals ``layer(x)``
    (the same kernel on the same float32 responses; the base output may round apart by a bf16 ulp)."""
    from moram_ref.perf import layer_cases

    cfg = MoRAMConfig(atoms_per_task=5, top_k=4, temperature=0.05, threshold=0.1, routing_kernel="triton")
    torch.manual_seed(0)
    layer = MoRAMLinear(torch.nn.Linear(6, 7), cfg)
    for t in range(3):
        layer.begin_task(torch.Generator().manual_seed(t))
        layer.values.data.normal_(generator=torch.Generator().manual_seed(10 + t))
        layer.end_task()
    layer.to(device=DEVICE, dtype=dtype).eval()
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(4)).to(device=DEVICE, dtype=dtype)
    with torch.no_grad():
        got = layer_cases.stacked_eval_forward(layer, layer_cases.stack_for_eval(layer), x)
        want = layer(x)
    assert got.shape == want.shape == (2, 3, 7) and got.dtype == want.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2 * 2.0**-8  # two bf16 ulps of the largest output
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
