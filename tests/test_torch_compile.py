"""The layer's forward and backward never wait for the device and never branch on data: the whole
layer traces as one graph (``torch.compile(fullgraph=True)`` raises on any graph break, ``.item()``,
``bool(tensor)`` or data-dependent shape) and the compiled layer equals eager, values and gradients.

On CUDA the same is checked directly: ``torch.cuda.set_sync_debug_mode("error")`` around forward+backward.
"""

from __future__ import annotations

import pytest
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.torch.layer import MoRAMLinear

CFG = MoRAMConfig(atoms_per_task=3, top_k=4, temperature=0.3, threshold=0.1, scale=2.0)


def make_layer(tasks: int, in_task: bool, cfg: MoRAMConfig = CFG, device: str = "cpu") -> MoRAMLinear:
    g = torch.Generator().manual_seed(tasks + 10 * in_task)
    layer = MoRAMLinear(torch.nn.Linear(6, 5), cfg)
    for t in range(tasks + int(in_task)):
        layer.begin_task(g)
        with torch.no_grad():
            layer.values.normal_(generator=g)
        if t < tasks:
            layer.end_task()
    return layer.to(device)


def run(layer, x):
    """Output and the gradients of every input that takes one (x and the current atoms)."""
    x = x.detach().requires_grad_(True)
    y = layer(x)
    (y * torch.linspace(-1, 1, y.shape[-1], device=y.device)).sum().backward()
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in layer.current_parameters().items()})
    for p in layer.parameters():
        p.grad = None
    return y.detach(), grads


STATES = {"frozen_and_current": (2, True), "frozen_only": (2, False), "current_only": (0, True), "empty_bank": (0, False)}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("state", list(STATES))
def test_fullgraph_compile_equals_eager(state, training, device):
    """On CUDA the layer routes through the fused kernel (custom ops: one graph with them)."""
    torch._dynamo.reset()
    layer = make_layer(*STATES[state], device=device).train(training)
    x = torch.randn(2, 7, 6, generator=torch.Generator().manual_seed(1))
    x[0, 0] = 0.0  # an all-zero response row: every score ties
    x = x.to(device)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y_ref, g_ref = run(layer, x)
    y, g = run(compiled, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"grad of {name}: {m}")


def test_inductor_compile_equals_eager(device):
    """The default backend (generated C++ on the CPU, Triton on CUDA) too, for the full state in both modes."""
    torch._dynamo.reset()
    layer = make_layer(2, True, device=device)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(2)).to(device)
    for training in (True, False):
        layer.train(training)
        y_ref, g_ref = run(layer, x)
        y, g = run(compiled, x)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
        for name in g_ref:
            torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-6)


def test_dropout_and_recording_trace_as_one_graph():
    torch._dynamo.reset()
    layer = make_layer(1, True, MoRAMConfig(atoms_per_task=3, top_k=2, dropout=0.3)).train()
    layer.record = True
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 6, requires_grad=True)
    compiled(x).sum().backward()
    assert layer.last_weights is not None and layer.last_weights.shape == (4, 6)
    assert x.grad is not None and layer.keys.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device synchronisation is only observable on CUDA; it runs wherever torch sees a GPU")
@pytest.mark.parametrize("training", [True, False])
def test_no_host_sync_on_cuda(training):
    layer = make_layer(2, True, device="cuda").train(training)
    x = torch.randn(64, 6, device="cuda", requires_grad=True)
    layer(x).sum().backward()  # warm-up, forward and backward: lazy initialisation, the kernels' first
    torch.cuda.synchronize()  # compilation (the fused kernel's backward too) may synchronise once
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_routing_bench_candidates_agree_and_report_ratios():
    from moram_ref import bench_routing

    res = bench_routing.run(d=16, tasks=3, r=4, k=5, tokens=64, repeat=1, compile_layer=False)  # checks exactness
    assert set(res["ratios"]) == {f"topk_{a}_over_with_sync_{c}" for a in ("rank_key", "stable_sort")
                                  for c in ("random", "ties")}
    assert all(v > 0 for v in res["ratios"].values())


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "xyz"], "--device: unknown device 'xyz'"),
    (["--device", "meta"], "--device: device type 'meta' is not supported"),
    (["--top-k", "100", "--tasks", "2", "--atoms-per-task", "2"], "--top-k: 100 exceeds the bank size"),
    (["--d", "999999999999"], "--d/--tokens/--tasks/--atoms-per-task: these sizes need about"),
    (["--repeat", "0"], "argument --repeat: expected an integer ≥ 1, got 0"),
])
@pytest.mark.parametrize("module", ["bench_routing", "bench"])
def test_the_benchmarks_refuse_bad_flags_in_one_line(module, argv, message, capsys):
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"moram_ref.{module}").main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err
