"""RMS norm's derivation (docs/derivation.md, section 9): its steps, that they can fail, and the document."""

from pathlib import Path

import pytest

pytest.importorskip("sympy")

from normlab import derivation as dv  # noqa: E402
from normlab.derivation import rmsnorm  # noqa: E402

RMS = dv.DERIVATIONS["rmsnorm"]
DOC = Path(__file__).resolve().parents[1] / "docs" / "derivation.md"


@pytest.mark.parametrize("name", dv.step_names("rmsnorm"))
def test_rms_step(name):
    result = dv.check_step(name, norm="rmsnorm")
    assert result.passed and result.name.startswith("step rmsnorm: "), result


def test_rms_library_matches_the_exact_gradients():
    result = dv.check_closed_form_exact(RMS)
    assert result.passed, result


def test_batch_norms_closed_form_is_not_rms_norms(monkeypatch):
    """The -sum(dxhat) term of the centred norms is wrong here: the check must reject it."""

    def with_mean_term(G):
        dxhat, xhat, m = rmsnorm.step_dxhat(G), G.xhat(), G.m
        s1, s2 = sum(dxhat), sum(d * xh for d, xh in zip(dxhat, xhat))
        return tuple(G.inverse() / m * (m * d - s1 - xh * s2) for d, xh in zip(dxhat, xhat))

    steps = tuple(s._replace(formula=with_mean_term) if s.name == "rms_dx_closed" else s for s in RMS.steps)
    monkeypatch.setitem(dv.DERIVATIONS, "rmsnorm", RMS._replace(steps=steps))
    ok, _, where = dv.verify_step("rms_dx_closed", 3, norm="rmsnorm")
    assert not ok and "m=3" in where


def test_rms_graph_has_no_mean():
    G = rmsnorm.rms_graph(3)
    values = dv.rational_point(G, 0)
    assert values[G.mu] == 0 and values[G.sigma2] == sum(values[x] ** 2 for x in G.x) / 3


@pytest.mark.parametrize("name", dv.step_names("rmsnorm"))
def test_doc_cites_every_rms_step(name):
    assert f"`{name}`" in DOC.read_text(encoding="utf-8")
