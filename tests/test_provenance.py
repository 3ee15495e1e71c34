"""moram_ref.provenance: what computed a NumPy result, recorded with the demo's results and named in its table."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moram_ref import provenance, report


def test_the_environment_names_numpy_its_blas_and_python():
    env = provenance.numpy_environment()
    assert env["numpy"] == np.__version__ and env["python"].count(".") == 2
    assert env["blas"] == "unknown" or env["blas"].split()[0] in {"OpenBLAS", "MKL", "BLIS"}
    assert provenance.describe(env) == f"NumPy {np.__version__} with {env['blas']}"


def test_without_threadpoolctl_the_blas_is_unknown(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    assert provenance.numpy_environment()["blas"] == "unknown"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="OPENBLAS_CORETYPE=Haswell is an x86 core")
def test_openblas_kernels_chosen_by_coretype_are_named():
    """OPENBLAS_CORETYPE picks other kernels (other rounding): the phrase must change with it."""
    code = "from moram_ref import provenance; print(provenance.describe(provenance.numpy_environment()))"
    out = {core: subprocess.run([sys.executable, "-c", code], env={**os.environ, "OPENBLAS_CORETYPE": core},
                                capture_output=True, text=True, check=True).stdout.strip() for core in ("Haswell", "")}
    if "OpenBLAS" not in out[""]:
        pytest.skip(f"NumPy here uses {out['']}: no OpenBLAS run-time kernel choice to name")
    assert out["Haswell"].endswith("(Haswell kernels)")


def test_the_demo_table_names_the_arithmetic_only_when_recorded():
    results = {"seeds": [0], "streams": {}}
    assert "Computed by" not in report.demo_table(results)  # results from before it was recorded
    results["environment"] = {"numpy": "2.4.6", "blas": "OpenBLAS 0.3.31 (SkylakeX kernels)", "python": "3.11.7"}
    assert "Computed by NumPy 2.4.6 with OpenBLAS 0.3.31 (SkylakeX kernels); another NumPy or BLAS" in \
        report.demo_table(results)


def test_numpys_own_blas_is_named_when_another_is_loaded_first(monkeypatch):
    """SciPy (or torch) may load another OpenBLAS before NumPy's: the one NumPy ships is the one named."""
    import threadpoolctl

    package = Path(np.__file__).resolve().parent
    scipys = {"user_api": "blas", "internal_api": "openblas", "version": "0.3.30", "architecture": "Haswell",
              "filepath": "/home/u/numpy-study/site-packages/scipy.libs/libscipy_openblas.so"}
    numpys = {"user_api": "blas", "internal_api": "openblas", "version": "9.9.9", "architecture": "SkylakeX",
              "filepath": str(package.parent / "numpy.libs" / "libscipy_openblas64_.so")}
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [scipys, numpys])
    assert provenance.numpy_environment()["blas"] == "OpenBLAS 9.9.9 (SkylakeX kernels)"
