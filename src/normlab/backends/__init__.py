"""Backends: interchangeable implementations of the normalization core.

Every backend is a module with ``NAME`` and two functions over the 4-d view
``(N, G, K, L)`` described in ``normlab.core``:

``forward(x4, gamma, beta, eps, batch_stats, given=None, out=None, center=True)``
    -> ``(out4, mean, var, invstd, saved)``; gamma/beta are (G*K,) or None;
    statistics are float64 of shape (G,) if batch_stats else (N, G); ``given``
    is an optional (mean, var) pair of that shape (inference); ``center``
    False: RMS statistics (mean 0, var the mean square; per-sample only).
``backward(dout4, x4, gamma, mean, invstd, batch_stats, stats_given, saved, out=None, center=True)``
    -> ``(dx4, dgamma, dbeta)``; dgamma/dbeta are (G*K,) float64 or None;
    ``out`` is an optional (N, G, K, L) buffer of x's dtype for dx.

The same passes one at a time, for callers whose statistics or sums span
more than this x (synchronized batch norm adds them up over ranks between
the passes); grad_sums/grad_apply are for batch_stats=True (K == 1) only:

``moments(x4, batch_stats)``
    -> ``(mean, var)``, float64 of the statistics' shape; var is biased.
``grad_sums(dout4, x4, mean, invstd, batch_stats)``
    -> ``(sum_dy, sum_dy_xhat)``, float64 (G,): dbeta and gamma-free dgamma.
``grad_apply(dout4, x4, gamma, mean, invstd, sum_dy, sum_dy_xhat, count, batch_stats, out=None)``
    -> dx4 = gamma*invstd*(dy - sum_dy/count - xhat*sum_dy_xhat/count) in
    x's dtype, count being how many values the sums were taken over.
``all_finite(mean, var)``
    -> whether every statistic is finite (the core checks each forward's).
``update_running(running_mean, running_var, batch_mean, batch_var, count, factor)``
    folds a batch's float64 (C,) statistics into running (C,) arrays in place
    (``normlab.running_rule.blend_running_stats`` in float64, rounded once).

``"auto"`` picks the fastest backend that imports on this machine.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module path; a backend is imported only when first asked for.
_REGISTRY = {
    "numpy": "normlab.backends.numpy_backend",
    "numba": "normlab.backends.numba_backend",
}
# numba when it imports (fused kernels), else the NumPy reference.
_AUTO_ORDER = ("numba", "numpy")
_loaded: dict[str, ModuleType] = {}


def available_backends() -> list[str]:
    """Names of the backends that import on this machine."""
    names = []
    for name in _REGISTRY:
        try:
            get_backend(name)
        except ImportError:
            continue
        names.append(name)
    return names


def get_backend(name: str = "auto") -> ModuleType:
    """Return the backend module called ``name`` ("auto" picks the fastest that imports)."""
    loaded = _loaded.get(name)
    if loaded is not None:  # every call of every forward asks: answer from the dict
        return loaded
    if name == "auto":
        for candidate in _AUTO_ORDER:
            try:
                _loaded["auto"] = get_backend(candidate)
                return _loaded["auto"]
            except ImportError:
                continue
        raise ImportError("no normalization backend imports")  # pragma: no cover - numpy always does
    if name not in _REGISTRY:
        known = ", ".join(["auto", *_REGISTRY])
        raise ValueError(f"unknown backend {name!r}; known backends: {known}")
    if name not in _loaded:
        _loaded[name] = importlib.import_module(_REGISTRY[name])
    return _loaded[name]
