"""The checks behind ``normlab check``: every norm's backward against centred
differences (float64, random dout), the closed form against the staged graph,
PyTorch as an oracle when it is installed, and the derivation's SymPy checks."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import derivation, norms
from .gradcheck import check_forward_backward, rel_error

NUMERIC_TOL = 1e-8
ORACLE_TOL = 1e-10


class CheckRow(NamedTuple):
    group: str
    name: str
    error: float | None  # None where no single number applies (an erratum shown wrong)
    criterion: str       # what "pass" means: a tolerance, "exact", ...
    passed: bool


def _cases(rng):
    """(name, forward(x, gamma, beta), x, C) for the four norms."""
    return [
        ("batchnorm (N,D)", lambda x, g, b, **kw: norms.batchnorm_forward(x, g, b, **kw),
         rng.normal(1.5, 2.0, (7, 4)), 4),
        ("spatial bn (N,C,H,W)", lambda x, g, b, **kw: norms.spatial_batchnorm_forward(x, g, b, **kw),
         rng.normal(-0.5, 1.5, (3, 3, 2, 3)), 3),
        ("layernorm (N,D)", lambda x, g, b, **kw: norms.layernorm_forward(x, g, b, **kw),
         rng.normal(0.5, 2.0, (4, 6)), 6),
        ("groupnorm G=2", lambda x, g, b, **kw: norms.groupnorm_forward(x, g, b, 2, **kw),
         rng.normal(0.0, 1.0, (2, 4, 2, 3)), 4),
    ]


def gradient_checks(backend: str = "auto", seed: int = 0) -> list[CheckRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for name, forward, x, c in _cases(rng):
        gamma, beta = rng.normal(size=c), rng.normal(size=c)
        fw = lambda x, g, b, forward=forward: forward(x, g, b, backend=backend)  # noqa: E731
        for result in check_forward_backward(fw, norms.normalize_backward, [x, gamma, beta],
                                             ["dx", "dgamma", "dbeta"], seed=seed, tol=NUMERIC_TOL):
            rows.append(CheckRow(name, f"{result.name} vs numeric", result.error, f"< {result.tol:.0e}",
                                 result.passed))
    # The closed form against the node-by-node graph.
    x = rng.normal(2.0, 3.0, (16, 5))
    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    out, cache = norms.batchnorm_forward(x, gamma, beta, backend=backend)
    dout = rng.standard_normal(out.shape)
    for label, a, b in zip(("dx", "dgamma", "dbeta"), norms.normalize_backward(dout, cache),
                           norms.batchnorm_backward_graph(dout, cache)):
        err = rel_error(a, b)
        rows.append(CheckRow("batchnorm (N,D)", f"{label} closed vs graph", err, f"< {ORACLE_TOL:.0e}",
                             err < ORACLE_TOL))
    return rows


def torch_checks(backend: str = "auto", seed: int = 0) -> list[CheckRow]:
    """Forward and all gradients against PyTorch autograd in float64 (empty if torch is absent)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return []
    oracles = {
        "batchnorm (N,D)": lambda x, g, b: F.batch_norm(x, None, None, g, b, True, 0.1, 1e-5),
        "spatial bn (N,C,H,W)": lambda x, g, b: F.batch_norm(x, None, None, g, b, True, 0.1, 1e-5),
        "layernorm (N,D)": lambda x, g, b: F.layer_norm(x, (x.shape[-1],), g, b, 1e-5),
        "groupnorm G=2": lambda x, g, b: F.group_norm(x, 2, g, b, 1e-5),
    }
    rng = np.random.default_rng(seed + 1)
    rows = []
    for name, forward, x, c in _cases(rng):
        gamma, beta = rng.normal(size=c), rng.normal(size=c)
        out, cache = forward(x, gamma, beta, backend=backend)
        dout = rng.standard_normal(out.shape)
        grads = norms.normalize_backward(dout, cache)
        tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
        tout = oracles[name](tx, tg, tb)
        tout.backward(torch.from_numpy(dout))
        pairs = [("out", out, tout.detach().numpy())] + [
            (label, mine, t.grad.numpy()) for label, mine, t in zip(("dx", "dgamma", "dbeta"), grads, (tx, tg, tb))]
        for label, mine, theirs in pairs:
            err = rel_error(mine, theirs)
            rows.append(CheckRow(name, f"{label} vs torch", err, f"< {ORACLE_TOL:.0e}", err < ORACLE_TOL))
    return rows


def derivation_checks() -> list[CheckRow]:
    """The SymPy checks of docs/derivation.md (empty if sympy is absent)."""
    try:
        derivation.require_sympy()
    except ImportError:
        return []
    results = derivation.run_checks()
    criteria = {"erratum": "seed line fails", "step": "exact (SymPy)"}
    return [CheckRow("derivation", r.name, None if r.kind == "erratum" else float(r.error),
                     criteria.get(r.kind) or f"< {r.tolerance:.0e}", bool(r.passed))
            for r in results]
