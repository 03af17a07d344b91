"""normlab.torch's native route (the fused kernels through fused_node.cpp) against the core's route.

Both eager CPU routes run the same kernels, so outputs, statistics and gradients
must agree bit for bit; the native route must be the one taken where it applies,
and the call must go to the core's route (its checks, rescue and reports) where
it does not. The ``route`` fixture runs a test on the native node and again as
on a machine where it cannot be built (the core's route for everything).
"""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from _native import node_or_skip  # noqa: E402
import normlab.torch as nt  # noqa: E402
from normlab.torch import checks, fused, fused_node, ops, route as routes  # noqa: E402

SHAPES = [(8, 16), (128, 512), (4, 3, 40), (2, 5, 6, 7), (8, 64, 16, 16)]


@pytest.fixture(params=["native", "core"])
def route(request, monkeypatch):
    """The route under test: the native node, or (as where it cannot be built) the core's."""
    if request.param == "core":
        monkeypatch.setattr(fused_node, "load", lambda: None)
    else:
        node_or_skip()
    routes.clear_plans()  # plans carry the native node's plan, or none
    yield request.param
    routes.clear_plans()


@pytest.fixture
def calls(monkeypatch):
    """How many forwards each eager route ran: the native node's, the core's."""
    counts = {"native": 0, "core": 0}
    real_core = ops.core_forward

    def core(*args, **kwargs):
        counts["core"] += 1
        return real_core(*args, **kwargs)
    monkeypatch.setattr(ops, "core_forward", core)
    node = fused_node.load()
    if node is not None:
        real_native = node.fused_norm

        def native(*args, **kwargs):
            counts["native"] += 1
            return real_native(*args, **kwargs)
        monkeypatch.setattr(node, "fused_norm", native)
    return counts


def _taken(route: str, out: torch.Tensor, calls: int = 1) -> dict:
    """The counts a route leaves for ``calls`` forwards; checks the graph node of the output."""
    if out.grad_fn is not None:
        assert ("FusedNorm" if route == "native" else "EagerNormFunction") in out.grad_fn.name()
    return {"native": calls, "core": 0} if route == "native" else {"native": 0, "core": calls}


def _general(x, weight, bias, dout, mean=None, var=None):
    """Output, statistics and (dx, dweight, dbias) of the core's route on the same tensors."""
    out, cache = ops.core_forward(x.detach(), weight.detach(), bias.detach(), mean, var, "batch", (), 1e-5,
                                  "numba")
    return out, cache, ops.core_backward(dout, cache, x.detach(), "batch", weight, True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_route_is_taken_and_matches_the_general_route_bit_for_bit(shape, dtype, route, calls):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 3 + 1000).requires_grad_()
    bn = nt.BatchNorm(shape[1], dtype=dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(shape[1], generator=g, dtype=dtype) + 0.5)
        bn.bias.copy_(torch.randn(shape[1], generator=g, dtype=dtype))
    dout = torch.randn(shape, generator=g, dtype=dtype)
    out = bn(x)
    out.backward(dout)
    assert calls == _taken(route, out)
    ref_out, cache, (dx, dw, db) = _general(x, bn.weight, bn.bias, dout)
    assert torch.equal(out, ref_out)
    assert torch.equal(x.grad, dx) and torch.equal(bn.weight.grad, dw) and torch.equal(bn.bias.grad, db)
    assert x.grad.dtype == bn.weight.grad.dtype == dtype
    # running statistics: torch.nn's rule on the same batch
    ref_mean, ref_var = torch.zeros(shape[1], dtype=dtype), torch.ones(shape[1], dtype=dtype)
    torch.nn.functional.batch_norm(x.detach(), ref_mean, ref_var, training=True)
    torch.testing.assert_close(bn.running_mean, ref_mean)
    torch.testing.assert_close(bn.running_var, ref_var)


def test_eval_mode_takes_the_fused_route_with_the_running_statistics(route, calls):
    g = torch.Generator().manual_seed(2)
    bn = nt.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(6, generator=g))
        bn.running_var.copy_(torch.rand(6, generator=g) + 0.1)
    bn.eval()
    x = torch.randn(4, 6, 5, 5, generator=g, requires_grad=True)
    dout = torch.randn(4, 6, 5, 5, generator=g)
    out = bn(x)
    out.backward(dout)
    assert calls == _taken(route, out)
    ref_out, _, (dx, dw, db) = _general(x, bn.weight, bn.bias, dout, bn.running_mean, bn.running_var)
    assert torch.equal(out, ref_out) and torch.equal(x.grad, dx) and torch.equal(bn.weight.grad, dw)
    torch.testing.assert_close(out, torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                                                   bn.bias, False))


def test_large_inference_takes_the_fused_route_only_without_a_backward_to_serve(route, calls):
    shape = (64, 32, 24, 24)  # above the fused sizes of (N, C, L)
    g = torch.Generator().manual_seed(12)
    c = shape[1]
    ours, theirs = nt.BatchNorm(c), torch.nn.BatchNorm2d(c)
    with torch.no_grad():
        theirs.running_mean.copy_(torch.randn(c, generator=g) * 50)
        theirs.running_var.copy_(torch.rand(c, generator=g) + 0.1)
        theirs.weight.copy_(torch.rand(c, generator=g) + 0.5)
        theirs.bias.copy_(torch.randn(c, generator=g))
    ours.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    x = torch.randn(shape, generator=g) * 3 + 40
    with torch.no_grad():
        out = ours(x)
    assert calls == _taken(route, out)
    with torch.no_grad():  # the functional form takes the same route
        assert torch.equal(nt.batch_norm(x, ours.running_mean, ours.running_var, ours.weight, ours.bias),
                           out)
    assert calls == _taken(route, out, 2)
    # float64 arithmetic rounded once: within half a float32 spacing of the float64 result
    with torch.no_grad():
        truth = theirs.double()(x.double())
        theirs.float()
    ulp = (torch.nextafter(out, torch.tensor(np.inf)) - out).double()
    assert ((out.double() - truth).abs() / ulp).max() <= 0.5 + 1e-6
    numpy_route = nt.BatchNorm(c, backend="numpy").eval()
    numpy_route.load_state_dict(ours.state_dict())
    torch.testing.assert_close(out, numpy_route(x), rtol=0, atol=1e-5)
    # with a backward to serve, the core's route (its backward is the faster one at these sizes)
    xg = x.clone().requires_grad_()
    out_g = ours(xg)
    assert calls["core"] == (4 if route == "core" else 2) and "EagerNormFunction" in out_g.grad_fn.name()
    assert torch.equal(out_g, out)
    dout = torch.randn(shape, generator=g)
    out_g.backward(dout)
    xt = x.clone().requires_grad_()
    theirs.float()(xt).backward(dout)
    torch.testing.assert_close(xg.grad, xt.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-3)


def test_a_broadcast_dout_a_retained_graph_and_double_backward_agree(route, calls):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 8, dtype=torch.float64, generator=g, requires_grad=True)
    bn = nt.BatchNorm1d(8, dtype=torch.float64)
    ref = torch.nn.BatchNorm1d(8, dtype=torch.float64)
    weights = torch.randn(16, 8, dtype=torch.float64, generator=g)
    out = bn(x)
    (out * weights).sum().backward(retain_graph=True)  # dout: a product's gradient
    first = x.grad.clone()
    x.grad = None
    (out * weights).sum().backward(retain_graph=True)  # the retained graph: operands rebuilt from the saved x
    assert torch.equal(x.grad, first)
    assert calls == _taken(route, out)
    x2 = x.detach().clone().requires_grad_()
    (ref(x2) * weights).sum().backward()
    torch.testing.assert_close(first, x2.grad)
    out.sum().backward(inputs=[bn.weight])  # a zero-stride dout (the gradient of a sum)
    # create_graph: the closed form in torch ops, which autograd differentiates
    assert torch.autograd.gradgradcheck(lambda t: bn(t), (x.detach().requires_grad_(),))


def test_batches_the_native_route_cannot_finish_go_the_cores_way(route, calls):
    bn = nt.BatchNorm1d(4, dtype=torch.float64)
    x = torch.randn(8, 4, dtype=torch.float64)
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN|nan|finite"):
        bn(x)
    # native: the node finds the statistics not finite and changes nothing; the core reports them
    assert calls == {"native": int(route == "native"), "core": 1}
    assert bn.num_batches_tracked.item() == 0
    assert torch.equal(bn.running_mean, torch.zeros(4))
    # finite values whose float64 sums overflow: the core rescales them
    big = torch.randn(1000, 4, dtype=torch.float64) * 4e153  # sums of squares ~1e310, var ~1e307
    out = bn(big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.nn.functional.batch_norm(big / 4e153, None, None, training=True,
                                                                   eps=1e-12))  # eps vanishes beside var ~1e307


def test_input_changed_in_place_before_backward_is_an_error(route):
    x = torch.randn(8, 16, requires_grad=True)
    h = x * 1
    out = nt.BatchNorm1d(16)(h)
    h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_plan_only_where_the_fused_kernels_apply():
    if fused_node.load() is None:
        pytest.skip("the native node is not built here")
    assert fused.plan_for("batch", (128, 512), (), torch.float32, "auto").stat_shape == (512,)
    assert fused.plan_for("batch", (64, 64, 32, 32), (), torch.float32, "auto") is None  # two-kernel paths
    # given statistics (eval): one launch at every size, forward only above the fused sizes
    assert fused.plan_for("batch", (64, 64, 32, 32), (), torch.float32, "auto", True).forward_only
    assert not fused.plan_for("batch", (128, 512), (), torch.float32, "auto", True).forward_only
    # (N, C): the columns kernels at every size, both directions
    for given in (False, True):
        plan = fused.plan_for("batch", (4096, 1024), (), torch.float32, "auto", given)
        assert plan.kernels.kind == "columns" and not plan.forward_only
    assert fused.plan_for("layer", (32, 64, 256), (256,), torch.float32, "auto").stat_shape == (32, 64)
    assert fused.plan_for("group", (8, 6, 5, 5), (3,), torch.float64, "auto").stat_shape == (8, 3)
    assert fused.plan_for("batch", (128, 512), (), torch.float16, "auto") is None
    assert fused.plan_for("batch", (128, 512), (), torch.float32, "numpy") is None
    assert fused.plan_for("batch", (0, 512), (), torch.float32, "auto") is None
    assert checks.check_eps(1e-5, True, "bn") == 1e-5


def test_tensors_the_node_cannot_take_go_the_cores_way(calls):
    """Strided and channels_last input, float16, and running statistics the node cannot update in place
    (another dtype than each other is refused first, as torch refuses it): the core's route, same results."""
    if fused_node.load() is None:
        pytest.skip("the native node is not built here")
    x = torch.randn(4, 3, 5, 5)
    for case in (x.to(memory_format=torch.channels_last), x.transpose(2, 3), x.half()):
        out = nt.BatchNorm2d(3, dtype=case.dtype)(case)
        torch.testing.assert_close(out, torch.nn.BatchNorm2d(3, dtype=case.dtype)(case), rtol=2e-3, atol=2e-3)
    assert calls == {"native": 0, "core": 3}
    bn = nt.BatchNorm2d(3)
    bn.running_mean = torch.zeros(6)[::2]  # strided: the node writes through raw pointers, so the core updates
    out = bn(x)
    assert calls == {"native": 0, "core": 4}
    ref = torch.nn.BatchNorm2d(3)
    torch.testing.assert_close(out, ref(x))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    assert bn.num_batches_tracked == 1


@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"track_running_stats": False}, {"affine": False}])
def test_module_steps_on_the_fused_route_track_torch_nn(kwargs, route, calls):
    g = torch.Generator().manual_seed(4)
    ours, theirs = nt.BatchNorm2d(5, **kwargs), torch.nn.BatchNorm2d(5, **kwargs)
    for step in range(3):
        x = torch.randn(6, 5, 4, 4, generator=g) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x))
    ours.eval(), theirs.eval()
    x = torch.randn(2, 5, 4, 4, generator=g)
    torch.testing.assert_close(ours(x), theirs(x))
    assert calls == _taken(route, x, 4)
    for name, buffer in theirs.named_buffers():
        torch.testing.assert_close(getattr(ours, name), buffer, msg=name)


def test_large_outputs_are_advised_to_use_huge_pages_and_stay_ordinary_tensors():
    from normlab.torch import memory

    small = torch.empty(16)
    assert not memory.advise_huge_pages(small)
    x = torch.randn(64, 32, 32, 32).to(memory_format=torch.channels_last)  # 8 MiB
    out = memory.empty_like(x)
    assert out.shape == x.shape and out.stride() == x.stride() and out.dtype == x.dtype
    if sys.platform.startswith("linux"):
        assert memory.advise_huge_pages(out)  # madvise accepted the range (page-aligned inside the tensor)
    out.copy_(x)
    assert torch.equal(out, x)
    bn = nt.BatchNorm2d(32)
    y = bn(x.contiguous())
    torch.testing.assert_close(y, torch.nn.functional.batch_norm(x.contiguous(), None, None, bn.weight, bn.bias, True))


PER_SAMPLE = [  # (module, input shape, kind, arg)
    (lambda: nt.LayerNorm(256), (32, 64, 256), "layer", (256,)),
    (lambda: nt.LayerNorm((5, 7)), (3, 4, 5, 7), "layer", (5, 7)),
    (lambda: nt.GroupNorm(4, 8), (6, 8, 5, 5), "group", (4,)),
    (lambda: nt.GroupNorm(2, 6, affine=False), (3, 6, 40), "group", (2,)),
    (lambda: nt.RMSNorm(64), (16, 64), "rms", (64,)),
    (lambda: nt.InstanceNorm2d(3, affine=True), (4, 3, 6, 6), "instance", ()),
]


@pytest.mark.parametrize("make,shape,kind,arg", PER_SAMPLE, ids=[f"{c[2]}-{c[1]}" for c in PER_SAMPLE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_sample_norms_take_the_fused_route_bit_for_bit(make, shape, kind, arg, dtype, route, calls):
    g = torch.Generator().manual_seed(5)
    module = make().to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) + 0.5)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 300).requires_grad_()
    dout = torch.randn(shape, generator=g, dtype=dtype)
    out = module(x)
    out.backward(dout)
    assert calls == _taken(route, out)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    eps = module.eps if module.eps is not None else torch.finfo(dtype).eps  # RMSNorm: the dtype's epsilon
    ref_out, cache = ops.core_forward(x.detach(), weight, bias, None, None, kind, arg, eps, "numba")
    dx, dw, db = ops.core_backward(dout, cache, x.detach(), kind, weight, weight is not None or bias is not None)
    assert torch.equal(out, ref_out) and torch.equal(x.grad, dx)
    if weight is not None:
        assert torch.equal(weight.grad, dw) and weight.grad.shape == weight.shape
    if bias is not None:
        assert torch.equal(bias.grad, db)


def test_the_layer_norm_module_takes_the_one_route(calls):
    """Plain and unbatched calls on the native node, a strided input on the core's route; every error raised by
    the same checks (the module keeps no checks of its own)."""
    if fused_node.load() is None:
        pytest.skip("the native node is not built here")
    g = torch.Generator().manual_seed(3)
    module = nt.LayerNorm(16)
    with torch.no_grad():
        module.weight.copy_(torch.rand(16, generator=g) + 0.5)
        module.bias.copy_(torch.rand(16, generator=g))
    x = torch.randn(4, 5, 16, generator=g).requires_grad_()
    out = module(x)
    assert "FusedNorm" in out.grad_fn.name()
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (16,), module.weight, module.bias))
    out.backward(torch.ones_like(out))
    assert x.grad.shape == x.shape and module.weight.grad.shape == (16,)
    unbatched = torch.randn(16, generator=g)
    torch.testing.assert_close(module(unbatched), torch.nn.functional.layer_norm(unbatched, (16,), module.weight,
                                                                                  module.bias))
    assert calls == {"native": 2, "core": 0}
    strided = torch.randn(4, 32, generator=g)[:, ::2]
    torch.testing.assert_close(module(strided), torch.nn.functional.layer_norm(strided, (16,), module.weight,
                                                                                module.bias))
    assert calls == {"native": 2, "core": 1}
    with pytest.raises(ValueError, match="normalized_shape|shape"):
        module(torch.randn(4, 8))
    with pytest.raises(ValueError, match="more than 1 value per statistic"):
        nt.LayerNorm(1)(torch.randn(4, 1))
    module.weight = torch.nn.Parameter(torch.ones(8))
    with pytest.raises(ValueError, match="weight must have shape"):
        module(torch.randn(4, 16))
    assert calls == {"native": 2, "core": 1}


def test_parameters_of_another_dtype_are_refused_as_torch_refuses_them(route):
    """float64 parameters and buffers with a float32 input: torch.nn raises ("mixed dtype (CPU)"), so does
    normlab, on every route, with the state as it was."""
    ours, theirs = nt.BatchNorm1d(6, dtype=torch.float64), torch.nn.BatchNorm1d(6, dtype=torch.float64)
    x = torch.randn(10, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="mixed dtype"):
        theirs(x)
    with pytest.raises(RuntimeError, match="mixed dtype"):
        ours(x)
    assert ours.num_batches_tracked == 0 and torch.equal(ours.running_var, torch.ones(6, dtype=torch.float64))
    half = torch.randn(10, 6).half()  # float16 input, float32 parameters: torch's mixed type, taken
    torch.testing.assert_close(nt.BatchNorm1d(6)(half), torch.nn.BatchNorm1d(6)(half))


def test_the_native_node_can_be_switched_off_and_a_failed_build_is_a_warning(monkeypatch):
    monkeypatch.setenv("NORMLAB_NATIVE", "0")
    assert fused_node.build() is None
    monkeypatch.delenv("NORMLAB_NATIVE")
    from torch.utils import cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("no C++ compiler here")
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match="native autograd node is unavailable.*no C\\+\\+ compiler"):
        assert fused_node.build() is None


def test_a_parametrized_weight_is_read_through_its_parametrization(route):
    from torch.nn.utils import parametrize

    class Doubled(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    ours, theirs = nt.BatchNorm1d(5), torch.nn.BatchNorm1d(5)
    for m in (ours, theirs):
        parametrize.register_parametrization(m, "weight", Doubled())
    x = torch.randn(7, 5) * 3 + 1
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_the_build_finds_the_ninja_package_where_the_system_has_none(monkeypatch):
    ninja = pytest.importorskip("ninja")
    before = os.environ["PATH"]
    monkeypatch.setattr(fused_node.shutil, "which", lambda name: None)
    with fused_node._ninja_on_path():
        assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR
        assert os.path.exists(os.path.join(ninja.BIN_DIR, "ninja"))
    assert os.environ["PATH"] == before


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # users still trace; so do we
def test_a_jit_trace_records_the_norms_and_serves_new_inputs():
    # The tracer cannot see into the native node (a Python module's function, no operator): a trace that
    # went through it would hold the traced input's result as a constant.
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), nt.BatchNorm1d(8), nt.LayerNorm(8)).eval()
    traced = torch.jit.trace(model, torch.randn(5, 4))
    x = torch.randn(5, 4)
    torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("shape", [(8, 16), (64, 16, 40, 40)])  # the fused route and the general one
@pytest.mark.parametrize("grad", [True, False])  # (with grad, saving the inference weight refuses first)
def test_buffers_made_under_inference_mode_refuse_a_training_forward_unchanged(shape, grad, route):
    with torch.inference_mode():
        ours, theirs = nt.BatchNorm(16), (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(16)
    x = torch.randn(shape)
    for m in (ours, theirs):
        with torch.set_grad_enabled(grad), pytest.raises(RuntimeError, match="[Ii]nference"):
            m(x)
        assert m.running_mean.abs().max() == 0 and m.running_var.eq(1).all()
    assert ours.num_batches_tracked == 0  # (torch.nn's add_ has counted the batch before refusing)
    with torch.inference_mode():  # inside it the update is allowed, for both
        ours(x)
    assert ours.num_batches_tracked == 1 and ours.running_mean.abs().max() > 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # (forward_ad's import)
def test_forward_mode_ad_is_refused_not_silently_dropped(route):
    # The fused kernels have no forward-mode derivative: a dual input goes to the general route, which says so
    # (an output without the tangent would be a wrong result), and no buffer changes.
    import torch.autograd.forward_ad as fwAD

    bn = nt.BatchNorm1d(16, dtype=torch.float64)
    x, tangent = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="jvp"):
        bn(fwAD.make_dual(x, tangent))
    assert bn.num_batches_tracked == 0 and bn.running_mean.abs().max() == 0


def test_the_node_refuses_tensors_its_plan_was_not_made_for():
    """The kernels read and write memory by the plan's sizes and x's dtype: anything else is refused in C++
    too, before a kernel runs (the route never sends it; this is the node's own guard)."""
    plan = fused.plan_for("batch", (128, 512), (), torch.float32, "auto")
    if plan is None:
        pytest.skip("the native node is not built here (see test_fused_route_is_taken...[native])")
    node = fused_node.load()

    def call(x, weight=None, running_mean=None, running_var=None, count=None):
        return node.fused_norm(x, weight, None, None, None, running_mean, running_var, count, 0.1, 1e-5,
                               plan.native)
    x = torch.randn(128, 512)
    for args, message in [((torch.randn(64, 512),), "does not match x of shape"),
                          ((x, torch.ones(256)), "per-channel tensor has 256 values"),
                          ((x, torch.ones(512, device="meta")), "on meta"),
                          ((x, torch.ones(512, dtype=torch.float64)), "of x's dtype"),
                          ((x, torch.ones(1024)[::2]), "of x's dtype"),  # (contiguous)
                          ((x, None, torch.zeros(512), torch.ones(512, dtype=torch.float64)), "of one dtype"),
                          ((x, None, torch.zeros(512), None), "of one dtype"),
                          ((x, None, None, None, torch.tensor(0.0)), "one-element int64")]:
        with pytest.raises(RuntimeError, match=message):
            call(*args)


#: a few units in the last place (values here are O(1)-O(100))
_ROUNDING = {torch.float32: {"rtol": 4 * 2.0 ** -24, "atol": 1e-6}, torch.float64: {"rtol": 4 * 2.0 ** -53, "atol": 1e-13}}

NO_DX = [  # every backward kernel: columns (two task grids), channels, rows per element, rows per run
    (lambda: nt.BatchNorm1d(512), (128, 512), "batch", ()),
    (lambda: nt.BatchNorm1d(16), (8, 16), "batch", ()),
    (lambda: nt.BatchNorm2d(5), (2, 5, 6, 7), "batch", ()),
    (lambda: nt.LayerNorm(256), (64, 256), "layer", (256,)),
    (lambda: nt.LayerNorm(40), (3, 40), "layer", (40,)),
    (lambda: nt.GroupNorm(4, 8), (6, 8, 5, 5), "group", (4,)),
    (lambda: nt.GroupNorm(2, 6), (3, 6, 8, 8), "group", (2,)),
]


@pytest.mark.parametrize("make,shape,kind,arg", NO_DX, ids=[f"{c[2]}-{c[1]}" for c in NO_DX])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_input_without_grad_gets_the_same_parameter_gradients_and_no_dx(make, shape, kind, arg, dtype, route,
                                                                            calls, monkeypatch):
    """A norm on the model's input (its x needs no gradient): the native node, and the core's route, ask the kernels
    for dgamma and dbeta only, as torch's norms skip dx by their output mask; they are the ones a backward with dx gives (to rounding:
    the kernels' loops differ, and their fast-math reductions may be ordered differently)."""
    g = torch.Generator().manual_seed(7)
    module = make().to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) + 0.5)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 300
    dout = torch.randn(shape, generator=g, dtype=dtype)
    asked = []  # the core's route: what its backward was asked for
    real_backward = ops.core_backward
    monkeypatch.setattr(ops, "core_backward", lambda *a, **k: asked.append(a[-1]) or real_backward(*a, **k))
    out = module(x)
    out.backward(dout)
    monkeypatch.setattr(ops, "core_backward", real_backward)
    assert calls == _taken(route, out)
    assert x.grad is None
    assert asked == ([] if route == "native" else [False])
    ref_out, cache = ops.core_forward(x, module.weight.detach(), module.bias.detach(), None, None, kind, arg,
                                      module.eps, "numba")
    _, dw, db = ops.core_backward(dout, cache, x, kind, module.weight, True)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(module.weight.grad, dw, **_ROUNDING[dtype])
    torch.testing.assert_close(module.bias.grad, db, **_ROUNDING[dtype])
    if dtype != torch.float64:  # (torch.nn's float32 sums at this offset are off by far more than rounding)
        return
    torch_module = {"batch": lambda: getattr(torch.nn, type(module).__name__)(shape[1]),
                    "layer": lambda: torch.nn.LayerNorm(arg), "group": lambda: torch.nn.GroupNorm(arg[0], shape[1])}
    tm = torch_module[kind]().to(dtype)
    with torch.no_grad():
        tm.weight.copy_(module.weight)
        tm.bias.copy_(module.bias)
    tm(x).backward(dout)  # and torch.nn's, in float64
    torch.testing.assert_close(module.weight.grad, tm.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(module.bias.grad, tm.bias.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make,shape,kind,arg", NO_DX, ids=[f"{c[2]}-{c[1]}" for c in NO_DX])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("params", ["frozen", "absent"])
def test_frozen_or_absent_parameters_get_the_same_dx_and_no_parameter_gradients(make, shape, kind, arg, dtype,
                                                                                 params, route, calls):
    """Parameters that need no gradient (frozen in fine-tuning) or are absent (affine=False): the native node asks
    the kernel for dx only; it is the dx a backward with dgamma and dbeta gives, to rounding."""
    g = torch.Generator().manual_seed(8)
    module = make().to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) + 0.5)
    if params == "absent":
        module.weight, module.bias = None, None  # as affine=False / elementwise_affine=False leave them
    else:
        module.requires_grad_(False)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 300).requires_grad_()
    dout = torch.randn(shape, generator=g, dtype=dtype)
    out = module(x)
    out.backward(dout)
    assert calls == _taken(route, out)
    weight, bias = module.weight, module.bias
    ref_out, cache = ops.core_forward(x.detach(), weight, bias, None, None, kind, arg, module.eps, "numba")
    dx, _, _ = ops.core_backward(dout, cache, x.detach(), kind, weight, weight is not None)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(x.grad, dx, **_ROUNDING[dtype])
    assert params == "absent" or (module.weight.grad is None and module.bias.grad is None)


@pytest.mark.parametrize("make,shape,kind,arg", NO_DX, ids=[f"{c[2]}-{c[1]}" for c in NO_DX])
def test_gradients_asked_one_at_a_time_match_all_at_once(make, shape, kind, arg, route):
    """torch.autograd.grad for the weight alone, then x alone, on one retained graph (each backward skips what
    is not asked), against all three at once; and asking for nothing that needs grad fails as in torch."""
    g = torch.Generator().manual_seed(9)
    module = make()
    x = (torch.randn(shape, generator=g) * 2 + 3).requires_grad_()
    dout = torch.randn(shape, generator=g)
    out = module(x)
    (gw,) = torch.autograd.grad(out, [module.weight], dout, retain_graph=True)
    (gx,) = torch.autograd.grad(out, [x], dout, retain_graph=True)
    ax, aw, ab = torch.autograd.grad(out, [x, module.weight, module.bias], dout)
    torch.testing.assert_close(gw, aw, **_ROUNDING[torch.float32])
    torch.testing.assert_close(gx, ax, **_ROUNDING[torch.float32])
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(module(x.detach()).sum(), [x.detach()])
