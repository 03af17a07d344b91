"""normlab grade: a correct course-style layers.py passes; each broken variant gets exactly its code.

Every file in tests/data/grade is graded once (one worker per file) and the
result shared by the tests that look at it.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from normlab import grade
from normlab.cli import main as cli
from normlab.grade import cases, hypotheses
from normlab.grade.checks import Row
from normlab.grade import protocol
from normlab.grade.diagnose import Observation, diagnose
from normlab.grade.runner import Worker

DATA = Path(__file__).parent / "data" / "grade"
TIMEOUT = 5.0  # a call, and the import: room for a busy machine (the suite runs in parallel)

# file -> (the codes its functions must get, the function that gets them, its status)
VARIANTS = {
    "missing_mean_term.py": ({"missing-mean-term"}, "batchnorm_backward", "fail"),
    "missing_variance_term.py": ({"missing-variance-term"}, "layernorm_backward", "fail"),
    "missing_both_terms.py": ({"missing-mean-term", "missing-variance-term"}, "batchnorm_backward", "fail"),
    "mean_term_sign.py": ({"mean-term-sign"}, "batchnorm_backward_alt", "fail"),
    "mean_term_not_summed.py": ({"mean-term-not-summed"}, "batchnorm_backward", "fail"),
    "variance_term_sign.py": ({"variance-term-sign"}, "spatial_batchnorm_backward", "fail"),
    "variance_term_exponent.py": ({"variance-term-exponent"}, "spatial_groupnorm_backward", "fail"),
    "variance_term_not_summed.py": ({"variance-term-not-summed"}, "layernorm_backward", "fail"),
    "dx_negated.py": ({"dx-negated"}, "batchnorm_backward", "fail"),
    "gamma_not_applied.py": ({"gamma-not-applied"}, "batchnorm_backward_alt", "fail"),
    "gamma_not_applied_forward.py": ({"gamma-not-applied"}, "layernorm_forward", "fail"),
    "unbiased_variance.py": ({"unbiased-variance"}, "batchnorm_forward", "fail"),
    "eps_outside_sqrt.py": ({"eps-outside-sqrt"}, "batchnorm_forward", "fail"),
    "wrong_axis_batchnorm.py": ({"wrong-axis"}, "batchnorm_forward", "fail"),
    "wrong_axis_spatial.py": ({"wrong-axis"}, "spatial_batchnorm_backward", "fail"),
    "wrong_axis_layernorm_backward.py": ({"wrong-axis"}, "layernorm_backward", "fail"),
    "wrong_axis_groupnorm.py": ({"wrong-axis"}, "spatial_groupnorm_forward", "fail"),
    "dgamma_axis.py": ({"dgamma-dbeta-axis"}, "layernorm_backward", "fail"),
    "running_momentum_swapped.py": ({"running-stats"}, "batchnorm_forward", "fail"),
    "running_unbiased.py": ({"running-stats"}, "batchnorm_forward", "fail"),
    "running_not_stored.py": ({"running-stats"}, "spatial_batchnorm_forward", "fail"),
    "running_momentum_ignored.py": ({"running-stats"}, "spatial_batchnorm_forward", "fail"),
    "mutates_input.py": ({"mutates-input"}, "batchnorm_forward", "fail"),
    "wrong_shape.py": ({"wrong-shape"}, "batchnorm_backward", "fail"),
    "returns_out_only.py": ({"wrong-shape"}, "layernorm_forward", "fail"),
    "raises.py": ({"raises"}, "layernorm_forward", "error"),
    "import_error.py": ({"raises"}, "batchnorm_forward", "error"),
    "alt_not_faster.py": ({"alt-not-faster"}, "batchnorm_backward_alt", "pass"),
    # mistakes seen in real submissions
    "running_keepdims.py": ({"wrong-shape"}, "batchnorm_forward", "fail"),
    "running_keepdims_momentum.py": ({"wrong-shape", "running-stats"}, "batchnorm_forward", "fail"),
    "default_eps.py": ({"default-eps"}, "batchnorm_forward", "fail"),
    "eps_ignored.py": ({"eps-ignored"}, "layernorm_forward", "fail"),
    "eps_outside_sqrt_default_eps.py": ({"eps-outside-sqrt", "default-eps"}, "batchnorm_forward", "fail"),
    "test_mode_no_gamma.py": ({"test-mode-affine"}, "batchnorm_forward", "fail"),
    "test_mode_no_affine.py": ({"test-mode-affine"}, "spatial_batchnorm_forward", "fail"),
    "groupnorm_per_pixel.py": ({"wrong-axis"}, "spatial_groupnorm_forward", "fail"),
    "groupnorm_count.py": ({"wrong-count"}, "spatial_groupnorm_forward", "fail"),
    "groupnorm_backward_count.py": ({"wrong-count"}, "spatial_groupnorm_backward", "fail"),
}


@functools.lru_cache(maxsize=None)
def graded(name: str, **options) -> grade.Result:
    return grade.grade(DATA / name, timeout=TIMEOUT, **options)


def rows(result: grade.Result) -> dict[str, Row]:
    return {row.function: row for row in result.rows}


def codes(result: grade.Result) -> set[str]:
    return {code for row in result.rows for code in row.diagnosis}


# ----------------------------------------------------------------------------- the reference student

def test_correct_layers_pass_everything():
    result = graded("layers.py")
    assert [row.function for row in result.rows] == list(grade.FUNCTIONS)
    for row in result.rows:
        assert row.status == "pass", row
        assert row.diagnosis == ()
        assert row.max_rel_error is not None and row.max_rel_error < 1e-9, row
    # the closed form is measurably faster than the staged graph
    assert result.speedup_alt is not None and result.speedup_alt > 1.1
    assert set(rows(result)["batchnorm_backward_alt"].speedup) == {"100x500", "500x2000"}


def test_folder_with_layers_py_is_graded_like_the_file():
    result = grade.grade(DATA, only="layernorm_forward,layernorm_backward", timeout=TIMEOUT)
    assert [(row.function, row.status) for row in result.rows] == [("layernorm_forward", "pass"),
                                                                    ("layernorm_backward", "pass")]


def test_cases_cover_the_issue_s_inputs():
    shapes = {kind: [c.x.shape for c in cases.cases(kind)] for kind in ("batch", "layer", "spatial", "group")}
    assert any(s[0] == 2 for s in shapes["batch"]) and any(s[1] == 1 for s in shapes["batch"])
    assert any(s[1] == 1 for s in shapes["spatial"]) and any(s[1] == 1 for s in shapes["group"])
    for kind in shapes:
        every = cases.cases(kind)
        assert any(np.median(c.x) > 5e3 for c in every)  # 1e4 + N(0, 1)
        for c in every:
            assert c.x.dtype == np.float64
            assert not np.allclose(c.gamma, 1.0) and not np.allclose(c.dout, 1.0)


@pytest.mark.parametrize("kind", ["batch", "layer", "spatial", "group"])
def test_wrong_formulas_start_from_the_right_one(kind):
    """The backward's what-ifs are the closed form with one term changed: unchanged, it is normlab's dx."""
    for case in cases.cases(kind):
        _, cache = cases.reference_forward(kind, case.x, case.gamma, case.beta, case.eps_value, case.groups)
        dx = cases.reference_backward(case.dout, cache)[0]
        p = hypotheses._pieces(kind, case)
        assert np.allclose(hypotheses._wrong_dx(p).reshape(dx.shape), dx, rtol=1e-9, atol=1e-12)
        assert not np.allclose(hypotheses._wrong_dx(p, mean_term="none").reshape(dx.shape), dx)


# ----------------------------------------------------------------------------- one code per broken variant

@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_broken_variant_gets_exactly_its_code(name):
    expected, function, status = VARIANTS[name]
    result = graded(name)
    assert codes(result) == expected, [(r.function, r.diagnosis, r.message) for r in result.rows]
    row = rows(result)[function]
    assert (row.status, set(row.diagnosis)) == (status, expected), row
    assert row.message


def test_every_code_has_a_variant():
    covered = {code for expected, _, _ in VARIANTS.values() for code in expected} | {"timeout"}
    assert covered == set(grade.CODES)


def test_every_code_explains_itself_and_its_fix():
    for code in grade.CODES.values():
        assert code.explanation and code.fix
        assert all(e.startswith("E") and e[1:].isdigit() for e in code.errata)
    assert grade.CODES["missing-mean-term"].errata == ("E13",)
    assert grade.CODES["alt-not-faster"].warning


def test_docs_list_every_code_with_its_erratum():
    text = (Path(__file__).parents[1] / "docs" / "grade.md").read_text()
    for code in grade.CODES.values():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{code.id}` |"))
        assert row.rstrip(" |").endswith(", ".join(code.errata) or "–"), row
    for key in grade.diagnose.MISTAKES:
        assert f"| `{key}` |" in text


def test_running_stats_message_says_which_part():
    assert "swaps momentum" in rows(graded("running_momentum_swapped.py"))["batchnorm_forward"].message
    message = rows(graded("running_unbiased.py"))["batchnorm_forward"].message
    assert "running_var" in message and "unbiased" in message and "running_mean" not in message
    assert "ignores bn_param['momentum']" in rows(graded("running_momentum_ignored.py"))[
        "spatial_batchnorm_forward"].message
    message = rows(graded("running_not_stored.py"))["spatial_batchnorm_forward"].message
    assert "missing" in message and "batch statistics in test mode" in message


def test_one_cause_is_reported_once():
    # ddof=1 also makes the running variance unbiased: that is the same mistake, not running-stats
    assert "running" not in rows(graded("unbiased_variance.py"))["batchnorm_forward"].message
    # a backward fed by a broken forward says so
    assert "fix it first" in rows(graded("wrong_axis_spatial.py"))["spatial_batchnorm_backward"].message


def test_backward_judged_on_top_of_its_forward_s_mistake():
    result = graded("two_mistakes.py")
    assert codes(result) == {"eps-outside-sqrt", "missing-mean-term"}
    row = rows(result)["batchnorm_backward_alt"]
    assert row.diagnosis == ("missing-mean-term",)
    assert "on top of its forward's eps-outside-sqrt" in row.message
    assert "dgamma: is right for what its forward computed (eps-outside-sqrt)" in row.message


def test_running_statistics_of_shape_1_d_are_a_shape_not_a_rule():
    row = rows(graded("running_keepdims.py"))["batchnorm_forward"]
    assert row.diagnosis == ("wrong-shape",) and row.max_rel_error < 1e-9
    assert "has shape (1, 4) where (4,) belongs" in row.message and "momentum" not in row.message
    # the shape does not hide a real momentum bug: the next steps are judged from the student's values
    row = rows(graded("running_keepdims_momentum.py"))["batchnorm_forward"]
    assert "swaps momentum" in row.message and "does not follow" not in row.message
    assert "(all 3 cases)" in row.message


def test_eps_slips_say_which_eps_and_when():
    row = rows(graded("default_eps.py"))["batchnorm_forward"]
    assert "when the parameter dict has no eps" in row.message and "at most 1e-10" in row.message
    backward = rows(graded("default_eps.py"))["batchnorm_backward_alt"]
    assert backward.diagnosis == () and "right for what its forward computed (default-eps)" in backward.message
    assert "leaves ε out" in rows(graded("eps_ignored.py"))["layernorm_forward"].message
    # two slips in one forward: both named, and the default's value
    row = rows(graded("eps_outside_sqrt_default_eps.py"))["batchnorm_forward"]
    assert "√σ² + ε and uses ε = 1e-07 when the parameter dict has no eps" in row.message


def test_test_mode_affine_says_what_is_left_out():
    assert "out = x̂ + β" in rows(graded("test_mode_no_gamma.py"))["batchnorm_forward"].message
    assert "out (test mode): leaves γ and β out" in rows(graded("test_mode_no_affine.py"))["batchnorm_forward"].message
    # gamma left out in both modes is one mistake, reported once
    train = [(case, hypotheses.forward("batch", case)) for case in cases.cases("batch")]
    observations = [Observation("out", case.label, what_if["gamma-not-applied"], out, what_if)
                    for case, (out, what_if) in train]
    test_case, mean, var = cases.inference_case("batch")
    out, what_if = hypotheses.inference("batch", test_case, mean, var)
    observations.append(Observation("out (test mode)", test_case.label, what_if["test-mode:no-gamma"], out, what_if))
    verdict = diagnose(observations)
    assert verdict.codes == ("gamma-not-applied",) and not any("test mode" in d for d in verdict.details)
    assert diagnose(observations[-1:]).codes == ("test-mode-affine",)


def test_group_norm_statistics_slips_are_named():
    assert "per pixel over each group's C/G channels" in rows(graded("groupnorm_per_pixel.py"))[
        "spatial_groupnorm_forward"].message
    assert "by N·G" in rows(graded("groupnorm_count.py"))["spatial_groupnorm_forward"].message
    result = graded("groupnorm_backward_count.py")
    assert rows(result)["spatial_groupnorm_forward"].status == "pass"
    assert "m = N·G in dx" in rows(result)["spatial_groupnorm_backward"].message


def test_shown_case_is_the_one_that_tells_most():
    """At N = 2 the right dx nearly cancels, so a wrong dx is 100 % off there: not the case to show."""
    row = rows(graded("variance_term_halved.py"))["batchnorm_backward"]
    assert row.diagnosis == () and "no known mistake matches it" in row.message
    assert "case 2x3" not in row.message and "rel. error 1.0e+00" not in row.message
    assert 0.1 < row.max_rel_error < 0.5
    # the N = 2 case is wrong too, with a relative error of about 1
    n2 = cases.cases("batch")[0]
    assert n2.x.shape[0] == 2
    dx_scale = hypotheses.dx_scale("batch", n2)
    _, cache = cases.reference_forward("batch", n2.x, n2.gamma, n2.beta, n2.eps_value)
    assert np.abs(cases.reference_backward(n2.dout, cache)[0]).max() < 0.1 * dx_scale


def test_group_norm_edition_is_explained_and_a_course_can_fix_it():
    reference = rows(graded("layers.py"))
    assert "(1, C, 1, 1): the forward is right with that shape" in reference["spatial_groupnorm_forward"].message
    assert reference["spatial_groupnorm_backward"].message.endswith("; gamma/beta (1, C, 1, 1)")
    assert "(C,): the forward takes either shape and the backward returns dgamma" in rows(graded(
        "groupnorm_c_edition.py"))["spatial_groupnorm_forward"].message
    only = "spatial_groupnorm_forward,spatial_groupnorm_backward"
    forced = rows(graded("layers.py", only=only, gn_gamma_shape="C"))["spatial_groupnorm_forward"]
    assert forced.status == "error" and "wrong-shape" in forced.diagnosis
    assert "(C,) as the course sets them; the forward is right only with (1, C, 1, 1)" in forced.message
    forced = rows(graded("groupnorm_c_edition.py", only=only, gn_gamma_shape="(1, C, 1, 1)"))
    assert forced["spatial_groupnorm_forward"].status == "pass"
    assert forced["spatial_groupnorm_backward"].diagnosis == ("wrong-shape",)
    with pytest.raises(grade.UsageError, match="1,C,1,1 or C"):
        grade.grade(DATA / "layers.py", gn_gamma_shape="C,1")


def test_eps_values_the_cases_cannot_tell_apart_are_one_range():
    merged = grade.diagnose._merged_eps_values(["default-eps:0", "default-eps:1e-12", "default-eps:1e-10",
                                                "eps-outside-sqrt&default-eps:1e-07"])
    assert [key for key, _ in merged] == ["default-eps:0..1e-10", "eps-outside-sqrt&default-eps:1e-07"]
    assert grade.diagnose.mistake("eps-outside-sqrt&default-eps:1e-07").codes == ("eps-outside-sqrt", "default-eps")
    assert grade.diagnose.mistake("eps-ignored:0+none").detail == "is right for what its forward computed " \
                                                                 "(eps-ignored)"


@pytest.mark.parametrize("kind", ["batch", "layer", "spatial", "group"])
def test_normalization_slips_start_from_the_right_one(kind):
    """Every what-if of the normalization is x̂ rescaled: with the course's ε and variance it is normlab's out."""
    for case in cases.cases(kind):
        out, what_if = hypotheses.forward(kind, case)
        view = hypotheses._view(kind, case)
        assert np.allclose(hypotheses.denominator("eps-ignored:0.0001", case, view.var, view.m) ** 2,
                           view.var + 1e-4)
        if case.eps is None:  # a default of 1e-5 is the course's: the same numbers as the reference
            assert np.allclose(what_if["eps-ignored:1e-05"], out, rtol=1e-12, atol=0)
        else:
            assert np.allclose(what_if["default-eps:1e-12"], out, rtol=1e-12, atol=0)
            assert not np.allclose(what_if["eps-ignored:1e-05"], out, rtol=1e-7, atol=0)


def test_mutation_names_the_argument():
    row = rows(graded("mutates_input.py"))["batchnorm_forward"]
    assert "changes x in place" in row.message
    assert row.max_rel_error < 1e-9  # the numbers themselves are right


def test_alt_not_faster_is_a_warning():
    result = graded("alt_not_faster.py")
    assert result.speedup_alt < 1.0
    assert grade.report.exit_code(result) == 0


# ----------------------------------------------------------------------------- the student's code misbehaving

def test_exceptions_and_a_dead_worker_are_rows():
    result = graded("raises.py")
    by_name = rows(result)
    assert "NameError" in by_name["layernorm_forward"].message
    assert "raises.py:10 in layernorm_forward" in by_name["layernorm_forward"].message
    # a backward whose forward never returns a cache is not a pass
    assert by_name["layernorm_backward"].status == "error"
    assert "not checked where layernorm_forward failed" in by_name["layernorm_backward"].message
    assert by_name["spatial_batchnorm_forward"].status == "error"
    assert "exited (exit status 3" in by_name["spatial_batchnorm_forward"].message
    # the others still ran, in a fresh worker, and the student's prints did not break the exchange
    assert by_name["batchnorm_forward"].status == by_name["batchnorm_backward"].status == "pass"


def test_import_failure_is_an_error_row_per_function():
    row = rows(graded("import_error.py"))["batchnorm_forward"]
    assert "NameError" in row.message and "import_error.py:4" in row.message


def test_hang_times_out_and_leaves_no_process():
    start = time.monotonic()
    result = grade.grade(DATA / "hangs.py", timeout=0.5)
    assert time.monotonic() - start < 10  # one timeout, not one per case
    by_name = rows(result)
    assert (by_name["batchnorm_forward"].status, by_name["batchnorm_forward"].diagnosis) == ("error", ("timeout",))
    assert "no answer within 0.5 s" in by_name["batchnorm_forward"].message
    # a timeout stops that function only; layer norm ran in a fresh worker
    assert by_name["layernorm_forward"].status == by_name["layernorm_backward"].status == "pass"
    # the backward needs the stuck forward's cache: an error row, and the forward is not called again
    assert by_name["batchnorm_backward"].status == "error"
    assert "not checked where batchnorm_forward failed" in by_name["batchnorm_backward"].message


def test_a_stuck_call_s_children_go_with_the_worker():
    with Worker(DATA / "hangs.py", grade.FUNCTIONS, timeout=0.5) as worker:
        worker.loaded()
        session = worker._proc.pid  # the worker runs in its own session, and so does what it starts
        case = cases.cases("batch")[0]
        args, names = cases.forward_arguments(cases.NORMS[0], case, {"mode": "train"})
        assert worker.call("batchnorm_forward", args, names, arity=2).outcome == "timeout"
    assert _session_members(session) == []


def _session_members(session: int) -> list[int]:
    """Live processes whose session is ``session`` (field 6 of /proc/PID/stat; zombies left out)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_worker_is_restarted_after_a_timeout_and_ended_on_close():
    with Worker(DATA / "hangs.py", grade.FUNCTIONS, timeout=0.5) as worker:
        case = cases.cases("batch")[0]
        args, names = cases.forward_arguments(cases.NORMS[0], case, {"mode": "train"})
        assert worker.call("batchnorm_forward", args, names, arity=2).outcome == "timeout"
        layer = cases.NORMS[1]
        args, names = cases.forward_arguments(layer, cases.cases("layer")[0], {})
        reply = worker.call("layernorm_forward", args, names, arity=2, reply="first")
        assert reply.outcome == "ok" and reply.value.shape == (2, 5)
        assert worker.starts == 2
        proc = worker._proc
    assert proc.poll() is not None  # closed and reaped


def test_calls_just_under_the_timeout_are_bounded_in_all(tmp_path):
    """Each call stays under its timeout, so only the submission's total time can end it."""
    (tmp_path / "layers.py").write_text("import time\n\ndef layernorm_forward(x, gamma, beta, ln_param):\n"
                                        "    time.sleep(0.4)\n    return x, None\n")
    layer = cases.NORMS[1]
    args, names = cases.forward_arguments(layer, cases.cases("layer")[0], {})
    start = time.monotonic()
    with Worker(tmp_path / "layers.py", grade.FUNCTIONS, timeout=1.0,
                limits=grade.Limits(total_seconds=1.0)) as worker:
        replies = [worker.call("layernorm_forward", args, names, arity=2, reply="none") for _ in range(8)]
    outcomes = [r.outcome for r in replies]
    assert outcomes[:2] == ["ok", "ok"] and outcomes[-1] == "timeout", outcomes
    assert "taken 1 s in all" in replies[-1].error
    assert time.monotonic() - start < 4  # not 8 × 0.4 s plus starting


def test_import_that_hangs_is_bounded():
    start = time.monotonic()
    with Worker(DATA / "import_hangs.py", grade.FUNCTIONS, timeout=0.5, startup=2.0) as worker:
        loaded = worker.loaded()
        assert loaded.functions == ("batchnorm_forward",)  # read from the source, not run
        assert "no answer within 0.5 s" in loaded.error  # the start (up to 2 s) is not the import's time
        reply = worker.call("batchnorm_forward", [], [], arity=2)
        assert reply.outcome == "raised" and worker.starts == 1  # not restarted
    assert time.monotonic() - start < 6


def test_replies_are_plain_data_only():
    class Sneaky:
        def __reduce__(self):
            return (os.getpid, ())

    pickled = pickle.dumps(Sneaky())
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(protocol.HEADER.pack(len(pickled)) + pickled)
    plain = {"a": np.arange(3.0), "b": (1, 2.5, "x", None), "c": np.float64(2.0)}
    assert protocol.decode(protocol.encode(plain))["a"].tolist() == [0, 1, 2]


def test_group_norm_editions_are_both_accepted():
    classic = rows(graded("layers.py"))["spatial_groupnorm_forward"]
    assert "(1, C, 1, 1)" in classic.message
    result = graded("groupnorm_c_edition.py")
    assert [row.status for row in result.rows if row.status != "missing"] == ["pass", "pass"]
    assert "(C,)" in rows(result)["spatial_groupnorm_forward"].message


def test_partial_file_reports_the_rest_missing():
    result = graded("partial.py")
    assert {row.function for row in result.rows if row.status == "pass"} == {"layernorm_forward",
                                                                              "layernorm_backward"}
    assert all(row.status == "missing" for row in result.rows if not row.function.startswith("layernorm"))
    assert grade.report.exit_code(result) == 0


# ----------------------------------------------------------------------------- CLI and JSON

def _cli(*args):
    return CliRunner().invoke(cli, ["grade", *map(str, args)])


def test_cli_exit_codes(tmp_path):
    assert _cli(DATA / "layers.py", "--only", "layernorm_forward,spatial_groupnorm_forward").exit_code == 0
    failing = _cli(DATA / "missing_mean_term.py")
    assert failing.exit_code == 1
    assert "missing-mean-term" in failing.output and "E13" in failing.output
    for usage in ([tmp_path / "nothing.py"], [tmp_path], [DATA / "unrelated.py"],
                  [DATA / "layers.py", "--only", "batchnorm_fwd"], [DATA / "layers.py", "--timeout", "0"],
                  [DATA / "partial.py", "--only", "batchnorm_forward"],
                  [DATA / "layers.py", "--json", tmp_path / "no" / "such" / "dir.json"]):
        outcome = _cli(*usage)
        assert outcome.exit_code == 2, (usage, outcome.output)


def test_json_follows_the_schema(tmp_path):
    out = tmp_path / "grade.json"
    outcome = _cli(DATA / "missing_mean_term.py", "--json", out)
    assert outcome.exit_code == 1
    data = json.loads(out.read_text())
    assert set(data) == {"path", "checks", "speedup_alt", "notes"}
    assert data["path"] == str(DATA / "missing_mean_term.py") and data["speedup_alt"] is None
    assert [c["function"] for c in data["checks"]] == list(grade.FUNCTIONS)
    for check in data["checks"]:
        assert set(check) == {"function", "status", "max_rel_error", "diagnosis", "message"}
        assert check["status"] in {"pass", "fail", "missing", "error"}
        assert check["max_rel_error"] is None or isinstance(check["max_rel_error"], float)
        assert set(check["diagnosis"]) <= set(grade.CODES) and isinstance(check["message"], str)
    by_name = {c["function"]: c for c in data["checks"]}
    assert by_name["batchnorm_backward"]["diagnosis"] == ["missing-mean-term"]
    assert by_name["batchnorm_backward"]["max_rel_error"] > 0.1
    assert by_name["batchnorm_forward"]["status"] == "pass"


def test_nan_output_is_a_failure_and_valid_json(tmp_path):
    student = tmp_path / "layers.py"
    student.write_text("import numpy as np\n\n\ndef layernorm_forward(x, gamma, beta, ln_param):\n"
                       "    return np.full_like(x, np.nan), None\n")
    out = tmp_path / "grade.json"
    assert _cli(tmp_path, "--json", out).exit_code == 1
    check = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))["checks"][3]
    assert (check["function"], check["status"], check["max_rel_error"]) == ("layernorm_forward", "fail", None)
    assert "NaN" in check["message"]


def test_json_of_the_reference_has_a_speedup():
    data = grade.report.to_json(graded("layers.py"))
    assert isinstance(data["speedup_alt"], float) and data["speedup_alt"] > 1.1
    json.dumps(data)  # every value is JSON
