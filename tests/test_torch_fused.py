"""normlab.torch's fused eager route (normlab.torch.fused) against the core's general route.

Every norm runs it through the native autograd node (fused_node.cpp) or, where
that cannot be built, from Python. Every route
runs the same kernels, so outputs, statistics and gradients must agree bit
for bit; the route must be the one taken where it applies, and step aside
(to the general route's checks and rescue) where it does not.
"""

import os
import shutil
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

import normlab.torch as nt  # noqa: E402
from normlab.torch import fused, fused_node, functions, ops  # noqa: E402

SHAPES = [(8, 16), (128, 512), (4, 3, 40), (2, 5, 6, 7), (8, 64, 16, 16)]


@pytest.fixture
def fused_calls(monkeypatch):
    """How many calls went through the fused route: forwards and backwards from Python, and native
    calls (forward and backward both in C++)."""
    calls = {"forward": 0, "backward": 0, "run_native": 0}
    for name in calls:
        real = getattr(fused, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(fused, name, spy)
    return calls


def _clear_plans():
    fused.plan_for.cache_clear()
    functions._prepared.cache_clear()


@pytest.fixture(params=["native", "python"])
def route(request, monkeypatch):
    """The fused route under test: the native node, or (as where it cannot be built) Python."""
    if request.param == "python":
        monkeypatch.setattr(fused_node, "load", lambda: None)
    elif fused_node.load() is None:
        if os.environ.get("NORMLAB_NATIVE") == "0" or shutil.which("c++") is None:
            pytest.skip("the native node is switched off (NORMLAB_NATIVE=0) or there is no C++ compiler")
        pytest.fail("the native node did not build although a C++ compiler is here (see the warning)")
    _clear_plans()  # plans carry the native node's entry points, or None
    yield request.param
    _clear_plans()


def _taken(route: str, out: torch.Tensor, calls: int = 1) -> dict:
    """The spy counts a route leaves for ``calls`` forward+backward pairs; checks the native node's grad_fn."""
    if route == "python":
        return {"forward": calls, "backward": calls, "run_native": 0}
    assert out.grad_fn is None or "FusedNorm" in out.grad_fn.name()
    return {"forward": 0, "backward": 0, "run_native": calls}


def _general(x, weight, bias, dout, mean=None, var=None):
    """Output, statistics and (dx, dweight, dbias) of the core's general route on the same tensors."""
    out, cache = ops.core_forward(x.detach(), weight.detach(), bias.detach(), mean, var, "batch", (), 1e-5,
                                  "numba")
    return out, cache, ops.core_backward(dout, cache, x.detach(), "batch", weight, True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_route_is_taken_and_matches_the_general_route_bit_for_bit(shape, dtype, route, fused_calls):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 3 + 1000).requires_grad_()
    bn = nt.BatchNorm(shape[1], dtype=dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(shape[1], generator=g, dtype=dtype) + 0.5)
        bn.bias.copy_(torch.randn(shape[1], generator=g, dtype=dtype))
    dout = torch.randn(shape, generator=g, dtype=dtype)
    out = bn(x)
    out.backward(dout)
    assert fused_calls == _taken(route, out)
    ref_out, cache, (dx, dw, db) = _general(x, bn.weight, bn.bias, dout)
    assert torch.equal(out, ref_out)
    assert torch.equal(x.grad, dx) and torch.equal(bn.weight.grad, dw) and torch.equal(bn.bias.grad, db)
    assert x.grad.dtype == bn.weight.grad.dtype == dtype
    # running statistics: torch.nn's rule on the same batch
    ref_mean, ref_var = torch.zeros(shape[1], dtype=dtype), torch.ones(shape[1], dtype=dtype)
    torch.nn.functional.batch_norm(x.detach(), ref_mean, ref_var, training=True)
    torch.testing.assert_close(bn.running_mean, ref_mean)
    torch.testing.assert_close(bn.running_var, ref_var)


def test_eval_mode_takes_the_fused_route_with_the_running_statistics(route, fused_calls):
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
    assert fused_calls == _taken(route, out)
    ref_out, _, (dx, dw, db) = _general(x, bn.weight, bn.bias, dout, bn.running_mean, bn.running_var)
    assert torch.equal(out, ref_out) and torch.equal(x.grad, dx) and torch.equal(bn.weight.grad, dw)
    torch.testing.assert_close(out, torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                                                   bn.bias, False))


def test_large_inference_takes_the_fused_route_only_without_a_backward_to_serve(route, fused_calls):
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
    assert fused_calls == {"forward": int(route == "python"), "backward": 0, "run_native": int(route == "native")}
    with torch.no_grad():  # the functional form takes the same route
        assert torch.equal(nt.batch_norm(x, ours.running_mean, ours.running_var, ours.weight, ours.bias),
                           out)
    assert fused_calls["forward"] + fused_calls["run_native"] == 2
    # float64 arithmetic rounded once: within half a float32 spacing of the float64 result
    with torch.no_grad():
        truth = theirs.double()(x.double())
        theirs.float()
    ulp = (torch.nextafter(out, torch.tensor(np.inf)) - out).double()
    assert ((out.double() - truth).abs() / ulp).max() <= 0.5 + 1e-6
    numpy_route = nt.BatchNorm(c, backend="numpy").eval()
    numpy_route.load_state_dict(ours.state_dict())
    torch.testing.assert_close(out, numpy_route(x), rtol=0, atol=1e-5)
    # with a backward to serve, the general route (its backward is the faster one at these sizes)
    xg = x.clone().requires_grad_()
    out_g = ours(xg)
    assert fused_calls["forward"] + fused_calls["run_native"] == 2
    assert torch.equal(out_g, out)
    dout = torch.randn(shape, generator=g)
    out_g.backward(dout)
    xt = x.clone().requires_grad_()
    theirs.float()(xt).backward(dout)
    torch.testing.assert_close(xg.grad, xt.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-3)


def test_a_broadcast_dout_a_retained_graph_and_double_backward_agree(route, fused_calls):
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
    assert fused_calls["backward"] == (2 if route == "python" else 0)
    x2 = x.detach().clone().requires_grad_()
    (ref(x2) * weights).sum().backward()
    torch.testing.assert_close(first, x2.grad)
    out.sum().backward(inputs=[bn.weight])  # a zero-stride dout (the gradient of a sum)
    # create_graph: the closed form in torch ops, which autograd differentiates
    assert torch.autograd.gradgradcheck(lambda t: bn(t), (x.detach().requires_grad_(),))


def test_batches_the_fused_route_cannot_finish_go_the_general_way(route, fused_calls):
    bn = nt.BatchNorm1d(4, dtype=torch.float64)
    x = torch.randn(8, 4, dtype=torch.float64)
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN|nan|finite"):
        bn(x)
    # native: the module's call, then the general route's batch_norm asks once more before the core
    assert fused_calls["forward"] == 1 if route == "python" else fused_calls["run_native"] == 2
    assert bn.num_batches_tracked.item() == 0
    assert torch.equal(bn.running_mean, torch.zeros(4))
    # finite values whose float64 sums overflow: the general route rescales them
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
    x = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    assert not fused.usable(x) and fused.usable(x.contiguous(), torch.ones(3), None)
    assert not fused.usable(x.contiguous(), torch.ones(3, dtype=torch.float16))
    assert functions.check_eps(1e-5, True, "bn") == 1e-5


@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"track_running_stats": False}, {"affine": False}])
def test_module_steps_on_the_fused_route_track_torch_nn(kwargs, route, fused_calls):
    g = torch.Generator().manual_seed(4)
    ours, theirs = nt.BatchNorm2d(5, **kwargs), torch.nn.BatchNorm2d(5, **kwargs)
    for step in range(3):
        x = torch.randn(6, 5, 4, 4, generator=g) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x))
    ours.eval(), theirs.eval()
    x = torch.randn(2, 5, 4, 4, generator=g)
    torch.testing.assert_close(ours(x), theirs(x))
    assert fused_calls["forward" if route == "python" else "run_native"] == 4
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
def test_per_sample_norms_take_the_fused_route_bit_for_bit(make, shape, kind, arg, dtype, route, fused_calls):
    g = torch.Generator().manual_seed(5)
    module = make().to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) + 0.5)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 300).requires_grad_()
    dout = torch.randn(shape, generator=g, dtype=dtype)
    out = module(x)
    out.backward(dout)
    assert fused_calls == _taken(route, out)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    eps = module.eps if module.eps is not None else torch.finfo(dtype).eps  # RMSNorm: the dtype's epsilon
    ref_out, cache = ops.core_forward(x.detach(), weight, bias, None, None, kind, arg, eps, "numba")
    dx, dw, db = ops.core_backward(dout, cache, x.detach(), kind, weight, weight is not None or bias is not None)
    assert torch.equal(out, ref_out) and torch.equal(x.grad, dx)
    if weight is not None:
        assert torch.equal(weight.grad, dw) and weight.grad.shape == weight.shape
    if bias is not None:
        assert torch.equal(bias.grad, db)


def test_layer_norm_module_calls_the_node_straight_and_leaves_the_rest_to_the_general_route(monkeypatch):
    """The module's own check-and-call (LayerNorm._fused_forward) serves plain calls; every other call, and
    every error, is layer_norm's, as before."""
    from normlab.torch import modules

    if fused_node.load() is None:
        pytest.skip("the native node is not built here")
    general = []
    real = modules.layer_norm
    monkeypatch.setattr(modules, "layer_norm", lambda *a, **k: general.append(a[0].shape) or real(*a, **k))
    g = torch.Generator().manual_seed(3)
    module = nt.LayerNorm(16)
    with torch.no_grad():
        module.weight.copy_(torch.rand(16, generator=g) + 0.5)
        module.bias.copy_(torch.rand(16, generator=g))
    x = torch.randn(4, 5, 16, generator=g).requires_grad_()
    out = module(x)
    assert general == [] and "FusedNorm" in out.grad_fn.name()
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (16,), module.weight, module.bias))
    out.backward(torch.ones_like(out))
    assert x.grad.shape == x.shape and module.weight.grad.shape == (16,)

    unbatched = torch.randn(16, generator=g)
    torch.testing.assert_close(module(unbatched), torch.nn.functional.layer_norm(unbatched, (16,), module.weight,
                                                                                  module.bias))
    strided = torch.randn(4, 32, generator=g)[:, ::2]
    torch.testing.assert_close(module(strided), torch.nn.functional.layer_norm(strided, (16,), module.weight,
                                                                                module.bias))
    assert general == [(16,), (4, 16)]
    with pytest.raises(ValueError, match="normalized_shape|shape"):
        module(torch.randn(4, 8))
    with pytest.raises(ValueError, match="more than 1 value per statistic"):
        nt.LayerNorm(1)(torch.randn(4, 1))
    module.weight = torch.nn.Parameter(torch.ones(8))
    with pytest.raises(ValueError, match="weight must have shape"):
        module(torch.randn(4, 16))
    assert len(general) == 5


def test_parameters_of_another_dtype_step_aside_from_the_native_node(route, fused_calls):
    bn = nt.BatchNorm1d(6, dtype=torch.float64)  # float64 parameters and buffers, float32 input
    x = torch.randn(10, 6, requires_grad=True)
    out = bn(x)
    out.sum().backward()
    ref = torch.nn.BatchNorm1d(6, dtype=torch.float64)
    x64 = x.detach().double().requires_grad_()
    ref_out = ref(x64)
    ref_out.sum().backward()
    torch.testing.assert_close(out, ref_out.detach().float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert out.dtype == torch.float32 and bn.weight.grad.dtype == torch.float64
    assert bn.num_batches_tracked.item() == 1


def test_the_native_node_can_be_switched_off_and_a_failed_build_is_a_warning(monkeypatch):
    monkeypatch.setenv("NORMLAB_NATIVE", "0")
    assert fused_node.load.__wrapped__() is None
    monkeypatch.delenv("NORMLAB_NATIVE")
    from torch.utils import cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("no C++ compiler here")
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match="native autograd node is unavailable.*no C\\+\\+ compiler"):
        assert fused_node.load.__wrapped__() is None


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
    # The kernels index memory by the plan's dims: any other size would be read out of bounds.
    plan = fused.plan_for("batch", (128, 512), (), torch.float32, "auto")
    if plan.native is None:
        pytest.skip("the native node is not built here (see test_fused_route_is_taken...[native])")
    with pytest.raises(RuntimeError, match="does not match x of shape"):
        fused.run_native(plan, torch.randn(64, 512), None, None, None, None)
    with pytest.raises(RuntimeError, match="per-channel tensor has 256 values"):
        fused.run_native(plan, torch.randn(128, 512), torch.ones(256), None, None, None)
