"""Instance norm and RMS norm on the one core: against PyTorch, centred differences, and the layers' state."""

import numpy as np
import pytest

import normlab
from normlab.gradcheck import check_forward_backward, rel_error

torch = pytest.importorskip("torch")
F = torch.nn.functional
TOL = 1e-12


@pytest.mark.parametrize("shape,normalized", [((4, 6), (6,)), ((3, 4, 5), (5,)), ((2, 3, 4, 5), (3, 4, 5)),
                                              ((5, 40), (40,))])
def test_rms_norm_matches_torch_forward_and_backward(shape, normalized, backend, rng):
    x = rng.normal(1.5, 3.0, shape)
    gamma = rng.normal(size=normalized)
    out, cache = normlab.rmsnorm_forward(x, gamma, eps=1e-6, backend=backend)
    dout = rng.standard_normal(shape)
    dx, dgamma, _ = normlab.rmsnorm_backward(dout, cache)
    tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(gamma, requires_grad=True)
    tout = F.rms_norm(tx, normalized, tg, 1e-6)
    tout.backward(torch.from_numpy(dout))
    assert rel_error(out, tout.detach().numpy()) < TOL
    assert rel_error(dx, tx.grad.numpy()) < TOL
    assert rel_error(dgamma, tg.grad.numpy()) < TOL
    assert np.all(cache.mean == 0) and rel_error(cache.var, np.mean(x.reshape(cache.var.shape + (-1,)) ** 2,
                                                                     axis=-1)) < TOL


def test_rms_norm_backward_matches_centred_differences(backend, rng):
    x, gamma, beta = rng.normal(0.5, 2.0, (4, 7)), rng.normal(size=7), rng.normal(size=7)

    def forward(x, g, b):
        return normlab.rmsnorm_forward(x, g, b, eps=1e-3, backend=backend)

    for result in check_forward_backward(forward, normlab.rmsnorm_backward, [x, gamma, beta],
                                         ["dx", "dgamma", "dbeta"], tol=1e-8):
        assert result.passed, result
    # Without the mean, Σdx is not 0 (it is for every centred norm): the missing term is real.
    out, cache = forward(x, gamma, beta)
    dx, _, _ = normlab.rmsnorm_backward(rng.standard_normal(x.shape), cache)
    assert np.abs(dx.sum(axis=1)).max() > 1e-3


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 10), (2, 2, 3, 2, 2)])
def test_instance_norm_matches_torch(shape, backend, rng):
    x, dout = rng.normal(-1.0, 2.0, shape), rng.standard_normal(shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    out, cache = normlab.instancenorm_forward(x, gamma, beta, backend=backend)
    grads = normlab.instancenorm_backward(dout, cache)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, gamma, beta)]
    tout = F.instance_norm(tensors[0], weight=tensors[1], bias=tensors[2])
    tout.backward(torch.from_numpy(dout))
    assert rel_error(out, tout.detach().numpy()) < TOL
    for mine, t in zip(grads, tensors):
        assert rel_error(mine, t.grad.numpy()) < TOL
    assert cache.mean.shape == shape[:2]


@pytest.mark.parametrize("momentum", [0.1, None])
def test_instance_norm_layer_running_statistics_match_torch(momentum, backend, rng):
    ours = normlab.InstanceNorm(3, momentum=momentum, affine=True, track_running_stats=True, backend=backend)
    theirs = torch.nn.InstanceNorm2d(3, momentum=momentum, affine=True, track_running_stats=True,
                                     dtype=torch.float64)
    gamma = rng.normal(size=3)
    ours.params["gamma"][...] = gamma
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(gamma))
    for step in range(3):
        x, dout = rng.normal(step, 1 + step, (4, 3, 2, 5)), rng.standard_normal((4, 3, 2, 5))
        tx = torch.tensor(x, requires_grad=True)
        tout = theirs(tx)
        tout.backward(torch.from_numpy(dout))
        assert rel_error(ours.forward(x), tout.detach().numpy()) < TOL
        assert rel_error(ours.backward(dout), tx.grad.numpy()) < TOL
        assert rel_error(ours.running_mean, theirs.running_mean.numpy()) < 1e-14
        assert rel_error(ours.running_var, theirs.running_var.numpy()) < 1e-14
        assert ours.num_batches_tracked == int(theirs.num_batches_tracked) == 0  # instance norm counts none
    ours.eval()
    theirs.eval()
    x, dout = rng.normal(size=(2, 3, 2, 5)), rng.standard_normal((2, 3, 2, 5))
    tx = torch.tensor(x, requires_grad=True)
    tout = theirs(tx)
    tout.backward(torch.from_numpy(dout))
    assert rel_error(ours.forward(x), tout.detach().numpy()) < TOL
    assert rel_error(ours.backward(dout), tx.grad.numpy()) < TOL
    assert normlab.InstanceNorm(3).params == {} and normlab.InstanceNorm(3).running_mean is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_norm_layer_matches_torch_with_eps_none(dtype, backend, rng):
    ours = normlab.RMSNorm((3, 4), dtype=dtype, backend=backend)
    theirs = torch.nn.RMSNorm((3, 4), dtype=getattr(torch, np.dtype(dtype).name))
    gamma = rng.normal(size=(3, 4)).astype(dtype)
    ours.params["gamma"][...] = gamma
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(gamma))
    x = (1e-3 * rng.standard_normal((5, 3, 4))).astype(dtype)  # small: eps matters
    dout = rng.standard_normal(x.shape).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    tout = theirs(tx)
    tout.backward(torch.from_numpy(dout))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert rel_error(ours.forward(x), tout.detach().numpy()) < tol
    assert rel_error(ours.backward(dout), tx.grad.numpy()) < tol
    assert set(ours.grads) == {"gamma"} and rel_error(ours.grads["gamma"], theirs.weight.grad.numpy()) < tol
    assert set(ours.state_dict()) == {"gamma"}
    assert not normlab.RMSNorm(4, elementwise_affine=False).params


def test_normalized_shape_takes_numpy_integers():
    assert normlab.LayerNorm(np.int64(5)).normalized_shape == (5,)
    assert normlab.RMSNorm([np.int32(2), 3]).normalized_shape == (2, 3)
    with pytest.raises(TypeError, match="normalized_shape must be an int or a sequence of ints"):
        normlab.LayerNorm(2.5)
