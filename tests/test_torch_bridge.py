"""normlab.torch: autograd Functions and modules against torch.nn, gradcheck, state dicts, import guard."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import normlab.torch as nt  # noqa: E402
from normlab.gradcheck import rel_error  # noqa: E402

TOL = 1e-10


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_import_normlab_stays_light_and_normlab_torch_imports():
    result = _run_python("""
        import sys
        import normlab
        assert "torch" not in sys.modules, "import normlab imported torch"
        import normlab.torch
        assert "torch" in sys.modules and normlab.torch.BatchNorm is not None
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_normlab_torch_without_torch_says_how_to_install():
    result = _run_python("""
        import sys
        sys.modules["torch"] = None  # makes `import torch` fail as if not installed
        try:
            import normlab.torch
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
    """)
    assert result.returncode == 0, result.stderr
    assert 'pip install "normlab[torch]"' in result.stdout


# ----------------------------------------------------------------------------- gradcheck

def _params(c, generator):
    w = (torch.rand(c, dtype=torch.float64, generator=generator) + 0.5).requires_grad_()
    b = torch.randn(c, dtype=torch.float64, generator=generator).requires_grad_()
    return w, b


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 2, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck(shape, training):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, dtype=torch.float64, generator=g) * 2 + 1).requires_grad_()
    w, b = _params(shape[1], g)
    rm = torch.randn(shape[1], dtype=torch.float64, generator=g)
    rv = torch.rand(shape[1], dtype=torch.float64, generator=g) + 0.5
    if training:  # no running stats: gradcheck calls the function many times
        fn = lambda x, w, b: nt.batch_norm(x, None, None, w, b, training=True)  # noqa: E731
    else:
        fn = lambda x, w, b: nt.batch_norm(x, rm, rv, w, b, training=False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_layer_and_group_norm_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64, generator=g).requires_grad_()
    w, b = _params(4, g)
    assert torch.autograd.gradcheck(lambda x, w, b: nt.group_norm(x, 2, w, b), (x, w, b))
    wl = torch.randn(2, 3, dtype=torch.float64, generator=g).requires_grad_()
    bl = torch.randn(2, 3, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: nt.layer_norm(x, (2, 3), w, b), (x, wl, bl))
    # Without affine as well.
    assert torch.autograd.gradcheck(lambda x: nt.layer_norm(x, (4, 2, 3)), (x,))


def test_modules_gradcheck_in_train_and_eval():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 4, dtype=torch.float64, generator=g).requires_grad_()
    bn = nt.BatchNorm(3, track_running_stats=False).double()
    assert torch.autograd.gradcheck(bn, (x,))
    bn = nt.BatchNorm(3).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
    assert torch.autograd.gradcheck(bn, (x,))


# ----------------------------------------------------------------------------- modules vs torch.nn

def _randomize(module, generator):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) + 0.5)


def _compare_training(ours, theirs, shape, steps=2, seed=0):
    """Same outputs, input and parameter gradients, buffers, over steps in train mode and then eval."""
    g = torch.Generator().manual_seed(seed)
    for mode in ["train"] * steps + ["eval"]:
        ours.train(mode == "train")
        theirs.train(mode == "train")
        x = (torch.randn(*shape, dtype=torch.float64, generator=g) * 3 + 2).requires_grad_()
        dout = torch.randn(*shape, dtype=torch.float64, generator=g)
        outs = [m(x) for m in (ours, theirs)]
        assert rel_error(outs[0].detach(), outs[1].detach()) < TOL, mode
        grads = [torch.autograd.grad(o, [x, *m.parameters()], dout) for o, m in zip(outs, (ours, theirs))]
        for a, b in zip(*grads):
            assert rel_error(a, b) < TOL, mode
        for (ka, a), (kb, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert ka == kb
            assert rel_error(a.double(), b.double()) < TOL, ka


@pytest.mark.parametrize("shape, reference", [
    ((8, 4), torch.nn.BatchNorm1d),
    ((5, 4, 6), torch.nn.BatchNorm1d),
    ((3, 4, 5, 2), torch.nn.BatchNorm2d),
])
@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}])
def test_batchnorm_matches_torch_nn_and_state_dict_round_trips(shape, reference, kwargs):
    g = torch.Generator().manual_seed(4)
    # torch.nn -> normlab
    theirs = reference(4, **kwargs).double()
    _randomize(theirs, g)
    theirs.train()(torch.randn(*shape, dtype=torch.float64, generator=g))  # non-trivial buffers
    ours = nt.BatchNorm(4, **kwargs).double()
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if kwargs.get("track_running_stats") is False:
        assert ours.running_mean is None and ours.running_var is None and ours.num_batches_tracked is None
    _compare_training(ours, theirs, shape)
    # normlab -> torch.nn
    back = reference(4, **kwargs).double()
    back.load_state_dict(ours.state_dict())
    _compare_training(ours, back, shape, seed=1)


def test_every_module_matches_torch_nn_with_state_dicts_both_ways():
    g = torch.Generator().manual_seed(5)
    cases = [
        (nt.LayerNorm((3, 4)), torch.nn.LayerNorm((3, 4)), (5, 2, 3, 4)),
        (nt.LayerNorm(6, bias=False), torch.nn.LayerNorm(6, bias=False), (4, 6)),
        (nt.GroupNorm(2, 6), torch.nn.GroupNorm(2, 6), (3, 6, 2, 2)),
        (nt.GroupNorm(3, 6, affine=False), torch.nn.GroupNorm(3, 6, affine=False), (3, 6, 5)),
        (nt.GroupNorm(3, 6, bias=False), torch.nn.GroupNorm(3, 6, bias=False), (3, 6, 5)),
        (nt.BatchNorm3d(4, bias=False), torch.nn.BatchNorm3d(4, bias=False), (3, 4, 2, 3, 2)),
        (nt.BatchNorm(4, momentum=None), torch.nn.BatchNorm3d(4, momentum=None), (3, 4, 2, 3, 2)),
        (nt.InstanceNorm2d(4, affine=True, track_running_stats=True),
         torch.nn.InstanceNorm2d(4, affine=True, track_running_stats=True), (3, 4, 3, 5)),
        (nt.InstanceNorm1d(4, momentum=None, track_running_stats=True),
         torch.nn.InstanceNorm1d(4, momentum=None, track_running_stats=True), (3, 4, 5)),
        (nt.RMSNorm((2, 3)), torch.nn.RMSNorm((2, 3)), (4, 5, 2, 3)),
        (nt.RMSNorm(6, eps=1e-3, elementwise_affine=False), torch.nn.RMSNorm(6, eps=1e-3,
                                                                             elementwise_affine=False), (4, 6)),
    ]
    for ours, theirs, shape in cases:
        ours, theirs = ours.double(), theirs.double()
        _randomize(theirs, g)
        ours.load_state_dict(theirs.state_dict())
        _compare_training(ours, theirs, shape)
        _randomize(ours, g)
        theirs.load_state_dict(ours.state_dict())
        _compare_training(ours, theirs, shape, seed=2)


def test_float32_stays_float32_and_non_contiguous_input_works():
    g = torch.Generator().manual_seed(6)
    ours, theirs = nt.BatchNorm(4), torch.nn.BatchNorm2d(4)
    _randomize(theirs, g)
    ours.load_state_dict(theirs.state_dict())
    base = torch.randn(3, 5, 4, 6, generator=g)
    x = base.permute(0, 2, 1, 3).requires_grad_()  # (3, 4, 5, 6), not contiguous
    assert not x.is_contiguous()
    dout = torch.randn(3, 4, 5, 6, generator=g)
    out = ours(x)
    assert out.dtype == torch.float32
    dx, dw, db = torch.autograd.grad(out, [x, ours.weight, ours.bias], dout)
    assert dx.dtype == dw.dtype == db.dtype == torch.float32
    ref = theirs(x)
    ref_grads = torch.autograd.grad(ref, [x, theirs.weight, theirs.bias], dout)
    assert rel_error(out.detach(), ref.detach()) < 1e-5
    for a, b in zip((dx, dw, db), ref_grads):
        assert rel_error(a, b) < 1e-4
    assert ours.running_mean.dtype == torch.float32
    assert rel_error(ours.running_var, theirs.running_var) < 1e-5


def test_bad_input_raises_and_changes_no_state():
    bn = nt.BatchNorm(3)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\) for input shape \(4, 4\) \(4 channels"):
        bn(torch.randn(4, 4))
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        bn(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(torch.randn(1, 3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        bn(torch.randn(3))
    with pytest.raises(ValueError, match="expected 4D input"):  # the aliases check dims as torch's do
        nt.BatchNorm2d(3)(torch.randn(2, 3, 2, 2, 2))
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="divide"):
        nt.group_norm(torch.randn(2, 5, 3), 2)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'numpy', 'numba', 'torch'"):
        nt.LayerNorm(3, backend="cuda")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_retained_graph_gives_the_same_gradients_twice(backend):
    # The eager path drops the core's cache after the first backward (so x is freed with the node);
    # a second backward of a retained graph rebuilds it from the saved tensors.
    torch.manual_seed(3)
    x = (torch.randn(6, 4, 5, dtype=torch.float64) * 3 + 2).requires_grad_()
    bn = nt.BatchNorm1d(4, backend=backend).double()
    dout = torch.randn(6, 4, 5, dtype=torch.float64)
    out = bn(x)
    first = torch.autograd.grad(out, [x, bn.weight, bn.bias], dout, retain_graph=True)
    second = torch.autograd.grad(out, [x, bn.weight, bn.bias], dout)
    reference = torch.nn.BatchNorm1d(4).double()
    expected = torch.autograd.grad(reference(x), [x, reference.weight, reference.bias], dout)
    for a, b, e in zip(first, second, expected):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
