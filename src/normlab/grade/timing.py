"""batchnorm_backward_alt timed against batchnorm_backward, in the worker.

Both run on one cache of the student's forward, in turn (so a burst of load
from elsewhere hits both alike), and each call is timed inside the worker
around the call alone; the speedup is the ratio of the medians.
"""

from __future__ import annotations

import statistics

import numpy as np

from .cases import EPS, NORMS, forward_arguments, make_case, param_dict
from .runner import Handle, Worker

#: The course's shape, then a larger one.
SHAPES = ((100, 500), (500, 2000))
RUNS = 7
#: Below this speedup at every shape, alt-not-faster is reported (a warning).
MIN_SPEEDUP = 1.1
#: Seconds the timed runs of one shape may take; slow functions get fewer runs.
BUDGET_S = 10.0


def speedups(worker: Worker) -> tuple[dict[str, float], str | None]:
    """{shape label: median(backward) / median(alt)}, and the reason when it could not be measured."""
    norm = NORMS[0]
    backward, alt = norm.backwards
    rng = np.random.default_rng(5)
    result = {}
    for shape in SHAPES:
        case = make_case(rng, shape, eps=EPS)
        args, names = forward_arguments(norm, case, param_dict(norm, case))
        reply = worker.call(norm.forward, args, names, arity=2, keep="timing", reply="none")
        if reply.outcome != "ok":
            return result, f"timing at {case.label}: {norm.forward}: {reply.error}"
        times = {backward: [], alt: []}
        run, runs = 0, 1 + RUNS  # the first round warms up
        while run < runs:
            for function in (backward, alt):
                reply = worker.call(function, [case.dout, Handle("timing")], ["dout", "cache"], arity=3, reply="none")
                if reply.outcome != "ok":
                    return result, f"timing at {case.label}: {function}: {reply.error}"
                times[function].append(reply.seconds)
            if run == 0:  # loops over elements can take seconds a call: fewer runs then
                runs = 1 + min(RUNS, max(1, int(BUDGET_S / (times[backward][0] + times[alt][0]))))
            run += 1
        result[case.label] = statistics.median(times[backward][1:]) / statistics.median(times[alt][1:])
    return result, None


def describe(result: dict[str, float]) -> str:
    return ", ".join(f"{value:.2f}x at {label}" for label, value in result.items())
