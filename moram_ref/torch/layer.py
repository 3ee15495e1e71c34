"""MoRAMLinear in PyTorch: wraps a frozen ``nn.Linear`` and adds a growing bank of rank-1 atoms (spec §3–§4).

Mirror of :class:`moram_ref.numpy.layer.MoRAMLinear`, with torch's conventions: training vs
evaluation follows ``module.training``; gradients come from autograd. Storage:

* ``frozen_keys (R_old, d_in)`` and ``frozen_values (d_out, R_old)``: persistent buffers, stored once,
  contiguously, extended only at ``end_task()`` (the scale α is folded into the values then);
* ``keys (r, d_in)`` and ``values (d_out, r)``: the current task's atoms, ``nn.Parameter``s
  (0 rows between tasks).

No weight matrix is concatenated per call: the two key blocks give two response blocks, and the two
value blocks are applied separately and summed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from moram_ref.config import MoRAMConfig
from moram_ref.shapes import check_finite, check_input, check_layer_state, type_name
from moram_ref.torch import activation, routing_triton

TRACE_KEYS = ("p", "s", "keep", "w_soft", "gated", "w", "delta", "y")
STATE_KEYS = ("base_layer.weight", "base_layer.bias", "frozen_keys", "frozen_values", "keys", "values")


def _routing_dtype(x_dtype: torch.dtype, atom_dtype: torch.dtype) -> torch.dtype:
    """The dtype of ``p``, the normaliser, top-k, softmax and gate: float64 if an operand is, else float32.

    Promotion never rounds an operand (bf16/fp16 widen exactly), so ``p = A x`` is exact on the operands the
    layer is given, accumulated and returned in float32 (docs/semantics.md#precision).
    """
    return torch.promote_types(torch.promote_types(x_dtype, atom_dtype), torch.float32)


@torch.compiler.assume_constant_result
def _autocast_available(device_type: str) -> bool:
    """Whether ``torch.autocast`` exists for ``device_type`` (not e.g. for ``"meta"``); a constant to the compiler.

    Called directly, torch 2.11's dynamo cannot trace it (``torch._C._is_autocast_available``: a graph break
    that fails ``fullgraph=True``); marked constant, every torch version folds it at trace time.
    """
    return torch.amp.is_autocast_available(device_type)


class _WrapsLinear(nn.Module):
    """An adapter around ``self.base_layer`` (an ``nn.Linear``) that still looks like one from outside:
    ``weight``, ``bias``, ``in_features``, ``out_features`` are the base layer's (libraries read them,
    e.g. open_clip asks ``mlp.c_fc.weight.dtype``)."""

    base_layer: nn.Linear
    site: str = ""  # the layer's name in its model, set by ``attach``; named in input errors

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features


class MoRAMLinear(_WrapsLinear):
    """``y = base_layer(x) + B (w(x) ⊙ A x)`` with a growing, freezing bank — theory.md#eq-output.

    Args:
        base: the ``nn.Linear`` to adapt; kept as ``base_layer`` and frozen.
        config: a :class:`MoRAMConfig`.
        dtype: dtype of the atoms (default: the base weight's); e.g. float32 atoms on a bf16 model.
    """

    def __init__(self, base: nn.Linear, config: MoRAMConfig, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
        if not isinstance(config, MoRAMConfig):
            raise ValueError(f"config must be a MoRAMConfig, got {type(config).__name__}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
        check_finite("base.weight", base.weight)
        self.base_layer = base
        base.requires_grad_(False)
        self.config = config
        kw = dict(dtype=dtype or base.weight.dtype, device=base.weight.device)
        self.register_buffer("frozen_keys", torch.zeros(0, self.d_in, **kw))  # (R_old, d_in)
        self.register_buffer("frozen_values", torch.zeros(self.d_out, 0, **kw))  # (d_out, R_old)
        self.keys = nn.Parameter(torch.zeros(0, self.d_in, **kw))  # (r or 0, d_in)
        self.values = nn.Parameter(torch.zeros(self.d_out, 0, **kw))  # (d_out, r or 0)
        self.record = False  # when True, forward keeps the last final weights in ``last_weights``
        self.last_weights: torch.Tensor | None = None

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.base_layer.in_features

    @property
    def d_out(self) -> int:
        return self.base_layer.out_features

    @property
    def n_atoms(self) -> int:
        return self.frozen_keys.shape[0] + self.keys.shape[0]

    @property
    def in_task(self) -> bool:
        return self.keys.shape[0] > 0

    def current_parameters(self) -> dict[str, nn.Parameter]:
        """The trainable tensors: the current task's atoms only."""
        return {"keys": self.keys, "values": self.values} if self.in_task else {}

    def bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys ``A`` (R, d_in) and effective values ``B`` (d_out, R), frozen first (a copy, for inspection)."""
        keys = torch.cat([self.frozen_keys, self.keys.detach()], dim=0)
        values = torch.cat([self.frozen_values, self.config.scale * self.values.detach()], dim=1)
        return keys, values

    # --- lifecycle (spec §4) -------------------------------------------------------------------
    @torch.no_grad()
    def begin_task(self, generator: torch.Generator | None = None) -> None:
        """Append ``r`` fresh atoms: keys ``U(-1/√d_in, 1/√d_in)``, values 0 — theory.md#eq-begin-task."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type_name(generator)}")
        if self.in_task:
            raise RuntimeError("begin_task() called while a task is in progress; call end_task() first")
        r, bound = self.config.atoms_per_task, 1.0 / math.sqrt(self.d_in)
        device = self.frozen_keys.device
        gen_device = generator.device if generator is not None else device
        keys = torch.rand(r, self.d_in, generator=generator, dtype=torch.float64, device=gen_device)
        keys = ((2 * keys - 1) * bound).to(device=device, dtype=self.frozen_keys.dtype)
        self.keys = nn.Parameter(keys)
        self.values = nn.Parameter(self.frozen_values.new_zeros(self.d_out, r))

    @torch.no_grad()
    def end_task(self) -> None:
        """Freeze the current atoms into the bank, folding ``α`` into the values — theory.md#eq-end-task."""
        if not self.in_task:
            raise RuntimeError("end_task() called with no task in progress; call begin_task() first")
        self.frozen_keys = torch.cat([self.frozen_keys, self.keys.detach()], dim=0).contiguous()
        scaled = self.values.detach() * self.config.scale
        self.frozen_values = torch.cat([self.frozen_values, scaled], dim=1).contiguous()
        self.keys = nn.Parameter(self.frozen_keys.new_zeros(0, self.d_in))
        self.values = nn.Parameter(self.frozen_values.new_zeros(self.d_out, 0))

    # --- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)[0]

    def trace(self, x: torch.Tensor, training: bool = False) -> dict[str, torch.Tensor]:
        """Every intermediate of spec §3 (``p, s, idx, keep, w_soft, gated, w, delta, y``; ``idx`` the kept atoms'
        indices, the same set in both backends, in an order each backend's top-k leaves), for comparisons."""
        was = self.training
        self.train(training)
        try:
            return self._forward(x, explicit_delta=True)[1]
        finally:
            self.train(was)

    def _forward(self, x: torch.Tensor, explicit_delta: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The forward pass of spec §3 under the precision policy of docs/semantics.md#precision.

        No step waits for the device, and on CUDA or under ``torch.compile(fullgraph=True)`` none branches on
        data (on a CPU in eager mode the input check and the top-k's tie test read one value each).
        The base layer follows the caller's autocast like any linear layer; the MoRAM branch runs with
        autocast off, so autocast never changes routing: ``p`` and every routing step in
        :func:`_routing_dtype` (float32 for bf16/fp16/fp32 models), the value product in the base
        output's dtype (bf16 on a bf16 model, or under bf16 autocast), added to it in one ``addmm``.
        """
        check_input("x", x, self.d_in, self.site)  # shape, floating dtype, finite (sync-free on CUDA)
        y = self.base_layer(x)  # (..., d_out)
        if self.n_atoms == 0:
            return y, {"y": y}
        if not _autocast_available(x.device.type):  # e.g. the meta device: nothing to switch off
            return self._moram_branch(x, y, explicit_delta)
        with torch.autocast(x.device.type, enabled=False):
            return self._moram_branch(x, y, explicit_delta)

    def _moram_branch(self, x: torch.Tensor, y: torch.Tensor, explicit_delta: bool):
        rdt = _routing_dtype(x.dtype, self.frozen_keys.dtype)  # p, s, top-k, softmax, gate
        vdt = y.dtype  # the value product Δ = B c
        x_d = nn.functional.dropout(x, self.config.dropout, self.training) if self.config.dropout else x
        x_d = x_d.to(rdt)  # (..., d_in) exact widening
        n_old = self.frozen_keys.shape[0]
        p_old = activation.responses(x_d, self.frozen_keys.to(rdt)) if n_old else None  # (..., R_old)
        p_cur = activation.responses(x_d, self.keys.to(rdt)) if self.in_task else None  # (..., r)
        blocks = [b for b in (p_old, p_cur) if b is not None]
        p = None
        if not explicit_delta and routing_triton.use_triton(self.config, blocks[0], self.n_atoms):
            # steps 2–6 fused (equal to the torch path below), on the two response blocks: no concatenation
            c_old, c_cur, *w = routing_triton.gated_responses(p_old, p_cur, self.config, self.training, self.record,
                                                              c_dtype=vdt)
            w, trace = (w[0] if w else None), {}
            c_old2 = c_old.reshape(-1, n_old) if n_old else None  # (N, R_old), contiguous already
            c_cur2 = c_cur.reshape(-1, c_cur.shape[-1]) if self.in_task else None  # (N, r)
        else:
            p = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)  # (..., R)
            if explicit_delta:  # every intermediate, for trace()
                trace = activation.mixing_weights(p, self.config, self.training)
                w = trace["w"]
            else:  # the lean path: only the final weights at full width
                w = activation.final_weights(p, self.config, self.training)[-1]
                trace = {"w": w}
            c = (w * p).to(vdt)  # (..., R) gated responses, in the value product's dtype
            c_old, c_cur = c[..., :n_old], c[..., n_old:]  # (..., R_old), (..., r)
            c2 = c.reshape(-1, c.shape[-1])  # (N, R)
            c_old2, c_cur2 = c2[:, :n_old], c2[:, n_old:]  # strided views: addmm reads them in place
        if self.record:
            self.last_weights = w.detach()
        if not explicit_delta:
            # fused: y + c Bᵀ in one kernel per block (no separate Δ tensor, no per-call concatenation)
            out2 = y.reshape(-1, self.d_out)  # (N, d_out)
            if n_old:
                out2 = torch.addmm(out2, c_old2, self.frozen_values.to(vdt).T)
            if self.in_task:
                out2 = torch.addmm(out2, c_cur2, self.values.to(vdt).T, alpha=self.config.scale)
            out = out2.reshape(y.shape)  # (..., d_out)
            return out, {"p": p, **trace, "delta": None, "y": out}
        delta = None  # explicit Δ, for traces
        if n_old:
            delta = nn.functional.linear(c_old, self.frozen_values.to(vdt))
        if self.in_task:
            cur = nn.functional.linear(c_cur, self.values.to(vdt)) * self.config.scale
            delta = cur if delta is None else delta + cur
        out = y + delta
        return out, {"p": p, **trace, "delta": delta, "y": out}

    # --- state ---------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a bank of any size (same ``d_in``, ``d_out``, bias and ``atoms_per_task``).

        ``strict`` (the default): every key, shape and value is checked before anything changes, and a key
        missing or unexpected is a ``ValueError`` naming it (``shapes.check_layer_state``, shared with NumPy).
        ``strict=False``: torch's rule — the keys present load (shapes and values still checked; the bank is
        resized only when all four of its tensors are there), and the missing and unexpected ones are
        returned. Loaded as part of a model, the model's ``load_state_dict`` applies torch's rule to it."""
        if strict:
            check_layer_state(state_dict, "", self.d_out, self.d_in, self.base_layer.bias is not None,
                              self.config.atoms_per_task, strict=True)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Resize the bank to the incoming sizes (a bank of any size loads), after checking the shapes and
        values of the keys present; torch records the missing and unexpected ones (it passes ``strict=True``
        here whatever the caller asked, and applies the caller's ``strict`` to those lists afterwards)."""
        has_bias = self.base_layer.bias is not None
        check_layer_state(state_dict, prefix, self.d_out, self.d_in, has_bias, self.config.atoms_per_task,
                          strict=False)
        get = {k: state_dict.get(prefix + k) for k in ("frozen_keys", "frozen_values", "keys", "values")}
        if all(v is not None for v in get.values()):
            fk, fv, k, v = get["frozen_keys"], get["frozen_values"], get["keys"], get["values"]
            dev, dt = self.frozen_keys.device, self.frozen_keys.dtype
            self.frozen_keys = torch.empty(fk.shape, device=dev, dtype=dt)
            self.frozen_values = torch.empty(fv.shape, device=dev, dtype=dt)
            self.keys = nn.Parameter(torch.empty(k.shape, device=dev, dtype=dt))
            self.values = nn.Parameter(torch.empty(v.shape, device=dev, dtype=dt))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        c = self.config
        return (f"d_in={self.d_in}, d_out={self.d_out}, atoms={self.n_atoms} (current {self.keys.shape[0]}), "
                f"k={c.top_k}, τ={c.temperature}, δ={c.threshold} ({c.threshold_mode})")
