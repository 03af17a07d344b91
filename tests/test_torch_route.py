"""normlab.torch's one route: bad input raises as torch.nn's does on every route, with the state untouched.

The cases found by trying the bridge as a user would (a perturbed parameter or
buffer of a module, against torch.nn) run through tests/_torch_fuzz.py's
comparison, in child processes (some of them used to crash the process), on the
native route and on the route a machine without a C++ compiler takes. The
cases a code read found are tests of their own below.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

import _torch_fuzz as fuzz  # noqa: E402
import normlab.torch as nt  # noqa: E402
from normlab.torch import fused_node, route as routes  # noqa: E402

BN = {"target": "BatchNorm1d", "shape": [8, 4]}
ISSUE_CASES = {
    "meta weight": {**BN, "perturb": [["weight", "meta", 0]]},
    "meta bias": {**BN, "perturb": [["bias", "meta", 0]]},
    "meta bias of layer_norm": {"target": "layer_norm", "shape": [3, 2], "perturb": [["bias", "meta", 0]]},
    "3-element weight": {**BN, "perturb": [["weight", "numel", 3]]},
    "3-element bias, eval": {**BN, "training": False, "perturb": [["bias", "numel", 3]]},
    "1000-element running_mean": {**BN, "perturb": [["running_mean", "numel", 1000]]},
    "2-element running statistics": {**BN, "perturb": [["running_mean", "numel", 2], ["running_var", "numel", 2]]},
    "2-element running statistics, eval": {**BN, "training": False, "perturb": [["running_mean", "numel", 2],
                                                                                 ["running_var", "numel", 2]]},
    "float64 weight": {**BN, "perturb": [["weight", "dtype", "float64"]]},
    "float64 running_var": {**BN, "perturb": [["running_var", "dtype", "float64"]]},
    "float32 running_var of a float64 module": {**BN, "dtype": "float64",
                                                "perturb": [["running_var", "dtype", "float32"]]},
    "2-d weight": {**BN, "perturb": [["weight", "2d", 0]]},
    "(16.0,) after (16,)": {"target": "layer_norm", "shape": [3, 16], "warm": True,
                            "perturb": [["scalar", "shape_form", "float"]]},
    "(True,) after (1,)": {"target": "rms_norm", "shape": [3, 1], "warm": True,
                           "perturb": [["scalar", "shape_form", "bool"]]},
    "eps=True": {"target": "layer_norm", "shape": [3, 4], "perturb": [["scalar", "eps", True]]},
    "eps=True after eps=1": {"target": "layer_norm", "shape": [3, 4], "warm": [["scalar", "eps", 1]],
                             "perturb": [["scalar", "eps", True]]},
    "eps=True on a module": {**BN, "perturb": [["scalar", "eps", True]]},
}


def _native_or_skip():
    if fused_node.load() is None:
        if os.environ.get("NORMLAB_NATIVE") == "0" or shutil.which("c++") is None:
            pytest.skip("the native node is switched off (NORMLAB_NATIVE=0) or there is no C++ compiler")
        pytest.fail("the native node did not build although a C++ compiler is here (see the warning)")


@pytest.mark.parametrize("route", ["native", "python"])
def test_the_cases_of_issue_24_behave_as_torch_nn(route):
    if route == "native":
        _native_or_skip()
    names = list(ISSUE_CASES)
    cases = [fuzz.complete(ISSUE_CASES[name]) for name in names]
    failures = fuzz.run_in_children(route, cases)
    assert not failures, "\n".join(f"{names[i]}: {'; '.join(p)}" for i, p in sorted(failures.items()))


@pytest.fixture(params=["native", "core"])
def eager_route(request, monkeypatch):
    if request.param == "core":
        monkeypatch.setattr(fused_node, "load", lambda: None)
    else:
        _native_or_skip()
    routes.clear_plans()
    yield request.param
    routes.clear_plans()


def test_a_refused_call_leaves_the_running_statistics_and_the_count(eager_route):
    """Every check runs before any state changes: a wrong-size weight or bias, a 2-d weight, on every route."""
    for name, value in [("weight", torch.ones(3)), ("bias", torch.zeros(5)), ("weight", torch.ones(1, 4))]:
        bn = nt.BatchNorm1d(4)
        setattr(bn, name, torch.nn.Parameter(value))
        with pytest.raises(ValueError, match=f"{name} must have shape"):
            bn(torch.randn(8, 4))
        assert bn.num_batches_tracked == 0 and bn.running_mean.eq(0).all() and bn.running_var.eq(1).all()


def test_statistics_returned_by_normalize_cannot_be_edited_into_the_backward(eager_route):
    """They are views of what the backward reads: an in-place edit is refused there, as torch refuses one of
    its saved statistics, instead of silently changing the gradients."""
    spec = nt.functions.Spec("batch", (), 1e-5, "auto")
    x = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    out, mean, var, invstd = nt.functions.normalize(x, None, None, spec)
    assert mean.shape == var.shape == invstd.shape == (4,)
    torch.testing.assert_close(mean, x.detach().mean(0))
    invstd.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward(torch.randn_like(out))


def test_a_synchronized_batch_refuses_an_inference_count_before_any_buffer_changes(monkeypatch):
    """SyncBatchNorm's running statistics change after every check, as BatchNorm's: an inference-mode
    num_batches_tracked outside inference mode is refused with the buffers as they were."""
    with torch.inference_mode():
        bn = nt.SyncBatchNorm(3)
    monkeypatch.setattr(nt.SyncBatchNorm, "_synchronizes", lambda self: True)  # one process: the collectives
    with pytest.raises(RuntimeError, match="[Ii]nference"):                    # find no group, as with one rank
        bn(torch.randn(6, 3))
    assert bn.num_batches_tracked == 0 and bn.running_mean.eq(0).all() and bn.running_var.eq(1).all()
    with torch.inference_mode():
        bn(torch.randn(6, 3))
    assert bn.num_batches_tracked == 1 and bn.running_mean.ne(0).all()


def test_the_native_node_refuses_running_statistics_of_two_dtypes():
    """The node picks its running-statistics rule by one dtype: two would have one of them read as the other."""
    _native_or_skip()
    from normlab.torch import fused

    plan = fused.plan_for("batch", (8, 4), (), torch.float32, "auto")
    with pytest.raises(RuntimeError, match="of one dtype"):
        fused_node.load().fused_norm(torch.randn(8, 4), None, None, None, None, torch.zeros(4),
                                     torch.ones(4, dtype=torch.float64), None, 0.1, 1e-5, plan.native)


THREADS = textwrap.dedent("""
    import threading, sys, torch, numba
    import normlab.torch as nt
    torch.set_num_threads(1)

    def train(seed, out):
        g = torch.Generator().manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(16, 512), nt.BatchNorm1d(512), torch.nn.ReLU(),
                                    nt.LayerNorm(512), torch.nn.Linear(512, 4)).double()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(12):
            x = torch.randn(96, 16, generator=g, dtype=torch.float64)
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[seed] = [t.detach().clone() for t in model.state_dict().values()]

    alone = {}
    for seed in (1, 2):
        train(seed, alone)
    together = {}
    threads = [threading.Thread(target=train, args=(seed, together)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    same = all(torch.equal(a, b) for seed in (1, 2) for a, b in zip(alone[seed], together[seed]))
    print(numba.threading_layer(), "same" if same else "differ")
""")


def _layers() -> list[str]:
    """Numba's threading layers that load here."""
    found = []
    for layer, module in (("omp", "omppool"), ("tbb", "tbbpool"), ("workqueue", "workqueue")):
        try:
            __import__(f"numba.np.ufunc.{module}")
        except ImportError:
            continue
        found.append(layer)
    return found


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "core"])
@pytest.mark.parametrize("layer", _layers())
def test_two_threads_training_two_models_get_the_results_of_sequential_training(layer, native):
    """Models big enough for the parallel kernels, trained in two Python threads at once (the native node
    releases the GIL while its kernels run): the same weights and statistics as one after the other, under
    each threading layer (workqueue's pool takes one launch at a time: the kernels hold a lock there)."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer, "NUMBA_NUM_THREADS": "2", "NORMLAB_NATIVE": native}
    proc = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [layer, "same"], proc.stdout + proc.stderr[-2000:]


def test_the_first_build_runs_once_however_many_threads_ask(monkeypatch):
    """Threads that ask for the node at once wait for one build (which alone sets PATH for ninja)."""
    import threading
    import time

    builds = []

    def slow_build():
        builds.append(threading.get_ident())
        time.sleep(0.2)
        return "node"
    monkeypatch.setattr(fused_node, "_loaded", fused_node._UNSET)
    monkeypatch.setattr(fused_node, "build", slow_build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(fused_node.load())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["node"] * 4 and len(builds) == 1


def test_the_native_and_the_python_signature_tell_the_same_calls_apart():
    """The plan cache's key: the node's encoding (where it is built) and route._signature (elsewhere) must
    distinguish exactly the same tensors: class, layout, dtype, device, contiguity, requires_grad, sizes."""
    _native_or_skip()
    node = fused_node.load()
    with torch.inference_mode():
        inference = torch.randn(4)
    variants = [None, torch.randn(4), torch.randn(4, dtype=torch.float64), torch.randn(5), torch.randn(2, 2),
                torch.randn(8)[::2], torch.randn(4, requires_grad=True), torch.nn.Parameter(torch.randn(4)),
                torch.nn.Parameter(torch.randn(4), requires_grad=False), torch.randn(4, device="meta"),
                torch.randn(4).to_sparse(), torch.randn(1, 4).expand(3, 4), torch.randn(3, 4), inference,
                torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last), torch.randn(2, 3, 4, 5),
                torch.zeros((), dtype=torch.int64), torch.zeros(1, dtype=torch.int64)]
    for a in variants:
        for b in variants:
            same_python = routes._signature(a) == routes._signature(b)
            same_native = node.signature(a) == node.signature(b)
            assert same_python == same_native, (a, b)

    class Tagged(torch.Tensor):
        pass
    assert node.signature(torch.randn(4).as_subclass(Tagged)) is None  # (keyed in Python, class and all)
