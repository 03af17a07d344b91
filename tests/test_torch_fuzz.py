"""normlab.torch against torch.nn on seeded random cases, on every route (tests/_torch_fuzz.py).

Each route runs its own cases, in child processes (a batch per process; a
process that dies is a failing case, named by running it alone): perturbed
parameters, buffers, inputs and arguments for every module and functional.
normlab raises where torch raises and matches where torch returns, except for
the conformance suite's DELIBERATE differences.
"""

import os
import shutil

import pytest

torch = pytest.importorskip("torch")

import _torch_fuzz as fuzz  # noqa: E402

CASES_PER_ROUTE = 520  # 2080 over the four routes
SEED_BASE = {"native": 0, "python": 100_000, "numpy": 200_000, "torch": 300_000}


def _native_available() -> bool:
    from normlab.torch import fused_node

    return fused_node.load() is not None


@pytest.mark.parametrize("route", list(fuzz.ROUTES))
def test_normlab_behaves_as_torch_nn_on_seeded_cases(route):
    if route == "native" and not _native_available():
        if os.environ.get("NORMLAB_NATIVE") == "0" or shutil.which("c++") is None:
            pytest.skip("the native node is switched off (NORMLAB_NATIVE=0) or there is no C++ compiler")
        pytest.fail("the native node did not build although a C++ compiler is here (see the warning)")
    base = SEED_BASE[route]
    cases = [fuzz.make_case(seed) for seed in range(base, base + CASES_PER_ROUTE)]
    failures = fuzz.run_in_children(route, cases)
    report = "\n".join(f"seed {cases[i]['seed']} ({cases[i]['target']}, {cases[i]['dtype']}, "
                       f"{cases[i]['perturb']}, edit {cases[i]['edit']}): {'; '.join(p)}"
                       for i, p in sorted(failures.items()))
    assert not failures, (f"{len(failures)} of {len(cases)} cases differ from torch.nn on route {route} "
                          f"(rerun one: python tests/_torch_fuzz.py --route {route} --seeds S:S+1 -v):\n{report}")
