"""What a student's layers.py is checked on: the functions, their inputs, the course's conventions.

The course's functions take a parameter dict: ``bn_param`` holds ``mode``
("train" or "test"), ``eps`` (default 1e-5), ``momentum`` (default 0.9) and
the running statistics, which a train-mode forward stores back into the dict
(that mutation is the contract; changing x, gamma, beta or dout is not). Every
other case leaves eps out of the dict (the default must be 1e-5); the others
pass ``GIVEN_EPS``, another value, which must be used. The running update is
the course's, not PyTorch's::

    running = momentum * running + (1 - momentum) * batch      (batch variance: biased)

Group norm's gamma/beta are (1, C, 1, 1) in one edition of the course and
(C,) in another; both are accepted (``EDITIONS``), or a course fixes one. Reference values come from
normlab's own forward and backward (NumPy backend, float64).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import norms

EPS = 1e-5
#: eps passed in the dict by the cases that pass one: not the default, so a code that ignores the dict shows.
GIVEN_EPS = 1e-4
MOMENTUM = 0.9
RUNNING_STEPS = 3
#: Group norm's gamma/beta shape for C channels, per edition of the course.
EDITIONS = {"(1, C, 1, 1)": lambda c: (1, c, 1, 1), "(C,)": lambda c: (c,)}


def edition_named(text: str) -> str:
    """The edition a course names: "1,C,1,1" or "C" (spaces, parentheses and case aside). Raises ValueError."""
    wanted = "".join(ch for ch in text.upper() if ch not in " ()")
    for edition in EDITIONS:
        if "".join(ch for ch in edition if ch not in " ()").rstrip(",") == wanted.rstrip(","):
            return edition
    raise ValueError(f"group norm's gamma shape {text!r}: expected 1,C,1,1 or C")


class Norm(NamedTuple):
    """One norm of the course: its functions and its parameter dict."""

    kind: str                   # "batch", "layer", "spatial" or "group"
    forward: str
    backwards: tuple[str, ...]
    param: str                  # the dict argument's name
    running: bool               # the dict carries mode and running statistics


NORMS = (
    Norm("batch", "batchnorm_forward", ("batchnorm_backward", "batchnorm_backward_alt"), "bn_param", True),
    Norm("layer", "layernorm_forward", ("layernorm_backward",), "ln_param", False),
    Norm("spatial", "spatial_batchnorm_forward", ("spatial_batchnorm_backward",), "bn_param", True),
    Norm("group", "spatial_groupnorm_forward", ("spatial_groupnorm_backward",), "gn_param", False),
)
FUNCTIONS = tuple(name for norm in NORMS for name in (norm.forward, *norm.backwards))


class Case(NamedTuple):
    """One input. gamma, beta: (C,) (group norm's edition reshapes them). eps None: left out of the dict."""

    label: str
    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    dout: np.ndarray
    eps: float | None
    groups: int | None = None

    @property
    def eps_value(self) -> float:
        return EPS if self.eps is None else self.eps


# (shape, groups, offset, scale): N = 2, C = 1, odd sizes, a large offset (1e4 + N(0, 1)), and a
# small scale where eps is not negligible next to the variance, at an even index (eps left to the
# default) so that a wrong default shows clearly.
_SHAPES = {
    "batch": [((2, 3), None, 0.0, 1.0), ((7, 5), None, 0.0, 1.0), ((16, 1), None, 0.0, 1.0),
              ((9, 4), None, 1e4, 1.0), ((31, 13), None, 0.0, 0.01)],
    "layer": [((2, 5), None, 0.0, 1.0), ((7, 3), None, 0.0, 1.0), ((5, 8), None, 0.0, 0.01),
              ((4, 13), None, 1e4, 1.0)],
    "spatial": [((2, 3, 4, 5), None, 0.0, 1.0), ((3, 1, 5, 3), None, 0.0, 1.0),
                ((4, 2, 3, 3), None, 0.0, 0.01), ((2, 4, 3, 7), None, 1e4, 1.0)],
    "group": [((2, 6, 4, 5), 3, 0.0, 1.0), ((3, 4, 3, 3), 2, 0.0, 1.0), ((2, 1, 5, 3), 1, 0.0, 1.0),
              ((2, 8, 3, 5), 4, 1e4, 1.0), ((3, 6, 2, 3), 6, 0.0, 0.01)],
}
_SEEDS = {"batch": 1, "layer": 2, "spatial": 3, "group": 4}


def _label(shape, groups, offset, scale) -> str:
    text = "x".join(str(s) for s in shape)
    if groups is not None:
        text += f", G={groups}"
    if offset:
        text += f", 1e{int(np.log10(offset))} + N(0,1)"
    if scale != 1.0:
        text += f", scale {scale:g}"
    return text


def make_case(rng: np.random.Generator, shape, groups=None, offset=0.0, scale=1.0, eps=None) -> Case:
    """A random case: x with a shift per channel, gamma/beta/dout random (never all ones), float64."""
    c = shape[1]
    channel_shift = rng.normal(0.0, 2.0, size=(1, c) + (1,) * (len(shape) - 2))
    x = offset + scale * (channel_shift + rng.standard_normal(shape))
    gamma = rng.normal(1.0, 0.5, size=c)
    beta = rng.normal(0.0, 0.5, size=c)
    dout = rng.standard_normal(shape)
    return Case(_label(shape, groups, offset, scale), x, gamma, beta, dout, eps, groups)


def cases(kind: str) -> list[Case]:
    """The cases of one norm; every other one leaves eps to the student's default, the others pass GIVEN_EPS."""
    rng = np.random.default_rng(_SEEDS[kind])
    return [make_case(rng, shape, groups, offset, scale, eps=None if i % 2 == 0 else GIVEN_EPS)
            for i, (shape, groups, offset, scale) in enumerate(_SHAPES[kind])]


#: momentum in bn_param for the running-statistics sequence: batch norm leaves it to the default,
#: spatial batch norm passes another value, which must be used.
RUNNING_MOMENTUM = {"batch": None, "spatial": 0.8}


def running_cases(kind: str) -> list[Case]:
    """The train steps of the running-statistics sequence (batch and spatial batch norm), spreads growing."""
    rng = np.random.default_rng(_SEEDS[kind] + 100)
    shape = (8, 4) if kind == "batch" else (4, 3, 2, 3)
    steps = [make_case(rng, shape, scale=1.0 + step) for step in range(RUNNING_STEPS)]
    return [case._replace(label=f"step {i} of {RUNNING_STEPS}") for i, case in enumerate(steps, 1)]


def inference_case(kind: str) -> tuple[Case, np.ndarray, np.ndarray]:
    """A test-mode case and the running mean and variance to pass in bn_param."""
    rng = np.random.default_rng(_SEEDS[kind] + 200)
    shape = (6, 4) if kind == "batch" else (3, 3, 2, 4)
    case = make_case(rng, shape, eps=GIVEN_EPS)
    c = shape[1]
    return case, rng.normal(0.0, 1.0, size=c), rng.uniform(0.3, 3.0, size=c)


def course_running_update(running: np.ndarray, batch: np.ndarray, momentum: float = MOMENTUM) -> np.ndarray:
    """The course's update: momentum * running + (1 - momentum) * batch (batch variance biased)."""
    return momentum * running + (1.0 - momentum) * batch


# ----------------------------------------------------------------------------- calls and references

def param_dict(norm: Norm, case: Case, mode: str = "train") -> dict:
    """The dict argument as the course's notebook builds it."""
    param = {"mode": mode} if norm.running else {}
    if case.eps is not None:
        param["eps"] = case.eps
    return param


def param_shape(norm: Norm, channels: int, edition: str | None) -> tuple[int, ...]:
    """gamma/beta's shape as passed to the student (and expected back for dgamma/dbeta)."""
    return EDITIONS[edition](channels) if norm.kind == "group" else (channels,)


def forward_arguments(norm: Norm, case: Case, param: dict, edition: str | None = None):
    """(args, names) of the student's forward for this case."""
    shape = param_shape(norm, case.x.shape[1], edition)
    gamma, beta = case.gamma.reshape(shape), case.beta.reshape(shape)
    if norm.kind == "group":
        return [case.x, gamma, beta, case.groups, param], ["x", "gamma", "beta", "G", norm.param]
    return [case.x, gamma, beta, param], ["x", "gamma", "beta", norm.param]


_REFERENCE = {"batch": norms.batchnorm_forward, "layer": norms.layernorm_forward,
              "spatial": norms.spatial_batchnorm_forward}


def reference_forward(kind: str, x, gamma, beta, eps: float, groups: int | None = None, **given):
    """normlab's forward for this norm (NumPy backend): (out, cache). gamma/beta (C,) or None.

    given: mean=, var= to normalize with given statistics (test mode, and the diagnosis's what-ifs).
    """
    if kind == "group":
        return norms.groupnorm_forward(x, gamma, beta, groups, eps, backend="numpy", **given)
    return _REFERENCE[kind](x, gamma, beta, eps, backend="numpy", **given)


def reference_backward(dout, cache):
    """normlab's closed-form backward: (dx, dgamma, dbeta)."""
    return norms.batchnorm_backward(dout, cache)
