"""Check each of a student's functions through a worker and turn the evidence into a row.

Forward: every case in train mode; for batch and spatial batch norm also the
running statistics over several steps and a test-mode call. Backward: per case
the student's own forward (its cache stays in the worker), then the backward.
Every call watches x, gamma, beta and dout for in-place changes. A function
that times out is not called again.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import hypotheses
from ..gradcheck import rel_error
from .cases import (EDITIONS, MOMENTUM, NORMS, RUNNING_MOMENTUM, RUNNING_STEPS, Case, Norm, cases,
                    forward_arguments, inference_case, param_dict, param_shape, reference_forward, running_cases)
from .diagnose import CODES, PASS_TOL, Observation, diagnose
from .runner import Handle, Reply, Worker

WATCH = ("x", "gamma", "beta", "dout")


class Row(NamedTuple):
    """One function's result. status: "pass", "fail", "missing" or "error"."""

    function: str
    status: str
    max_rel_error: float | None
    diagnosis: tuple[str, ...]
    message: str
    speedup: dict | None = None  # batchnorm_backward_alt: {shape label: speedup}
    hypotheses: tuple[str, ...] = ()  # the hypotheses that explain the numbers (a backward builds on its forward's)


class Trouble:
    """What went wrong with the calls themselves: exceptions, timeouts, odd returns, in-place changes.

    The same trouble in several cases is one line with a count and the first case.
    """

    def __init__(self):
        self._seen: dict[tuple[str, str], list[str]] = {}  # (code, what) -> cases
        self.stopped = False  # a timeout or a dead worker: the function is not called again

    def _add(self, code: str, what: str, case: str) -> None:
        self._seen.setdefault((code, what), []).append(case)

    def note(self, function: str, reply: Reply, case: str) -> bool:
        """Record the reply's trouble; True when the call returned values to look at."""
        for name in reply.mutated:
            self._add("mutates-input", f"{function} changes {name} in place", case)
        if reply.outcome == "ok":
            return True
        code = {"timeout": "timeout", "bad-return": "wrong-shape"}.get(reply.outcome, "raises")
        self.stopped |= reply.outcome in ("timeout", "died")
        self._add(code, f"{function}: {reply.error}", case)
        return False

    @property
    def codes(self) -> list[str]:
        return list(dict.fromkeys(code for code, _ in self._seen))

    @property
    def lines(self) -> list[str]:
        return [f"{what} ({'case ' + cases[0] if len(cases) == 1 else f'{len(cases)} cases, first {cases[0]}'})"
                for (_, what), cases in self._seen.items()]

    @property
    def error(self) -> bool:
        return any(c in ("raises", "timeout") for c in self.codes)


def as_array(value):
    """The student's value as a float64 array, or as it was when it is not numeric."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.astype(np.float64)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.asarray(value, dtype=np.float64)
    return value


def make_row(function: str, observations, trouble: Trouble, summary: str, extra_lines=(), notes=()) -> Row:
    """The row from the observations and the calls' trouble; notes: lines said in every message."""
    verdict = diagnose(observations)
    codes = [c for c in CODES if c in verdict.codes or c in trouble.codes]
    lines = list(trouble.lines) + list(verdict.details) + list(extra_lines)
    if trouble.error or not (observations or trouble.codes):  # nothing could be compared: not a pass
        status = "error"
    elif verdict.failed or any(not CODES[c].warning for c in codes):
        status = "fail"
    else:
        status = "pass"
    message = "; ".join(lines or [summary]) + "".join(f"; {note}" for note in notes)
    return Row(function, status, verdict.max_rel_error, tuple(codes), message, hypotheses=verdict.keys)


# ----------------------------------------------------------------------------- forward

def _train_observations(worker: Worker, norm: Norm, edition, trouble: Trouble) -> list[Observation]:
    observations = []
    for case in cases(norm.kind):
        if trouble.stopped:
            break
        args, names = forward_arguments(norm, case, param_dict(norm, case), edition)
        reply = worker.call(norm.forward, args, names, arity=2, reply="first", watch=WATCH)
        if trouble.note(norm.forward, reply, case.label):
            want, what_if = hypotheses.forward(norm.kind, case)
            observations.append(Observation("out", case.label, as_array(reply.value), want, what_if))
    return observations


def _running_observations(worker: Worker, norm: Norm, trouble: Trouble) -> list[Observation]:
    """Train steps from a fresh bn_param, each judged from the running values the student held before it."""
    momentum = RUNNING_MOMENTUM[norm.kind]
    observations, param = [], {"mode": "train"} if momentum is None else {"mode": "train", "momentum": momentum}
    steps = running_cases(norm.kind)
    c = steps[0].x.shape[1]
    prev = {"running_mean": np.zeros(c), "running_var": np.zeros(c)}  # the course's initial values
    for case in steps:
        if trouble.stopped:
            break
        args, names = forward_arguments(norm, case, param)
        reply = worker.call(norm.forward, args, names, arity=2, reply="none", watch=WATCH, send_back=(norm.param,))
        if not trouble.note(norm.forward, reply, case.label):
            break
        param = dict(reply.dicts.get(norm.param, {}), mode="train")
        expected = hypotheses.running(norm.kind, case.x, prev["running_mean"], prev["running_var"],
                                      MOMENTUM if momentum is None else momentum)
        for key, (want, what_if) in expected.items():
            got = as_array(param.get(key))
            observations.append(Observation(f"bn_param['{key}']", case.label, got, want, what_if, "running:off"))
            # the next step is judged from the student's own value when it is usable (kept dims aside)
            usable = isinstance(got, np.ndarray) and got.size == want.size
            prev[key] = got.reshape(want.shape) if usable else want
    return observations


def _test_mode_observations(worker: Worker, norm: Norm, trouble: Trouble) -> list[Observation]:
    if trouble.stopped:
        return []
    case, mean, var = inference_case(norm.kind)
    param = dict(param_dict(norm, case, "test"), running_mean=mean.copy(), running_var=var.copy())
    args, names = forward_arguments(norm, case, param)
    reply = worker.call(norm.forward, args, names, arity=2, reply="first", watch=WATCH, send_back=(norm.param,))
    if not trouble.note(norm.forward, reply, "test mode"):
        return []
    want, what_if = hypotheses.inference(norm.kind, case, mean, var)
    after = reply.dicts.get(norm.param, {})
    return [Observation("out (test mode)", case.label, as_array(reply.value), want, what_if),
            Observation("bn_param['running_mean'] (test mode)", case.label, as_array(after.get("running_mean")),
                        mean, {}, "running:test-changes"),
            Observation("bn_param['running_var'] (test mode)", case.label, as_array(after.get("running_var")),
                        var, {}, "running:test-changes")]


class Edition(NamedTuple):
    """Group norm's gamma/beta shape as passed to the student, and why it was chosen."""

    shape: str                  # a key of EDITIONS
    reason: str
    works_only_in: str | None = None  # a course's edition the forward fails, where the other one works


def check_forward(worker: Worker, norm: Norm, edition: Edition | None) -> Row:
    trouble = Trouble()
    observations = _train_observations(worker, norm, edition and edition.shape, trouble)
    summary = f"{len(observations)} cases in train mode"
    if norm.running:
        observations += _running_observations(worker, norm, trouble)
        observations += _test_mode_observations(worker, norm, trouble)
        summary += f", running statistics over {RUNNING_STEPS} steps, test mode"
    row = make_row(norm.forward, observations, trouble, summary, notes=_edition_notes(norm, edition))
    if edition is not None and edition.works_only_in is not None:
        codes = tuple(c for c in CODES if c in row.diagnosis or c == "wrong-shape")
        row = row._replace(status="error" if row.status == "error" else "fail", diagnosis=codes)
    return row


def _edition_notes(norm: Norm, edition: Edition | None, why: bool = True) -> tuple[str, ...]:
    """Group norm's gamma/beta shape for the message; why: with the reason (the forward's row says it)."""
    if norm.kind != "group" or edition is None:
        return ()
    return (edition.reason if why else f"gamma/beta {edition.shape}",)


# ----------------------------------------------------------------------------- backward

def backward_observations(worker: Worker, norm: Norm, function: str, edition, trouble: Trouble,
                          forward_keys=()):
    """Student's forward then ``function`` on every case. Returns (observations, cases the forward failed).

    forward_keys: the hypotheses that explain the forward whose cache the backward is fed (see
    hypotheses.backward).
    """
    observations, forward_failed = [], []
    for case in cases(norm.kind):
        if trouble.stopped:
            break
        args, names = forward_arguments(norm, case, param_dict(norm, case), edition)
        reply = worker.call(norm.forward, args, names, arity=2, keep="cache", reply="none")
        if reply.outcome != "ok":
            forward_failed.append(f"{case.label}: {reply.error}")
            continue
        reply = worker.call(function, [case.dout, Handle("cache")], ["dout", "cache"], arity=3, watch=WATCH)
        if not trouble.note(function, reply, case.label):
            continue
        shape = param_shape(norm, case.x.shape[1], edition)
        expected = hypotheses.backward(norm.kind, case, forward_keys)
        for (quantity, (want, what_if)), got in zip(expected.items(), reply.value):
            scale = None
            if quantity == "dx":
                scale = hypotheses.dx_scale(norm.kind, case)
            else:  # dgamma/dbeta come back in gamma's shape
                want = want.reshape(shape)
            observations.append(Observation(quantity, case.label, as_array(got), want, what_if, scale=scale))
    return observations, forward_failed


def check_backward(worker: Worker, norm: Norm, function: str, edition: Edition | None, forward_row: Row | None) -> Row:
    if forward_row is None or forward_row.status == "missing":
        return Row(function, "error", None, (), f"not checked: {norm.forward} is needed for its cache")
    trouble = Trouble()
    observations, forward_failed = backward_observations(worker, norm, function, edition and edition.shape,
                                                         trouble, forward_row.hypotheses)
    extra = []
    if forward_failed:
        extra.append(f"not checked where {norm.forward} failed ({len(forward_failed)} cases, first "
                     f"{forward_failed[0]})")
    if forward_row.status == "fail" and diagnose(observations).failed:
        extra.append(f"{norm.forward} fails too and its cache feeds this backward: fix it first")
    return make_row(function, observations, trouble, f"{len(observations) // 3} cases", extra,
                    notes=_edition_notes(norm, edition, why=False))


# ----------------------------------------------------------------------------- group norm's edition

def _edition_score(worker: Worker, norm: Norm, case: Case, edition: str) -> float:
    """Lower is better: 0 right, 1 + error for wrong numbers, 3 for no usable output."""
    args, names = forward_arguments(norm, case, param_dict(norm, case), edition)
    reply = worker.call(norm.forward, args, names, arity=2, reply="first")
    out = as_array(reply.value) if reply.outcome == "ok" else None
    want = reference_forward(norm.kind, case.x, case.gamma, case.beta, case.eps_value, case.groups)[0]
    if not isinstance(out, np.ndarray) or out.shape != want.shape:
        return 3.0
    error = rel_error(out, want)
    return 0.0 if error <= PASS_TOL else 1.0 + min(error, 1.0)


def _dgamma_fits(worker: Worker, norm: Norm, case: Case, edition: str, backward: str) -> bool:
    args, names = forward_arguments(norm, case, param_dict(norm, case), edition)
    if worker.call(norm.forward, args, names, arity=2, keep="cache", reply="none").outcome != "ok":
        return False
    reply = worker.call(backward, [case.dout, Handle("cache")], ["dout", "cache"], arity=3)
    shape = param_shape(norm, case.x.shape[1], edition)
    return reply.outcome == "ok" and np.shape(reply.value[1]) == shape


def group_edition(worker: Worker, functions, course: str | None = None) -> Edition:
    """Which gamma/beta shape the student's group norm is given, and why.

    course: the edition a course fixes (a key of EDITIONS). Otherwise the one the forward gets right
    on the first case; when both work (a forward that reshapes gamma), the one whose backward returns
    dgamma in gamma's shape; when neither does, the first.
    """
    norm = NORMS[3]
    editions = list(EDITIONS)
    if norm.forward not in functions:
        return Edition(course or editions[0], "")
    case = cases("group")[0]
    scores = {e: _edition_score(worker, norm, case, e) for e in editions}
    right = [e for e in editions if scores[e] == 0.0]
    if course is not None:
        other = next(e for e in editions if e != course)
        if scores[course] > 0.0 and scores[other] == 0.0:
            return Edition(course, f"gamma/beta {course} as the course sets them; the forward is right only with "
                                   f"{other}", works_only_in=course)
        return Edition(course, f"gamma/beta {course} as the course sets them")
    if len(right) == 1:
        return Edition(right[0], f"gamma/beta {right[0]}: the forward is right with that shape, not with the other "
                                 "(a course fixes it with --gn-gamma-shape)")
    if not right:
        best = min(editions, key=lambda e: scores[e])
        why = "comes closer with this one" if len(set(scores.values())) > 1 else "this one is the first edition's"
        return Edition(best, f"gamma/beta {best}: the forward is right with neither shape and {why} (a course "
                             "fixes it with --gn-gamma-shape)")
    backward = norm.backwards[0]
    fits = [e for e in editions if backward in functions and _dgamma_fits(worker, norm, case, e, backward)]
    if len(fits) == 1:
        return Edition(fits[0], f"gamma/beta {fits[0]}: the forward takes either shape and the backward returns "
                                "dgamma in this one")
    return Edition(editions[0], f"gamma/beta {editions[0]}: the forward takes either shape")
