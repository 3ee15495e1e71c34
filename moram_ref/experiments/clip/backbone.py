"""open_clip backbones for the CLIP track: loading, the q/k/v split, and the layer paths as data.

Real runs: ``open_clip.create_model_and_transforms("ViT-B-16", pretrained="openai")`` (spec §5). Tests
and CPU demos: any open_clip config, e.g. :func:`tiny_clip`. Before anything is attached, every
``nn.MultiheadAttention`` is replaced by :class:`~moram_ref.torch.split_attention.SplitMultiheadAttention`
(same function, tested), so that q, k, v and the output projection are ordinary linear layers.

Targets (spec §5): in every residual block of the image tower (``visual.transformer.resblocks.N``) and
of the text tower (``transformer.resblocks.N``), the attention's ``q_proj``, ``k_proj``, ``v_proj``,
``out_proj`` and the MLP's ``c_fc``, ``c_proj`` — selectable per encoder and per kind.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from moram_ref.torch.split_attention import replace_attention

ENCODER_PREFIX = {"image": r"visual\.transformer\.resblocks\.\d+", "text": r"transformer\.resblocks\.\d+"}
KIND_SUFFIX = {"attention": r"attn\.(q_proj|k_proj|v_proj|out_proj)", "mlp": r"mlp\.(c_fc|c_proj)"}


def target_regex(encoders: Sequence[str] = ("image", "text"), kinds: Sequence[str] = ("attention", "mlp")) -> str:
    """A regular expression (for ``attach``) selecting the linear layers of the given encoders and kinds."""
    bad = [e for e in encoders if e not in ENCODER_PREFIX] + [k for k in kinds if k not in KIND_SUFFIX]
    if bad or not encoders or not kinds:
        raise ValueError(f"encoders must be among {sorted(ENCODER_PREFIX)} and kinds among {sorted(KIND_SUFFIX)}, "
                         f"got encoders={list(encoders)}, kinds={list(kinds)}")
    prefix = "|".join(f"(?:{ENCODER_PREFIX[e]})" for e in encoders)
    suffix = "|".join(f"(?:{KIND_SUFFIX[k]})" for k in kinds)
    return rf"(?:{prefix})\.(?:{suffix})"


def prepare(model: nn.Module) -> list[str]:
    """Split every fused attention into q/k/v/out linear layers (the one weight-layout conversion)."""
    return replace_attention(model)


class LoadError(RuntimeError):
    """open_clip could not build the model with its weights (the message says why)."""


def load_clip(name: str = "ViT-B-16", pretrained: str | None = "openai", device: str = "cpu"):
    """(model, train_transform, eval_transform, tokenizer) from open_clip, attention already split. Raises
    :class:`LoadError` when open_clip cannot build it (weights not downloadable offline, a damaged file)."""
    import open_clip  # noqa: PLC0415  (the 'clip' extra)

    try:
        model, train_tf, eval_tf = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    except Exception as exc:  # noqa: BLE001  (offline download, a damaged .pt/.safetensors: pickle, EOF, header)
        raise LoadError(f"{type(exc).__name__}: {exc}") from exc
    prepare(model)
    return model.eval(), train_tf, eval_tf, open_clip.get_tokenizer(name)


def tiny_clip(seed: int = 0, image_size: int = 32):
    """A tiny random open_clip CLIP (CPU tests), attention split, with matching transforms and tokenizer."""
    import open_clip  # noqa: PLC0415
    from torchvision import transforms  # noqa: PLC0415

    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=32, vision_cfg={"image_size": image_size, "layers": 2, "width": 64,
                                                     "patch_size": 8, "head_width": 32},
                           text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2})
    prepare(model)
    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=16)
    return model.eval(), tf, tf, tokenizer
