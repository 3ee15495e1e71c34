"""Shape checks at public boundaries, shared by both backends (style habit 5).

NumPy broadcasts silently, so every public entry point checks what it is given and raises a
``ValueError`` naming the argument, the expected shape and the value it got. These helpers only read
``.shape`` / ``.ndim`` / ``.dtype``, which NumPy arrays and torch tensors both have.
"""

from __future__ import annotations

from typing import Any


def describe(arr: Any) -> str:
    return f"shape {tuple(arr.shape)}, dtype {arr.dtype}"


def check_ndim(name: str, arr: Any, ndim: int) -> None:
    if not hasattr(arr, "shape"):
        raise ValueError(f"{name} must be an array, got {type(arr).__name__}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {describe(arr)}")


def check_shape(name: str, arr: Any, shape: tuple[int, ...]) -> None:
    """Exact shape check; ``-1`` in ``shape`` accepts any size on that axis."""
    check_ndim(name, arr, len(shape))
    if any(want not in (-1, got) for want, got in zip(shape, arr.shape)):
        want = tuple("any" if s == -1 else s for s in shape)
        raise ValueError(f"{name} must have shape {want}, got {describe(arr)}")


def check_last_dim(name: str, arr: Any, size: int) -> None:
    if not hasattr(arr, "shape"):
        raise ValueError(f"{name} must be an array, got {type(arr).__name__}")
    if arr.ndim < 1 or arr.shape[-1] != size:
        raise ValueError(f"{name} must have shape (..., {size}), got {describe(arr)}")
