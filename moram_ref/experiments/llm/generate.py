"""Batched, left-padded greedy generation (spec §6: greedy decoding), and its one-by-one reference."""

from __future__ import annotations

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


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 16,
             max_prompt: int = 1024, synced: bool = False) -> list[str]:
    """Greedy continuations of every prompt, ``batch_size`` at a time, left-padded; decoded new tokens only.

    ``synced``: every process keeps stepping until all are done (needed when the model is sharded).
    Runs in evaluation mode (threshold δ on, dropout off); every module's mode is restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, max_prompt, synced)
    finally:
        for module, training in modes:
            module.training = training


def _generate(model, tokenizer, prompts, max_new_tokens, batch_size, max_prompt, synced) -> list[str]:
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, p, max_prompt)[0] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths together
    results: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], tokenizer.pad_token_id)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, synced_gpus=synced)
        for row, i in enumerate(idx):
            results[i] = tokenizer.decode(out[row, ids.shape[1]:], skip_special_tokens=True)
    return [results[i] for i in range(len(prompts))]
