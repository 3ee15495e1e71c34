"""The compared methods as adapter layers with one interface, and the shared training step.

Every method gets the same trainable atoms per task: ``r`` rank-1 pairs per adapted layer (MoE-LoRA
adds its router row, counted separately). ``frozen`` is the base model alone.
"""

from __future__ import annotations

import numpy as np

from moram_ref.config import MoRAMConfig
from moram_ref.numpy.baselines import LoRALinear, MoELoRALinear
from moram_ref.numpy.layer import MoRAMLinear

METHODS = ("frozen", "seq_lora", "moe_lora", "dense_moram", "moram")
LABELS = {
    "frozen": "frozen base",
    "seq_lora": "sequential LoRA",
    "moe_lora": "MoE-LoRA (router)",
    "dense_moram": "dense MoRAM",
    "moram": "MoRAM",
}


def make_layer(method: str, weight: np.ndarray, bias: np.ndarray | None, config: MoRAMConfig):
    """An adapted copy of the linear layer ``(weight, bias)`` for ``method``."""
    if method in ("frozen", "moram"):
        return MoRAMLinear(weight, bias, config)
    if method == "dense_moram":
        return MoRAMLinear(weight, bias, config.dense())
    if method == "seq_lora":
        return LoRALinear(weight, bias, config.atoms_per_task, config.scale)
    if method == "moe_lora":
        return MoELoRALinear(weight, bias, config.atoms_per_task, config.scale)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def count_trainable(layers) -> int:
    return int(sum(a.size for layer in layers for a in layer.current_parameters().values()))


def activation_mass(layer: MoRAMLinear, x: np.ndarray, groups: np.ndarray, n_tasks: int) -> np.ndarray:
    """Mean total weight ``Σ w`` of each task's atoms on inputs ``x`` (evaluation mode).

    Returns (atom groups, n_tasks-of-inputs): entry ``[g, d]`` is the mean over inputs of domain ``d``
    of the summed final weights of the atoms added by task ``g``.
    """
    _, cache = layer.forward(x, training=False)
    w = cache["w"].reshape(-1, layer.n_atoms)  # (N, R)
    r = layer.config.atoms_per_task
    by_group = w.reshape(w.shape[0], -1, r).sum(axis=2)  # (N, tasks so far)
    return np.stack([by_group[groups == d].mean(axis=0) for d in range(n_tasks)], axis=1)


def silent_fraction(layer: MoRAMLinear, x: np.ndarray) -> float:
    """Fraction of inputs whose every weight the threshold δ switched off (no update at all)."""
    _, cache = layer.forward(x, training=False)
    w = cache["w"].reshape(-1, max(layer.n_atoms, 1))
    return float(np.mean(np.all(w == 0, axis=1))) if layer.n_atoms else 1.0



def key_norms(layer: MoRAMLinear) -> list[float]:
    """Mean key norm ``‖A_i‖₂`` of each frozen task's atoms, in task order (a routing diagnostic: atoms
    whose keys grew win the shared normaliser and the top-k on every input). -> one float per task."""
    r = layer.config.atoms_per_task
    norms = np.linalg.norm(layer.frozen_keys, axis=1)  # (R_old,)
    return [float(v) for v in norms.reshape(-1, r).mean(axis=1)] if norms.size else []
