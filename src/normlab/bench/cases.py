"""Benchmark cases and the implementations timed on each.

A case id names the norm and the shape: ``bn:4096x1024`` (batch norm),
``sbn:32x64x56x56`` (spatial batch norm), ``ln:4096x1024`` (layer norm over
the last axis), ``gn8:32x64x56x56`` (group norm, 8 groups).

Every implementation exposes ``forward() -> state`` and ``backward(state)`` on
fixed inputs, so the timer sees only the work (no argument parsing of ours).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import norms

SUITE = ("bn:4096x1024", "bn:65536x64", "bn:256x4096", "bn:16384x1024", "sbn:32x64x56x56", "sbn:256x256x7x7",
         "ln:2048x256", "ln:8192x1024", "gn8:32x64x56x56")
#: issue 25's table: the (case, dtype) pairs its targets name first (all in SUITE)
ISSUE_CASES = (("bn:4096x1024", "float32"), ("bn:65536x64", "float32"), ("bn:256x4096", "float32"),
               ("ln:2048x256", "float32"), ("bn:4096x1024", "float64"), ("sbn:32x64x56x56", "float32"),
               ("ln:8192x1024", "float32"), ("gn8:32x64x56x56", "float32"))
QUICK = ("bn:512x64", "sbn:8x16x14x14", "ln:512x64", "gn4:8x16x14x14")
KINDS = {"bn": "batch norm", "sbn": "spatial batch norm", "ln": "layer norm", "gn": "group norm"}


@dataclass(frozen=True)
class Case:
    kind: str            # bn | sbn | ln | gn
    shape: tuple[int, ...]
    groups: int = 0      # group norm only

    @property
    def id(self) -> str:
        return f"{self.kind}{self.groups or ''}:{'x'.join(map(str, self.shape))}"

    @property
    def channels(self) -> int:
        return self.shape[-1] if self.kind == "ln" else self.shape[1]


def parse_case(text: str) -> Case:
    """'bn:4096x1024' -> Case; ValueError naming the accepted forms otherwise."""
    match = re.fullmatch(r"(bn|sbn|ln|gn)(\d*):(\d+(?:x\d+)+)", text.strip())
    if not match:
        raise ValueError(f"case {text!r} must look like bn:4096x1024, sbn:32x64x56x56, ln:4096x1024 or gn8:32x64x56x56")
    kind, groups, dims = match.group(1), match.group(2), tuple(int(d) for d in match.group(3).split("x"))
    if kind in ("bn", "ln") and len(dims) != 2 or kind in ("sbn", "gn") and len(dims) != 4:
        raise ValueError(f"case {text!r}: {KINDS[kind]} takes {'2' if kind in ('bn', 'ln') else '4'} dimensions")
    if (kind == "gn") != bool(groups):
        raise ValueError(f"case {text!r}: only group norm takes a group count (gn8:...)")
    if min(dims) < 1 or kind == "gn" and int(groups) < 1:
        raise ValueError(f"case {text!r}: every dimension and the group count must be >= 1")
    case = Case(kind, dims, int(groups or 0))
    per_stat = {"bn": dims[0], "sbn": dims[0] * math.prod(dims[2:]), "ln": dims[1],
                "gn": dims[1] // max(case.groups, 1) * math.prod(dims[2:])}[kind]
    if per_stat < 2:
        raise ValueError(f"case {text!r}: each statistic would reduce over {per_stat} value; batch "
                         "statistics need at least 2")
    if kind == "gn" and case.channels % case.groups:
        raise ValueError(f"case {text!r}: {case.groups} groups do not divide C = {case.channels}")
    return case


@dataclass
class Impl:
    name: str
    forward: Callable[[], object]
    backward: Callable[[object], object]
    cache_bytes: int          # memory the forward's cache holds beyond a reference to x
    traced: bool              # allocations visible to tracemalloc (NumPy arrays are)


#: the kernel suite's x: 3 + 2*N(0, 1), as in issue 25's table (activations are rarely centred)
KERNEL_X = (3.0, 2.0)


def _inputs(case: Case, dtype, seed=0, x_loc_scale=(0.0, 1.0)):
    """x = loc + scale*N(0, 1), gamma uniform in [0.5, 1.5], beta and dout N(0, 1)."""
    rng = np.random.default_rng(seed)
    loc, scale = x_loc_scale
    x = (loc + scale * rng.standard_normal(case.shape)).astype(dtype)
    c = case.channels
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    dout = rng.standard_normal(case.shape).astype(dtype)
    return x, gamma, beta, dout


def _normlab_forward(case: Case):
    return {
        "bn": norms.batchnorm_forward,
        "sbn": norms.spatial_batchnorm_forward,
        "ln": norms.layernorm_forward,
        "gn": lambda x, g, b, **kw: norms.groupnorm_forward(x, g, b, case.groups, **kw),
    }[case.kind]


def _cache_bytes(cache) -> int:
    """Bytes the cache owns: statistics and saved extras, not the x it references."""
    total = sum(a.nbytes for a in (cache.mean, cache.var, cache.invstd))
    saved = cache.saved
    if isinstance(saved, np.ndarray):
        total += saved.nbytes
    elif isinstance(saved, (tuple, list)):
        total += sum(a.nbytes for a in saved if isinstance(a, np.ndarray))
    return int(total)


def normlab_impls(case: Case, dtype, available: list[str], x_loc_scale=KERNEL_X) -> list[Impl]:
    """numpy-graph (batch norms), numpy closed form, numba, numba with out= buffers for y and dx."""
    x, gamma, beta, dout = _inputs(case, dtype, x_loc_scale=x_loc_scale)
    fw = _normlab_forward(case)
    impls = []

    def make(name, backend, backward, out=None, dx_out=None):
        def forward():
            return fw(x, gamma, beta, backend=backend, out=out)[1]

        def run_backward(cache):
            return backward(dout, cache) if dx_out is None else backward(dout, cache, out=dx_out)

        cache = forward()
        impls.append(Impl(name, forward, run_backward, _cache_bytes(cache), True))

    if "numpy" in available:
        if case.kind in ("bn", "sbn"):
            make("numpy-graph", "numpy", norms.batchnorm_backward_graph)
        make("numpy", "numpy", norms.normalize_backward)
    if "numba" in available:
        make("numba", "numba", norms.normalize_backward)
        # Reused output buffers for y and dx, as a training loop would keep them.
        make("numba+out", "numba", norms.normalize_backward, out=np.empty_like(x), dx_out=np.empty_like(x))
    return impls


def torch_impl(case: Case, dtype, x_loc_scale=KERNEL_X) -> Impl | None:
    """PyTorch's native ATen kernels (forward and backward ops, no autograd); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    x, gamma, beta, dout = (torch.from_numpy(a) for a in _inputs(case, dtype, x_loc_scale=x_loc_scale))
    aten = torch.ops.aten
    mask = [True, True, True]
    if case.kind in ("bn", "sbn"):
        def forward():
            return aten.native_batch_norm(x, gamma, beta, None, None, True, 0.1, 1e-5)

        def backward(state):
            return aten.native_batch_norm_backward(dout, x, gamma, None, None, state[1], state[2], True, 1e-5, mask)
    elif case.kind == "ln":
        shape = [case.shape[-1]]

        def forward():
            return aten.native_layer_norm(x, shape, gamma, beta, 1e-5)

        def backward(state):
            return aten.native_layer_norm_backward(dout, x, shape, state[1], state[2], gamma, beta, mask)
    else:
        n, c = case.shape[:2]
        hw = int(np.prod(case.shape[2:]))

        def forward():
            return aten.native_group_norm(x, gamma, beta, n, c, hw, case.groups, 1e-5)

        def backward(state):
            return aten.native_group_norm_backward(dout, x, state[1], state[2], gamma, n, c, hw, case.groups, mask)
    state = forward()
    saved = int(state[1].element_size() * state[1].numel() + state[2].element_size() * state[2].numel())
    return Impl("torch", forward, backward, saved, False)
