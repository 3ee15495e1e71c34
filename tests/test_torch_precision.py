"""The precision policy (docs/semantics.md#precision): responses exact on the operands as given, routing in
float32, the value product in the base output's dtype, and autocast never changes routing. Device-aware
(``MORAM_TEST_DEVICE=cuda``: on the GPU, under CUDA autocast, and the forward through the fused kernel)."""

from __future__ import annotations

import pytest
import torch

from moram_ref import precision
from moram_ref.config import MoRAMConfig
from moram_ref.torch.layer import MoRAMLinear, _routing_dtype

ROUTING = ("p", "s", "keep", "gated", "w")


def make_layer(dtype=torch.float32, atoms_dtype=None, d=48, tasks=2, seed=0, device="cpu") -> MoRAMLinear:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    layer = MoRAMLinear(torch.nn.Linear(d, d).to(dtype), MoRAMConfig.paper_clip(atoms_per_task=8, top_k=8),
                        dtype=atoms_dtype)
    for t in range(tasks + 1):  # `tasks` frozen and one current
        layer.begin_task(gen)
        with torch.no_grad():
            layer.values.normal_(0.0, 0.1, generator=gen)
        if t < tasks:
            layer.end_task()
    return layer.to(device)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_never_changes_routing(dtype, training, device):
    layer = make_layer(dtype, device=device)
    x = torch.randn(64, 48).to(dtype).to(device)
    plain = layer.trace(x, training)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        under = layer.trace(x, training)
    for name in ROUTING:
        assert torch.equal(under[name], plain[name]), f"{name} changed under autocast"
    assert under["y"].dtype == torch.bfloat16  # the output follows autocast, like the base layer's


@pytest.mark.parametrize(("dtype", "atoms", "rdt", "out"), [
    (torch.float64, None, torch.float64, torch.float64),
    (torch.float32, None, torch.float32, torch.float32),
    (torch.bfloat16, None, torch.float32, torch.bfloat16),
    (torch.float16, None, torch.float32, torch.float16),
    (torch.bfloat16, torch.float32, torch.float32, torch.bfloat16),
])
def test_dtypes_follow_the_policy(dtype, atoms, rdt, out, device):
    layer = make_layer(dtype, atoms, device=device)
    x = torch.randn(5, 48).to(dtype).to(device)
    tr = layer.trace(x)
    assert _routing_dtype(dtype, layer.frozen_keys.dtype) == rdt
    assert tr["p"].dtype == tr["s"].dtype == tr["w"].dtype == rdt
    assert tr["delta"].dtype == tr["y"].dtype == layer(x).dtype == out


@pytest.mark.parametrize("atoms", [None, torch.float32])
def test_half_precision_responses_are_exact_on_the_given_operands(atoms, device):
    """bf16 operands widen exactly: p equals float64's on the same numbers up to float32 accumulation."""
    layer = make_layer(torch.bfloat16, atoms, device=device)
    x = torch.randn(256, 48).bfloat16().to(device)
    tr = layer.trace(x)
    ref = make_layer(torch.bfloat16, atoms, device=device)
    ref.load_state_dict(layer.state_dict())
    ref64 = ref.double().trace(x.double())
    scale = ref64["p"].abs().max()
    assert (tr["p"].double() - ref64["p"]).abs().max() <= 1e-6 * scale
    assert torch.equal(tr["keep"], ref64["keep"]) and torch.equal(tr["gated"], ref64["gated"])


def test_fused_forward_equals_the_trace_in_half_precision(device):
    """The forward (on CUDA: the fused routing kernel, routing_kernel="auto") against the readable trace."""
    layer = make_layer(torch.bfloat16, device=device)
    x = torch.randn(3, 7, 48).bfloat16().to(device)
    torch.testing.assert_close(layer(x), layer.trace(x)["y"], rtol=1e-2, atol=1e-2)


def test_measure_shows_the_policy_and_the_old_autocast_damage():
    case = {"random": precision.random_case(d=96, tasks=2, tokens=512, seed=1)}
    rows = {r["variant"]: r for r in precision.measure(case)}
    assert set(rows) == set(precision.VARIANTS)
    for variant in ("float32", "float32 + autocast", "bfloat16", "bfloat16 + autocast", "bfloat16, float32 atoms"):
        assert rows[variant]["kept_differs"] == 0 and rows[variant]["gate_flips"] == 0, variant
    assert rows["float32 + autocast"]["max_abs_dw"] == rows["float32"]["max_abs_dw"]  # the same routing
    assert rows["bf16 responses"]["kept_differs"] > 0  # what autocast did to p before the policy


def test_precision_errors():
    layer, x = precision.random_case(d=8, tasks=1, tokens=4)[0]
    with pytest.raises(ValueError, match="variant must be one of"):
        precision.variant_trace(layer, x, "fp8")



@pytest.mark.parametrize("argv, said", [
    (["--clip-width", "48"], "--clip-width: expected 0 or a positive multiple of 32 (the head width), got 48"),
    (["--d", "0"], "argument --d: expected an integer in [1, 1048576], got 0"),
    (["--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295], got -1"),
    (["--d", "1000000"], "--d/--tokens: these sizes need about"),
])
def test_bad_flags_of_the_script_are_one_line(argv, said, capsys):
    with pytest.raises(SystemExit) as stop:
        precision.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and said in err[0], err


def test_runs_on_a_device_without_autocast():
    """The meta device (shape inference) has no autocast to switch off: the layer still runs there."""
    layer = MoRAMLinear(torch.nn.Linear(4, 3, device="meta"), MoRAMConfig(atoms_per_task=2, top_k=1))
    layer.begin_task()
    assert layer(torch.empty(5, 4, device="meta")).shape == (5, 3)
