"""First-order update rules as pure functions.

Each rule is ``update(w, dw, state) -> (new_w, new_state)``: it never
modifies ``w``, ``dw`` or ``state``. ``state`` is a dict holding the
hyperparameters (``learning_rate``, ...) and the per-parameter buffers
(``velocity``, ``m``, ``v``, ``t``, ...); pass ``state=None`` or a dict of
hyperparameters on the first step, and the rule fills in its defaults and
creates its buffers. ``UPDATE_RULES`` maps names to rules; look one up with
:func:`get_update_rule`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


# Hyperparameters and their defaults, per rule; anything else in a state is a buffer.
DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"learning_rate": 1e-2},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
}


def _with_defaults(state: dict | None, rule: str) -> dict:
    new = dict(DEFAULTS[rule])
    new.update(state or {})
    return new


def sgd(w, dw, state=None):
    """Vanilla SGD: w - learning_rate * dw. Hyperparameters: learning_rate (1e-2)."""
    state = _with_defaults(state, "sgd")
    return w - state["learning_rate"] * dw, state


def sgd_momentum(w, dw, state=None):
    """SGD with momentum: v = momentum*v - lr*dw; w + v.

    Hyperparameters: learning_rate (1e-2), momentum (0.9). Buffer: velocity (w's shape).
    """
    state = _with_defaults(state, "sgd_momentum")
    velocity = state.get("velocity")
    if velocity is None:
        velocity = np.zeros_like(w)
    velocity = state["momentum"] * velocity - state["learning_rate"] * dw
    state["velocity"] = velocity
    return w + velocity, state


def rmsprop(w, dw, state=None):
    """RMSProp: a moving average of squared gradients scales each step.

    Hyperparameters: learning_rate (1e-2), decay_rate (0.99), epsilon (1e-8). Buffer: cache.
    """
    state = _with_defaults(state, "rmsprop")
    cache = state.get("cache")
    if cache is None:
        cache = np.zeros_like(w)
    cache = state["decay_rate"] * cache + (1 - state["decay_rate"]) * (dw * dw)
    state["cache"] = cache
    return w - state["learning_rate"] * dw / (np.sqrt(cache) + state["epsilon"]), state


def adam(w, dw, state=None):
    """Adam with bias correction (Kingma & Ba, 2015).

    Hyperparameters: learning_rate (1e-3), beta1 (0.9), beta2 (0.999),
    epsilon (1e-8). Buffers: m, v (w's shape), t (step count).
    """
    state = _with_defaults(state, "adam")
    m = state.get("m")
    v = state.get("v")
    if m is None:
        m, v = np.zeros_like(w), np.zeros_like(w)
    t = int(state.get("t", 0)) + 1
    beta1, beta2 = state["beta1"], state["beta2"]
    m = beta1 * m + (1 - beta1) * dw
    v = beta2 * v + (1 - beta2) * (dw * dw)
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    state.update(m=m, v=v, t=t)
    return w - state["learning_rate"] * m_hat / (np.sqrt(v_hat) + state["epsilon"]), state


UPDATE_RULES: dict[str, Callable] = {
    "sgd": sgd,
    "sgd_momentum": sgd_momentum,
    "rmsprop": rmsprop,
    "adam": adam,
}


def get_update_rule(name: str) -> Callable:
    """The update rule called ``name``; unknown names raise ValueError listing the known ones."""
    if not isinstance(name, str) or name not in UPDATE_RULES:
        raise ValueError(f"unknown update rule {name!r}; known: {', '.join(UPDATE_RULES)}")
    return UPDATE_RULES[name]


def check_config(name: str, config: dict | None) -> dict:
    """Validate hyperparameters for rule ``name``: known keys, finite numbers >= 0. Returns a copy."""
    get_update_rule(name)
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULTS[name]))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown} for update rule {name!r}; "
                         f"it takes {', '.join(DEFAULTS[name])}")
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"hyperparameter {key} of {name!r} must be a finite number >= 0, got {value!r}")
    return config
