"""The torch layer's input check (shapes.check_input): the same refusals as NumPy on a CPU, no host
synchronisation where it must not sync, and no graph break under ``torch.compile(fullgraph=True)``."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moram_ref.shapes import check_finite, check_input  # noqa: E402


def doubled(x):
    check_input("x", x, 3)
    return 2 * x


def test_eager_cpu_check_is_a_value_error_naming_x():
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(1 entries\)"):
        doubled(torch.tensor([[1.0, float("nan"), 0.0]]))
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor"):
        doubled(torch.zeros(2, 3, dtype=torch.int64))
    assert torch.equal(doubled(torch.ones(2, 3)), 2 * torch.ones(2, 3))


def test_fullgraph_compile_keeps_the_check_as_a_device_assertion():
    compiled = torch.compile(doubled, fullgraph=True, backend="eager")  # dynamo must not break the graph
    assert torch.equal(compiled(torch.ones(2, 3)), 2 * torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="x contains NaN or inf"):
        compiled(torch.tensor([[1.0, float("inf"), 0.0]]))


def test_sync_free_check_reads_nothing_back(monkeypatch):
    """Off the CPU (simulated: the compiling flag forces the sync-free branch) no .item()/bool() runs."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    calls = []
    monkeypatch.setattr(torch, "_assert_async", lambda cond, msg: calls.append(msg))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: pytest.fail("host sync: bool() on a tensor"))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("host sync: .item() on a tensor"))
    check_finite("x", torch.tensor([1.0, float("nan")]), sync_free=True)
    assert calls == ["x contains NaN or inf"]


def test_numpy_arrays_use_the_same_message():
    with pytest.raises(ValueError, match=r"w contains NaN or inf \(2 entries\)"):
        check_finite("w", np.array([np.nan, np.inf, 1.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_the_one_pass_check_is_exact(dtype):
    """The CPU check sums first: finite entries whose sum overflows pass, any NaN or ±inf (also +inf and -inf
    together, whose sum is NaN) is counted and refused."""
    huge = torch.full((4, 3), torch.finfo(dtype).max, dtype=dtype)
    assert not torch.isfinite(huge.sum())  # the sum overflows ...
    check_finite("x", huge)  # ... yet every entry is finite: no false alarm
    for bad in ([float("nan")], [float("inf")], [float("-inf")], [float("inf"), float("-inf")]):
        x = torch.ones(4, 3, dtype=dtype)
        x.view(-1)[: len(bad)] = torch.tensor(bad, dtype=dtype)
        with pytest.raises(ValueError, match=rf"x contains NaN or inf \({len(bad)} entries\)"):
            check_finite("x", x)


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_is_checked_too(name):
    dtype = getattr(torch, name, None)
    if dtype is None:
        pytest.skip(f"this torch has no {name}")
    check_finite("x", torch.zeros(3, dtype=dtype))  # finite: passes (float8 has no sum kernel of its own)
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(1 entries\)"):
        check_finite("x", torch.tensor([0.0, float("nan"), 1.0]).to(dtype))


def test_a_named_site_is_in_both_messages(monkeypatch):
    """``site`` (an adapter's name in its model) ends the message, eager and sync-free alike."""
    from moram_ref.shapes import NonFiniteError

    with pytest.raises(NonFiniteError, match=r"x contains NaN or inf \(1 entries\); it is the input of adapted "
                                             r"layer 'blocks\.3\.fc'$"):
        check_input("x", torch.tensor([[1.0, float("nan"), 0.0]]), 3, site="blocks.3.fc")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    calls = []
    monkeypatch.setattr(torch, "_assert_async", lambda cond, msg: calls.append(msg))
    check_input("x", torch.tensor([[1.0, float("nan"), 0.0]]), 3, site="blocks.3.fc")
    assert calls == ["x contains NaN or inf; it is the input of adapted layer 'blocks.3.fc'"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a device-side assertion exists only on CUDA")
def test_on_cuda_a_non_finite_input_stops_at_the_next_synchronisation(tmp_path):
    """On CUDA the check is ``torch._assert_async``: it must fail — never pass silently — by the next
    synchronisation. Run in a child process, since a device-side assertion leaves the CUDA context unusable;
    the command line turns what it raises into one line (``moram_ref.cli``: ``device-side assert``)."""
    import subprocess
    import sys

    script = ("import torch\n"
              "from moram_ref.shapes import check_input\n"
              "x = torch.ones(4, 3, device='cuda'); x[1, 2] = float('nan')\n"
              "check_input('x', x, 3, site='blocks.0.fc')\n"
              "torch.cuda.synchronize()\n"
              "print('PASSED SILENTLY')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "PASSED SILENTLY" not in said, said
    assert "device-side assert" in said or "contains NaN or inf" in said, said[-2000:]
