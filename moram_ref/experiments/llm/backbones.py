"""Causal LMs for the LLM track: real checkpoints from a local path or hub name, and tiny random ones.

Real runs: ``AutoModelForCausalLM.from_pretrained(name_or_path)`` (bf16 on GPU). Tests and CPU demos:
a tiny LLaMA-, Qwen2- or Gemma-style decoder built from a config, with a byte-level BPE tokenizer
trained locally on the task text (nothing is fetched from a hub). Target layers by family: the
attention q, k, v, o projections (spec §5); other targets are a flag.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from moram_ref.experiments import rundir

ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
FAMILIES = ("llama", "qwen2", "gemma")


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2000, out_dir: str | Path | None = None):
    """A byte-level BPE tokenizer trained on ``texts``, as a ``PreTrainedTokenizerFast`` (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if out_dir is not None:  # written whole or not at all: into a hidden sibling folder, then renamed
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
        try:
            fast.save_pretrained(str(tmp))
            os.chmod(tmp, 0o777 & ~rundir.umask())  # mkdtemp makes it 0700; as the run folder's other folders
            shutil.rmtree(out_dir, ignore_errors=True)  # what a kill during an older, in-place write left
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return fast


def tiny_config(family: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                intermediate: int = 128, max_positions: int = 2048):
    """A small config of the given family (random weights when instantiated)."""
    import transformers  # noqa: PLC0415

    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if family == "llama":
        return transformers.LlamaConfig(**common)
    if family == "qwen2":
        return transformers.Qwen2Config(**common)
    if family == "gemma":
        return transformers.GemmaConfig(head_dim=hidden // heads, **common)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def tiny_model(family: str, vocab_size: int, seed: int = 0, dtype=None, **sizes):
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size, **sizes))
    if dtype is not None:
        model = model.to(dtype)
    model.config.use_cache = True
    return model.eval()


def load_pretrained(name_or_path: str, dtype=None, device: str = "cpu"):
    """(model, tokenizer) from a local folder (or a hub name where the network allows it). Raises
    :class:`LoadError` when transformers cannot build either (no tokenizer or weights files, damaged ones)."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, torch_dtype=dtype or torch.float32)
    except Exception as exc:  # noqa: BLE001  (OSError, ValueError, a SafetensorError, a pickle error …)
        said = " ".join(str(exc).split())
        raise LoadError(f"{type(exc).__name__}: {said[:300]}{'…' if len(said) > 300 else ''}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


class LoadError(RuntimeError):
    """transformers could not build the model or its tokenizer (the message says why)."""


# Beyond this magnitude a hidden state's square overflows float32 (√(3.4e38) ≈ 1.8e19), in which the
# decoders' RMS norms compute their variance: the norm then outputs zeros (x · rsqrt(inf)) and the logits
# are flat — finite, so no NaN check downstream would notice (every next token equally likely).
NORM_LIMIT = 1.8e19


def guard_final_norm(model) -> bool:
    """Refuse hidden states that the decoder's final norm cannot normalise: a forward pre-hook on
    ``model.get_decoder().norm`` (Llama, Qwen2, Gemma) raises :class:`~moram_ref.shapes.NonFiniteError`
    when one is NaN, inf or above :data:`NORM_LIMIT` in magnitude — a diverged run or overflowing adapter
    weights. Sync-free like the layers' input check: a device-side assertion on CUDA and under
    ``torch.compile``. Returns whether a norm was found (a model without one is left as it is)."""
    import torch  # noqa: PLC0415

    from moram_ref.shapes import NonFiniteError  # noqa: PLC0415

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    if norm is None:
        return False
    message = (f"the hidden states entering the decoder's final norm are NaN, inf or above {NORM_LIMIT:.1e} in "
               "magnitude: squaring them overflows float32, so the norm would output zeros and every next token "
               "would be equally likely")

    def check(module, args):
        ok = args[0].detach().abs().amax() < NORM_LIMIT  # NaN compares False
        if torch.compiler.is_compiling() or args[0].device.type != "cpu":
            torch._assert_async(ok, message)
        elif not bool(ok):
            raise NonFiniteError(message)

    norm.register_forward_pre_hook(check)
    return True
