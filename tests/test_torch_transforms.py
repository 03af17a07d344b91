"""normlab.torch under PyTorch's transforms: double backward, torch.func, torch.compile; dtypes and devices."""

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

import normlab.torch as nt  # noqa: E402

F = torch.nn.functional
D = torch.float64


def _tensors(generator, *shapes):
    return [torch.randn(*s, dtype=D, generator=generator).requires_grad_() for s in shapes]


def _every_norm(backend, generator):
    """(name, fn, inputs) for every functional norm, batch statistics and given ones."""
    x, w, b, wl, bl = _tensors(generator, (3, 4, 5), (4,), (4,), (5,), (5,))
    with torch.no_grad():
        x.mul_(2).add_(1)
    rm = torch.randn(4, dtype=D, generator=generator)
    rv = torch.rand(4, dtype=D, generator=generator) + 0.5
    return [
        ("batch_norm train", lambda x, w, b: nt.batch_norm(x, None, None, w, b, True, backend=backend), (x, w, b)),
        ("batch_norm eval", lambda x, w, b: nt.batch_norm(x, rm, rv, w, b, False, backend=backend), (x, w, b)),
        ("group_norm", lambda x, w, b: nt.group_norm(x, 2, w, b, backend=backend), (x, w, b)),
        ("instance_norm", lambda x, w, b: nt.instance_norm(x, weight=w, bias=b, backend=backend), (x, w, b)),
        ("instance_norm eval", lambda x, w, b: nt.instance_norm(x, rm, rv, w, b, False, backend=backend),
         (x, w, b)),
        ("layer_norm", lambda x, w, b: nt.layer_norm(x, (5,), w, b, backend=backend), (x, wl, bl)),
        ("layer_norm no affine", lambda x: nt.layer_norm(x, (4, 5), backend=backend), (x,)),
        ("rms_norm", lambda x, w: nt.rms_norm(x, (5,), w, backend=backend), (x, wl)),
        ("batch_norm channels_last", lambda x, w, b: nt.batch_norm(
            x.unsqueeze(-1).expand(3, 4, 5, 2).contiguous(memory_format=torch.channels_last), None, None, w, b,
            True, backend=backend), (x, w, b)),
    ]


# ----------------------------------------------------------------------------- double backward

@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_gradcheck_and_gradgradcheck_for_every_norm(backend):
    for name, fn, inputs in _every_norm(backend, torch.Generator().manual_seed(0)):
        assert torch.autograd.gradcheck(fn, inputs), name
        assert torch.autograd.gradgradcheck(fn, inputs), name


def test_double_backward_matches_torch_nn_functional():
    """Second derivatives (a gradient penalty) equal torch's own, for a random upstream gradient."""
    g = torch.Generator().manual_seed(1)
    x, w, b = _tensors(g, (6, 3, 4), (3,), (3,))
    v = torch.randn(6, 3, 4, dtype=D, generator=g)
    pairs = [(lambda x, w, b: nt.batch_norm(x, None, None, w, b, True),
              lambda x, w, b: F.batch_norm(x, None, None, w, b, True)),
             (lambda x, w, b: nt.group_norm(x, 3, w, b), lambda x, w, b: F.group_norm(x, 3, w, b)),
             (lambda x, w, b: nt.rms_norm(x, (4,), b.new_ones(4)) * w.sum(),
              lambda x, w, b: F.rms_norm(x, (4,), b.new_ones(4)) * w.sum())]
    for ours, theirs in pairs:
        penalties = []
        for fn in (ours, theirs):
            (dx,) = torch.autograd.grad((fn(x, w, b) * v).sum(), x, create_graph=True)
            penalties.append(torch.autograd.grad(dx.square().sum(), [x, w]))
        for a, c in zip(*penalties):
            torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------- torch.func

def test_per_sample_gradients_with_vmap_of_grad():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, 6, dtype=D, generator=g)
    cases = [nt.LayerNorm(6), nt.RMSNorm(6), nt.BatchNorm1d(4).eval(), nt.GroupNorm(2, 4)]
    for module in cases:
        module = module.double()
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.rand(p.shape, dtype=D, generator=g) + 0.5)
        params, buffers = dict(module.named_parameters()), dict(module.named_buffers())
        weights = torch.randn(4, 6, dtype=D, generator=g)

        def loss(p, xi, module=module):
            return (torch.func.functional_call(module, (p, buffers), (xi[None],)) * weights).sum()

        per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
        for i in range(len(x)):
            expected = torch.autograd.grad(loss(params, x[i]), list(params.values()))
            for name, e in zip(params, expected):
                torch.testing.assert_close(per_sample[name][i], e, rtol=1e-10, atol=1e-12)


def test_vmap_of_forward_and_jacrev_match_torch():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 4, 5, dtype=D, generator=g)
    w, b = torch.rand(4, dtype=D, generator=g), torch.randn(4, dtype=D, generator=g)
    for ours, theirs in [(lambda t: nt.group_norm(t, 2, w, b), lambda t: F.group_norm(t, 2, w, b)),
                         (lambda t: nt.batch_norm(t, None, None, w, b, True),
                          lambda t: F.batch_norm(t, None, None, w, b, True))]:
        torch.testing.assert_close(torch.func.vmap(ours)(x), torch.func.vmap(theirs)(x))
    jac = torch.func.jacrev(lambda t: nt.rms_norm(t, (5,), b.new_ones(5)))(x[0])
    torch.testing.assert_close(jac, torch.func.jacrev(lambda t: F.rms_norm(t, (5,), b.new_ones(5)))(x[0]))


# ----------------------------------------------------------------------------- torch.compile

COMPILE_SCRIPT = """
    import copy

    import torch
    import normlab.torch as nt

    class Net(torch.nn.Module):
        def __init__(self, momentum):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.norms = torch.nn.ModuleList([
                nt.BatchNorm2d(6, momentum=momentum), nt.GroupNorm(3, 6),
                nt.InstanceNorm2d(6, affine=True, track_running_stats=True), nt.LayerNorm(8), nt.RMSNorm(8)])

        def forward(self, x):
            x = self.conv(x)
            for norm in self.norms:
                x = torch.relu(norm(x))
            return x.sum(dim=(2, 3))

    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for momentum in (0.1, None):
        net, twin = Net(momentum).double(), Net(momentum).double()
        twin.load_state_dict(net.state_dict())
        compiled = torch.compile(net, fullgraph=True)  # compiled before any eager call: a fresh process
        for mode in ("train", "eval"):
            net.train(mode == "train")
            twin.train(mode == "train")
            out, ref = compiled(x), twin(x)
            torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-11)
            out.square().sum().backward()
            ref.square().sum().backward()
            for p, q in zip(net.parameters(), twin.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-11)
            for (k, a), b in zip(net.state_dict().items(), twin.state_dict().values()):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=k)
            torch._dynamo.reset()
            explained = torch._dynamo.explain(copy.deepcopy(twin))(x)  # explain runs it: a copy's state changes
            print(f"momentum={momentum} {mode} graph_breaks={explained.graph_break_count}")

    # Symbolic batch and height (the width is LayerNorm(8)'s): one graph serves both shapes.
    net = Net(0.1).double()
    twin = copy.deepcopy(net)
    compiled = torch.compile(net, dynamic=True, fullgraph=True)
    for n, height in ((3, 8), (5, 6)):
        xn = torch.randn(n, 3, height, 8, dtype=torch.float64)
        torch.testing.assert_close(compiled(xn), twin(xn), rtol=1e-9, atol=1e-11)
    print("dynamic shapes ok")
"""


def test_torch_compile_in_a_fresh_process_with_no_graph_breaks():
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(COMPILE_SCRIPT)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split()
    assert [line for line in lines if line.startswith("graph_breaks=")] == ["graph_breaks=0"] * 4, result.stdout
    assert "dynamic shapes ok" in result.stdout


def test_operators_pass_torch_library_opcheck():
    """The registered operators' schemas, fake implementations and vmap rules are consistent."""
    from normlab.torch import ops

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 5, dtype=D, generator=g)
    w, b = torch.rand(4, dtype=D, generator=g), torch.randn(4, dtype=D, generator=g)
    out, mean, var, invstd = ops.normalize(x, w, b, None, None, "batch", [], 1e-5, "auto")
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.normalize, (x, w, b, None, None, "batch", [], 1e-5, "auto"), test_utils=tests)
    torch.library.opcheck(ops.normalize, (x.to(memory_format=torch.contiguous_format), None, None, None, None,
                                          "group", [2], 1e-5, "numpy"), test_utils=tests)
    torch.library.opcheck(ops.normalize_backward, (torch.randn_like(x), x, w, mean, invstd, "batch", [], False,
                                                   True, "auto"), test_utils=tests)


# ----------------------------------------------------------------------------- dtypes and devices

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_half_precision_computes_in_float32_and_returns_the_input_dtype(dtype, backend):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 6, 3, 5, generator=g) * 3 + 1).to(dtype)
    w, b = torch.rand(6, generator=g).to(dtype), torch.randn(6, generator=g).to(dtype)
    dout = torch.randn(x.shape, generator=g).to(dtype)
    for ours, theirs in [(lambda x, w, b: nt.batch_norm(x, None, None, w, b, True, backend=backend),
                          lambda x, w, b: F.batch_norm(x, None, None, w, b, True)),
                         (lambda x, w, b: nt.group_norm(x, 3, w, b, backend=backend),
                          lambda x, w, b: F.group_norm(x, 3, w, b)),
                         (lambda x, w, b: nt.rms_norm(x, (5,), None, backend=backend) * w.sum(),
                          lambda x, w, b: F.rms_norm(x, (5,)) * w.sum())]:
        mine = [t.clone().requires_grad_() for t in (x, w, b)]
        exact = [t.double().requires_grad_() for t in (x, w, b)]
        out = ours(*mine)
        grads = torch.autograd.grad(out, mine[:2], dout)
        assert out.dtype == dtype and all(gr.dtype == dtype for gr in grads)
        # As accurate as the float64 answer rounded to the dtype: within a few of its ulps.
        ref = theirs(*exact)
        ref_grads = torch.autograd.grad(ref, exact[:2], dout.double())
        tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 2e-3, "atol": 2e-3}
        torch.testing.assert_close(out.double(), ref, **tol)
        torch.testing.assert_close(grads[0].double(), ref_grads[0], **tol)


def test_modules_on_another_device_take_the_torch_ops_path():
    """A module on the meta device (shapes only, no NumPy) runs: what a CUDA model goes through."""
    for module, shape in [(nt.BatchNorm2d(3, device="meta"), (2, 3, 4, 4)), (nt.GroupNorm(3, 6, device="meta"),
                          (2, 6, 5)), (nt.InstanceNorm1d(3, affine=True, device="meta"), (2, 3, 5)),
                          (nt.LayerNorm(5, device="meta"), (2, 5)), (nt.RMSNorm(5, device="meta"), (2, 5)),
                          (nt.SyncBatchNorm(3, device="meta"), (2, 3))]:
        x = torch.empty(shape, device="meta", requires_grad=True)
        out = module(x)
        (dx,) = torch.autograd.grad(out, x, torch.empty(shape, device="meta"))
        assert out.device.type == dx.device.type == "meta" and out.shape == dx.shape == shape


def test_empty_batch_counts_and_leaves_the_running_statistics():
    ours, theirs = nt.BatchNorm1d(3, momentum=None), torch.nn.BatchNorm1d(3, momentum=None)
    first = torch.randn(4, 3, generator=torch.Generator().manual_seed(6))
    for module in (ours, theirs):
        module(first)
        x = torch.randn(0, 3, requires_grad=True)
        out = module(x)
        out.sum().backward()
        assert out.shape == (0, 3) and x.grad.shape == (0, 3)
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, msg=key)
    assert int(ours.num_batches_tracked) == 2
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)


def test_channels_last_batch_norm_reaches_the_core_without_a_copy(monkeypatch):
    """Batch norm on NHWC memory is batch norm on its (N*H*W, C) matrix: x and the output are not copied."""
    from normlab.torch import ops

    seen = {}
    run_forward = ops.run_forward

    def spy(x, gamma, beta, layout, eps, mean, var, backend, out):
        seen.update(x=x.ctypes.data, out=out.ctypes.data, view=layout.view)
        return run_forward(x, gamma, beta, layout, eps, mean, var, backend, out)

    monkeypatch.setattr(ops, "run_forward", spy)
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    out = nt.batch_norm(x, None, None, training=True, backend="numpy")
    assert seen == {"x": x.data_ptr(), "out": out.data_ptr(), "view": (40, 3, 1, 1)}
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.batch_norm(x, None, None, training=True))
