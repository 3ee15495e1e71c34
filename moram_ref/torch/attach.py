"""Put MoRAM (or a baseline) on any model, PEFT-style: wrap, never fork (torch only).

``attach(model, config, target_modules)`` replaces the named ``nn.Linear`` layers by adapter layers that
keep the original as ``base_layer``; ``detach(model)`` puts the originals back (the same objects, so
bit for bit). ``begin_task`` / ``end_task`` act on every attached layer; ``trainable_parameters``
yields the current task's tensors only. Target names, as PEFT users expect:

* a ``str``: a regular expression that must match a module's full name (``re.fullmatch``);
* a list: each entry matches a module whose full name equals it or ends with ``"." + entry``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from moram_ref.config import MoRAMConfig
from moram_ref.torch.baselines import LoRALinear, MoELoRALinear
from moram_ref.torch.layer import MoRAMLinear
from moram_ref.torch.olora import OLoRALinear

METHODS = ("moram", "dense_moram", "seq_lora", "moe_lora", "olora")
ADAPTER_TYPES = (MoRAMLinear, LoRALinear, MoELoRALinear, OLoRALinear)


def match_targets(model: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules selected by ``target_modules``.

    Raises ``ValueError`` (naming the target and the module) for every selection that would change
    nothing or not what was asked: a target that selects no module; a selected module that is not an
    ``nn.Linear``; one module selected by two targets or registered under two names (wrapping one
    path leaves the other on the original); a linear layer whose parent reads its weight directly
    instead of calling it — the ``out_proj`` of an ``nn.MultiheadAttention`` (use
    :func:`moram_ref.torch.split_attention.replace_attention` first) and the linear layers of an
    ``nn.TransformerEncoderLayer`` (its evaluation fast path). ``TypeError`` if ``target_modules`` is
    not a str or a sequence of str. See docs/semantics.md.
    """
    modules = {n: m for n, m in model.named_modules() if n and not _inside_adapter(model, n)}
    linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise ValueError(f"target_modules {target_modules!r} is not a valid regular expression ({exc})") from exc
        hits = {target_modules: [n for n in modules if pattern.fullmatch(n)]}
        if not hits[target_modules]:
            raise ValueError(f"target_modules regex {target_modules!r} matches no nn.Linear; "
                             f"some names: {linear[:8]}")
    else:
        if not isinstance(target_modules, Sequence) or not all(isinstance(t, str) for t in target_modules):
            raise TypeError(f"target_modules must be a regex str or a sequence of str, got {target_modules!r}")
        if not target_modules:
            raise ValueError("target_modules is empty")
        hits = {t: [n for n in modules if n == t or n.endswith("." + t)] for t in target_modules}
        unknown = [t for t, found in hits.items() if not found]
        if unknown:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear} | set(linear))
            close = {t: difflib.get_close_matches(t, suffixes, n=3, cutoff=0.5) for t in unknown}
            hints = "; ".join(f"{t!r}: did you mean {' or '.join(map(repr, c))}?" if c else f"{t!r}: no name close to it"
                              for t, c in close.items())
            raise ValueError(f"target_modules {unknown} match no nn.Linear in the model ({hints}); some names: "
                             f"{linear[:8]}")
        if len(hits) < len(target_modules):
            repeated = sorted({t for t in target_modules if list(target_modules).count(t) > 1})
            raise ValueError(f"target_modules lists {repeated} more than once")
    chosen: dict[str, str] = {}
    for target, names in hits.items():
        for name in names:
            if name in chosen:
                raise ValueError(f"module {name} is selected by two target_modules entries, {chosen[name]!r} and "
                                 f"{target!r}; give each module once")
            chosen[name] = target
            _check_adaptable(model, name, modules[name], target)
    _check_unshared(model, list(chosen))
    return list(chosen)


def _check_adaptable(model: nn.Module, name: str, module: nn.Module, target: str) -> None:
    if not isinstance(module, nn.Linear):
        raise ValueError(f"target_modules {target!r} selects {name} ({type(module).__name__}), which is not an "
                         f"nn.Linear; only nn.Linear layers can be adapted")
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention):
        raise ValueError(f"target_modules {target!r} selects {name}, the output projection of an "
                         f"nn.MultiheadAttention, whose forward reads {name}.weight directly: an adapter there "
                         f"would never run. Call moram_ref.torch.split_attention.replace_attention(model) first "
                         f"(same function, q/k/v/out as linear layers), then attach")
    if isinstance(parent, nn.TransformerEncoderLayer):
        raise ValueError(f"target_modules {target!r} selects {name}, inside an nn.TransformerEncoderLayer, whose "
                         f"evaluation fast path reads the weights directly: an adapter there would not run in "
                         f"eval; use an encoder layer that calls its linear modules")


def _check_unshared(model: nn.Module, names: list[str]) -> None:
    paths: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), []).append(n)
    for name in names:
        all_paths = paths[id(model.get_submodule(name))]
        if len(all_paths) > 1:
            raise ValueError(f"module {name} is registered under several names {all_paths}; wrapping one path "
                             f"would leave the others on the original layer")


def _inside_adapter(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:i])), ADAPTER_TYPES):
            return True
    return False


def make_adapter(base: nn.Linear, config: MoRAMConfig, method: str = "moram", dtype: torch.dtype | None = None):
    """The adapter layer of ``method`` around ``base`` (same trainable atoms per task for every method)."""
    if not isinstance(config, MoRAMConfig):
        raise ValueError(f"config must be a MoRAMConfig, got {type(config).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "moram":
        return MoRAMLinear(base, config, dtype)
    if method == "dense_moram":
        return MoRAMLinear(base, config.dense(), dtype)
    if method == "seq_lora":
        return LoRALinear(base, config.atoms_per_task, config.scale, dtype)
    if method == "moe_lora":
        return MoELoRALinear(base, config.atoms_per_task, config.scale, dtype)
    if method == "olora":
        return OLoRALinear(base, config.atoms_per_task, config.scale, dtype)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def attach(
    model: nn.Module,
    config: MoRAMConfig,
    target_modules: str | Sequence[str],
    method: str = "moram",
    dtype: torch.dtype | None = None,
) -> dict[str, nn.Linear]:
    """Replace the target linear layers by adapters; freeze everything else. Returns {name: original}.

    Nothing is replaced if any target is invalid (names are resolved first); ``ValueError`` naming the
    argument for a bad ``config``, ``method``, ``dtype`` or target (see :func:`match_targets`).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if next(attached_layers(model), None) is not None:
        raise RuntimeError("model already has attached layers; detach(model) first")
    names = match_targets(model, target_modules)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        adapters = {n: make_adapter(model.get_submodule(n), config, method, dtype) for n in names}
    except Exception:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        raise
    model._moram_requires_grad = flags
    model.requires_grad_(False)
    replaced = {}
    for name, adapter in adapters.items():
        replaced[name] = adapter.base_layer
        adapter.site = name
        _set_submodule(model, name, adapter)
    return replaced


def detach(model: nn.Module) -> dict[str, nn.Module]:
    """Put every original linear layer back (and the requires_grad flags); returns {name: removed adapter}."""
    removed = dict(attached_layers(model))
    for name, adapter in removed.items():
        _set_submodule(model, name, adapter.base_layer)
    flags = getattr(model, "_moram_requires_grad", {})
    for name, param in model.named_parameters():
        param.requires_grad_(flags.get(name, param.requires_grad))
    if hasattr(model, "_moram_requires_grad"):
        del model._moram_requires_grad
    return removed


def attached_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, ADAPTER_TYPES))


def begin_task(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """``begin_task`` on every attached layer, in module order (so one generator gives reproducible atoms)."""
    layers = list(attached_layers(model))
    if not layers:
        raise RuntimeError("no attached layers; call attach(model, ...) first")
    for _, layer in layers:
        layer.begin_task(generator)


def end_task(model: nn.Module) -> None:
    for _, layer in attached_layers(model):
        layer.end_task()


def trainable_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The current task's tensors of every attached layer, and nothing else."""
    for _, layer in attached_layers(model):
        yield from layer.current_parameters().values()


def parameter_count(model: nn.Module) -> dict[str, int]:
    """``trainable``: current task's parameters; ``frozen_atoms``: parameters held in frozen banks."""
    trainable = sum(p.numel() for p in trainable_parameters(model))
    frozen = sum(b.numel() for _, layer in attached_layers(model) for n, b in layer.named_buffers(recurse=False))
    return {"trainable": int(trainable), "frozen_atoms": int(frozen)}


def moram_layers(model: nn.Module) -> list[tuple[str, MoRAMLinear]]:
    """The attached MoRAM layers (not the baselines), by full name."""
    return [(n, m) for n, m in attached_layers(model) if isinstance(m, MoRAMLinear)]


def set_training(model: nn.Module, on: bool = True) -> None:
    """Switch the attached layers alone to training (threshold off, dropout on) or evaluation; the
    backbone keeps its own mode (its dropout stays off)."""
    for _, layer in attached_layers(model):
        layer.train(on)


def set_recording(model: nn.Module, on: bool = True) -> None:
    """Make every MoRAM layer keep its last final weights ``w`` (for activation maps)."""
    for _, layer in moram_layers(model):
        layer.record = on
        layer.last_weights = None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
