"""Diagnosis: which known mistake explains a student's numbers.

Every code is a stable id with a one-line explanation, the formula that fixes
it and, where one fits, the erratum of docs/derivation.md that makes the same
slip (errata are named by id only). A code is found by testing hypotheses
against the student's numbers, never their source: for each quantity (out, dx,
dgamma, running_var, ...) that is wrong somewhere, the mistakes of
``hypotheses`` whose values match the student's in *every* case are the
diagnosis; with several, the one that needs the fewest codes wins. Values of
the right size in another shape (``keepdims=True``) are a shape finding and are
then judged as values.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..gradcheck import rel_error

#: Largest normwise relative error that counts as correct (float64; a one-pass
#: variance on 1e4 + N(0, 1) is still far below it, every mistake far above).
PASS_TOL = 1e-6
#: Largest relative distance from a mistake's values that counts as "exactly that mistake".
MATCH_TOL = 1e-6
#: A right value smaller than this fraction of its quantity's scale (dx at N = 2, where the closed
#: form's terms nearly cancel) makes any wrong value's relative error about 1: not the case to show.
SMALL_NEXT_TO_SCALE = 0.1

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
    Code("default-eps", "a parameter dict without 'eps' gets another ε than the course's default 1e-5 "
         "(half the cases leave eps out)", "eps = bn_param.get('eps', 1e-5) (ln_param, gn_param alike)"),
    Code("eps-ignored", "the parameter dict's eps is not used: ε is left out, or a constant replaces it",
         "read eps = bn_param.get('eps', 1e-5) and normalize with √(σ² + eps), in train and test mode"),
    Code("wrong-axis", "the statistics, or the backward's sums, run over the wrong axes",
         "batch norm: over N per feature; layer norm: over D per sample; spatial batch norm: over N, H, W "
         "per channel; group norm: over each group's C/G consecutive channels and H, W, per sample"),
    Code("wrong-count", "a sum is divided by another count than the number of values it runs over",
         "m = the values per statistic: N (batch norm), D (layer norm), N·H·W (spatial batch norm), "
         "C/G·H·W (group norm); mean = Σx/m, σ² = Σ(x − μ)²/m, and the same m in dx"),
    Code("dgamma-dbeta-axis", "dγ/dβ are summed over the wrong axes, or not summed",
         "dγ = Σ dout·x̂ and dβ = Σ dout over every axis but the channel axis", ("E18", "E16")),
    Code("running-stats", "the running mean/variance do not follow the course's rule",
         "running = momentum·running + (1 − momentum)·batch with the biased batch variance, stored back in "
         "bn_param; test mode normalizes with them and leaves them unchanged"),
    Code("test-mode-affine", "test mode leaves out γ (out = x̂ + β), or γ and β (out = x̂)",
         "test mode: out = γ·(x − running_mean)/√(running_var + ε) + β, as in train mode"),
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
    "wrong-axis:per-pixel-groups": _m(
        "wrong-axis", "uses statistics per pixel over each group's C/G channels, not over the channels and H, W"),
    "wrong-axis:backward-sums": _m("wrong-axis", "sums over the other axis (the other norm's backward)"),
    "wrong-axis:backward-sums-and-count": _m(
        "wrong-axis", "sums over the other axis and divides by its size (the other norm's backward)"),
    "wrong-count:statistics-NG": _m(
        "wrong-count", "divides each group's sums by N·G (mean and variance) instead of the group's size C/G·H·W"),
    "wrong-count:backward-NG": _m("wrong-count", "uses m = N·G in dx instead of the group's size C/G·H·W"),
    "wrong-count:backward-D": _m("wrong-count", "uses m = D in dx instead of N"),
    "wrong-count:backward-N": _m("wrong-count", "uses m = N in dx instead of D"),
    "test-mode:no-gamma": _m("test-mode-affine", "leaves γ out in test mode: out = x̂ + β",
                             implied_by=("gamma-not-applied",)),
    "test-mode:no-affine": _m("test-mode-affine", "leaves γ and β out in test mode: out = x̂"),
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


_EPS_VALUE = re.compile(r"(default-eps|eps-ignored):([^&+]+)")


def _eps_detail(family: str, values: str) -> str:
    """What a code with this ε does; values: one ε ("1e-12") or the ends of the range that matched ("0..1e-10")."""
    low, _, high = values.partition("..")
    if not high:
        used = "leaves ε out" if float(low) == 0.0 else f"uses ε = {low}"
    elif float(low) == 0.0 and family == "eps-ignored":
        used = f"leaves ε out (or uses one of at most {high}: the cases cannot tell which)"
    else:
        used = f"uses ε = {low} or one of at most {high} (the cases cannot tell which)" if float(low) == 0.0 \
            else f"uses ε between {low} and {high} (the cases cannot tell which)"
    if family == "default-eps":
        return f"{used} when the parameter dict has no eps (the course's default is 1e-5); passed eps is used"
    return f"{used} whatever eps the parameter dict passes"


def mistake(key: str) -> Mistake:
    """The mistake for a hypothesis key.

    ``dgamma-dbeta-axis:(axes)`` keys are built from the axes; ``default-eps:ε`` and ``eps-ignored:ε``
    from the ε; ``a&b`` is slips a and b in one forward; ``forward-key+key`` is the mistake ``key`` of
    a backward fed by a forward with that slip (``+none``: no mistake of its own).
    """
    if "+" in key:
        forward, own = key.split("+", 1)
        slips = ", ".join(mistake(forward).codes)
        if own == "none":
            return Mistake((), f"is right for what its forward computed ({slips})")
        found = mistake(own)
        return found._replace(detail=f"{found.detail} (on top of its forward's {slips})")
    if "&" in key:
        parts = [mistake(part) for part in key.split("&")]
        return Mistake(tuple(c for part in parts for c in part.codes), " and ".join(p.detail for p in parts),
                       tuple(c for part in parts for c in part.implied_by))
    family, _, value = key.partition(":")
    if family == "dgamma-dbeta-axis":
        return _m("dgamma-dbeta-axis", "is not summed" if value == "()" else f"is summed over axes {value}")
    if family in ("default-eps", "eps-ignored"):
        return Mistake((family,), _eps_detail(family, value))
    return MISTAKES[key]


def _merged_eps_values(keys: Sequence[str]) -> list[tuple[str, str]]:
    """(key to report, a key it stands for): keys that differ only in ε become one key with the range of ε.

    The cases tell ε = 0 and ε = 1e-12 apart only when they change the numbers by more than MATCH_TOL.
    """
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(_EPS_VALUE.sub(r"\1:*", key), []).append(key)
    merged = []
    for pattern, members in groups.items():
        if len(members) == 1:
            merged.append((members[0], members[0]))
            continue
        values = sorted(float(_EPS_VALUE.search(k).group(2)) for k in members)
        span = f"{values[0]:g}..{values[-1]:g}"
        merged.append((pattern.replace("*", span, 1), members[0]))
    return merged


class Observation(NamedTuple):
    """One quantity of one case: the student's value, the reference, and each mistake's value.

    got: an ndarray, or what the student returned instead (None: nothing).
    on_mismatch: the mistake a mismatch means when no hypothesis matches.
    scale: the size this quantity has in this case (dx: its leading term); None: want's own size.
    """

    quantity: str
    case: str
    got: Any
    want: np.ndarray
    hypotheses: dict = {}
    on_mismatch: str | None = None
    scale: float | None = None


class Verdict(NamedTuple):
    codes: tuple[str, ...]
    details: tuple[str, ...]
    max_rel_error: float | None
    failed: bool
    keys: tuple[str, ...] = ()  # the hypotheses that matched (a backward is judged on top of its forward's)


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


def _telling(o: Observation) -> bool:
    """The right value is not tiny next to its scale: a relative error here says how wrong the student is."""
    return o.scale is None or float(np.max(np.abs(o.want), initial=0.0)) >= SMALL_NEXT_TO_SCALE * o.scale


def _shape_of(got) -> str:
    if got is None:
        return "missing"
    return f"shape {got.shape}" if isinstance(got, np.ndarray) else f"not an array ({got!r:.40})"


def _cases(n: int) -> str:
    return "the one case" if n == 1 else f"all {n} cases"


def _in_other_shape(o: Observation) -> bool:
    """got holds as many values as want in another shape that differs only in axes of size 1 (keepdims)."""
    got, want = o.got, np.asarray(o.want)
    return (isinstance(got, np.ndarray) and got.shape != want.shape and got.size == want.size
            and np.squeeze(got).shape == np.squeeze(want).shape)


def _reshaped(obs: Sequence[Observation]) -> tuple[list[Observation], str | None]:
    """Values in another shape reshaped to want's, and the shape finding they make (None: none)."""
    odd = [o for o in obs if _in_other_shape(o)]
    if not odd:
        return list(obs), None
    first = odd[0]
    where = _cases(len(obs)) if len(odd) == len(obs) else f"{len(odd)} of {len(obs)} cases"
    finding = (f"has shape {first.got.shape} where {np.shape(first.want)} belongs ({where}, first {first.case})")
    return [o._replace(got=o.got.reshape(np.shape(o.want))) if _in_other_shape(o) else o for o in obs], finding


def _explain(obs: Sequence[Observation]) -> tuple[list[tuple[Mistake, str]], list[str]]:
    """The mistakes that explain a wrong quantity, each with what it says about it; the keys that matched."""
    # A mistake that cannot be computed in some case (a single value per statistic) is judged on the
    # others, as long as it explains at least one of the wrong values. A mistake that leaves the
    # quantity right everywhere (dβ does not depend on the statistics' axes) explains nothing here.
    wrong = [o for o in obs if not _correct(o)]
    keys = [k for k in dict.fromkeys(k for o in obs for k in o.hypotheses)
            if all(_matches(o.got, o.hypotheses[k]) for o in obs if k in o.hypotheses)
            and any(k in o.hypotheses for o in wrong)
            and not all(_matches(o.want, o.hypotheses[k]) for o in obs if k in o.hypotheses)]
    if keys:
        fewest = min(len(mistake(k).codes) for k in keys)
        chosen = [k for k in keys if len(mistake(k).codes) == fewest]
        return [(mistake(k), f"{mistake(k).detail} ({_cases(sum(first in o.hypotheses for o in obs))})")
                for k, first in _merged_eps_values(chosen)], chosen
    odd = next((o for o in obs if _error(o.got, o.want) is None), None)
    if obs[0].on_mismatch is not None:
        found = mistake(obs[0].on_mismatch)
        where = f" ({_shape_of(odd.got)} in case {odd.case})" if odd is not None else ""
        return [(found, f"{found.detail}{where}")], []
    if odd is not None:
        return [(_m("wrong-shape", ""), f"is {_shape_of(odd.got)}, expected shape {np.shape(odd.want)} "
                                        f"(case {odd.case})")], []
    odd = next((o for o in obs if not np.all(np.isfinite(o.got))), None)
    if odd is not None:
        return [(_m("", ""), f"contains NaN or inf (case {odd.case})")], []
    # the case that tells most: where the right value is not tiny next to its scale (not dx at N = 2)
    worst = max([o for o in wrong if _telling(o)] or wrong, key=lambda o: _error(o.got, o.want))
    return [(_m("", ""), f"is wrong (rel. error {_error(worst.got, worst.want):.1e} in case {worst.case}) "
                         f"and no known mistake matches it")], []


def _max_rel_error(observations: Sequence[Observation]) -> float | None:
    """The worst relative error, over the telling cases when they show the quantity is wrong."""
    errors = [(e, _telling(o)) for o in observations if (e := _error(o.got, o.want)) is not None]
    telling = [e for e, tells in errors if tells]
    if telling and max(telling) > PASS_TOL:
        return max(telling)
    return max(e for e, _ in errors) if errors else None


def diagnose(observations: Sequence[Observation]) -> Verdict:
    """Per quantity wrong anywhere, the mistakes that explain it; the codes in the catalogue's order.

    details: one line per finding, "quantities: what is wrong with them".
    """
    by_quantity: dict[str, list[Observation]] = {}
    for o in observations:
        by_quantity.setdefault(o.quantity, []).append(o)
    found: list[tuple[Mistake, str, str]] = []
    judged, keys = [], []
    for quantity, obs in by_quantity.items():
        obs, shape_finding = _reshaped(obs)
        judged += obs
        if shape_finding is not None:
            found.append((_m("wrong-shape", ""), quantity, shape_finding))
        if not all(_correct(o) for o in obs):
            explained, matched = _explain(obs)
            found += [(m, quantity, text) for m, text in explained]
            keys += matched
    codes = {c for m, _, _ in found for c in m.codes}
    kept = [(m, q, text) for m, q, text in found if not set(m.implied_by) & codes]
    lines: dict[str, list[str]] = {}  # the same finding for dx, dgamma and dbeta is one line
    for _, quantity, text in kept:
        if quantity not in lines.setdefault(text, []):
            lines[text].append(quantity)
    return Verdict(tuple(c for c in CODES if any(c in m.codes for m, _, _ in kept)),
                   tuple(f"{', '.join(qs)}: {text}" for text, qs in lines.items()),
                   _max_rel_error(judged), bool(found), tuple(dict.fromkeys(keys)))
