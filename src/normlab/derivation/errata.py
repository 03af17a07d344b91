"""The errata: every wrong line of the handwritten seed derivation, shown wrong.

Each ``Erratum`` pairs a line as the seed wrote it with what it should say,
both as claims over batch norm's forward graph, and names the step whose
ground truth decides between them. Its check passes when the corrected line
is an identity and the seed's line fails at every sample point.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from .batchnorm import (
    DERIVATION,
    step_dbeta,
    step_dgamma,
    step_dmu,
    step_dmu_simplified,
    step_dvar,
    step_dx,
    step_dx_closed,
    step_dxhat,
    step_forward_var,
    step_local_dmu_dx,
    step_local_dvar_dmu,
    step_local_dxhat_dvar,
    step_local_dxhat_dx,
)
from .graph import Graph, evaluate, half, is_identity, matches, relative_gap, require_sympy, sample_points
from .result import CheckResult

#: Batch size of the errata checks: small, but large enough that no term vanishes by accident.
ERRATA_BATCH_SIZE = 3


class Erratum(NamedTuple):
    """One wrong line of the seed derivation.

    seed: the line as written (LaTeX); correct: what it should say.
    kind: "formula" (a mathematical error) or "notation" (a transcription or
        typographical slip; its check tests the natural literal reading).
    target: the step whose ground truth decides between the two versions.
    wrong/right: Graph -> tuple of expressions, the seed's and the corrected claim.
    """

    id: str
    title: str
    seed: str
    correct: str
    kind: str
    target: str
    wrong: Callable[[Graph], tuple]
    right: Callable[[Graph], tuple]


def _xhat_minus_mu(G: Graph):
    """The seed's recurring slip: (xhat_i - mu) where (x_i - mu) belongs."""
    return tuple(xh - G.mu for xh in G.xhat())


def _wrong_var_xhat(G):
    return (sum(t**2 for t in _xhat_minus_mu(G)) / G.m,)


def _wrong_dvar_dmu_xhat(G):
    return (sum(-2 * t for t in _xhat_minus_mu(G)) / G.m,)


def _wrong_dvar_no_sum(G):
    # One term per i, no sum: as an equation "for each i" it fails if any i differs.
    return tuple(d * local for d, local in zip(step_dxhat(G), step_local_dxhat_dvar(G)))


def _wrong_local_dxhat_dvar(G):
    sp = require_sympy()
    # Read literally: the repeated left-hand side, then (xhat_i - mu)(sigma2+eps)^(-3/2);
    # the -1/2 factor is missing and xhat stands where x belongs.
    return tuple(t * (G.sigma2 + G.eps) ** sp.Rational(-3, 2) for t in _xhat_minus_mu(G))


def _wrong_dvar_eq1(G):
    sp = require_sympy()
    return (-half() * sum(_xhat_minus_mu(G)) * (G.sigma2 + G.eps) ** sp.Rational(-3, 2),)


def _wrong_dmu_no_sum(G):
    (dvar,) = step_dvar(G)
    (dvar_dmu,) = step_local_dvar_dmu(G)
    return tuple(d * (-G.inverse()) + dvar * dvar_dmu for d in step_dxhat(G))


def _wrong_dmu_xhat(G):
    (dvar,) = step_dvar(G)
    (direct,) = step_dmu_simplified(G)
    return (direct + dvar * _wrong_dvar_dmu_xhat(G)[0],)


def _wrong_dmu_sign(G):
    (dvar,) = step_dvar(G)
    positive = sum(d * G.inverse() for d in step_dxhat(G))  # the minus sign was dropped
    return (positive + (-2 * dvar * (G.mu - G.mu * G.m / G.m)),)


def _wrong_glyph_product(G):
    # Read literally (the glyph as a factor 1), the line multiplies the two facts.
    return tuple(G.inverse() * step_local_dmu_dx(G)[0] for _ in G.x)


def _wrong_dx_without_dvar(G):
    (dmu,) = step_dmu(G)
    return tuple(d * G.inverse() + dmu / G.m for d in step_dxhat(G))


def _wrong_dx_without_dmu(G):
    (dvar,) = step_dvar(G)
    return tuple(d * G.inverse() + dvar * 2 * c / G.m for d, c in zip(step_dxhat(G), G.centred()))


def _dx_expanded(G, exponent):
    """The expanded dx line, with the variance path's exponent as a parameter."""
    dxhat, centred = step_dxhat(G), G.centred()
    sum_d = sum(dxhat)
    weighted = sum(d * c for d, c in zip(dxhat, centred))
    root = G.sigma2 + G.eps
    return tuple(d * G.inverse() + sum_d * (-G.inverse()) / G.m
                 - half() * weighted * root**exponent * 2 * c / G.m
                 for d, c in zip(dxhat, centred))


def _wrong_dx_exponent(G):
    return _dx_expanded(G, require_sympy().Rational(-1, 2))


def _right_dx_exponent(G):
    return _dx_expanded(G, require_sympy().Rational(-3, 2))


def _dx_regrouped(G, sign):
    """The regrouped dx line; sign is that of the xhat_i sum_j dxhat_j xhat_j term."""
    dxhat, xhat, m = step_dxhat(G), G.xhat(), G.m
    sum_d = sum(dxhat)
    sum_dx = sum(d * xh for d, xh in zip(dxhat, xhat))
    return tuple(d * G.inverse() - G.inverse() * sum_d / m + sign * G.inverse() / m * xh * sum_dx
                 for d, xh in zip(dxhat, xhat))


def _right_dvar_with_sum(G):
    return (sum(_wrong_dvar_no_sum(G)),)


def _dmu_bracket(G, xs):
    """The seed's third dmu line, with xs standing in the bracket's first mean."""
    (dvar,) = step_dvar(G)
    (direct,) = step_dmu_simplified(G)
    return (direct + (-2 * dvar * (sum(xs) / G.m - G.m * G.mu / G.m)),)


def _right_dmu_sign(G):
    (dvar,) = step_dvar(G)
    (direct,) = step_dmu_simplified(G)
    return (direct + (-2 * dvar * (G.mu - G.mu * G.m / G.m)),)


def _wrong_dmu_bracket_xhat(G):
    return _dmu_bracket(G, G.xhat())


def _right_dmu_bracket(G):
    return _dmu_bracket(G, G.x)


def _wrong_dx_adds_xhat_term(G):
    return _dx_regrouped(G, +1)


def _right_dx_subtracts_xhat_term(G):
    return _dx_regrouped(G, -1)


def _wrong_required_sign(G):
    """'required: -dl/dx_i' taken at its word: the negated gradient."""
    return tuple(-e for e in step_dx_closed(G))


def _wrong_dbeta_no_sum(G):
    """dl/dbeta = dl/dy_i * dy_i/dbeta for each i, i.e. a single dout_i."""
    return tuple(G.g)


def _wrong_dxhat_delta(G):
    """dl/dy_i * delta with the undefined delta read as 1 (a gamma-free reading)."""
    return tuple(G.g)


def _wrong_dgamma_no_sum(G):
    """dl/dgamma = dl/dy_i * dy_i/dgamma for each i, i.e. a single dout_i * xhat_i."""
    return tuple(gi * xh for gi, xh in zip(G.g, G.xhat()))


ERRATA: tuple[Erratum, ...] = (
    Erratum(
        "E1", "stray minus in 'required'",
        r"\text{required: } -\frac{\partial l}{\partial x_i}, \frac{\partial l}{\partial \gamma}, \frac{\partial l}{\partial \beta}",
        r"\text{required: } \frac{\partial l}{\partial x_i}, \frac{\partial l}{\partial \gamma}, \frac{\partial l}{\partial \beta}",
        "notation", "dx_closed", _wrong_required_sign, step_dx_closed),
    Erratum(
        "E2", "variance written with xhat",
        r"\sigma^2 = \text{variance} = \frac{1}{m} \sum_{i=1}^m (\hat{x}_i - \mu_B)^2",
        r"\sigma_B^2 = \frac{1}{m} \sum_{i=1}^m (x_i - \mu_B)^2",
        "formula", "forward_var", _wrong_var_xhat, step_forward_var),
    Erratum(
        "E3", "dvar/dmu written with xhat",
        r"\frac{\partial \sigma_B^2}{\partial \mu_B} = \frac{1}{m} \sum_{i=1}^m -2(\hat{x}_i - \mu_B)",
        r"\frac{\partial \sigma_B^2}{\partial \mu_B} = \frac{1}{m} \sum_{i=1}^m -2(x_i - \mu_B)",
        "formula", "local_dvar_dmu", _wrong_dvar_dmu_xhat, step_local_dvar_dmu),
    Erratum(
        "E4", "dvar chain rule missing sum",
        r"\frac{\partial l}{\partial \sigma_B^2} = \frac{\partial l}{\partial \hat{x}_i} \times \frac{\partial \hat{x}_i}{\partial \sigma_B^2}",
        r"\frac{\partial l}{\partial \sigma_B^2} = \sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{\partial \hat{x}_i}{\partial \sigma_B^2}",
        "formula", "dvar", _wrong_dvar_no_sum, _right_dvar_with_sum),
    Erratum(
        "E5", "dxhat/dvar garbled",
        r"\frac{\partial \hat{x}_i}{\partial \sigma_B^2} \Rightarrow \frac{\partial \hat{x}_i}{\partial \sigma_B^2} (\hat{x}_i - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2}",
        r"\frac{\partial \hat{x}_i}{\partial \sigma_B^2} = -\frac{1}{2} (x_i - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2}",
        "formula", "local_dxhat_dvar", _wrong_local_dxhat_dvar, step_local_dxhat_dvar),
    Erratum(
        "E6", "dvar (1) lacks dl/dxhat_i, uses xhat",
        r"-\frac{1}{2} \sum_{i=1}^m (\hat{x}_i - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2}",
        r"\frac{\partial l}{\partial \sigma_B^2} = -\frac{1}{2} \sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} (x_i - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2}",
        "formula", "dvar", _wrong_dvar_eq1, step_dvar),
    Erratum(
        "E7", "dmu chain rule missing sum",
        r"\frac{\partial l}{\partial \mu_B} = \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{\partial \hat{x}_i}{\partial \mu_B} + \frac{\partial l}{\partial \sigma_B^2} \cdot \frac{\partial \sigma_B^2}{\partial \mu_B}",
        r"\frac{\partial l}{\partial \mu_B} = \sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{\partial \hat{x}_i}{\partial \mu_B} + \frac{\partial l}{\partial \sigma_B^2} \cdot \frac{\partial \sigma_B^2}{\partial \mu_B}",
        "formula", "dmu", _wrong_dmu_no_sum, step_dmu),
    Erratum(
        "E8", "dmu expansion uses xhat",
        r"\left(\sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{-1}{\sqrt{\sigma_B^2 + \epsilon}} \right) + \left(\frac{\partial l}{\partial \sigma_B^2} \cdot \frac{1}{m} \sum_{i=1}^m -2(\hat{x}_i - \mu_B) \right)",
        r"\left(\sum_{i=1}^m \frac{\partial l}{\partial \hat{x}_i} \cdot \frac{-1}{\sqrt{\sigma_B^2 + \epsilon}} \right) + \left(\frac{\partial l}{\partial \sigma_B^2} \cdot \frac{1}{m} \sum_{i=1}^m -2(x_i - \mu_B) \right)",
        "formula", "dmu", _wrong_dmu_xhat, step_dmu),
    Erratum(
        "E9", "dmu bracket uses xhat",
        r"\left(-2 \frac{\partial \ell}{\partial \sigma_B^2} \left[\frac{1}{m} \sum_{i=1}^m \hat{x}_i - \frac{1}{m} \sum_{i=1}^m \mu_B \right] \right)",
        r"\left(-2 \frac{\partial \ell}{\partial \sigma_B^2} \left[\frac{1}{m} \sum_{i=1}^m x_i - \frac{1}{m} \sum_{i=1}^m \mu_B \right] \right)",
        "formula", "dmu", _wrong_dmu_bracket_xhat, _right_dmu_bracket),
    Erratum(
        "E10", "dmu drops the minus sign",
        r"\left(\sum_{i=1}^m \frac{\partial \ell}{\partial \hat{x}_i} \cdot \frac{1}{\sqrt{\sigma_B^2 + \epsilon}} \right) + \left(-2 \frac{\partial \ell}{\partial \sigma_B^2} \cdot \left(\mu_B - \frac{\mu_B \cdot m}{m} \right) \right)",
        r"\left(\sum_{i=1}^m \frac{\partial \ell}{\partial \hat{x}_i} \cdot \frac{-1}{\sqrt{\sigma_B^2 + \epsilon}} \right) + \left(-2 \frac{\partial \ell}{\partial \sigma_B^2} \cdot \left(\mu_B - \frac{\mu_B \cdot m}{m} \right) \right)",
        "formula", "dmu", _wrong_dmu_sign, _right_dmu_sign),
    Erratum(
        "E11", "stray glyph joins two facts",
        r"\frac{\partial \hat{x}_i}{\partial x_i} = (\sqrt{\sigma_B^2 + \epsilon})^{-1} \cdot \Delta \frac{\partial \mu_B}{\partial x_i} = \frac{1}{m}",
        r"\frac{\partial \hat{x}_i}{\partial x_i} = (\sqrt{\sigma_B^2 + \epsilon})^{-1}, \qquad \frac{\partial \mu_B}{\partial x_i} = \frac{1}{m}",
        "notation", "local_dxhat_dx", _wrong_glyph_product, step_local_dxhat_dx),
    Erratum(
        "E12", "dx with two terms: no dvar path",
        r"\frac{\partial \ell}{\partial x_i} = \left(\frac{\partial \ell}{\partial \hat{x}_i} \cdot (\sigma_B^2 + \epsilon)^{-1/2} \right) + \left(\frac{\partial \ell}{\partial \mu_B} \cdot \frac{1}{m} \right)",
        r"\frac{\partial \ell}{\partial x_i} = \frac{\partial \ell}{\partial \hat{x}_i} (\sigma_B^2 + \epsilon)^{-1/2} + \frac{\partial \ell}{\partial \sigma_B^2} \cdot \frac{2}{m} (x_i - \mu_B) + \frac{\partial \ell}{\partial \mu_B} \cdot \frac{1}{m}",
        "formula", "dx", _wrong_dx_without_dvar, step_dx),
    Erratum(
        "E13", "dx with two terms: no dmu path",
        r"\frac{\partial \ell}{\partial x_i} = \left(\frac{\partial \ell}{\partial \hat{x}_i} \cdot \frac{1}{(\sigma_B^2 + \epsilon)^{1/2}} \right) + \left(\frac{\partial \ell}{\partial \sigma_B^2} \cdot \frac{2}{m} (x_i - \mu_B) \right)",
        r"\frac{\partial \ell}{\partial x_i} = \frac{\partial \ell}{\partial \hat{x}_i} \frac{1}{(\sigma_B^2 + \epsilon)^{1/2}} + \frac{\partial \ell}{\partial \sigma_B^2} \cdot \frac{2}{m} (x_i - \mu_B) + \frac{\partial \ell}{\partial \mu_B} \cdot \frac{1}{m}",
        "formula", "dx", _wrong_dx_without_dmu, step_dx),
    Erratum(
        "E14", "dx exponent -1/2 for -3/2",
        r"- \left(\frac{1}{2} \sum_{j=1}^m \frac{\partial \ell}{\partial \hat{x}_j} (x_j - \mu_B) (\sigma_B^2 + \epsilon)^{-1/2} \cdot \frac{2}{m} (x_i - \mu_B) \right)",
        r"- \left(\frac{1}{2} \sum_{j=1}^m \frac{\partial \ell}{\partial \hat{x}_j} (x_j - \mu_B) (\sigma_B^2 + \epsilon)^{-3/2} \cdot \frac{2}{m} (x_i - \mu_B) \right)",
        "formula", "dx", _wrong_dx_exponent, _right_dx_exponent),
    Erratum(
        "E15", "dx adds the xhat term",
        r"+ \left((\sigma_B^2 + \epsilon)^{-1/2} \cdot \frac{1}{m} \cdot \hat{x}_i \sum_{j=1}^m \frac{\partial l}{\partial \hat{x}_j} \cdot \hat{x}_j \right)",
        r"- \left((\sigma_B^2 + \epsilon)^{-1/2} \cdot \frac{1}{m} \cdot \hat{x}_i \sum_{j=1}^m \frac{\partial l}{\partial \hat{x}_j} \cdot \hat{x}_j \right)",
        "formula", "dx", _wrong_dx_adds_xhat_term, _right_dx_subtracts_xhat_term),
    Erratum(
        "E16", "dbeta chain rule missing sum",
        r"\frac{\partial l}{\partial \beta} = \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \beta}",
        r"\frac{\partial l}{\partial \beta} = \sum_{i=1}^m \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \beta}",
        "formula", "dbeta", _wrong_dbeta_no_sum, step_dbeta),
    Erratum(
        "E17", "delta where gamma belongs",
        r"\frac{\partial l}{\partial \hat{x}_i} = \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \hat{x}_i} \Rightarrow \frac{\partial l}{\partial y_i} \cdot \delta",
        r"\frac{\partial l}{\partial \hat{x}_i} = \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \hat{x}_i} = \frac{\partial l}{\partial y_i} \cdot \gamma",
        "notation", "dxhat", _wrong_dxhat_delta, step_dxhat),
    Erratum(
        "E18", "dgamma chain rule missing sum",
        r"\frac{\partial l}{\partial \gamma} = \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \gamma}",
        r"\frac{\partial l}{\partial \gamma} = \sum_{i=1}^m \frac{\partial l}{\partial y_i} \cdot \frac{\partial y_i}{\partial \gamma}",
        "formula", "dgamma", _wrong_dgamma_no_sum, step_dgamma),
)

_ERRATUM_BY_ID = {e.id: e for e in ERRATA}


def erratum(erratum_id: str) -> Erratum:
    """The erratum record with this id (e.g. "E3")."""
    try:
        return _ERRATUM_BY_ID[erratum_id]
    except KeyError:
        raise KeyError(f"unknown erratum {erratum_id!r}; known: {', '.join(_ERRATUM_BY_ID)}") from None


def verify(e: Erratum, m: int = ERRATA_BATCH_SIZE) -> tuple[bool, bool, str]:
    """(right version holds, wrong version fails, detail) at m's rational points."""
    step = DERIVATION.step(e.target)
    G = DERIVATION.graph(m)
    truth, right, wrong = step.truth(G), e.right(G), e.wrong(G)
    right_ok, wrong_fails, gaps = True, True, []
    for _, values in sample_points(G, step.node_level):
        want = evaluate(truth, values)
        right_ok &= matches(evaluate(right, values), want)
        got_wrong = evaluate(wrong, values)
        # The wrong version must fail at *every* point, not just by luck at one.
        wrong_fails &= not matches(got_wrong, want)
        gaps.append(relative_gap(got_wrong, want))
    # The corrected line must hold for all values, not just at the sample points.
    right_ok = right_ok and is_identity(right, truth, G, node_level=step.node_level)
    detail = (f"right {'holds' if right_ok else 'FAILS'}, wrong "
              f"{'fails' if wrong_fails else 'HOLDS somewhere'} (m={m}, {len(gaps)} points, "
              f"wrong off by >= {min(gaps):.3g} relative)")
    return right_ok, wrong_fails, detail


def check(e: Erratum) -> CheckResult:
    """Passed when the corrected line holds and the seed's line fails; error 1.0 records the failure shown."""
    right_ok, wrong_fails, detail = verify(e)
    if e.kind == "notation":
        detail += "; notational slip, literal reading checked"
    return CheckResult(f"erratum {e.id}: {e.title}", right_ok and wrong_fails, 1.0 if wrong_fails else 0.0,
                       detail, "erratum")
