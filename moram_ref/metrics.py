"""Continual-learning metrics from an accuracy matrix (spec §6). Backend-free: NumPy only.

Convention everywhere: ``a[i, j]`` is the score on task/dataset ``j`` after training task ``i``
(rows = time, columns = evaluation set), 0-based. A genuine 0.0 is a value; a missing entry is NaN
and is an error wherever the metric needs it.

* CLIP (X-TAIL / MTIL): Transfer, Average, Last — theory.md#eq-metrics-clip.
* LLM (TRACE / O-LoRA): OP, BWT (standard) and the paper's clipped BWT — theory.md#eq-metrics-llm.
  The LLM convention in the paper writes ``R[i, t]`` (task i after step t); :func:`op` and the BWTs
  take the matrix in this module's orientation ``a[t, i]`` — transpose a paper-style matrix first.
"""

from __future__ import annotations

import math

import numpy as np


def _floats(name: str, a: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must hold numbers, got {a!r:.80}") from exc


def _square(name: str, a: np.ndarray) -> np.ndarray:
    """The matrix as float64; NaN marks a missing entry, ±inf is refused (no score is infinite)."""
    a = _floats(name, a)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square (tasks × tasks) matrix, got shape {a.shape}")
    inf = np.argwhere(np.isinf(a))
    if len(inf):
        where = [tuple(int(i) for i in ij) for ij in inf[:5]]
        raise ValueError(f"{name} has non-finite entries {[float(a[ij]) for ij in where]} at {where}")
    return a


def _finite(name: str, a: np.ndarray) -> np.ndarray:
    bad = int(np.sum(~np.isfinite(a)))
    if bad:
        raise ValueError(f"{name} contains NaN or inf ({bad} entries)")
    return a


def _need(name: str, values: np.ndarray, what: str) -> np.ndarray:
    if np.isnan(values).any():
        raise ValueError(f"{name} has missing (NaN) entries needed for {what}")
    return values


def transfer(a: np.ndarray) -> float:
    """Transfer — theory.md#eq-metrics-clip: mean over ``j ≥ 1`` of the mean of ``a[i, j]`` over ``i < j``.

    The zero-shot ability on domains not learned yet. NaN for a single task.
    """
    a = _square("accuracy matrix", a)
    if a.shape[0] == 1:
        return math.nan
    upper = a[np.triu_indices(a.shape[0], k=1)]  # the entries with i < j
    _need("accuracy matrix", upper, "Transfer")
    return float(np.mean([a[:j, j].mean() for j in range(1, a.shape[0])]))


def average(a: np.ndarray) -> float:
    """Average — theory.md#eq-metrics-clip: mean over ``j`` of the mean over all ``i`` of ``a[i, j]``."""
    a = _need("accuracy matrix", _square("accuracy matrix", a), "Average")
    return float(a.mean(axis=0).mean())


def last(a: np.ndarray) -> float:
    """Last — theory.md#eq-metrics-clip: mean of the final row, every dataset after the last task."""
    a = _square("accuracy matrix", a)
    return float(_need("accuracy matrix", a[-1], "Last").mean())


def op(a: np.ndarray) -> float:
    """OP — theory.md#eq-metrics-llm: mean score on every task after the last task."""
    return last(a)


def bwt(a: np.ndarray) -> float:
    """Standard BWT — theory.md#eq-metrics-llm: ``(1/(T−1)) Σ_{i<T−1} (a[T−1, i] − a[i, i])`` (0-based, T tasks);
    NaN for T = 1."""
    a = _square("accuracy matrix", a)
    t = a.shape[0]
    if t == 1:
        return math.nan
    diffs = _need("accuracy matrix", a[-1, :-1] - np.diag(a)[:-1], "BWT")
    return float(diffs.mean())


def bwt_clipped(a: np.ndarray) -> float:
    """The paper's clipped BWT — theory.md#eq-metrics-llm: ``(1/T) Σ_i min(a[T−1, i] − a[i, i], 0)`` ≤ 0 (0-based).

    The paper prints its negation as a positive "lower is better" number; see :func:`summary`.
    """
    a = _square("accuracy matrix", a)
    diffs = _need("accuracy matrix", a[-1] - np.diag(a), "clipped BWT")
    return float(np.minimum(diffs, 0.0).mean())


def summary(a: np.ndarray) -> dict[str, float]:
    """Every metric of spec §6 for one matrix; ``forgetting`` is the paper's positive clipped BWT."""
    return {
        "transfer": transfer(a),
        "average": average(a),
        "last": last(a),
        "bwt": bwt(a),
        "bwt_clipped": bwt_clipped(a),
        "forgetting": -bwt_clipped(a) + 0.0,
    }


def atoms_for_mass(w: np.ndarray, mass: float = 0.99) -> np.ndarray:
    """Per token, the fewest atoms whose weights reach ``mass`` of the token's total ``Σw`` (spec §8.2).

    w: (..., R) non-negative final weights -> (...,) counts; a token with ``Σw = 0`` needs 0 atoms.
    """
    w = _finite("w", _floats("w", w))
    if w.ndim < 1 or (w < 0).any():
        raise ValueError(f"w must be non-negative weights of shape (..., R), got shape {w.shape}")
    if not (isinstance(mass, (int, float)) and 0 < mass <= 1):
        raise ValueError(f"mass must lie in (0, 1], got {mass!r}")
    srt = -np.sort(-w, axis=-1)  # descending
    total = srt.sum(axis=-1, keepdims=True)
    below = (np.cumsum(srt, axis=-1) < mass * total - 1e-12).sum(axis=-1)  # atoms before reaching the mass
    return np.where(total[..., 0] > 0, below + 1, 0)


def confidence_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval over seeds.

    One value gives a half-width of NaN (no spread can be estimated).
    """
    v = _floats("values", values)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {v.shape}")
    _finite("values", v)
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if v.size == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(half_width_factor(v.size, level) * v.std(ddof=1))


def half_width_factor(n: int, level: float = 0.95) -> float:
    """The Student-t confidence interval's half-width over ``n`` ≥ 2 values, in units of their sample standard
    deviation: ``t_{(1 + level)/2, n − 1} / √n`` (3 seeds at 95 %: 2.48)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    return _student_t_quantile(0.5 + level / 2, n - 1) / math.sqrt(n)


def _student_t_quantile(q: float, dof: int) -> float:
    """Quantile of Student's t by bisection on its CDF (regularised incomplete beta, stdlib only)."""
    def cdf(t: float) -> float:
        x = dof / (dof + t * t)
        tail = 0.5 * _betainc(dof / 2, 0.5, x)
        return 1 - tail if t > 0 else tail

    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes' Lentz form)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * f / a
