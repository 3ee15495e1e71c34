"""SplitMultiheadAttention computes exactly what nn.MultiheadAttention computes (float64): outputs,
attention weights and gradients, with every mask form open_clip and users pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moram_ref.torch.split_attention import SplitMultiheadAttention, replace_attention


def pair(batch_first, bias=True, seed=0):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first).double()
    with torch.no_grad():  # non-trivial biases
        if bias:
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha, SplitMultiheadAttention.from_mha(mha)


def masks(kind, b, l, s, h):
    g = torch.Generator().manual_seed(1)
    if kind == "none":
        return {}
    if kind == "causal_float":
        return {"attn_mask": torch.full((l, s), float("-inf"), dtype=torch.float64).triu(1)}
    if kind == "bool_2d":
        m = torch.rand(l, s, generator=g) < 0.3
        m[:, 0] = False  # every query keeps one key
        return {"attn_mask": m}
    if kind == "float_3d":
        return {"attn_mask": torch.randn(b * h, l, s, generator=g, dtype=torch.float64)}
    if kind == "padding":
        kpm = torch.zeros(b, s, dtype=torch.bool)
        kpm[0, -2:] = True
        return {"key_padding_mask": kpm}
    if kind == "both":
        kpm = torch.zeros(b, s, dtype=torch.bool)
        kpm[1, -1] = True
        return {"key_padding_mask": kpm, "attn_mask": torch.full((l, s), float("-inf"), dtype=torch.float64).triu(1)}
    raise ValueError(kind)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch's own, for "both"
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kind", ["none", "causal_float", "bool_2d", "float_3d", "padding", "both"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_outputs_weights_and_gradients_match(batch_first, kind, need_weights):
    mha, split = pair(batch_first)
    b, l = 3, 5
    shape = (b, l, 16) if batch_first else (l, b, 16)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    kw = masks(kind, b, l, l, 4)
    y_ref, w_ref = mha(x, x, x, need_weights=need_weights, **kw)
    y, w = split(x2, x2, x2, need_weights=need_weights, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    if need_weights:
        torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-12)
    else:
        assert w is None and w_ref is None
    g = torch.randn_like(y_ref)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(split.q_proj.weight.grad, mha.in_proj_weight.grad[:16], rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(split.out_proj.weight.grad, mha.out_proj.weight.grad, rtol=1e-11, atol=1e-12)


def test_per_head_weights_cross_attention_and_no_bias():
    mha, split = pair(True, bias=False)
    q = torch.randn(2, 3, 16, dtype=torch.float64)
    kv = torch.randn(2, 7, 16, dtype=torch.float64)
    y_ref, w_ref = mha(q, kv, kv, average_attn_weights=False)
    y, w = split(q, kv, kv, average_attn_weights=False)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-12)


def test_unbatched_input():
    mha, split = pair(False)
    x = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(split(x, x, x)[0], mha(x, x, x)[0], rtol=1e-12, atol=1e-12)


class Block(nn.Module):
    """Calls its attention the way open_clip's ResidualAttentionBlock does."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x, attn_mask=None):
        h = self.ln(x)
        return x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]


def test_replace_attention_in_a_model_keeps_its_function():
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block()).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    y = model(x)
    causal = torch.full((6, 6), float("-inf"), dtype=torch.float64).triu(1)
    y_masked = model[0](x, causal)
    assert replace_attention(model) == ["0.attn", "1.attn"]
    assert all(isinstance(b.attn, SplitMultiheadAttention) for b in model)
    torch.testing.assert_close(model(x), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[0](x, causal), y_masked, rtol=1e-12, atol=1e-12)


def test_unsupported_configurations_are_refused():
    with pytest.raises(ValueError, match="bias_k"):
        SplitMultiheadAttention.from_mha(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="same width"):
        SplitMultiheadAttention.from_mha(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
