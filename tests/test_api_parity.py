"""moram_ref.numpy and moram_ref.torch mirror each other: same modules, public names, signatures."""

from __future__ import annotations

import importlib
import inspect

import pytest

MIRRORED = ("memory", "activation", "layer", "loops", "optim", "losses", "baselines")
NUMPY_ONLY = {"backward"}  # the hand-written backward; torch uses autograd
# putting layers on models; checkpoints; the O-LoRA baseline; open_clip-style attention split into q/k/v/out;
# the fused Triton kernels of self-activation (CUDA)
TORCH_ONLY = {"attach", "checkpoint", "olora", "split_attention", "routing_triton"}
# methods that differ by design: NumPy passes training/rng explicitly and returns (y, cache);
# torch follows nn.Module (training flag on the module, forward returns y, autograd for backward)
METHOD_EXCEPTIONS = {"backward", "parameters"}
CONSTRUCTOR_EXCEPTIONS = {"MoRAMLinear", "LoRALinear", "MoELoRALinear"}  # (weight, bias, ...) vs (base, ...)


def public(module):
    return {n: o for n, o in vars(module).items() if not n.startswith("_") and getattr(o, "__module__", None) == module.__name__}


def test_package_modules_mirror():
    import pkgutil

    import moram_ref.numpy as np_pkg
    import moram_ref.torch as t_pkg

    np_mods = {m.name for m in pkgutil.iter_modules(np_pkg.__path__)}
    t_mods = {m.name for m in pkgutil.iter_modules(t_pkg.__path__)}
    assert np_mods - NUMPY_ONLY == set(MIRRORED) and t_mods - TORCH_ONLY == set(MIRRORED)


@pytest.mark.parametrize("name", MIRRORED)
def test_same_names_and_signatures(name):
    np_mod = importlib.import_module(f"moram_ref.numpy.{name}")
    t_mod = importlib.import_module(f"moram_ref.torch.{name}")
    a, b = public(np_mod), public(t_mod)
    assert set(a) == set(b), f"{name}: only NumPy {sorted(set(a) - set(b))}, only torch {sorted(set(b) - set(a))}"
    for obj_name in a:
        x, y = a[obj_name], b[obj_name]
        if inspect.isfunction(x):
            assert list(inspect.signature(x).parameters) == list(inspect.signature(y).parameters), obj_name
            defaults = lambda f: [p.default for p in inspect.signature(f).parameters.values()]  # noqa: E731
            assert defaults(x) == defaults(y), f"{obj_name}: defaults differ"
        elif inspect.isclass(x):
            mx = {m for m in vars(x) if not m.startswith("_")}
            missing = {m for m in mx if not hasattr(y, m)} - METHOD_EXCEPTIONS
            assert not missing, f"{obj_name}: torch lacks {sorted(missing)}"
            if obj_name not in CONSTRUCTOR_EXCEPTIONS:
                assert str(inspect.signature(x)) == str(inspect.signature(y)), obj_name
