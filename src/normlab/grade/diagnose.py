"""Diagnosis: which known mistake explains a student's numbers.

Every code is a stable id with a one-line explanation, the formula that fixes
it and, where one fits, the erratum of docs/derivation.md that makes the same
slip (errata are named by id only). A code is found by testing hypotheses
against the student's numbers, never their source: for each quantity (out, dx,
dgamma, running_var, ...) that is wrong somewhere, the mistakes of
``hypotheses`` whose values match the student's in *every* case are the
diagnosis; with several, the one that needs the fewest codes wins.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from ..gradcheck import rel_error

#: Largest normwise relative error that counts as correct (float64; a one-pass
#: variance on 1e4 + N(0, 1) is still far below it, every mistake far above).
PASS_TOL = 1e-6
#: Largest relative distance from a mistake's values that counts as "exactly that mistake".
MATCH_TOL = 1e-6

_DX_FIX = "dx = invstd/m · (m·dx̂ − Σdx̂ − x̂·Σ(dx̂·x̂)) with dx̂ = γ·dout, sums over the reduced axes"


class Code(NamedTuple):
    id: str
    explanation: str
    fix: str
    errata: tuple[str, ...] = ()   # ids of docs/derivation.md's errata with the same slip
    warning: bool = False          # reported, but the function still passes


CODES = {code.id: code for code in (
    Code("missing-mean-term", "dx lacks the mean term −Σdx̂/m, so Σdx over the reduced axes is not 0",
         _DX_FIX, ("E13",)),
    Code("mean-term-sign", "dx adds Σdx̂/m instead of subtracting it (∂x̂/∂μ = −1/√(σ²+ε) lost its minus)",
         _DX_FIX, ("E10",)),
    Code("mean-term-not-summed", "the mean term uses each value's own dx̂ where Σdx̂ belongs (∂l/∂μ sums over all i)",
         _DX_FIX, ("E7",)),
    Code("missing-variance-term", "dx lacks the variance term −x̂·Σ(dx̂·x̂)/m", _DX_FIX, ("E12",)),
    Code("variance-term-sign", "dx adds x̂·Σ(dx̂·x̂)/m instead of subtracting it", _DX_FIX, ("E15",)),
    Code("variance-term-exponent", "the variance term uses (σ²+ε)^(−1/2) where (σ²+ε)^(−3/2) belongs",
         _DX_FIX, ("E14",)),
    Code("variance-term-not-summed",
         "the variance term uses each value's own dx̂·x̂ where Σ(dx̂·x̂) belongs (∂l/∂σ² sums over all i)",
         _DX_FIX, ("E4",)),
    Code("dx-negated", "dx has the wrong sign: the gradient is +∂l/∂x", _DX_FIX, ("E1",)),
    Code("gamma-not-applied", "γ is left out: dx̂ = dout instead of γ·dout (forward: out = x̂ + β)",
         "dx̂ = γ·dout; out = γ·x̂ + β", ("E17",)),
    Code("unbiased-variance", "the forward normalizes with the unbiased variance (1/(m−1), ddof=1)",
         "σ² = (1/m)·Σ(x − μ)², i.e. np.var(x, axis=...) with ddof=0"),
    Code("eps-outside-sqrt", "ε is added after the square root: √σ² + ε", "x̂ = (x − μ)/√(σ² + ε)"),
    Code("wrong-axis", "the statistics, or the backward's sums, run over the wrong axes",
         "batch norm: over N per feature; layer norm: over D per sample; spatial batch norm: over N, H, W "
         "per channel; group norm: over each group's C/G consecutive channels and H, W, per sample"),
    Code("dgamma-dbeta-axis", "dγ/dβ are summed over the wrong axes, or not summed",
         "dγ = Σ dout·x̂ and dβ = Σ dout over every axis but the channel axis", ("E18", "E16")),
    Code("running-stats", "the running mean/variance do not follow the course's rule",
         "running = momentum·running + (1 − momentum)·batch with the biased batch variance, stored back in "
         "bn_param; test mode normalizes with them and leaves them unchanged"),
    Code("mutates-input", "x, gamma, beta or dout is changed in place",
         "compute into new arrays (xc = x − μ, not x -= μ): the caller's arrays must stay as they were"),
    Code("wrong-shape", "an output has the wrong shape, or the function does not return the course's tuple",
         "forward returns (out, cache), out shaped like x; backward returns (dx, dgamma, dbeta) shaped like "
         "x, gamma, beta"),
    Code("raises", "the function raised an exception (or ended the process)",
         "see the message: the exception and the line of your file"),
    Code("timeout", "a call did not finish within the time limit (--timeout)",
         "look for an endless loop; replace loops over elements with NumPy operations"),
    Code("alt-not-faster", "batchnorm_backward_alt is not faster than batchnorm_backward (a warning)",
         "compute dx in one expression, " + _DX_FIX.split(" with ")[0] + ", without the staged graph",
         warning=True),
)}


class Mistake(NamedTuple):
    codes: tuple[str, ...]
    detail: str
    implied_by: tuple[str, ...] = ()  # dropped when one of these codes is found elsewhere in the function


def _m(codes, detail, implied_by=()):
    return Mistake(tuple(codes.split()), detail, tuple(implied_by))


MISTAKES = {
    "missing-mean-term": _m("missing-mean-term", "lacks the mean term −Σdx̂/m"),
    "missing-variance-term": _m("missing-variance-term", "lacks the variance term −x̂·Σ(dx̂·x̂)/m"),
    "missing-both-terms": _m("missing-mean-term missing-variance-term",
                             "is γ·dout/√(σ²+ε): both the mean and the variance terms are missing"),
    "mean-term-sign": _m("mean-term-sign", "adds Σdx̂/m instead of subtracting it"),
    "mean-term-not-summed": _m("mean-term-not-summed", "subtracts each dx̂/m instead of Σdx̂/m"),
    "variance-term-sign": _m("variance-term-sign", "adds x̂·Σ(dx̂·x̂)/m instead of subtracting it"),
    "variance-term-exponent": _m("variance-term-exponent", "has the variance term σ²+ε times too large"),
    "variance-term-not-summed": _m("variance-term-not-summed", "subtracts x̂·dx̂·x̂/m instead of x̂·Σ(dx̂·x̂)/m"),
    "dx-negated": _m("dx-negated", "is −dx"),
    "gamma-not-applied": _m("gamma-not-applied", "is what it would be with γ = 1"),
    "unbiased-variance": _m("unbiased-variance", "is normalized with the unbiased variance (m − 1)"),
    "eps-outside-sqrt": _m("eps-outside-sqrt", "is normalized with √σ² + ε"),
    "wrong-axis:per-sample": _m("wrong-axis", "uses statistics per sample over the features (layer norm's)"),
    "wrong-axis:per-feature": _m("wrong-axis", "uses statistics per feature over the batch (batch norm's)"),
    "wrong-axis:reshape-without-transpose": _m(
        "wrong-axis", "matches x.reshape(-1, C) without moving C last first: the statistics mix channels"),
    "wrong-axis:over-batch-only": _m("wrong-axis", "uses statistics per (c, h, w) over N only, not over N, H, W"),
    "wrong-axis:per-sample-channel": _m("wrong-axis", "uses statistics per (sample, channel) over H, W"),
    "wrong-axis:per-channel": _m("wrong-axis", "uses statistics per (sample, channel): groups of one channel"),
    "wrong-axis:batch-statistics": _m("wrong-axis", "uses statistics per channel over the batch, not per sample"),
    "wrong-axis:strided-groups": _m(
        "wrong-axis", "groups every G-th channel (x.reshape(N, C//G, G, ...)) instead of C/G consecutive ones"),
    "wrong-axis:backward-sums": _m("wrong-axis", "sums over the other axis (the other norm's backward)"),
    "wrong-axis:backward-sums-and-count": _m(
        "wrong-axis", "sums over the other axis and divides by its size (the other norm's backward)"),
    "running:momentum-swapped": _m("running-stats", "swaps momentum: (1 − momentum)·running + momentum·batch"),
    "running:unbiased-variance": _m("running-stats", "takes the unbiased batch variance (PyTorch's rule)",
                                    implied_by=("unbiased-variance",)),
    "running:unbiased-and-swapped": _m("running-stats",
                                       "takes the unbiased batch variance and swaps momentum"),
    "running:momentum-ignored": _m("running-stats", "ignores bn_param['momentum'] and uses 0.9"),
    "running:not-updated": _m("running-stats", "is not updated by a train-mode forward"),
    "running:test-uses-batch": _m("running-stats", "is normalized with the batch statistics in test mode"),
    "running:test-changes": _m("running-stats", "is changed by a test-mode forward"),
    "running:off": _m("running-stats", "does not follow momentum·running + (1 − momentum)·batch",
                      implied_by=("wrong-axis",)),
}


def mistake(key: str) -> Mistake:
    """The mistake for a hypothesis key.

    ``dgamma-dbeta-axis:(axes)`` keys are built from the axes; ``forward-code+key`` is the mistake
    ``key`` of a backward fed by a forward with that code (``+none``: no mistake of its own).
    """
    if "+" in key:
        forward, own = key.split("+", 1)
        if own == "none":
            return Mistake((), f"is right for what its forward computed ({forward})")
        found = mistake(own)
        return found._replace(detail=f"{found.detail} (on top of its forward's {forward})")
    if key.startswith("dgamma-dbeta-axis:"):
        axes = key.split(":", 1)[1]
        return _m("dgamma-dbeta-axis", "is not summed" if axes == "()" else f"is summed over axes {axes}")
    return MISTAKES[key]


class Observation(NamedTuple):
    """One quantity of one case: the student's value, the reference, and each mistake's value.

    got: an ndarray, or what the student returned instead (None: nothing).
    on_mismatch: the mistake a mismatch means when no hypothesis matches.
    """

    quantity: str
    case: str
    got: Any
    want: np.ndarray
    hypotheses: dict = {}
    on_mismatch: str | None = None


class Verdict(NamedTuple):
    codes: tuple[str, ...]
    details: tuple[str, ...]
    max_rel_error: float | None
    failed: bool


def _error(got, want) -> float | None:
    """rel_error when got is an array of want's shape, else None."""
    if not isinstance(got, np.ndarray) or got.shape != np.shape(want):
        return None
    return rel_error(got, want)


def _matches(got, value) -> bool:
    """got equals a mistake's value; size-1 axes aside (keepdims), since a mistake's sums may keep them or not."""
    if not isinstance(got, np.ndarray) or got.size != np.size(value):
        return False
    if got.shape != np.shape(value):
        got, value = np.squeeze(got), np.squeeze(value)
        if got.shape != value.shape:
            return False
    return rel_error(got, value) <= MATCH_TOL


def _correct(o: Observation) -> bool:
    error = _error(o.got, o.want)
    return error is not None and error <= PASS_TOL


def _shape_of(got) -> str:
    if got is None:
        return "missing"
    return f"shape {got.shape}" if isinstance(got, np.ndarray) else f"not an array ({got!r:.40})"


def _cases(n: int) -> str:
    return "the one case" if n == 1 else f"all {n} cases"


def _explain(obs: Sequence[Observation]) -> list[tuple[Mistake, str]]:
    """The mistakes that explain a wrong quantity, each with what it says about the quantity."""
    # A mistake that cannot be computed in some case (a single value per statistic) is judged on the
    # others, as long as it explains at least one of the wrong values. A mistake that leaves the
    # quantity right everywhere (dβ does not care about the statistics' axes) explains nothing here.
    wrong = [o for o in obs if not _correct(o)]
    keys = [k for k in dict.fromkeys(k for o in obs for k in o.hypotheses)
            if all(_matches(o.got, o.hypotheses[k]) for o in obs if k in o.hypotheses)
            and any(k in o.hypotheses for o in wrong)
            and not all(_matches(o.want, o.hypotheses[k]) for o in obs if k in o.hypotheses)]
    if keys:
        fewest = min(len(mistake(k).codes) for k in keys)
        return [(mistake(k), f"{mistake(k).detail} ({_cases(sum(k in o.hypotheses for o in obs))})")
                for k in keys if len(mistake(k).codes) == fewest]
    odd = next((o for o in obs if _error(o.got, o.want) is None), None)
    if obs[0].on_mismatch is not None:
        found = mistake(obs[0].on_mismatch)
        where = f" ({_shape_of(odd.got)} in case {odd.case})" if odd is not None else ""
        return [(found, f"{found.detail}{where}")]
    if odd is not None:
        return [(_m("wrong-shape", ""), f"is {_shape_of(odd.got)}, expected shape {np.shape(odd.want)} "
                                        f"(case {odd.case})")]
    odd = next((o for o in obs if not np.all(np.isfinite(o.got))), None)
    if odd is not None:
        return [(_m("", ""), f"contains NaN or inf (case {odd.case})")]
    worst = max(obs, key=lambda o: _error(o.got, o.want))
    return [(_m("", ""), f"is wrong (rel. error {_error(worst.got, worst.want):.1e} in case {worst.case}) "
                         f"and no known mistake matches it")]


def diagnose(observations: Sequence[Observation]) -> Verdict:
    """Per quantity wrong anywhere, the mistakes that explain it; the codes in the catalogue's order.

    details: one line per finding, "quantities: what is wrong with them".
    """
    by_quantity: dict[str, list[Observation]] = {}
    for o in observations:
        by_quantity.setdefault(o.quantity, []).append(o)
    found: list[tuple[Mistake, str, str]] = []
    for quantity, obs in by_quantity.items():
        if not all(_correct(o) for o in obs):
            found += [(m, quantity, text) for m, text in _explain(obs)]
    codes = {c for m, _, _ in found for c in m.codes}
    kept = [(m, q, text) for m, q, text in found if not set(m.implied_by) & codes]
    lines: dict[str, list[str]] = {}  # the same finding for dx, dgamma and dbeta is one line
    for _, quantity, text in kept:
        lines.setdefault(text, []).append(quantity)
    errors = [e for e in (_error(o.got, o.want) for o in observations) if e is not None]
    return Verdict(tuple(c for c in CODES if any(c in m.codes for m, _, _ in kept)),
                   tuple(f"{', '.join(qs)}: {text}" for text, qs in lines.items()),
                   max(errors) if errors else None, bool(found))
