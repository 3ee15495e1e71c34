"""The fused routing kernel (moram_ref.torch.routing_triton): its setting, its errors, and its equality with
the torch reference, checked in Triton's interpreter on the CPU on every run of the suite (style habit 16).

The kernel cases live in ``tests/routing_triton_cases.py`` and run here in a fresh process with
``TRITON_INTERPRET=1``: Triton builds its standard library for one mode when it is first imported, and other
libraries in this process (transformers, open_clip) import it without that variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moram_ref.config import MoRAMConfig
from moram_ref.torch import routing_triton as RT
from moram_ref.torch.layer import MoRAMLinear

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_equal_the_reference_in_the_interpreter():
    pytest.importorskip("triton", reason="triton does not import (CPU-only torch build)")
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    cases = str(ROOT / "tests" / "routing_triton_cases.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", cases]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]


def test_routing_kernel_is_validated():
    with pytest.raises(ValueError, match="routing_kernel must be one of .*'cuda'"):
        MoRAMConfig(routing_kernel="cuda")
    assert MoRAMConfig.from_dict(MoRAMConfig(routing_kernel="triton").to_dict()).routing_kernel == "triton"


def test_auto_and_torch_keep_cpu_tensors_on_the_reference():
    p = torch.randn(2, 3)
    assert not RT.use_triton(MoRAMConfig(routing_kernel="auto"), p, 3)
    assert not RT.use_triton(MoRAMConfig(routing_kernel="torch"), p, 3)
    assert not RT.use_triton(MoRAMConfig(routing_kernel="auto"), p.double(), 3)


def test_triton_setting_names_what_is_missing(monkeypatch):
    pytest.importorskip("triton", reason="triton does not import (CPU-only torch build)")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg, p = MoRAMConfig(routing_kernel="triton"), torch.randn(2, 3)
    with pytest.raises(ValueError, match="float64"):
        RT.use_triton(cfg, p.double(), 3)
    with pytest.raises(ValueError, match="R=9000"):
        RT.use_triton(cfg, p, 9000)
    with pytest.raises(ValueError, match="routing_kernel='triton' needs CUDA tensors .*TRITON_INTERPRET=1"):
        RT.gated_responses(p, None, cfg, training=True)
    layer = MoRAMLinear(torch.nn.Linear(3, 2), MoRAMConfig(atoms_per_task=2, routing_kernel="triton"))
    layer.begin_task(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="routing_kernel='triton' needs CUDA"):
        layer(torch.randn(1, 3))
    with pytest.raises(ValueError, match="p_frozen .* and p_current .* must share leading dims"):
        RT.gated_responses(p, torch.randn(3, 3), cfg, training=True)


def test_kernels_compile_for_a_hopper_gpu():
    """The interpreter does not check what the compiler checks (types, layouts): compile both kernels to an
    sm_90 (H100/H200) binary with the ptxas that ships with triton. No GPU is needed for this."""
    triton = pytest.importorskip("triton", reason="triton does not import (CPU-only torch build)")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run tests/routing_triton_cases.py on it, compiled (the CUDA suite command of "
                    "`python -m moram_ref.gpu_check --command` names it)")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("triton was imported for its interpreter; it compiles nothing in that mode")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    RT._import_triton()
    common = dict(n_rows="i32", r_a="i32", r_b="i32", stride_a="i64", stride_b="i64")
    scalars = dict(tau="fp32", delta="fp32", eps="fp32")
    for dt, bisect in (("fp32", False), ("bf16", True)):
        ptr = f"*{dt}"
        fwd = dict(pa=ptr, pb=ptr, ca=ptr, cb=ptr, w_out="*fp32", stats="*fp32", cut_out="*i32", **common, k="i32",
                   **scalars)
        bwd = dict(pa=ptr, pb=ptr, ga=ptr, gb=ptr, da=ptr, db=ptr, stats="*fp32", cut="*i32", **common,
                   stride_ga="i64", stride_gb="i64", **scalars)
        consts = dict(GATE=True, BLOCK_N=8, BLOCK_R=128)
        fwd_consts = dict(ROUNDS=0 if bisect else 8, BISECT=bisect, STORE_W=True)
        for fn, sig, extra in ((RT._fwd_kernel, fwd, fwd_consts), (RT._bwd_kernel, bwd, {})):
            jit = triton.JITFunction(fn)
            constexprs = {**consts, **extra}
            src = ASTSource(jit, {**sig, **{name: "constexpr" for name in constexprs}}, constexprs)
            kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
            assert kernel.asm.get("cubin"), f"{fn.__name__} ({dt}): no binary"
