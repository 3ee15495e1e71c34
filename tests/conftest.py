"""Shared fixtures: explicit random generators, a NumPy layer with a bank from several tasks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist every worker is a process of its own: unlimited, each would start one BLAS/OpenMP
# thread per core (workers × cores threads in all), slowing every CPU-bound test many times over. Set
# before NumPy and torch are imported; inherited by the subprocesses tests start (tutorials, DDP).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, str(_threads))

# The device of the device-aware torch tests: MORAM_TEST_DEVICE=cuda runs them on a GPU (default: cpu).
# Tests marked ``cpu_only`` (CPU scripts, gloo process groups, the NumPy demo) are skipped in a CUDA run.
TEST_DEVICE = os.environ.get("MORAM_TEST_DEVICE", "cpu")

from moram_ref.config import MoRAMConfig  # noqa: E402
from moram_ref.numpy.layer import MoRAMLinear  # noqa: E402


def shared_data(*parts: str) -> Path:
    """Where the tests find the project's shared data (``$MORAM_SHARED_DATA``, default ``../shared/data``
    beside the checkout), joined with ``parts``. Users and fresh clones do not have it: every test that
    reads it skips when the returned path does not exist. ``MORAM_SHARED_DATA=`` (empty) hides it, as CI's
    second run does; so does a path that does not exist."""
    raw = os.environ.get("MORAM_SHARED_DATA")
    if raw is not None and not raw.strip():
        return Path(os.devnull, "moram-shared-data-hidden", *parts)  # never exists
    base = Path(raw) if raw is not None else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base.joinpath(*parts)


def build_numpy_layer(rng, d_in=6, d_out=5, tasks=3, config=None, in_task=True, dtype=np.float64):
    """A layer with ``tasks`` frozen tasks (random trained-looking values) and optionally a current one."""
    config = config or MoRAMConfig(atoms_per_task=3, top_k=4, temperature=0.3, threshold=0.1)
    layer = MoRAMLinear(rng.standard_normal((d_out, d_in)).astype(dtype),
                        rng.standard_normal(d_out).astype(dtype), config)
    for t in range(tasks + (1 if in_task else 0)):
        layer.begin_task(rng)
        layer.values[...] = rng.standard_normal(layer.values.shape)
        layer.keys[...] += 0.3 * rng.standard_normal(layer.keys.shape)
        if t < tasks:
            layer.end_task()
    return layer


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def device() -> str:
    """The torch device of device-aware tests: ``MORAM_TEST_DEVICE`` ("cpu" by default, or "cuda")."""
    return TEST_DEVICE


def pytest_configure(config):
    if TEST_DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"MORAM_TEST_DEVICE must be 'cpu' or 'cuda', got {TEST_DEVICE!r}")
    if TEST_DEVICE == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("MORAM_TEST_DEVICE=cuda but torch.cuda.is_available() is False")


def pytest_collection_modifyitems(config, items):
    if TEST_DEVICE == "cpu":
        return
    skip = pytest.mark.skip(reason=f"cpu_only: exercises no {TEST_DEVICE} code; runs in the CPU suite")
    for item in items:
        if item.get_closest_marker("cpu_only"):
            item.add_marker(skip)

# Hypothesis: CI runs a fixed, reproducible set of examples (derandomized); locally every run explores
# new ones. HYPOTHESIS_PROFILE=thorough multiplies the examples for a deeper search. No profile has a
# per-example deadline: that would be a timed assertion, and a loaded machine (2 cores, a run beside the
# suite) fails it while the code is right. Speed is the benchmarks' business.
from hypothesis import settings as _hyp_settings  # noqa: E402

_hyp_settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
_hyp_settings.register_profile("local", deadline=None)
_hyp_settings.register_profile("thorough", max_examples=1000, print_blob=True, deadline=None)
_hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "local"))


@pytest.fixture
def terminal_signals():
    """SIGINT, SIGTERM and SIGHUP as a command started from a terminal has them (Ctrl-C raises
    KeyboardInterrupt, the others their default action), whatever the suite inherited (a background job
    ignores SIGINT, nohup ignores SIGHUP); restored afterwards."""
    import signal

    wanted = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL,
              signal.SIGHUP: signal.SIG_DFL}
    previous = {sig: signal.signal(sig, handler) for sig, handler in wanted.items()}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)
