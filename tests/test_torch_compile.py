"""normlab.torch compiled (inductor, fullgraph, dynamic shapes): every norm against the eager core on the
README's numerics cases, and against torch.nn compiled on ordinary data.

Compiles are slow, so each test compiles one function that runs every norm
(batch 2-d and 4-d, layer, group, instance, RMS) and calls it at two shapes:
the second must reuse the first graph. Each statistic of the numerics inputs
is one of the README's cases (float32 10**6 + N(0, 1), [f32max, f32max,
f32max, -f32max], constant), so one float32 call covers them all.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

import normlab.torch as nt  # noqa: E402
from normlab.torch import ops  # noqa: E402

F32MAX = float(np.finfo(np.float32).max)
WIDTH = 256  # layer and RMS norm's normalized size (fixed: a module's parameters fix it)


def _norms(lib):
    """f(xs, params) -> the six norms' outputs, through ``lib`` (normlab.torch or torch.nn.functional)."""
    def run(xs, params):
        # eps and momentum as constants: dynamic=True makes a function's float defaults symbols, which the
        # argument checks then specialize (a second trace of the whole function, here a minute of compiling)
        p = params
        return (lib.batch_norm(xs[0], None, None, p[0], p[1], True, 0.1, 1e-5),
                lib.batch_norm(xs[1], None, None, p[2], p[3], True, 0.1, 1e-5),
                lib.layer_norm(xs[2], (WIDTH,), p[4], p[5], 1e-5),
                lib.group_norm(xs[3], 2, p[6], p[7], 1e-5),
                lib.instance_norm(xs[4], None, None, p[8], p[9], True, 0.1, 1e-5),
                lib.rms_norm(xs[5], (WIDTH,), p[10], 1e-6))
    return run


def _compiled(lib, backend="inductor"):
    counter = CompileCounterWithBackend(backend)
    return torch.compile(_norms(lib), backend=counter, fullgraph=True, dynamic=True), counter


def _cases(m: int, gen) -> torch.Tensor:
    """(3, m) float32: a row per README case, m (a multiple of 8) values each."""
    offset = 1e6 + torch.randn(m, generator=gen, dtype=torch.float64)
    extreme = torch.tensor([F32MAX, F32MAX, F32MAX, -F32MAX], dtype=torch.float64).repeat(m // 4)
    return torch.stack([offset, extreme, torch.full((m,), 7.25, dtype=torch.float64)]).float()


def _numerics_inputs(m: int, copies: int, gen):
    """Inputs whose every statistic's data is one case's: channels (batch norm), samples (the others)."""
    rows = _cases(m, gen)
    per_sample = _cases(WIDTH, gen).repeat(copies, 1)  # (3*copies, WIDTH)
    return [rows.T.contiguous(),  # batch (m, 3): a column per case
            rows.reshape(3, m // 8, 2, 4).permute(1, 0, 2, 3).contiguous(),  # (m/8, 3, 2, 4)
            per_sample,  # layer (3*copies, WIDTH): a row per case
            per_sample.reshape(-1, 4, WIDTH // 4),  # group: each (sample, group) one case
            per_sample.reshape(-1, 4, WIDTH // 4),  # instance: each (sample, channel) one case
            per_sample]  # rms


#: each norm's weight and bias sizes (RMS norm has no bias), in ``_norms``'s order
PARAM_SIZES = (3, 3, 3, 3, WIDTH, WIDTH, 4, 4, 4, 4, WIDTH)


def _params(dtype, gen):
    return [torch.randn(c, generator=gen, dtype=torch.float64).to(dtype) for c in PARAM_SIZES]


def _leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _forward_backward(fn, xs, params, douts):
    """Outputs, and gradients of sum(out * dout) by inputs and parameters, of fn(xs, params)."""
    xs, params = _leaves(xs), _leaves(params)
    outs = fn(xs, params)
    grads = torch.autograd.grad(sum((o * d).sum() for o, d in zip(outs, douts)), xs + params)
    return [o.detach() for o in outs], grads


class _CoreCalls:
    """Counts calls of the core's operators (``normlab::normalize`` and its backward) while active."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in ("core_forward", "backward_from_tensors"):
            original = getattr(ops, name)
            monkeypatch.setattr(ops, name, self._counting(original))

    def _counting(self, original):
        def call(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)
        return call


def _rounding_bound(ref: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One rounding of a float64 result to float32, plus float64 noise relative to ``scale``."""
    return np.finfo(np.float32).eps / 2 * ref.abs() + 1e-12 * scale + 2 * float(np.finfo(np.float32).smallest_subnormal)


def test_compiled_norms_keep_the_core_numerics(monkeypatch):
    """float32 at 10**6 offsets within the README's 2.1e-7, f32max to the ±sqrt(3) patterns, constant input to
    beta: compiled outputs and gradients against the eager core in float64 (the same values), at two shapes
    with one graph, and no call of the core's operators inside it (inductor runs the decomposition)."""
    gen = torch.Generator().manual_seed(0)
    compiled, counter = _compiled(nt)
    eager = _norms(nt)
    core = _CoreCalls(monkeypatch)
    for m, copies in ((1024, 2), (512, 3)):  # (not 1 copy: 3 rows would equal 3 channels, a guard)
        xs, params = _numerics_inputs(m, copies, gen), _params(torch.float32, gen)
        douts = [torch.randn(x.shape, generator=gen) for x in xs]
        core.count = 0
        outs, grads = _forward_backward(compiled, xs, params, douts)
        assert core.count == 0, "the compiled graph called the core's operator"
        ref_outs, ref_grads = _forward_backward(eager, [x.double() for x in xs],
                                                [p.double() for p in params],
                                                [d.double() for d in douts])
        for name, out, ref in zip(("batch", "batch4d", "layer", "group", "instance", "rms"), outs, ref_outs):
            assert out.dtype == torch.float32 and out.shape == ref.shape, name
            err = (out.double() - ref).abs()
            assert torch.all(err <= _rounding_bound(ref, ref.abs().max())), (name, err.max())
        # The README's cases by name: batch norm's columns are the three cases.
        w, b = params[0:2]
        offset, extreme, constant = outs[0].T
        assert (offset.double() - ref_outs[0].T[0]).abs().max() <= 2.1e-7
        root3 = 3 ** 0.5  # [f32max, f32max, f32max, -f32max]: mean f32max/2, std f32max*sqrt(3)/2
        pattern = torch.tensor([1 / root3, 1 / root3, 1 / root3, -root3], dtype=torch.float64).repeat(m // 4)
        torch.testing.assert_close(extreme.double(), (pattern * float(w[1]) + float(b[1])).float().double(),
                                   rtol=2e-7, atol=0)
        assert torch.all(constant == b[2]), "a constant column gives beta exactly"
        for grad, ref in zip(grads, ref_grads):
            assert torch.isfinite(grad).all()
            err = (grad.double() - ref).abs()
            assert torch.all(err <= _rounding_bound(ref, ref.abs().max() * m)), err.max()
    assert counter.frame_count == 1, f"{counter.frame_count} graphs for two shapes"


def test_compiled_norms_match_compiled_torch_nn():
    """Ordinary float64 data, training mode: outputs and input and parameter gradients against
    torch.nn.functional compiled with its decompositions (AOTAutograd; inductor's C++ would add a minute of
    compiling, not another oracle), at two shapes."""
    gen = torch.Generator().manual_seed(1)
    (ours, our_count), (theirs, their_count) = _compiled(nt), _compiled(F, "aot_eager")
    for n, length in ((6, 5), (3, 7)):
        xs = [torch.randn(s, generator=gen, dtype=torch.float64) * 3 + 1 for s in
              ((n * 4, 3), (n, 3, length, 2), (n, WIDTH), (n, 4, length), (n, 4, length), (n, 2, WIDTH))]
        params = _params(torch.float64, gen)
        douts = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in xs]
        outs, grads = _forward_backward(ours, xs, params, douts)
        ref_outs, ref_grads = _forward_backward(theirs, xs, params, douts)
        for k, (out, ref) in enumerate(zip(outs, ref_outs)):
            torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-11, msg=f"output {k}")
        for k, (grad, ref) in enumerate(zip(grads, ref_grads)):
            torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-11, msg=f"gradient {k}")
    assert our_count.frame_count == their_count.frame_count == 1


@pytest.fixture
def restore_compute_dtype():
    previous = nt.set_compute_dtype(torch.float64)
    yield
    nt.set_compute_dtype(previous)


def test_float32_arithmetic_is_an_explicit_option_and_recompiles(restore_compute_dtype):
    """set_compute_dtype(torch.float32) trades the README's numerics for float32 arithmetic in the graph: at
    10**6 offsets the output then moves off the float64 result (0.006 here; torch.nn's float32 is off 0.03), a
    compiled function recompiles rather than reuse the float64 graph, and the float64 graph serves again once
    the default is back. float64 input stays float64 whatever the setting."""
    gen = torch.Generator().manual_seed(2)
    x = (1e6 + torch.randn(1024, 3, generator=gen, dtype=torch.float64)).float()
    w, b = torch.randn(3, generator=gen), torch.randn(3, generator=gen)
    ref = F.batch_norm(x.double(), None, None, w.double(), b.double(), True, 0.1, 1e-5)
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda x, w, b: nt.batch_norm(x, None, None, w, b, True, 0.1, 1e-5), backend=counter,
                       fullgraph=True)

    def error():
        return float((fn(x, w, b).double() - ref).abs().max())

    assert error() <= 2.5e-7 and counter.frame_count == 1
    assert nt.set_compute_dtype(torch.float32) == torch.float64
    assert 1e-4 < error() < 0.03, "float32 arithmetic at a 10**6 offset"
    assert counter.frame_count == 2, "the float64 graph was reused after the setting changed"
    x64 = x.double()
    torch.testing.assert_close(fn(x64, w.double(), b.double()), ref, rtol=1e-9, atol=1e-9)
    nt.set_compute_dtype(torch.float64)
    assert error() <= 2.5e-7
    assert counter.frame_count == 3  # (the float64 input's graph; the float32 one's float64 graph is reused)
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        nt.set_compute_dtype(torch.float16)


def _guard_names(net, x) -> list[str]:
    """The names of the guards dynamo installs for net compiled (aot_eager) and called on x."""
    names = []

    def keep_all(entries):
        names.extend(e.name for e in entries)
        return [True] * len(entries)

    torch.compile(net, backend="aot_eager", options={"guard_filter_fn": keep_all})(x)
    return names


def test_dynamo_guards_nothing_behind_the_route():
    """Under torch.compile a norm is one nonstrict-traced call (``normlab.torch.compiled``): dynamo guards none of
    the modules behind it, the checks, layouts, autograd Function and closed form, whose every global it would
    otherwise check again on each call of the compiled model (about 200 guards a norm)."""
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), nt.BatchNorm1d(6), torch.nn.ReLU(), nt.LayerNorm(6),
                              nt.GroupNorm(2, 6))
    names = _guard_names(net, torch.randn(8, 4))
    behind = [n for n in names if any(f"normlab_dot_{m}" in n for m in
                                      ("torch_dot_checks", "torch_dot_ops", "torch_dot_autograd", "norms", "core"))]
    assert names and not behind, behind[:10]


def test_bad_input_under_compile_raises_the_check_and_changes_nothing():
    """The checks run while the graph is built: the caller gets the check's error (as the cause of dynamo's own
    with fullgraph=True) for a weight of the wrong length and an integer input, and the running statistics and
    count are as they were."""
    torch._dynamo.reset()
    bn = nt.BatchNorm1d(3)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(ValueError, match=r"weight must have shape \(5,\)"):
        torch.compile(bn, backend="aot_eager")(torch.randn(4, 5))
    torch._dynamo.reset()  # (else the frame that failed above runs eagerly from now on)
    with pytest.raises(RuntimeError) as info:
        torch.compile(bn, backend="aot_eager", fullgraph=True)(torch.randn(4, 5))
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, ValueError) and "weight must have shape (5,)" in str(e) for e in chain), chain
    torch._dynamo.reset()
    with pytest.raises(TypeError, match="input must be float16, bfloat16, float32 or float64, got torch.int64"):
        torch.compile(bn, backend="aot_eager")(torch.ones(4, 3, dtype=torch.long))
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
