"""Fused self-activation for CUDA: spec §3 steps 2–6 in one Triton kernel, its backward in another.

**The reference it equals:** :func:`gated_responses_ref`: ``w = moram_ref.torch.activation.final_weights(p)[-1]``
on ``p = [p_frozen, p_current]`` upcast to float32, then ``c = (w ⊙ p)`` cast to ``c_dtype`` (default ``p``'s);
the backward equals autograd through that reference (theory.md#eq-backward). Tested on every run of the
suite in Triton's interpreter (``tests/test_routing_triton.py``, cases in ``tests/routing_triton_cases.py``).
The layer chooses it by ``MoRAMConfig.routing_kernel`` (:func:`use_triton`). Both directions are
``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` keeps each as one node.

Design, per token row (a tile of ``BLOCK_N`` rows × ``BLOCK_R ≥ R`` atoms per program):

* the two response blocks (frozen bank, current task) are read through two pointers, so the layer never
  concatenates them, and ``c`` is written back as the same two blocks;
* routing runs in float32 whatever the input dtype (float32, bfloat16, float16);
* exact top-k, ties to the lower atom index, as a pair ``(t, j)``: the k-th largest score ``t`` and the
  index ``j`` of the last atom kept among those equal to ``t``; kept = ``s > t`` or (``s = t`` and
  ``index ≤ j``). For ``k ≤ 16``: ``k`` rounds of (max, first index of the max). For larger ``k``: ``t`` is
  found bit by bit (32 counting passes) on the order-preserving int32 image of the float bits, then
  ``j`` by a cumulative count of the ties. Both cost O(R) registers per row and give the same ``(t, j)``.
  The argmax rounds' count is a compile-time constant (``ROUNDS = k``, at most 16 compiled variants; a
  run-time loop bound is what Triton 3.6's interpreter cannot take with NumPy ≥ 2.4); the bisection reads
  ``k`` at run time, so dense MoRAM (``k = R``, growing every task) does not recompile per task;
* saved for backward: ``p`` itself (the inputs, no copy) and five numbers per row — ``‖p‖``, ``t``, ``j``, the
  softmax max and sum — from which the backward recomputes ``s``, the kept set, ``ŵ`` and the gate
  exactly. Nothing of width ``R`` is stored besides ``c`` (and ``w`` only when asked for).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

from moram_ref.config import MoRAMConfig

triton = tl = None  # imported on first use (_import_triton), so that the layer never needs triton
_TRITON_FOUND = importlib.util.find_spec("triton") is not None

MAX_ATOMS = 8192  # a row of R atoms lives in registers (no spill at 8,192 on sm_90 with 16 warps, ptxas -v)
ARGMAX_MAX_K = 16  # k rounds of argmax (2 passes each) up to here; bisection (32 + 2 passes) above
TILE = 1024  # values per program (BLOCK_N × BLOCK_R when R ≤ TILE)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def available() -> bool:
    """Whether triton is installed (the CUDA build of torch ships it); it is imported when a kernel first runs."""
    return _TRITON_FOUND


def _import_triton() -> None:
    global triton, tl
    import triton as triton_  # an ImportError here is raised as is: routing_kernel asked for triton
    import triton.language as tl_

    triton, tl = triton_, tl_


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(config: MoRAMConfig, p: torch.Tensor, n_atoms: int) -> bool:
    """Whether the layer routes ``p`` (any response block) with the fused kernel.

    ``routing_kernel="torch"``: never. ``"auto"``: when ``p`` is a CUDA tensor of a supported dtype
    (float32, bfloat16, float16; float64 stays on the torch reference), triton is installed and
    ``R ≤ MAX_ATOMS``. ``"triton"``: always, and a ``ValueError`` names what is missing (a CPU tensor
    needs ``TRITON_INTERPRET=1``, Triton's interpreter).
    """
    if config.routing_kernel == "torch":
        return False
    if config.routing_kernel == "auto":
        return p.is_cuda and available() and p.dtype in DTYPES and n_atoms <= MAX_ATOMS
    _check_supported(p, n_atoms)
    return True


def _check_supported(p: torch.Tensor, n_atoms: int) -> None:
    if not available():
        raise ValueError("routing_kernel='triton' needs triton, which is not installed (the CPU-only torch build)")
    if p.dtype not in DTYPES:
        raise ValueError(f"routing_kernel='triton' routes float32/bfloat16/float16 responses, got {p.dtype}; "
                         f"use routing_kernel='torch' for float64")
    if not 1 <= n_atoms <= MAX_ATOMS:
        raise ValueError(f"routing_kernel='triton' handles 1 to {MAX_ATOMS} atoms, got R={n_atoms}")
    if not p.is_cuda and not _interpret():
        raise ValueError(f"routing_kernel='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run Triton's "
                         f"interpreter on a CPU), got a tensor on {p.device}; use routing_kernel='auto' or 'torch'")


def gated_responses_ref(p_frozen: torch.Tensor, p_current: torch.Tensor, config: MoRAMConfig, training: bool,
                        c_dtype: torch.dtype | None = None):
    """The pure-torch reference of :func:`gated_responses` — theory.md#eq-self-activation and theory.md#eq-update.

    p_frozen: (..., R_old), p_current: (..., r) (either may be None) -> (c_frozen (..., R_old),
    c_current (..., r), w (..., R) float32): routing in float32, ``c`` in ``c_dtype`` (default ``p``'s).
    """
    from moram_ref.torch.activation import final_weights

    p_frozen, p_current = _pair(p_frozen, p_current)
    p = torch.cat([p_frozen, p_current], dim=-1).float()  # (N, R)
    w = final_weights(p, config, training)[-1]  # (N, R)
    c = (w * p).to(c_dtype or p_frozen.dtype)  # (N, R)
    n_old = p_frozen.shape[-1]
    return c[..., :n_old], c[..., n_old:], w


def gated_responses(p_frozen: torch.Tensor, p_current: torch.Tensor, config: MoRAMConfig, training: bool,
                    return_weights: bool = False, c_dtype: torch.dtype | None = None):
    """Fused spec §3 steps 2–6: ``c = w(p) ⊙ p`` for ``p = [p_frozen, p_current]`` — theory.md#eq-self-activation.

    Equals :func:`gated_responses_ref` (see the module docstring), differentiable w.r.t. both blocks; a
    ``torch.library`` custom op, so ``torch.compile(fullgraph=True)`` keeps it whole.

    Args:
        p_frozen: (..., R_old) responses of the frozen bank (R_old may be 0, or None for no bank).
        p_current: (..., r) responses of the current task's atoms (r may be 0, or None between tasks),
            same leading dims, dtype and device.
        config: the layer's config (k, min_active, τ, δ, threshold_mode, ε).
        training: selects whether the threshold applies (``config.threshold_active``).
        return_weights: also return the final weights ``w`` (..., R) in float32 (not differentiable).
        c_dtype: dtype of ``c`` (the value product's; docs/semantics.md#precision); default ``p``'s.

    Returns:
        ``(c_frozen, c_current)``, shapes as the inputs (a None block gives (..., 0)); plus ``w`` if asked.

    Raises:
        ValueError: mismatched blocks, or what :func:`use_triton` names for ``routing_kernel='triton'``.
    """
    p_frozen, p_current = _pair(p_frozen, p_current)
    lead, r_old, r_cur = p_frozen.shape[:-1], p_frozen.shape[-1], p_current.shape[-1]
    _check_supported(p_frozen, r_old + r_cur)
    pa, pb = _rows(p_frozen), _rows(p_current)  # (N, R_old), (N, r)
    ca, cb, w, _, _ = routing_forward(pa, pb, config.k_eff(r_old + r_cur), float(config.temperature),
                                  float(config.threshold), float(config.eps), config.threshold_active(training),
                                  return_weights, c_dtype or p_frozen.dtype)
    out = (ca.reshape(*lead, r_old), cb.reshape(*lead, r_cur))
    return (*out, w.reshape(*lead, r_old + r_cur)) if return_weights else out


def _pair(p_frozen: torch.Tensor | None, p_current: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both response blocks, a None block as (..., 0); checked to share leading dims, dtype and device."""
    if p_frozen is None and p_current is None:
        raise ValueError("p_frozen and p_current are both None: an empty bank has no routing")
    like = p_current if p_frozen is None else p_frozen
    p_frozen = like.new_empty(*like.shape[:-1], 0) if p_frozen is None else p_frozen
    p_current = like.new_empty(*like.shape[:-1], 0) if p_current is None else p_current
    if p_frozen.shape[:-1] != p_current.shape[:-1] or p_frozen.dtype != p_current.dtype \
            or p_frozen.device != p_current.device:
        raise ValueError(f"p_frozen {tuple(p_frozen.shape)} {p_frozen.dtype} {p_frozen.device} and p_current "
                         f"{tuple(p_current.shape)} {p_current.dtype} {p_current.device} must share leading dims, "
                         f"dtype and device")
    return p_frozen, p_current


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., R) -> (N, R) with unit stride along R (a view whenever possible)."""
    t = t.reshape(t.shape[:-1].numel(), t.shape[-1])
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _new(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return torch.empty(t.shape, dtype=dtype or t.dtype, device=t.device)  # contiguous


def _routing_extras(pa: Tensor, n_atoms: int, want_w: bool) -> tuple[Tensor, Tensor, Tensor]:
    """w (N, R or 0) float32; stats (4, N) float32: ‖p‖, t, softmax max, softmax sum; j (N,) int32."""
    n_rows = pa.shape[0]
    w = torch.empty(n_rows, n_atoms if want_w else 0, dtype=torch.float32, device=pa.device)
    stats = torch.empty(4, n_rows, dtype=torch.float32, device=pa.device)
    return w, stats, torch.empty(n_rows, dtype=torch.int32, device=pa.device)


def _launch_shape(n_atoms: int) -> tuple[int, int, int]:
    """(BLOCK_N rows, BLOCK_R atoms, warps) of one program: tiles of ~1,024 values (one row of BLOCK_R when R
    is larger), ≤ 8 values per thread up to R = 4,096 and 16 at R = 8,192 (16 warps).

    No register spills on sm_90 for R ≤ 8,192 (ptxas -v); the tile size is a first guess, to be tuned on a GPU.
    """
    block_r = max(16, triton.next_power_of_2(n_atoms))
    block_n = max(1, TILE // block_r)
    return block_n, block_r, max(4, min(16, block_n * block_r // 256))


@torch.library.custom_op("moram_ref::routing_fwd", mutates_args=())
def routing_forward(pa: Tensor, pb: Tensor, k: int, tau: float, delta: float, eps: float, gate: bool, want_w: bool,
                    c_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward kernel on (N, R_old), (N, r) rows -> (c_a, c_b, w or (N, 0), stats (4, N), j (N,) int32)."""
    n_rows, r_a, r_b = pa.shape[0], pa.shape[1], pb.shape[1]
    ca, cb = _new(pa, c_dtype), _new(pb, c_dtype)  # (N, R_old), (N, r) the gated responses
    w, stats, cut = _routing_extras(pa, r_a + r_b, want_w)
    if n_rows:  # Triton refuses an empty grid
        fwd, _ = _kernels(not pa.is_cuda or _interpret())
        block_n, block_r, warps = _launch_shape(r_a + r_b)
        pa_, ca_ = (pa, ca) if r_a else (pb, cb)  # an empty block gets the other's pointers, never read
        pb_, cb_ = (pb, cb) if r_b else (pa, ca)
        fwd[(triton.cdiv(n_rows, block_n),)](
            pa_, pb_, ca_, cb_, w if want_w else ca_, stats, cut,
            n_rows, r_a, r_b, pa_.stride(0), pb_.stride(0), k, tau, delta, eps,
            ROUNDS=0 if k > ARGMAX_MAX_K else k, GATE=gate, BISECT=k > ARGMAX_MAX_K, STORE_W=want_w,
            BLOCK_N=block_n, BLOCK_R=block_r, num_warps=warps)
    return ca, cb, w, stats, cut


@routing_forward.register_fake
def _(pa, pb, k, tau, delta, eps, gate, want_w, c_dtype):
    return (_new(pa, c_dtype), _new(pb, c_dtype), *_routing_extras(pa, pa.shape[1] + pb.shape[1], want_w))


@torch.library.custom_op("moram_ref::routing_bwd", mutates_args=())
def routing_backward(pa: Tensor, pb: Tensor, ga: Tensor, gb: Tensor, stats: Tensor, cut: Tensor, tau: float,
                     delta: float, eps: float, gate: bool) -> tuple[Tensor, Tensor]:
    """The backward kernel: ∂L/∂c blocks -> ∂L/∂p blocks, in ``p``'s dtype."""
    n_rows, r_a, r_b = pa.shape[0], pa.shape[1], pb.shape[1]
    ga, gb = _rows(ga), _rows(gb)
    da, db = _new(pa), _new(pb)  # (N, R_old), (N, r)
    if n_rows:
        _, bwd = _kernels(not pa.is_cuda or _interpret())
        block_n, block_r, warps = _launch_shape(r_a + r_b)
        pa_, ga_, da_ = (pa, ga, da) if r_a else (pb, gb, db)
        pb_, gb_, db_ = (pb, gb, db) if r_b else (pa_, ga_, da_)
        bwd[(triton.cdiv(n_rows, block_n),)](
            pa_, pb_, ga_, gb_, da_, db_, stats, cut,
            n_rows, r_a, r_b, pa_.stride(0), pb_.stride(0), ga_.stride(0), gb_.stride(0), tau, delta, eps,
            GATE=gate, BLOCK_N=block_n, BLOCK_R=block_r, num_warps=warps)
    return da, db


@routing_backward.register_fake
def _(pa, pb, ga, gb, stats, cut, tau, delta, eps, gate):
    return _new(pa), _new(pb)


def _setup_context(ctx, inputs, output):
    pa, pb, _k, tau, delta, eps, gate, _want_w, _c_dtype = inputs
    ctx.save_for_backward(pa, pb, output[3], output[4])  # p itself (no copy) and five numbers per row
    ctx.hyper = (tau, delta, eps, gate)


def _backward(ctx, ga, gb, _gw, _gstats, _gcut):
    pa, pb, stats, cut = ctx.saved_tensors
    da, db = routing_backward(pa, pb, ga, gb, stats, cut, *ctx.hyper)
    return da, db, None, None, None, None, None, None, None


routing_forward.register_autograd(_backward, setup_context=_setup_context)


@functools.cache
def _kernels(interpret: bool):
    """The (forward, backward) kernels, compiled for CUDA or wrapped for Triton's interpreter.

    Built on first use rather than at import (so that the layer never imports triton), per mode.
    """
    _import_triton()
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as wrap

        if isinstance(tl.sum, triton.JITFunction):  # triton.language was built for compiling, not interpreting
            raise RuntimeError("TRITON_INTERPRET=1 must be set before triton is first imported in this process "
                               "(Triton builds its standard library for one mode at import)")
    else:
        wrap = triton.JITFunction
    return wrap(_fwd_kernel), wrap(_bwd_kernel)


# --- the kernels (plain functions, wrapped by _kernels) -------------------------------------------------
# Shapes in comments: BN = BLOCK_N token rows, BR = BLOCK_R ≥ R atom columns (padding masked off).


def _fwd_kernel(pa, pb, ca, cb, w_out, stats, cut_out, n_rows, r_a, r_b, stride_a, stride_b, k, tau, delta, eps,
                 ROUNDS: tl.constexpr, GATE: tl.constexpr, BISECT: tl.constexpr, STORE_W: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    cols = tl.arange(0, BLOCK_R)  # (BR,)
    row_ok = (rows < n_rows)[:, None]  # (BN, 1)
    valid = (cols < r_a + r_b)[None, :]  # (1, BR)
    in_a = (cols < r_a)[None, :]
    in_b = valid & ~in_a
    col = cols[None, :]  # (1, BR) atom index
    col_b = tl.maximum(col - r_a, 0)  # (1, BR) index inside the current block
    rows64 = rows.to(tl.int64)[:, None]
    p = tl.where(in_a, tl.load(pa + rows64 * stride_a + col, mask=row_ok & in_a, other=0.0).to(tl.float32),
                 tl.load(pb + rows64 * stride_b + col_b, mask=row_ok & in_b, other=0.0).to(tl.float32))  # (BN, BR)
    # step 2: s = p / max(‖p‖, ε), correctly rounded as torch divides
    norm = tl.sqrt_rn(tl.sum(p * p, axis=1))  # (BN,)
    s = tl.math.div_rn(p, tl.maximum(norm, eps)[:, None])  # (BN, BR)
    # step 3: the k-th largest score t and the last kept index j among the scores equal to t
    if BISECT:
        bits = s.to(tl.int32, bitcast=True)
        # (BN, BR) int32 keys in the order of s (-0.0 sorts just below +0.0: a refinement of the float order, so the
        # k-th largest key is a float equal to the k-th largest score; the kept set below compares floats)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        t_key = tl.full([BLOCK_N], 1, tl.int32) << 31  # the smallest int32: count(key >= it) = R >= k
        n_ge = tl.sum(tl.where(valid & (key >= 0), 1, 0), axis=1)  # sign bit first (unsigned order)
        t_key = tl.where(n_ge >= k, 0, t_key)
        for i in range(31):  # then bits 30..0: the largest t_key with count(key >= t_key) >= k
            cand = t_key | (1 << (30 - i))
            n_ge = tl.sum(tl.where(valid & (key >= cand[:, None]), 1, 0), axis=1)
            t_key = tl.where(n_ge >= k, cand, t_key)
        t = tl.where(t_key < 0, t_key ^ 0x7FFFFFFF, t_key).to(tl.float32, bitcast=True)  # (BN,)
        n_above = tl.sum(tl.where(valid & (s > t[:, None]), 1, 0), axis=1)  # (BN,)
        tied = tl.where(valid & (s == t[:, None]), 1, 0)  # (BN, BR)
        rank = tl.cumsum(tied, axis=1)  # 1-based rank among the tied, by atom index
        j = tl.max(tl.where((tied == 1) & (rank <= (k - n_above)[:, None]), col, -1), axis=1)
    else:
        taken = tl.zeros([BLOCK_N, BLOCK_R], dtype=tl.int32)
        t = tl.zeros([BLOCK_N], dtype=tl.float32)
        j = tl.zeros([BLOCK_N], dtype=tl.int32)
        for _ in range(ROUNDS):  # k rounds: the largest remaining score, and its lowest index
            left = valid & (taken == 0)
            t = tl.max(tl.where(left, s, -float("inf")), axis=1)
            j = tl.min(tl.where(left & (s == t[:, None]), col, BLOCK_R), axis=1)
            taken = tl.where(col == j[:, None], 1, taken)
    kept = valid & ((s > t[:, None]) | ((s == t[:, None]) & (col <= j[:, None])))  # (BN, BR)
    # step 4: ŵ = softmax(s_kept / τ); step 5: the gate; step 6: c = w ⊙ p
    z = tl.where(kept, tl.math.div_rn(s, tl.full([BLOCK_N, BLOCK_R], tau, tl.float32)), -float("inf"))
    z_max = tl.max(z, axis=1)  # (BN,)
    e = tl.where(kept, tl.exp(z - z_max[:, None]), 0.0)
    total = tl.sum(e, axis=1)  # (BN,) ≥ 1
    w = e / total[:, None]  # (BN, BR)
    if GATE:
        w = tl.where(s >= delta, w, 0.0)
    c = w * p
    tl.store(ca + rows64 * r_a + col, c.to(ca.dtype.element_ty), mask=row_ok & in_a)
    tl.store(cb + rows64 * r_b + col_b, c.to(cb.dtype.element_ty), mask=row_ok & in_b)
    if STORE_W:
        tl.store(w_out + rows64 * (r_a + r_b) + col, w, mask=row_ok & valid)
    ok = rows < n_rows
    tl.store(stats + rows, norm, mask=ok)
    tl.store(stats + n_rows + rows, t, mask=ok)
    tl.store(stats + 2 * n_rows + rows, z_max, mask=ok)
    tl.store(stats + 3 * n_rows + rows, total, mask=ok)
    tl.store(cut_out + rows, j, mask=ok)


def _bwd_kernel(pa, pb, ga, gb, da, db, stats, cut, n_rows, r_a, r_b, stride_a, stride_b, stride_ga, stride_gb,
                 tau, delta, eps, GATE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BN,)
    cols = tl.arange(0, BLOCK_R)  # (BR,)
    ok = rows < n_rows
    row_ok = ok[:, None]
    valid = (cols < r_a + r_b)[None, :]
    in_a = (cols < r_a)[None, :]
    in_b = valid & ~in_a
    col = cols[None, :]
    col_b = tl.maximum(col - r_a, 0)
    rows64 = rows.to(tl.int64)[:, None]
    mask_a, mask_b = row_ok & in_a, row_ok & in_b
    p = tl.where(in_a, tl.load(pa + rows64 * stride_a + col, mask=mask_a, other=0.0).to(tl.float32),
                 tl.load(pb + rows64 * stride_b + col_b, mask=mask_b, other=0.0).to(tl.float32))  # (BN, BR)
    g = tl.where(in_a, tl.load(ga + rows64 * stride_ga + col, mask=mask_a, other=0.0).to(tl.float32),
                 tl.load(gb + rows64 * stride_gb + col_b, mask=mask_b, other=0.0).to(tl.float32))  # (BN, BR) ∂L/∂c
    norm = tl.load(stats + rows, mask=ok, other=0.0)  # (BN,)
    t = tl.load(stats + n_rows + rows, mask=ok, other=0.0)
    z_max = tl.load(stats + 2 * n_rows + rows, mask=ok, other=0.0)
    total = tl.load(stats + 3 * n_rows + rows, mask=ok, other=1.0)
    j = tl.load(cut + rows, mask=ok, other=-1)
    # recompute the forward from p and the five numbers per row: bit for bit the same s, kept set, ŵ, γ
    den = tl.maximum(norm, eps)
    s = tl.math.div_rn(p, den[:, None])
    kept = valid & ((s > t[:, None]) | ((s == t[:, None]) & (col <= j[:, None])))
    z = tl.where(kept, tl.math.div_rn(s, tl.full([BLOCK_N, BLOCK_R], tau, tl.float32)), -float("inf"))
    w_hat = tl.where(kept, tl.exp(z - z_max[:, None]), 0.0) / total[:, None]  # (BN, BR)
    if GATE:
        gamma = s >= delta
    else:
        gamma = valid
    w = tl.where(gamma, w_hat, 0.0)
    # theory.md#eq-backward: g_ŵ = g_c ⊙ p ⊙ γ; g_s = ŵ ⊙ (g_ŵ − ŵᵀg_ŵ) / τ;
    # g_p = g_c ⊙ w + (g_s − s (sᵀg_s)) / ‖p‖ (theory.md#eq-normalise-backward: only g_s / ε under the floor)
    g_w_hat = tl.where(gamma, g * p, 0.0)
    g_s = w_hat * (g_w_hat - tl.sum(w_hat * g_w_hat, axis=1)[:, None]) / tau
    s_dot = tl.where(norm > eps, tl.sum(s * g_s, axis=1), 0.0)  # the floor ε passes no gradient to ‖p‖
    g_p = g * w + (g_s - s * s_dot[:, None]) / den[:, None]
    tl.store(da + rows64 * r_a + col, g_p.to(da.dtype.element_ty), mask=mask_a)
    tl.store(db + rows64 * r_b + col_b, g_p.to(db.dtype.element_ty), mask=mask_b)
