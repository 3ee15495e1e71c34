"""Shape checks at public boundaries, shared by both backends (style habit 5).

NumPy broadcasts silently, so every public entry point checks what it is given and raises a
``ValueError`` naming the argument, the expected shape and the value it got. These helpers only read
``.shape`` / ``.ndim`` / ``.dtype``, which NumPy arrays and torch tensors both have.
"""

from __future__ import annotations

from typing import Any


def describe(arr: Any) -> str:
    return f"shape {tuple(arr.shape)}, dtype {arr.dtype}"


def type_name(value: Any) -> str:
    """``value``'s type with its package, e.g. ``torch.Generator``, ``numpy.random.Generator``, ``int``: an error
    message then says which library's object was passed (both have a ``Generator``)."""
    kind = type(value)
    package = kind.__module__.split(".")[0]
    if package == "builtins":
        return kind.__qualname__
    return "numpy.random.Generator" if package == "numpy" and kind.__qualname__ == "Generator" else \
        f"{package}.{kind.__qualname__}"


def key_mismatch(missing: list, unexpected: list) -> str:
    """``missing ['a']; unexpected ['b']``, naming only the non-empty lists (an error message's detail)."""
    return "; ".join(f"{what} {keys}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys)


def check_ndim(name: str, arr: Any, ndim: int) -> None:
    if not hasattr(arr, "shape"):
        raise ValueError(f"{name} must be an array, got {type(arr).__name__}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {describe(arr)}")


def check_shape(name: str, arr: Any, shape: tuple[int, ...]) -> None:
    """Exact shape check; ``-1`` in ``shape`` accepts any size on that axis."""
    check_ndim(name, arr, len(shape))
    if any(want not in (-1, got) for want, got in zip(shape, arr.shape)):
        want = ", ".join("any" if s == -1 else str(s) for s in shape) + ("," if len(shape) == 1 else "")
        raise ValueError(f"{name} must have shape ({want}), got {describe(arr)}")


def check_last_dim(name: str, arr: Any, size: int) -> None:
    if not hasattr(arr, "shape"):
        raise ValueError(f"{name} must be an array, got {type(arr).__name__}")
    if arr.ndim < 1 or arr.shape[-1] != size:
        raise ValueError(f"{name} must have shape (..., {size}), got {describe(arr)}")


class NonFiniteError(ValueError):
    """An array that must be finite holds NaN or inf (a ``ValueError``: callers that catch that still do).

    The commands print it as one line with its likely causes (``moram_ref.cli``): a forward's input
    is where activations that overflowed upstream are first seen.
    """


def _is_torch(arr: Any) -> bool:
    return type(arr).__module__.startswith("torch")


def check_finite(name: str, arr: Any, sync_free: bool = False, where: str = "") -> None:
    """:class:`NonFiniteError` naming ``name`` if ``arr`` holds NaN or inf (NumPy arrays and torch tensors).

    ``where`` (optional) is appended to the message, e.g. ``"; it is the input of adapted layer 'fc'"``.

    ``sync_free`` (torch only, the forward path): on a CPU tensor outside ``torch.compile`` the same
    plain check; on any other device, or while compiling, a device-side assertion
    (``torch._assert_async``) that reads nothing back to the host — it fails later, at the next
    synchronisation, as a ``RuntimeError`` carrying the same message (docs/semantics.md).
    The plain torch check first sums ``arr`` (one pass, ≈ 30 × cheaper on a CPU than ``isfinite`` over every
    element, which the layer's forward paid on every call) and counts entries only if the sum is not finite.
    """
    if _is_torch(arr):
        import torch  # noqa: PLC0415  (only reached with a tensor, so torch is already imported)

        if arr.device.type == "meta" or not (arr.is_floating_point() or arr.is_complex()):
            return
        if arr.element_size() == 1:  # float8: no sum or isfinite kernels; float32 holds every value exactly
            arr = arr.float()
        if sync_free and (torch.compiler.is_compiling() or arr.device.type != "cpu"):
            torch._assert_async(torch.isfinite(arr).all(), f"{name} contains NaN or inf{where}")
            return
        if bool(torch.isfinite(arr.sum())):  # one pass: a NaN or inf anywhere makes the sum NaN or inf
            return  # (a sum that overflows with every entry finite falls through to the exact count)
        bad = int((~torch.isfinite(arr)).sum())
    else:
        import numpy as np  # noqa: PLC0415

        bad = int(np.sum(~np.isfinite(arr)))
    if bad:
        raise NonFiniteError(f"{name} contains NaN or inf ({bad} entries){where}")


def check_scores(scores: Any, kind: str, rows: str, source: str) -> None:
    """:class:`NonFiniteError` if a row of ``scores`` (a torch tensor ``(N, C)``: one row of class scores per
    sample) holds NaN or inf — before an argmax, which would silently count such a row as some class.

    The message says how many of the ``N`` rows: ``"the {kind} scores of {bad} of {N} {rows} contain NaN or
    inf ({source})"``, e.g. ``kind="class"``, ``rows="test images of dtd"``,
    ``source="image or class-name features"``. Reads one value back to the host (an evaluation, not a forward).
    """
    import torch  # noqa: PLC0415  (only called with a tensor)

    finite = torch.isfinite(scores).all(1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteError(f"the {kind} scores of {bad} of {len(scores)} {rows} contain NaN or inf ({source})")


def check_input(name: str, x: Any, size: int, site: str = "") -> None:
    """A torch forward's input: a floating tensor of shape (..., size) without NaN/inf (sync-free).

    ``site``: the layer's name in its model (an adapter's ``site``, set by ``attach``), named in the
    NaN/inf message so that a model's first non-finite activation says where it was seen."""
    if not _is_torch(x) or not hasattr(x, "is_floating_point"):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_last_dim(name, x, size)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {describe(x)}")
    check_finite(name, x, sync_free=True, where=f"; it is the input of adapted layer '{site}'" if site else "")


def check_layer_state(state: dict, prefix: str, d_out: int, d_in: int, has_bias: bool, atoms_per_task: int,
                      strict: bool = True) -> None:
    """A MoRAM layer's state (NumPy or torch) checked before anything is assigned (spec §2, §4): the
    base weight (d_out, d_in) and bias as this layer's, ``frozen_keys (R_old, d_in)``,
    ``frozen_values (d_out, R_old)``, ``keys (0 or r, d_in)``, ``values (d_out, same)``, all finite;
    with ``strict``, no key missing and none unexpected under ``prefix``. ``ValueError`` naming the key."""
    bank = ("frozen_keys", "frozen_values", "keys", "values")
    expected = {"base_layer.weight", *bank} | ({"base_layer.bias"} if has_bias else set())
    present = {k[len(prefix):] for k in state if k.startswith(prefix)}
    if strict:
        missing = sorted(expected - present - {"base_layer.bias"})  # a lone bias mismatch is named below
        unexpected = sorted(present - expected - {"base_layer.bias"})
        if missing and has_bias and "base_layer.bias" not in present:
            missing = sorted([*missing, "base_layer.bias"])
        if missing or unexpected:
            under = f" under {prefix!r}" if prefix else ""
            raise ValueError(f"state keys{under} mismatch: {key_mismatch(missing, unexpected)}")
        given_bias = state.get(prefix + "base_layer.bias") is not None
        if given_bias != has_bias:
            raise ValueError(f"{prefix}base_layer.bias is {'present' if given_bias else 'missing'} in the state, "
                             f"this layer has {'a' if has_bias else 'no'} bias")
    get = {k: state.get(prefix + k) for k in (*sorted(expected), "base_layer.bias")}
    if get["base_layer.weight"] is not None:
        check_shape(prefix + "base_layer.weight", get["base_layer.weight"], (d_out, d_in))
    if get["base_layer.bias"] is not None:
        check_shape(prefix + "base_layer.bias", get["base_layer.bias"], (d_out,))
    if any(get[k] is None for k in bank):
        return
    fk, fv, k, v = (get[name] for name in bank)
    check_shape(prefix + "frozen_keys", fk, (-1, d_in))
    check_shape(prefix + "frozen_values", fv, (d_out, fk.shape[0]))
    check_shape(prefix + "keys", k, (-1, d_in))
    if k.shape[0] not in (0, atoms_per_task):
        raise ValueError(f"{prefix}keys must have 0 or atoms_per_task={atoms_per_task} rows, got {tuple(k.shape)}")
    check_shape(prefix + "values", v, (d_out, k.shape[0]))
    for name in ("base_layer.weight", "base_layer.bias", *bank):
        if get[name] is not None:
            check_finite(prefix + name, get[name])
