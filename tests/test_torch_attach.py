"""attach / detach on a model: targets by name, suffix or regex; bit-exact detach; only atoms train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moram_ref.config import MoRAMConfig
from moram_ref.torch import attach as A
from moram_ref.torch.layer import MoRAMLinear


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.v_proj, self.fc = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 2 * d)
        self.out = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        h = torch.tanh(self.q_proj(x)) * self.v_proj(x)
        return self.norm(x + self.out(torch.relu(self.fc(h))))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(Block(8), Block(8), nn.Linear(8, 3)).double()


CFG = MoRAMConfig(atoms_per_task=2, top_k=2, temperature=0.1)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "0\\.(q|v)_proj|1\\.(q|v)_proj", ["0.q_proj", "1.q_proj", "v_proj"]])
def test_targets_by_suffix_exact_name_or_regex(targets):
    m = tiny_model()
    replaced = A.attach(m, CFG, targets)
    assert sorted(replaced) == ["0.q_proj", "0.v_proj", "1.q_proj", "1.v_proj"]
    assert all(isinstance(m.get_submodule(n), MoRAMLinear) for n in replaced)


def test_unknown_targets_list_close_matches_and_change_nothing():
    m = tiny_model()
    before = [type(x) for x in m.modules()]
    with pytest.raises(ValueError, match="q_proj"):
        A.attach(m, CFG, ["q_prj", "v_proj"])
    assert [type(x) for x in m.modules()] == before
    with pytest.raises(ValueError, match="regex"):
        A.attach(m, CFG, "nothing.*here")


@pytest.mark.parametrize("method", A.METHODS)
def test_attach_keeps_outputs_and_detach_is_bit_exact(method):
    m = tiny_model()
    ref = tiny_model()
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    y0 = m(x)
    A.attach(m, CFG, ["q_proj", "v_proj", "fc", "out"], method=method)
    assert torch.equal(m(x), y0)  # empty bank: the model is unchanged
    g = torch.Generator().manual_seed(0)
    A.begin_task(m, g)
    opt = torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(m(x), y0)
    A.end_task(m)
    A.detach(m)
    assert all(type(a) is type(b) for a, b in zip(m.modules(), ref.modules()))
    for (n1, p1), (n2, p2) in zip(m.state_dict().items(), ref.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert torch.equal(m(x), y0)
    assert all(p.requires_grad for p in m.parameters())  # flags restored


def test_only_current_atoms_train_and_counts():
    m = tiny_model()
    A.attach(m, CFG, ["q_proj", "v_proj"])
    assert list(A.trainable_parameters(m)) == []
    A.begin_task(m, torch.Generator().manual_seed(0))
    trainable = {id(p) for p in A.trainable_parameters(m)}
    requires = {id(p) for p in m.parameters() if p.requires_grad}
    assert trainable == requires and len(trainable) == 8
    assert A.parameter_count(m) == {"trainable": 4 * 2 * (8 + 8), "frozen_atoms": 0}
    A.end_task(m)
    assert A.parameter_count(m) == {"trainable": 0, "frozen_atoms": 4 * 2 * (8 + 8)}


def test_attach_twice_is_refused():
    m = tiny_model()
    A.attach(m, CFG, ["q_proj"])
    with pytest.raises(RuntimeError, match="already"):
        A.attach(m, CFG, ["v_proj"])


def test_begin_task_without_attach_is_refused():
    with pytest.raises(RuntimeError, match="attach"):
        A.begin_task(tiny_model())


class WithAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.enc(self.attn(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize(("targets", "message"), [
    (["attn.out_proj"], r"attn\.out_proj, the output projection of an nn.MultiheadAttention.*replace_attention"),
    ("attn\\.out_proj", r"attn\.out_proj, the output projection"),
    (["linear1"], r"enc\.linear1, inside an nn.TransformerEncoderLayer"),
    (["attn"], r"selects attn \(MultiheadAttention\), which is not an nn.Linear"),
    ("enc\\..*", r"selects enc\.self_attn \(MultiheadAttention\), which is not an nn.Linear"),
])
def test_targets_an_adapter_could_not_change_are_refused(targets, message):
    """Attaching there used to succeed and change nothing (the parent reads the weight directly)."""
    torch.manual_seed(0)
    m = WithAttention().double()
    before = [type(x) for x in m.modules()]
    with pytest.raises(ValueError, match=message):
        A.attach(m, CFG, targets)
    assert [type(x) for x in m.modules()] == before and all(p.requires_grad for p in m.parameters())


def test_after_replace_attention_the_output_projection_adapts():
    from moram_ref.torch.split_attention import replace_attention

    torch.manual_seed(0)
    m = WithAttention().double().eval()
    m.enc = nn.Identity()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    replace_attention(m)  # .attn becomes a SplitMultiheadAttention (same function)
    A.attach(m, CFG, ["attn.out_proj"])
    A.begin_task(m, torch.Generator().manual_seed(0))
    y0 = m(x)
    with torch.no_grad():
        for p in A.trainable_parameters(m):
            p.normal_()
    assert not torch.allclose(m(x), y0)


@pytest.mark.parametrize(("targets", "message"), [
    (["q_proj", "0.q_proj"], r"module 0\.q_proj is selected by two target_modules entries, 'q_proj' and '0\.q_proj'"),
    (["fc", "fc"], r"lists \['fc'\] more than once"),
    (["norm"], r"selects 0\.norm \(LayerNorm\), which is not an nn.Linear"),
    ("(0|1)\\.(fc|norm)", r"selects 0\.norm \(LayerNorm\)"),
    ("(", r"'\(' is not a valid regular expression"),
    ([3], r"target_modules must be a regex str or a sequence of str, got \[3\]"),
    (None, r"target_modules must be a regex str or a sequence of str, got None"),
])
def test_ambiguous_or_non_linear_targets_are_refused(targets, message):
    m = tiny_model()
    with pytest.raises((ValueError, TypeError), match=message):
        A.attach(m, CFG, targets)
    assert not list(A.attached_layers(m))


def test_a_layer_registered_twice_is_refused():
    m = tiny_model()
    m[1].q_proj = m[0].q_proj  # one module, two paths
    with pytest.raises(ValueError, match=r"registered under several names \['0\.q_proj', '1\.q_proj'\]"):
        A.attach(m, CFG, ["q_proj"])


@pytest.mark.parametrize("method", A.METHODS)
def test_a_non_finite_activation_names_the_adapted_layer_it_reaches(method):
    """Activations that overflow upstream are refused at the first adapted layer they reach, by name
    (NonFiniteError, a ValueError); the same layer alone, outside a model, says only ``x``."""
    from moram_ref.shapes import NonFiniteError

    m = tiny_model()
    A.attach(m, CFG, ["fc", "out"], method=method)
    assert {n: layer.site for n, layer in A.attached_layers(m)} == {n: n for n, _ in A.attached_layers(m)}
    with torch.no_grad():
        m[0].v_proj.weight.fill_(1e308)  # a frozen, non-adapted layer overflows: inf * tanh(...) reaches 0.fc
    with pytest.raises(NonFiniteError, match=r"x contains NaN or inf \(\d+ entries\); it is the input of "
                                             r"adapted layer '0\.fc'$"):
        m(torch.randn(2, 8, dtype=torch.float64))
    alone = A.make_adapter(nn.Linear(8, 8), CFG, method)
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(1 entries\)$"):
        alone(torch.tensor([[float("nan")] + [0.0] * 7]))
