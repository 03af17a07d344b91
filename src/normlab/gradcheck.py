"""Numerical gradients by centred differences, and relative errors.

Use float64 and a random upstream gradient: an all-ones dout makes batch
norm's dx identically zero, and a check of zero against zero proves nothing.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np


def rel_error(a, b) -> float:
    """Normwise relative error max|a - b| / max(max|a|, max|b|).

    Normwise rather than elementwise: an elementwise ratio blows up on entries
    that are near zero in both arrays, which says nothing about the gradient.
    Returns 0.0 when both arrays are all zeros.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs equal shapes, got {a.shape} and {b.shape}")
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    diff = float(np.max(np.abs(a - b), initial=0.0))
    return 0.0 if scale == 0.0 else diff / scale


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """d f(x) / dx for a scalar f, one centred difference per element of x.

    x is perturbed in place and restored, so f must read x afresh on each call.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = float(f(x))
        x[i] = old - h
        minus = float(f(x))
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def numerical_gradient_array(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, dout: np.ndarray,
                             h: float = 1e-5) -> np.ndarray:
    """Gradient of sum(f(x) * dout) with respect to x: the backward of an array function."""
    return numerical_gradient(lambda v: np.sum(f(v) * dout), x, h)


class GradCheck(NamedTuple):
    name: str
    error: float
    tol: float

    @property
    def passed(self) -> bool:
        return bool(self.error < self.tol)


def check_forward_backward(forward: Callable, backward: Callable, inputs: Sequence[np.ndarray],
                           names: Sequence[str], *, seed: int = 0, h: float = 1e-5,
                           tol: float = 1e-8) -> list[GradCheck]:
    """Compare ``backward`` with centred differences of ``forward``.

    forward(*inputs) -> (out, cache); backward(dout, cache) -> one gradient
    per input (None where an input has no gradient). dout is random normal.
    Returns one GradCheck per named input.
    """
    inputs = [np.array(v, dtype=np.float64) for v in inputs]
    out, cache = forward(*inputs)
    # Seeded apart from the common default_rng(seed) stream, so dout is never a copy of x.
    dout = np.random.default_rng((seed, 7919)).standard_normal(out.shape)
    analytic = backward(dout, cache)
    if not isinstance(analytic, tuple):
        analytic = (analytic,)
    results = []
    for index, name in enumerate(names):
        def f(value, index=index):
            args = list(inputs)
            args[index] = value
            return forward(*args)[0]
        numeric = numerical_gradient_array(f, inputs[index], dout, h)
        results.append(GradCheck(name, rel_error(analytic[index], numeric), tol))
    return results
