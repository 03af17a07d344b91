"""The derivation in docs/derivation.md, machine-checked.

Every step equation against SymPy's derivative for m = 2..5, every erratum of
the handwritten derivation (the correction holds, the original fails), the
library's closed form against the exact result and the staged graph, and the
document against the checks so that the two cannot drift apart.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sympy")  # an optional dependency ("normlab[derive]"); also a test dependency

from click.testing import CliRunner  # noqa: E402

import normlab  # noqa: E402
from normlab import derivation as dv  # noqa: E402
from normlab import selfcheck  # noqa: E402
from normlab.cli import main  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "derivation.md"
BATCHNORM = dv.DERIVATIONS["batchnorm"]


# ----------------------------------------------------------------------------- steps

@pytest.mark.parametrize("m", dv.BATCH_SIZES)
@pytest.mark.parametrize("name", dv.step_names())
def test_step(name, m):
    ok, gap, where = dv.verify_step(name, m)
    assert ok, f"step {name} differs from the symbolic derivative at {where} (relative gap {gap})"


def test_steps_cover_the_derivation():
    """The steps the document is built from are all registered."""
    needed = {"dxhat", "dvar", "dmu", "dmu_simplified", "dx", "dx_closed", "dgamma", "dbeta",
              "inv_sum", "inv_xhat"}
    assert needed <= set(dv.step_names())


def test_rational_points_are_exact_and_nondegenerate():
    """sqrt(sigma2 + eps) is rational, eps > 0, and dout is not constant."""
    sp = pytest.importorskip("sympy")
    for m in dv.BATCH_SIZES:
        G = dv.forward_graph(m)
        for on_graph in (True, False):
            values = dv.rational_point(G, 0, on_graph=on_graph)
            root = sp.sqrt(values[G.sigma2] + values[G.eps])
            assert root.is_Rational and values[G.eps] > 0
            assert len({values[g] for g in G.g}) > 1
            assert abs(values[G.gamma]) != 1
        on = dv.rational_point(G, 1)
        assert on[G.mu] == sum(on[x] for x in G.x) / m != 0


def test_a_broken_step_is_caught(monkeypatch):
    """The checks can fail: the -3/2 exponent of dvar replaced by -1/2 must be rejected."""
    sp = pytest.importorskip("sympy")

    def wrong_dvar(G):
        return (-sp.Rational(1, 2) * sum(d * c for d, c in zip(dv.step("dxhat").formula(G), G.centred()))
                * (G.sigma2 + G.eps) ** sp.Rational(-1, 2),)

    steps = tuple(s._replace(formula=wrong_dvar) if s.name == "dvar" else s for s in BATCHNORM.steps)
    monkeypatch.setitem(dv.DERIVATIONS, "batchnorm", BATCHNORM._replace(steps=steps))
    ok, _, where = dv.verify_step("dvar", 3)
    assert not ok and "m=3" in where
    assert not dv.check_step("dvar").passed


def test_a_wrong_identity_is_not_proved():
    """is_identity rejects a claim that differs from the truth (here: the dmu without its minus)."""
    G = dv.forward_graph(3)
    truth = dv.step("dmu").truth(G)
    assert dv.is_identity(dv.step("dmu").formula(G), truth, G, node_level=False)
    assert not dv.is_identity(tuple(-e for e in dv.step("dmu").formula(G)), truth, G, node_level=False)


# ----------------------------------------------------------------------------- errata

@pytest.mark.parametrize("eid", [e.id for e in dv.ERRATA])
def test_erratum(eid):
    right_ok, wrong_fails, detail = dv.verify_erratum(eid)
    assert right_ok, f"{eid}: the corrected line does not hold ({detail})"
    assert wrong_fails, f"{eid}: the seed's line was not shown to fail ({detail})"


def test_a_broken_erratum_is_caught():
    """The errata checks can fail both ways: a seed line that holds, a correction that does not."""
    e = dv.erratum("E14")
    right_ok, wrong_fails, _ = dv.errata.verify(e._replace(wrong=e.right))
    assert right_ok and not wrong_fails
    right_ok, wrong_fails, _ = dv.errata.verify(e._replace(right=e.wrong))
    assert not right_ok and wrong_fails
    assert not dv.errata.check(e._replace(wrong=e.right)).passed


def test_errata_records_are_well_formed():
    ids = [e.id for e in dv.ERRATA]
    assert len(ids) == len(set(ids))
    for e in dv.ERRATA:
        assert e.kind in {"formula", "notation"}
        assert e.target in dv.step_names()
        assert e.seed.strip() and e.correct.strip() and e.seed != e.correct


# ----------------------------------------------------------------------------- numerics

def test_numpy_formula_matches_exact():
    result = dv.check_closed_form_exact(BATCHNORM)
    assert result.passed, result


def test_a_wrong_library_backward_is_caught():
    """The exact comparison can fail: a closed form whose dx is off by 1e-9 relative is rejected."""
    def off(*args):
        dx, dgamma, dbeta = BATCHNORM.library(*args)
        return dx * (1 + 1e-9), dgamma, dbeta

    result = dv.check_closed_form_exact(BATCHNORM._replace(library=off))
    assert not result.passed and result.error > dv.numeric.EXACT_TOLERANCE


@pytest.mark.parametrize("seed, m, d", [(0, 16, 5), (1, 2, 3), (2, 64, 1), (3, 7, 11)])
def test_closed_form_matches_staged_graph(seed, m, d):
    result = dv.numerical_check(seed=seed, m=m, d=d)
    assert result.passed, result


def test_a_disagreement_with_the_staged_graph_is_caught(monkeypatch):
    """numerical_check can fail: a staged graph whose dgamma differs by 1e-8 relative is rejected."""
    graph = normlab.norms.batchnorm_backward_graph

    def off(dout, cache):
        dx, dgamma, dbeta = graph(dout, cache)
        return dx, dgamma * (1 + 1e-8), dbeta

    monkeypatch.setattr(normlab.norms, "batchnorm_backward_graph", off)
    result = dv.numerical_check()
    assert not result.passed and "dgamma" in result.detail


def test_closed_form_spatial_matches_implementation():
    """Section 8: the same formula with sums over N, H, W and m = N*H*W.

    Against the staged graph, and against batch norm of the (N*H*W, C) matrix
    whose columns hold the same values: one batch of m = N*H*W per channel.
    """
    rng = np.random.default_rng(5)
    x = rng.normal(0.5, 2.0, size=(4, 3, 5, 2))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    dout = rng.normal(size=x.shape)
    _, cache = normlab.spatial_batchnorm_forward(x, gamma, beta, eps=1e-5)
    got = normlab.spatial_batchnorm_backward(dout, cache)
    for a, b in zip(got, normlab.batchnorm_backward_graph(dout, cache)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

    def as_matrix(a):
        return a.transpose(0, 2, 3, 1).reshape(-1, 3)

    _, flat_cache = normlab.batchnorm_forward(as_matrix(x), gamma, beta, eps=1e-5)
    dx, dgamma, dbeta = normlab.batchnorm_backward(as_matrix(dout), flat_cache)
    for a, b in zip((as_matrix(got[0]), got[1], got[2]), (dx, dgamma, dbeta)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_constant_dout_gives_zero_dx():
    """Why every check uses a random upstream gradient: a constant one makes dx vanish."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3))
    _, cache = normlab.batchnorm_forward(x, rng.normal(size=3), rng.normal(size=3))
    dx, _, _ = normlab.batchnorm_backward(np.ones_like(x), cache)
    np.testing.assert_allclose(dx, 0.0, atol=1e-12)


# ----------------------------------------------------------------------------- run_checks

def test_run_checks_all_pass():
    results = dv.run_checks()
    failed = [r for r in results if not r.passed]
    assert not failed, failed
    names = [r.name for r in results]
    assert len(names) == len(set(names))
    n_steps = sum(len(d.steps) for d in dv.DERIVATIONS.values())
    assert len(results) == n_steps + len(dv.ERRATA) + len(dv.DERIVATIONS) + 1
    assert [r.kind for r in results].count("step") == n_steps
    for r in results:
        assert isinstance(r, dv.CheckResult) and isinstance(r.error, float)
        assert (r.tolerance is not None) == (r.kind == "numeric")


def test_run_checks_names_missing_sympy(monkeypatch):
    """Without SymPy the error says how to install it."""
    monkeypatch.setitem(sys.modules, "sympy", None)  # makes `import sympy` raise ImportError
    with pytest.raises(ImportError, match=r"normlab\[derive\]"):
        dv.run_checks()


def test_check_without_sympy_says_so(monkeypatch):
    """`normlab check` without SymPy skips the derivation rows and prints how to install it."""
    monkeypatch.setitem(sys.modules, "sympy", None)
    assert selfcheck.derivation_checks() == []
    monkeypatch.setattr(selfcheck, "gradient_checks", lambda *a: [])
    monkeypatch.setattr(selfcheck, "torch_checks", lambda *a: [])
    out = CliRunner().invoke(main, ["check"]).output
    assert "SymPy not installed: derivation checks skipped (pip install 'normlab[derive]')." in out


def test_selfcheck_rows_state_each_criterion(monkeypatch):
    """Each kind of result gets its own criterion; a numeric row shows its own tolerance."""
    results = [dv.CheckResult("step a", True, 0.0, "", "step"),
               dv.CheckResult("erratum E0: b", True, 1.0, "", "erratum"),
               dv.CheckResult("c vs d", False, 2e-12, "", "numeric", 1e-12)]
    monkeypatch.setattr(dv, "run_checks", lambda: results)
    rows = selfcheck.derivation_checks()
    assert [(r.name, r.error, r.criterion, r.passed) for r in rows] == [
        ("step a", 0.0, "exact (SymPy)", True), ("erratum E0: b", None, "seed line fails", True),
        ("c vs d", 2e-12, "< 1e-12", False)]


def test_import_does_not_import_sympy():
    """SymPy is optional: importing the module must not pull it in."""
    code = (
        "import sys, normlab\n"
        "before = 'sympy' in sys.modules\n"
        "import normlab.derivation\n"
        "print('skip' if before else ('bad' if 'sympy' in sys.modules else 'ok'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if out.stdout.strip() == "skip":
        pytest.skip("something imported by normlab already imports sympy")
    assert out.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- the document

@pytest.fixture(scope="module")
def doc_text():
    return DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", dv.step_names())
def test_doc_names_every_step(doc_text, name):
    assert f"`{name}`" in doc_text, f"docs/derivation.md does not cite the check `{name}`"


@pytest.mark.parametrize("eid", [e.id for e in dv.ERRATA])
def test_doc_lists_every_erratum(doc_text, eid):
    e = dv.erratum(eid)
    row = re.search(rf"^\|\s*{re.escape(eid)}\s*\|\s*{e.kind}\s*\|.*\|\s*(?P<check>[^|]+?)\s*\|\s*$",
                    doc_text, flags=re.MULTILINE)
    assert row, f"docs/derivation.md has no errata table row for {eid} ({e.kind})"
    assert row["check"] == f"erratum {e.id}: {e.title}", "the row must name the check run_checks prints"


def test_doc_lists_no_unknown_erratum(doc_text):
    in_doc = set(re.findall(r"^\|\s*(E\d+)\s*\|", doc_text, flags=re.MULTILINE))
    assert in_doc == {e.id for e in dv.ERRATA}


def test_doc_says_how_it_is_checked(doc_text):
    assert "tests/test_derivation.py" in doc_text and "normlab check" in doc_text
