"""MoRAMConfig: every knob of the MoRAM layer, validated once, shared by every backend.

Spec §3 (forward pass), §4 (lifecycle), §5 (the paper's settings), §9 (the authors' quirks made explicit).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

THRESHOLD_MODES = ("eval", "always", "never")
ROUTING_KERNELS = ("auto", "torch", "triton")
# τ's floor: scores lie in [-1, 1], and below it the kept scores s/τ of two atoms 1e-4 apart differ by 100 or
# more, so the float32 softmax is already an argmax; near 3e-39, s/τ overflows float32 (inf, then NaN weights)
MIN_TEMPERATURE = 1e-6
# fields that choose how the torch layer computes, not what (the results are equal): a checkpoint written with
# one value loads under another
EXECUTION_ONLY = ("routing_kernel",)


@dataclass(frozen=True)
class MoRAMConfig:
    """Settings of one MoRAM layer (spec §2–§5).

    Attributes:
        atoms_per_task: ``r``, rank-1 atoms appended by every ``begin_task()`` (spec §4).
        top_k: ``k``, the activation budget; ``None`` means every atom (dense MoRAM).
        temperature: ``τ`` of the softmax over kept scores (spec §3 step 4); at least ``MIN_TEMPERATURE``
            (1e-6: below it the float32 softmax is an argmax, and far below it ``s/τ`` overflows).
        threshold: ``δ`` in [-1, 1]; atoms with ``s < δ`` get weight 0, no renormalisation (step 5).
        threshold_mode: when the threshold applies: ``"eval"`` (only when not training, the paper),
            ``"always"`` or ``"never"``.
        min_active: floor on the number of kept atoms, ``k_eff = min(max(k, min_active), R)``;
            the authors' code behaves as 2 (spec §9).
        scale: ``α``, multiplies the current task's values; folded into the frozen values at
            ``end_task()`` so freezing preserves the function (spec §4, §9).
        dropout: adapter dropout probability on ``x`` before the keys, training only (step 1).
        eps: ``ε`` of the normaliser ``max(‖p‖₂, ε)`` (step 2).
        routing_kernel: how the torch layer computes steps 2–6: ``"torch"`` (the readable reference,
            :mod:`moram_ref.torch.activation`), ``"triton"`` (the fused kernels of
            :mod:`moram_ref.torch.routing_triton`, equal to it; CUDA, or a CPU under ``TRITON_INTERPRET=1``)
            or ``"auto"`` (triton for CUDA tensors when triton is installed, torch otherwise). NumPy ignores it.
    """

    atoms_per_task: int = 16
    top_k: int | None = 16
    temperature: float = 0.01
    threshold: float = 0.2
    threshold_mode: str = "eval"
    min_active: int = 1
    scale: float = 1.0
    dropout: float = 0.0
    eps: float = 1e-12
    routing_kernel: str = "auto"

    def __post_init__(self) -> None:
        _check_int("atoms_per_task", self.atoms_per_task, minimum=1)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, minimum=1)
        _check_int("min_active", self.min_active, minimum=1)
        _check_real("temperature", self.temperature)
        if not self.temperature >= MIN_TEMPERATURE:
            raise ValueError(f"temperature must be ≥ {MIN_TEMPERATURE:g} (τ > 0; below 1e-6 the float32 softmax is "
                             f"an argmax, and s/τ overflows near 3e-39), got {self.temperature!r}")
        _check_real("threshold", self.threshold)
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [-1, 1], got {self.threshold!r}")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ValueError(
                f"threshold_mode must be one of {THRESHOLD_MODES}, got {self.threshold_mode!r}"
            )
        _check_real("scale", self.scale)
        if self.scale == 0:
            raise ValueError(f"scale must be non-zero, got {self.scale!r}")
        _check_real("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        _check_real("eps", self.eps)
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if self.routing_kernel not in ROUTING_KERNELS:
            raise ValueError(f"routing_kernel must be one of {ROUTING_KERNELS}, got {self.routing_kernel!r}")

    # --- derived quantities ------------------------------------------------------------------
    def k_eff(self, n_atoms: int) -> int:
        """Spec §3 step 3: ``k_eff = min(max(k, min_active), R)`` (``k = R`` when ``top_k`` is None)."""
        k = n_atoms if self.top_k is None else self.top_k
        return min(max(k, self.min_active), n_atoms)

    def threshold_active(self, training: bool) -> bool:
        """Spec §3 step 5: whether the δ gate applies in this mode."""
        if self.threshold_mode == "always":
            return True
        if self.threshold_mode == "never":
            return False
        return not training

    # --- presets and (de)serialisation ----------------------------------------------------------
    @classmethod
    def paper_clip(cls, **overrides: Any) -> MoRAMConfig:
        """Spec §5, CLIP column: r = k = 16, τ = 0.01, δ = 0.2 (eval only), scale 1, dropout 0."""
        return cls(**{**dict(atoms_per_task=16, top_k=16, temperature=0.01, threshold=0.2), **overrides})

    @classmethod
    def paper_llm(cls, **overrides: Any) -> MoRAMConfig:
        """Spec §5, LLM column: r = k = 8, τ = 0.03, δ = 0.2 (eval only), scale 2, dropout 0.1."""
        base = dict(atoms_per_task=8, top_k=8, temperature=0.03, threshold=0.2, scale=2.0, dropout=0.1)
        return cls(**{**base, **overrides})

    def dense(self) -> MoRAMConfig:
        """Dense MoRAM, the ablation of the issue: every atom kept (k = R), no threshold."""
        return dataclasses.replace(self, top_k=None, threshold_mode="never")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoRAMConfig:
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict of MoRAMConfig fields, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown MoRAMConfig field(s) {unknown}; known: {sorted(fields)}")
        return cls(**data)


def check_adam_hyperparameters(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """The optimiser's settings, validated once for both backends' ``Adam``."""
    if not _is_real(lr) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if (not isinstance(betas, (tuple, list)) or len(betas) != 2
            or not all(_is_real(b) and 0.0 <= b < 1.0 for b in betas)):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not _is_real(eps) or not 0 < eps < math.inf:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not _is_real(weight_decay) or not 0 <= weight_decay < math.inf:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _check_real(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
