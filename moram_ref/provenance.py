"""What computed a NumPy result: the NumPy version and the BLAS behind it (library, version, kernels).

Float64 training is deterministic on one machine, but a matrix product's rounding depends on the BLAS
build and on the kernels it picks for the CPU (OpenBLAS chooses them at run time: ``SkylakeX`` on an
AVX-512 CPU, ``Haswell`` on an AVX2 one; ``OPENBLAS_CORETYPE`` overrides the choice). The top-k and the
threshold turn last-bit differences into other routing decisions, so another BLAS gives other tables,
not only other last digits (measured: the README's demo table under NumPy 2.5, or with Haswell kernels).
Results record :func:`numpy_environment`; tests that compare numbers digit for digit compare
:func:`describe` first.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np


def numpy_environment() -> dict:
    """``{"numpy", "blas", "python"}``: strings naming what computes NumPy's float64 products here.

    ``blas`` is e.g. ``"OpenBLAS 0.3.31.188.0 (SkylakeX kernels)"`` (read with threadpoolctl, which
    scikit-learn installs), or ``"unknown"`` when threadpoolctl is missing or finds no BLAS.
    """
    return {"numpy": np.__version__, "blas": _blas(), "python": platform.python_version()}


def describe(env: dict) -> str:
    """The arithmetic of ``env`` in words, e.g. ``"NumPy 2.4.6 with OpenBLAS 0.3.31.188.0 (SkylakeX kernels)"``.

    Python's version is left out: it does not change NumPy's arithmetic. Two environments with the same
    phrase compute float64 NumPy products alike; ``"unknown"`` in it means the BLAS could not be read.
    """
    return f"NumPy {env.get('numpy', '?')} with {env.get('blas', '?')}"


def short_repr(value: object, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters with ``...`` (a value quoted in an error message)."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def problem(env: object) -> str | None:
    """None if ``env`` is what :func:`numpy_environment` records (``numpy``, ``blas`` and ``python``, each a
    one-line string), else why not, in words naming the key (a results file edited by hand or damaged)."""
    if not isinstance(env, dict):
        return f"{short_repr(env)}: expected an object with numpy, blas and python"
    for key in ("numpy", "blas", "python"):
        value = env.get(key)
        if not isinstance(value, str) or not value.strip() or "\n" in value or len(value) > 200:
            return f"{key} {short_repr(value)}: expected a one-line name of the build (as `moram_ref/provenance.py` records)"
    return None


def _blas() -> str:
    try:
        import threadpoolctl  # noqa: PLC0415 (a scikit-learn dependency; optional here)
    except ImportError:
        return "unknown"
    libs = [lib for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]
    if not libs:
        return "unknown"
    lib = min(libs, key=_numpys_first())  # NumPy's own BLAS (SciPy or torch may load others)
    api = lib.get("internal_api")
    name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(api, str(api))
    kernels = f" ({lib['architecture']} kernels)" if lib.get("architecture") else ""
    return f"{name} {lib.get('version') or '?'}{kernels}"


def _numpys_first():
    """A sort key over threadpoolctl's libraries: 0 for the BLAS NumPy ships (a wheel's ``numpy.libs`` beside
    the package, or inside it), 1 for one of the version NumPy was built against, 2 for any other."""
    package = Path(np.__file__).resolve().parent
    try:
        built = np.show_config(mode="dicts")["Build Dependencies"]["blas"].get("version")
    except Exception:  # noqa: BLE001 (older NumPy: no dict form)
        built = None

    def key(lib: dict) -> int:
        path = Path(str(lib.get("filepath", ""))).resolve()
        if path.parent in (package.parent / "numpy.libs", package) or package in path.parents:
            return 0
        return 1 if built and lib.get("version") == built else 2

    return key
