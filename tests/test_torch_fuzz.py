"""normlab.torch against torch.nn on found and seeded random cases, on every route (tests/_torch_fuzz.py).

Each route runs the cases found by hand (``FOUND_CASES``, by name) and its own
seeded cases, in child processes (a batch per process; a process that dies is
a failing case, named by running it alone): perturbed parameters, buffers,
inputs and arguments for every module and functional. normlab raises where
torch raises (leaving its state as it was) and matches where torch returns,
except for the conformance suite's DELIBERATE differences.
"""

import pytest

torch = pytest.importorskip("torch")

import _torch_fuzz as fuzz  # noqa: E402
from _native import node_or_skip  # noqa: E402

CASES_PER_ROUTE = 520  # 2080 over the four routes
SEED_BASE = {"native": 0, "python": 100_000, "numpy": 200_000, "torch": 300_000}


@pytest.mark.parametrize("route", list(fuzz.ROUTES))
def test_normlab_behaves_as_torch_nn_on_found_and_seeded_cases(route):
    if route == "native":
        node_or_skip()
    base, names = SEED_BASE[route], list(fuzz.FOUND_CASES)
    cases = [fuzz.complete(fuzz.FOUND_CASES[name]) for name in names]
    cases += [fuzz.make_case(seed) for seed in range(base, base + CASES_PER_ROUTE)]

    def named(i: int) -> str:
        if i < len(names):
            return f"{names[i]} ({fuzz.describe(cases[i])})"
        case = cases[i]
        return f"seed {case['seed']} ({case['target']}, {case['dtype']}, {case['perturb']}, edit {case['edit']})"
    failures = fuzz.run_in_children(route, cases)
    report = "\n".join(f"{named(i)}: {'; '.join(p)}" for i, p in sorted(failures.items()))
    assert not failures, (f"{len(failures)} of {len(cases)} cases differ from torch.nn on route {route} (rerun "
                          f"one: python tests/_torch_fuzz.py --route {route} --seeds S:S+1 -v; a found one: "
                          f"echo '[CASE]' | python tests/_torch_fuzz.py --route {route} --cases - -v):\n{report}")
