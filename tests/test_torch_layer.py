"""Torch-layer properties: per-token routing, frozen atoms under AdamW, freezing keeps the function,
no untrained atom routes after end_task, optimiser mirror, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.torch.layer import MoRAMLinear


def trained_layer(tasks=3, in_task=False, cfg=None, seed=0, d_in=6, d_out=5):
    torch.manual_seed(seed)
    cfg = cfg or MoRAMConfig(atoms_per_task=3, top_k=4, temperature=0.3, threshold=0.1)
    layer = MoRAMLinear(torch.nn.Linear(d_in, d_out).double(), cfg)
    g = torch.Generator().manual_seed(seed)
    for t in range(tasks + int(in_task)):
        layer.begin_task(g)
        with torch.no_grad():
            layer.values.normal_(generator=g)
        if t < tasks:
            layer.end_task()
    return layer


@pytest.mark.parametrize("training", [False, True])
def test_routing_is_per_token(training):
    layer = trained_layer().train(training)
    x = torch.randn(12, 7, 6, dtype=torch.float64)
    y = layer(x)
    for i in range(12):
        torch.testing.assert_close(layer(x[i : i + 1]), y[i : i + 1], rtol=1e-13, atol=1e-13)
    # mixing samples "from different tasks" in one batch changes nothing either
    other = torch.randn(12, 7, 6, dtype=torch.float64) * 3 + 1
    mixed = torch.cat([x[:6], other[:6]])
    torch.testing.assert_close(layer(mixed)[:6], y[:6], rtol=1e-13, atol=1e-13)


def test_frozen_atoms_bit_identical_under_adamw_with_weight_decay():
    layer = trained_layer(tasks=2)
    fk, fv = layer.frozen_keys.clone(), layer.frozen_values.clone()
    base_w = layer.base_layer.weight.clone()
    layer.begin_task(torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(list(layer.parameters()), lr=0.1, weight_decay=0.5)  # handed every parameter
    layer.train()
    for _ in range(50):
        opt.zero_grad()
        layer(torch.randn(8, 6, dtype=torch.float64)).pow(2).sum().backward()
        opt.step()
    assert torch.equal(layer.frozen_keys, fk) and torch.equal(layer.frozen_values, fv)
    assert torch.equal(layer.base_layer.weight, base_w)
    assert layer.values.abs().sum() > 0  # the current atoms did train


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_end_task_keeps_the_function(scale):
    """The authors' LLM code halves each atom's output at freezing (scale 2, frozen unscaled); here not."""
    layer = trained_layer(tasks=2, in_task=True, cfg=MoRAMConfig(atoms_per_task=3, top_k=4, scale=scale,
                                                                 temperature=0.3, threshold=0.1))
    x = torch.randn(20, 6, dtype=torch.float64)
    before = [layer.train(t)(x).detach() for t in (True, False)]
    layer.end_task()
    after = [layer.train(t)(x).detach() for t in (True, False)]
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_begin_task_adds_zero_valued_atoms_that_route_as_numpy_s(rng):
    """eq-begin-task in torch, against NumPy: after begin_task the new values are zero and the new keys lie in
    U(-1/√d_in, 1/√d_in); they join the normaliser, the top-k and the softmax, so routing and the output
    change (spec §4). Given the keys NumPy's begin_task drew (the generators differ), both layers agree."""
    from conftest import build_numpy_layer

    cfg = MoRAMConfig(atoms_per_task=3, top_k=2, temperature=0.3, threshold_mode="never")
    np_layer = build_numpy_layer(rng, tasks=2, config=cfg, in_task=False)
    layer = MoRAMLinear(torch.nn.Linear(6, 5).double(), cfg)
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in np_layer.state_dict().items() if v is not None})
    x = rng.standard_normal((20, 6))
    before = layer.trace(torch.from_numpy(x))
    np_layer.begin_task(np.random.default_rng(1))
    layer.begin_task(torch.Generator().manual_seed(1))
    assert layer.values.shape == (5, 3) and not layer.values.any()
    assert layer.keys.shape == (3, 6) and layer.keys.abs().max() <= 1 / 6**0.5
    drawn = layer.trace(torch.from_numpy(x))
    assert not torch.allclose(drawn["w"][:, :6], before["w"]) and not torch.allclose(drawn["y"], before["y"])
    with torch.no_grad():
        layer.keys.copy_(torch.from_numpy(np_layer.keys))
    after, np_after = layer.trace(torch.from_numpy(x)), np_layer.trace(x)
    for name in ("w", "delta", "y"):
        np.testing.assert_allclose(after[name].detach().numpy(), np_after[name], rtol=1e-12, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("mode", ["eval", "always", "never"])
def test_the_threshold_follows_module_training(mode):
    """Torch reads the threshold's switch from ``module.training`` (NumPy from ``training=``): in each mode the
    output in train() and eval() mode is the trace's with training True and False, and δ gates (some weights
    set to zero) exactly where ``config.threshold_active`` says it applies."""
    cfg = MoRAMConfig(atoms_per_task=3, top_k=6, temperature=0.3, threshold=0.2, threshold_mode=mode)
    layer = trained_layer(tasks=2, cfg=cfg)
    x = torch.randn(64, 6, dtype=torch.float64)
    for training in (True, False):
        traced = layer.trace(x, training=training)
        torch.testing.assert_close(layer.train(training)(x), traced["y"], rtol=0, atol=0)
        gated = bool((traced["w"] != traced["w_soft"]).any())
        assert gated == cfg.threshold_active(training), (mode, training)


def test_no_untrained_atom_routes_after_end_task():
    layer = trained_layer(tasks=2, in_task=True)
    trained_keys = layer.keys.detach().clone()
    layer.end_task()
    assert layer.keys.shape[0] == 0 and layer.n_atoms == 9
    assert torch.equal(layer.frozen_keys[-3:], trained_keys)
    tr = layer.trace(torch.randn(4, 6, dtype=torch.float64))
    assert tr["w"].shape[-1] == 9  # only frozen, trained atoms take part


def test_empty_bank_is_the_base_layer():
    base = torch.nn.Linear(6, 5).double()
    layer = MoRAMLinear(base, MoRAMConfig())
    x = torch.randn(3, 6, dtype=torch.float64)
    assert torch.equal(layer(x), base(x))


def test_torch_adam_mirror_equals_torch_adamw():
    from moram_ref.torch.optim import Adam

    p1 = torch.randn(4, 3, dtype=torch.float64)
    p2 = torch.nn.Parameter(p1.clone())
    ours = Adam(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    ref = torch.optim.AdamW([p2], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for step in range(20):
        g = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        ours.step({"p": p1}, {"p": g})
        p2.grad = g.clone()
        ref.step()
    torch.testing.assert_close(p1, p2.detach(), rtol=1e-12, atol=1e-14)


def test_numpy_and_torch_adam_agree():
    from moram_ref.numpy.optim import Adam as NpAdam
    from moram_ref.torch.optim import Adam as TAdam

    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 2))
    b = torch.from_numpy(a.copy())
    na, ta = NpAdam(lr=0.05, weight_decay=0.01), TAdam(lr=0.05, weight_decay=0.01)
    for _ in range(10):
        g = rng.standard_normal((3, 2))
        na.step({"w": a}, {"w": g})
        ta.step({"w": b}, {"w": torch.from_numpy(g)})
    np.testing.assert_allclose(b.numpy(), a, rtol=1e-13)


def test_errors_name_the_argument():
    layer = trained_layer()
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(3, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="base"):
        MoRAMLinear(torch.nn.Conv1d(3, 3, 1), MoRAMConfig())
    with pytest.raises(RuntimeError, match="end_task"):
        layer.end_task()
    state = layer.state_dict()
    state["frozen_values"] = state["frozen_values"][:, :-1]
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match="frozen_values"):
        layer.load_state_dict(state)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


def test_bank_of_any_size_loads():
    src = trained_layer(tasks=4, in_task=True)
    dst = MoRAMLinear(torch.nn.Linear(6, 5).double(), src.config)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(5, 6, dtype=torch.float64)
    assert torch.equal(dst(x), src(x)) and dst.n_atoms == 15


def test_compile_matches_eager():
    layer = trained_layer().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    try:
        compiled = torch.compile(layer, backend="eager", fullgraph=False)
        y = compiled(x)
    except Exception as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch.compile unavailable here: {exc}")
    torch.testing.assert_close(y, layer(x))


def test_strict_false_follows_torch_and_strict_names_every_key_first():
    """``strict=False`` (a base checkpoint loaded into an adapted model, a state with extra keys) loads what is
    there and returns what is not; ``strict=True`` on the layer refuses before anything changes; inside a model,
    the model's ``load_state_dict`` lists the layer's keys like any module's."""
    src = trained_layer(tasks=2)
    dst = MoRAMLinear(torch.nn.Linear(6, 5).double(), src.config)
    base_only = {k: v for k, v in src.state_dict().items() if k.startswith("base_layer.")}
    result = dst.load_state_dict({**base_only, "extra": torch.zeros(1)}, strict=False)
    assert sorted(result.missing_keys) == ["frozen_keys", "frozen_values", "keys", "values"]
    assert result.unexpected_keys == ["extra"]
    assert torch.equal(dst.base_layer.weight, src.base_layer.weight) and dst.n_atoms == 0  # the bank stays as it was
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=r"state keys mismatch: missing \['frozen_keys', 'frozen_values', 'keys', "
                                         r"'values'\]; unexpected \['extra'\]$"):
        dst.load_state_dict({**base_only, "extra": torch.zeros(1)})
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())
    model, other = torch.nn.Sequential(dst), torch.nn.Sequential(src)
    assert model.load_state_dict(other.state_dict(), strict=False).missing_keys == []
    assert dst.n_atoms == src.n_atoms and torch.equal(model(torch.ones(2, 6, dtype=torch.float64)),
                                                      other(torch.ones(2, 6, dtype=torch.float64)))
    partial = {k: v for k, v in other.state_dict().items() if not k.endswith(".values")}
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "0\.values"'):
        model.load_state_dict(partial)
    with pytest.raises(ValueError, match=r"0\.frozen_values must have shape"):  # shapes are checked in both modes
        model.load_state_dict({**other.state_dict(), "0.frozen_values": torch.zeros(5, 1, dtype=torch.float64)},
                              strict=False)
