"""``nn.MultiheadAttention`` with separate q, k, v and output ``nn.Linear`` layers (torch only).

open_clip's blocks use ``nn.MultiheadAttention``: q/k/v live in one fused ``in_proj_weight`` and the
attention function reads ``out_proj.weight`` directly, so wrapping those layers changes nothing. MoRAM
needs an input-dependent update on each projection (spec §5), so the attention is replaced by this
module, which computes the same function (tested in float64: outputs, attention weights, gradients,
masks) with four ordinary linear layers that :func:`moram_ref.torch.attach.attach` can wrap. The fused
weight is split in exactly one place, :meth:`SplitMultiheadAttention.from_mha`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SplitMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` (same forward signature and return values)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(embed_dim, embed_dim, **kw) for _ in range(3))
        self.out_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        """The same function as ``mha``, its fused ``in_proj_weight`` split into q, k, v (the one conversion)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise ValueError(f"mha must be an nn.MultiheadAttention, got {type(mha).__name__}")
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("only q/k/v of the same width, without bias_k/bias_v/add_zero_attn, can be split "
                             f"(same width: {mha._qkv_same_embed_dim}, bias_k: {mha.bias_k is not None})")
        w = mha.in_proj_weight
        out = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None, mha.batch_first,
                  device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for proj, weight in zip((out.q_proj, out.k_proj, out.v_proj), w.chunk(3, dim=0)):
                proj.weight.copy_(weight)
            if mha.in_proj_bias is not None:
                for proj, b in zip((out.q_proj, out.k_proj, out.v_proj), mha.in_proj_bias.chunk(3)):
                    proj.bias.copy_(b)
            out.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                out.out_proj.bias.copy_(mha.out_proj.bias)
        out.requires_grad_(w.requires_grad)
        out.train(mha.training)
        return out

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E) unbatched input
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # from here: (L, B, E) like MHA's internal layout
        tgt, bsz, _ = query.shape
        src = key.shape[0]
        h, dh = self.num_heads, self.embed_dim // self.num_heads
        q = self.q_proj(query).reshape(tgt, bsz, h, dh).permute(1, 2, 0, 3)  # (B, H, L, Dh)
        k = self.k_proj(key).reshape(src, bsz, h, dh).permute(1, 2, 0, 3)  # (B, H, S, Dh)
        v = self.v_proj(value).reshape(src, bsz, h, dh).permute(1, 2, 0, 3)  # (B, H, S, Dh)
        mask = self._merged_mask(attn_mask, key_padding_mask, is_causal, bsz, tgt, src, q.dtype, q.device)
        drop = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(dh)  # (B, H, L, S)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            attn = F.dropout(weights, drop, self.training) @ v  # (B, H, L, Dh)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
            weights = None
        out = self.out_proj(attn.permute(2, 0, 1, 3).reshape(tgt, bsz, self.embed_dim))  # (L, B, E)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if not batched:
                weights = weights.squeeze(0)
        return out, weights

    def _merged_mask(self, attn_mask, key_padding_mask, is_causal, bsz, tgt, src, dtype, device):
        """One additive float mask (B or 1, H or 1, L, S), or None — bool entries True mean "masked out"."""
        def additive(m):
            return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

        mask = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=device).triu(1)
        if attn_mask is not None:
            m = additive(attn_mask)
            mask = m.reshape(1, 1, tgt, src) if m.dim() == 2 else m.reshape(bsz, self.num_heads, tgt, src)
        if key_padding_mask is not None:
            kpm = additive(key_padding_mask).reshape(bsz, 1, 1, src)
            mask = kpm if mask is None else mask + kpm
        return mask


def replace_attention(model: nn.Module) -> list[str]:
    """Swap every ``nn.MultiheadAttention`` in ``model`` for an equal :class:`SplitMultiheadAttention`."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SplitMultiheadAttention.from_mha(getattr(parent, child)))
    return names
