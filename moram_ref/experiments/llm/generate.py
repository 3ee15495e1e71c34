"""Batched, left-padded greedy generation (spec §6: greedy decoding), and its one-by-one reference.

Three modes, the same greedy tokens (tested): ``"eager"`` (Hugging Face's dynamic cache), ``"static"``
(a static cache, ``cache_implementation="static"``), ``"compiled"`` (static cache, and every decoding step
under ``torch.compile(fullgraph=True)``; MoRAM layers trace as one graph, no host synchronisation).

"compiled" uses transformers' own decode-step compilation (``compile_config``): the prefill runs eagerly and
creates the static cache, which transformers then marks as fixed addresses, so CUDA graphs
(``mode="reduce-overhead"``) can replay the decoding step. Compiling the whole forward instead (prefill
included) creates the cache inside the graph, unmarked: CUDA graphs then either skip or free it under the
next step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moram_ref.experiments.llm.data import encode_prompt


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, length - len(s):] = torch.tensor(s)
        mask[i, length - len(s):] = 1
    return ids, mask


GENERATION_MODES = ("eager", "static", "compiled")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def generation_kwargs(model, mode: str = "eager", backend: str | Callable = "inductor",
                      compile_mode: str | None = None) -> dict:
    """The extra ``model.generate`` arguments of ``mode``; nothing on the model changes here.

    ``"compiled"``: a static cache and ``compile_config=CompileConfig(fullgraph=True, backend=backend,
    mode=compile_mode)`` — transformers compiles the decoding step only (once per model and setting; it keeps
    the compiled call on the model), also on a CPU. ``compile_mode`` defaults to ``"reduce-overhead"`` (CUDA
    graphs) on CUDA and ``"default"`` elsewhere. In ``"static"`` transformers' automatic compilation is
    switched off, so it stays eager.

    Raises:
        ValueError: ``mode`` is not one of :data:`GENERATION_MODES`; for ``"compiled"``, ``backend`` (a name)
            is not one of ``torch._dynamo.list_backends``, or ``compile_mode`` is not one of
            :data:`COMPILE_MODES`.
    """
    if mode not in GENERATION_MODES:
        raise ValueError(f"mode must be one of {GENERATION_MODES}, got {mode!r}")
    if mode == "compiled":
        known = torch._dynamo.list_backends(exclude_tags=())
        if isinstance(backend, str) and backend not in known:
            raise ValueError(f"backend must be one of {known} (or a callable), got {backend!r}")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be None or one of {COMPILE_MODES}, got {compile_mode!r}")
    if mode == "eager":
        return {}
    if mode == "static":
        return {"cache_implementation": "static", "disable_compile": True}
    from transformers import CompileConfig  # noqa: PLC0415

    cuda = next(model.parameters()).device.type == "cuda"
    mode_ = compile_mode or ("reduce-overhead" if cuda else "default")
    config = CompileConfig(fullgraph=True, backend=backend, mode=mode_)
    config._compile_all_devices = True  # transformers compiles on accelerators only unless told (its flag for tests)
    return {"cache_implementation": "static", "compile_config": config}


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 16,
             max_prompt: int = 1024, synced: bool = False, mode: str = "eager") -> list[str]:
    """Greedy continuations of every prompt, ``batch_size`` at a time, left-padded; decoded new tokens only.

    ``synced``: every process keeps stepping until all are done (needed when the model is sharded).
    ``mode``: one of :data:`GENERATION_MODES` (see :func:`generation_kwargs`). Runs in evaluation mode
    (threshold δ on, dropout off); every module's mode is restored afterwards.
    """
    if mode not in GENERATION_MODES:
        raise ValueError(f"mode must be one of {GENERATION_MODES}, got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, max_prompt, synced, mode)
    finally:
        for module, training in modes:
            module.training = training


class _FiniteScores:
    """A logits processor that notes, on the device, whether any next-token score was NaN or inf (greedy
    decoding would then pick a token from garbage): read once per batch, no synchronisation per step."""

    def __init__(self, device) -> None:
        self.bad = torch.zeros((), dtype=torch.bool, device=device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.bad |= ~torch.isfinite(scores).all()
        return scores


def _generate(model, tokenizer, prompts, max_new_tokens, batch_size, max_prompt, synced, mode) -> list[str]:
    from transformers import LogitsProcessorList  # noqa: PLC0415

    from moram_ref.shapes import NonFiniteError  # noqa: PLC0415

    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p, max_prompt)[0] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths together
    results: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], tokenizer.pad_token_id)
        finite = _FiniteScores(device)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             synced_gpus=synced, logits_processor=LogitsProcessorList([finite]),
                             **generation_kwargs(model, mode))
        if bool(finite.bad):
            raise NonFiniteError(f"the model's next-token scores contain NaN or inf while generating answers to "
                                 f"{len(idx)} prompts, so greedy decoding would pick garbage")
        for row, i in enumerate(idx):
            results[i] = tokenizer.decode(out[row, ids.shape[1]:], skip_special_tokens=True)
    return [results[i] for i in range(len(prompts))]
