"""Greedy generation throughput (new tokens per second), side by side: the plain model, a merged LoRA,
MoRAM eager, MoRAM compiled — the same prompts, the same number of new tokens (no early stop).

``generation_throughput(model, tokenizer, prompts, max_new_tokens, mode)`` times one mode of
:func:`moram_ref.experiments.llm.generate.generation_kwargs` on one model; :func:`merge_random_lora` makes
"a model with a merged LoRA" (its cost is the plain model's: a merged LoRA adds no computation).
"""

from __future__ import annotations

import statistics
import time

import torch

from moram_ref.experiments.llm.data import encode_prompt
from moram_ref.experiments.llm.generate import GENERATION_MODES, generation_kwargs, left_pad


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generation_throughput(model, tokenizer, prompts, max_new_tokens: int, mode: str = "eager", repeat: int = 3,
                          backend: str = "inductor", compile_mode: str | None = None) -> dict:
    """New tokens per second of one batched greedy ``generate`` call, median of ``repeat`` after a warm-up.

    Args:
        prompts: a list of strings (encoded by ``tokenizer``, left-padded) or an int64 tensor (batch, length)
            of token ids (``tokenizer`` may then be None; pad id: the model config's, else 0).
        max_new_tokens: every sequence gets exactly this many new tokens (``min_new_tokens`` too).
        mode: ``"eager"``, ``"static"`` or ``"compiled"`` (see ``generation_kwargs``); the warm-up call
            includes compilation and is reported apart (``warmup_seconds``).
    Returns ``{"mode", "prompts", "prompt_length", "new_tokens", "seconds", "new_tokens_per_s",
    "warmup_seconds", "sequences"}``; ``sequences`` (batch, max_new_tokens) are the new token ids (CPU).
    Raises ``ValueError`` on a bad mode, ``max_new_tokens`` or ``repeat``, or no prompts.
    """
    if mode not in GENERATION_MODES:
        raise ValueError(f"mode must be one of {GENERATION_MODES}, got {mode!r}")
    for name, value in (("max_new_tokens", max_new_tokens), ("repeat", repeat)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    device = next(model.parameters()).device
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2 or prompts.dtype != torch.long or prompts.numel() == 0:
            raise ValueError("prompts as a tensor must be int64 (batch, length) with batch, length >= 1, got "
                             f"{prompts.dtype} {tuple(prompts.shape)}")
        ids, mask = prompts, torch.ones_like(prompts)
        pad_id = getattr(model.config, "pad_token_id", None) or 0
    else:
        if not prompts:
            raise ValueError("prompts is empty")
        pad_id = tokenizer.pad_token_id
        ids, mask = left_pad([encode_prompt(tokenizer, p, 1 << 30)[0] for p in prompts], pad_id)
    ids, mask = ids.to(device), mask.to(device)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                  do_sample=False, num_beams=1, pad_token_id=pad_id)
    kwargs.update(generation_kwargs(model, mode, backend, compile_mode))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return _timed(model, kwargs, repeat, device, mode, ids.shape, max_new_tokens)
    finally:  # every module's mode as it was
        for module, training in modes:
            module.training = training


def _timed(model, kwargs: dict, repeat: int, device: torch.device, mode: str, shape, max_new_tokens: int) -> dict:
    """One warm-up ``generate``, then the median of ``repeat`` timed ones (see :func:`generation_throughput`)."""
    _sync(device)
    t0 = time.perf_counter()
    model.generate(**kwargs)  # warm-up: compilation, CUDA graphs, allocator
    _sync(device)
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = model.generate(**kwargs)
        _sync(device)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    new = shape[0] * max_new_tokens
    return {"mode": mode, "prompts": shape[0], "prompt_length": shape[1], "new_tokens": new,
            "seconds": seconds, "new_tokens_per_s": new / seconds, "warmup_seconds": warmup,
            "sequences": out[:, shape[1]:].cpu()}


@torch.no_grad()
def merge_random_lora(model, target_modules, rank: int = 8, seed: int = 0, scale: float = 1.0) -> int:
    """Add a random rank-``rank`` product ``scale · B A`` to every target weight in place: a merged LoRA.

    ``A`` is drawn as LoRA initialises it (``U(±1/√d_in)``), ``B ~ N(0, 0.02²)``; returns the number of layers.
    """
    from moram_ref.torch.attach import match_targets  # noqa: PLC0415

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    gen = torch.Generator().manual_seed(seed)
    names = match_targets(model, target_modules)
    for name in names:
        w = model.get_submodule(name).weight  # (d_out, d_in)
        a = (2 * torch.rand(rank, w.shape[1], generator=gen) - 1) / w.shape[1] ** 0.5  # (rank, d_in)
        b = 0.02 * torch.randn(w.shape[0], rank, generator=gen)  # (d_out, rank)
        w += (scale * b @ a).to(w.device, w.dtype)
    return len(names)
