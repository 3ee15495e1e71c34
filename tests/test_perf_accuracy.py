"""The benchmarks' self-checks: float64 references with error bounds (moram_ref.perf.accuracy).

The bounds must pass the real implementations in float32 and bfloat16 and catch wrong ones: a wrong
temperature, a lost atom, an output off by a little more than rounding explains, a wrong gradient.
"""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from moram_ref.perf import accuracy, layer_cases  # noqa: E402

CASE = dataclasses.replace(layer_cases.CASES["clip_like"], d=48, tasks=4, r=4, k=4, tokens=96)


def _bench(dtype, device="cpu", value_scale=1.0):
    bench = layer_cases.build(CASE, dtype, device)
    layer_cases.freeze_for_eval(bench.layer)
    with torch.no_grad():  # value_scale > 1: an update as large as the base output, so bf16 can resolve it
        bench.layer.frozen_values *= value_scale
    return bench


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_and_authors_style_pass_their_bounds(dtype, device):
    bench = _bench(dtype, device)
    x, layer = bench.x, bench.layer
    with torch.no_grad():
        y0 = bench.base(x)
        ours = accuracy.compare(layer(x), accuracy.moram_reference(layer, x, False, torch.float32), y0)
        authors = accuracy.compare(layer_cases.authors_forward(layer, x),
                                   accuracy.moram_reference(layer, x, False, dtype), y0)
        lora = accuracy.compare(layer_cases.lora_forward(bench, x),
                                accuracy.lora_reference(bench.base, bench.lora_a, bench.lora_b, x), y0)
    for name, res in {"ours": ours, "authors": authors, "lora": lora}.items():
        assert res["ok"], (name, res)
        assert res["checked_elements"] > 0 and res["update_check"]["violations"] == 0, (name, res)
    # float32 routing: the bound is informative and few tokens sit near a tie
    assert ours["routing_bound_informative"] and ours["near_tie_tokens"] <= CASE.tokens // 10, ours
    assert 0 < ours["max_diff_over_bound"] < 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_wrong_temperature_fails(dtype, device):
    """τ = 0.012 instead of 0.01: caught in float32 by the output bound, in bf16 by the update check
    (bf16's rounding of the base output hides an update this small from the output bound alone)."""
    bench = _bench(dtype, device)
    wrong = layer_cases.twin(bench.layer, dataclasses.replace(bench.layer.config, temperature=0.012))
    with torch.no_grad():
        res = accuracy.compare(wrong(bench.x), accuracy.moram_reference(bench.layer, bench.x, False, torch.float32),
                               bench.base(bench.x))
    assert not res["ok"] and res["update_check"]["violations"] > 0, res
    if dtype == torch.float32:
        assert res["violations"] > 0


def test_one_atom_too_few_fails(device):
    """Dropping the k-th atom (its softmax weight is small at τ = 0.01) is seen in float32 once the update
    is large; in bf16 it is below resolution, which is why the float32 runs are checked too."""
    bench = _bench(torch.float32, device, value_scale=30.0)
    wrong = layer_cases.twin(bench.layer, dataclasses.replace(bench.layer.config, top_k=CASE.k - 1))
    with torch.no_grad():
        res = accuracy.compare(wrong(bench.x), accuracy.moram_reference(bench.layer, bench.x, False, torch.float32))
    assert not res["ok"], res


def test_an_error_just_beyond_the_bound_fails_and_just_within_passes(device):
    bench = _bench(torch.float32, device)
    ref = accuracy.moram_reference(bench.layer, bench.x, False, torch.float32)
    row = int(torch.nonzero(~ref["tie"])[0])
    y = ref["y"].clone()
    y[row, 3] += 2 * ref["bound"][row, 3]
    res = accuracy.compare(y, ref)
    assert res["violations"] == 1 and not res["ok"]
    y[row, 3] = ref["y"][row, 3] + 0.5 * ref["bound"][row, 3]
    assert accuracy.compare(y, ref)["ok"]


def test_an_exact_tie_at_the_kth_score_is_flagged(device):
    bench = _bench(torch.float64, device)
    layer = bench.layer
    with torch.no_grad():  # atom 1 becomes a copy of atom 0: every token ties them
        layer.frozen_keys[1] = layer.frozen_keys[0]
    ref = accuracy.moram_reference(layer, bench.x, False, torch.float64)
    s = torch.nn.functional.normalize(bench.x.double() @ layer.frozen_keys.double().T, dim=-1)
    kth, kplus1 = s.topk(CASE.k + 1).values[:, CASE.k - 1 : CASE.k + 1].unbind(-1)
    assert ref["tie"][kth == kplus1].all() and (kth == kplus1).any()


def test_wrong_gradients_fail():
    g = {"x": torch.ones(4, 3, dtype=torch.float64)}
    assert accuracy.compare_grads({"x": g["x"] * (1 + 1e-3)}, g, tol=1e-2)["ok"]
    bad = accuracy.compare_grads({"x": g["x"] * 1.1}, g, tol=1e-2)
    assert not bad["ok"] and bad["relative_error"]["x"] == pytest.approx(0.1)
    assert not accuracy.compare_grads({}, g, tol=1.0)["ok"]  # a missing gradient is a failure


def test_bench_bf16_records_checks_instead_of_crashing():
    """Issue #11: the bf16 sparse-vs-dense self-check crashed the GPU check; now every path is checked
    against float64 within its bound, and the result is recorded."""
    from moram_ref import bench

    res = bench.run(d=64, tasks=4, r=8, k=8, tokens=512, repeat=1, dtype="bfloat16", numpy_too=False)
    assert set(res["checks"]) == {"moram_dense", "moram_sparse", "authors_style", "lora"}
    for name, chk in res["checks"].items():
        assert chk["ok"], (name, chk)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_stacked_evaluation_is_the_layer(dtype, device):
    """[W0; A] x as one product (issue #11 point 4) routes as the layer: in float64 and float32 the same
    output to rounding; in bf16 within the layer's own float64 bounds (its base output may round apart)."""
    if dtype == torch.float64 and device != "cpu":
        pytest.skip("float64 is the CPU reference")
    bench = _bench(dtype, device, value_scale=10.0)
    x, layer = bench.x, bench.layer
    with torch.no_grad():
        got = layer_cases.stacked_eval_forward(layer, layer_cases.stack_for_eval(layer), x)
        want = layer(x)
        res = accuracy.compare(got, accuracy.moram_reference(layer, x, False, torch.float32), bench.base(x),
                               same_base=False)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    if dtype != torch.bfloat16:
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert res["ok"] and res["update_check"]["violations"] == 0, res


def test_stacking_refuses_an_open_task_and_mixed_dtypes():
    bench = layer_cases.build(CASE, torch.float32, "cpu")
    with pytest.raises(ValueError, match="a task is open"):
        layer_cases.stack_for_eval(bench.layer)
    layer_cases.freeze_for_eval(bench.layer)
    bench.layer.base_layer.to(torch.bfloat16)
    with pytest.raises(ValueError, match="keys are torch.float32, the base weight torch.bfloat16"):
        layer_cases.stack_for_eval(bench.layer)
