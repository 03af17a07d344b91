"""Every backward, three ways: closed form vs centred differences (float64,
random dout), vs the staged graph, and vs PyTorch autograd."""

import numpy as np
import pytest

import normlab
from normlab.gradcheck import check_forward_backward, rel_error

from _norms import NORMS, params

NUMERIC_TOL = 1e-8
ORACLE_TOL = 1e-10


@pytest.mark.parametrize("name", NORMS)
def test_backward_matches_centred_differences(name, backend, rng):
    forward, shape, c, _ = NORMS[name]
    x = rng.normal(1.0, 2.5, shape)
    gamma, beta = params(rng, c)
    fw = lambda x, g, b: forward(x, g, b, backend=backend)  # noqa: E731
    for result in check_forward_backward(fw, normlab.normalize_backward, [x, gamma, beta], ["dx", "dgamma", "dbeta"],
                                         tol=NUMERIC_TOL):
        assert result.passed, result


@pytest.mark.parametrize("name", NORMS)
def test_backward_without_affine(name, backend, rng):
    forward, shape, _, _ = NORMS[name]
    x = rng.normal(size=shape)
    fw = lambda x: forward(x, None, None, backend=backend)  # noqa: E731
    [result] = check_forward_backward(fw, lambda d, c: normlab.normalize_backward(d, c)[0], [x], ["dx"])
    assert result.passed, result
    out, cache = fw(x)
    assert normlab.normalize_backward(np.ones_like(out), cache)[1:] == (None, None)


@pytest.mark.parametrize("name", NORMS)
def test_backward_with_given_statistics_treats_them_as_constants(name, backend, rng):
    forward, shape, c, _ = NORMS[name]
    x = rng.normal(size=shape)
    gamma, beta = params(rng, c)
    _, batch = forward(x, gamma, beta, backend=backend)
    mean, var = batch.mean + 0.3, batch.var * 1.7  # any fixed statistics
    fw = lambda x, g, b: forward(x, g, b, mean=mean, var=var, backend=backend)  # noqa: E731
    for result in check_forward_backward(fw, normlab.normalize_backward, [x, gamma, beta], ["dx", "dgamma", "dbeta"]):
        assert result.passed, result


@pytest.mark.parametrize("shape", [(16, 5), (2, 3, 4, 5)])
def test_closed_form_equals_graph(shape, backend, rng):
    forward = normlab.batchnorm_forward if len(shape) == 2 else normlab.spatial_batchnorm_forward
    x = rng.normal(3.0, 2.0, shape)
    gamma, beta = params(rng, shape[1])
    out, cache = forward(x, gamma, beta, backend=backend)
    dout = rng.standard_normal(out.shape)
    for closed, graph in zip(normlab.normalize_backward(dout, cache), normlab.batchnorm_backward_graph(dout, cache)):
        assert rel_error(closed, graph) < 1e-12


def test_graph_backward_rejects_other_caches(rng):
    _, cache = normlab.layernorm_forward(rng.normal(size=(3, 4)), None, None)
    with pytest.raises(TypeError, match="batchnorm_forward"):
        normlab.batchnorm_backward_graph(np.ones((3, 4)), cache)


def _torch_oracle(name, tx, tg, tb, eps):
    import torch.nn.functional as F
    if name in ("batchnorm", "spatial_batchnorm"):
        return F.batch_norm(tx, None, None, tg, tb, training=True, eps=eps)
    if name == "layernorm":
        return F.layer_norm(tx, (tx.shape[-1],), tg, tb, eps)
    if name == "instancenorm":
        return F.instance_norm(tx, weight=tg, bias=tb, eps=eps)
    return F.group_norm(tx, 2, tg, tb, eps)


@pytest.mark.parametrize("name", NORMS)
@pytest.mark.parametrize("eps", [1e-5, 1e-1])
def test_matches_pytorch_autograd(name, eps, backend, rng):
    torch = pytest.importorskip("torch")
    forward, shape, c, _ = NORMS[name]
    x = rng.normal(-2.0, 3.0, shape)
    gamma, beta = params(rng, c)
    out, cache = forward(x, gamma, beta, eps=eps, backend=backend)
    dout = rng.standard_normal(out.shape)
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    tout = _torch_oracle(name, tx, tg, tb, eps)
    tout.backward(torch.from_numpy(dout))
    assert rel_error(out, tout.detach().numpy()) < ORACLE_TOL
    for mine, theirs in zip(normlab.normalize_backward(dout, cache), (tx.grad, tg.grad, tb.grad)):
        assert rel_error(mine, theirs.numpy()) < ORACLE_TOL


def test_a_wrong_backward_is_caught(rng, monkeypatch):
    """The checks above can fail: drop the x̂·Σ(dx̂·x̂) term and watch the error grow."""
    import normlab.backends.numpy_backend as nb
    x = rng.normal(size=(6, 3))
    gamma, beta = params(rng, 3)
    fw = lambda x, g, b: normlab.batchnorm_forward(x, g, b, backend="numpy")  # noqa: E731
    real = nb.backward

    def wrong(dout4, x4, gamma, mean, invstd, batch_stats, stats_given, saved, center=True):
        dx, dg, db = real(dout4, x4, gamma, mean, invstd, batch_stats, True, saved)  # constants: one path only
        return dx, dg, db

    monkeypatch.setattr(nb, "backward", wrong)
    [result] = check_forward_backward(fw, lambda d, c: normlab.normalize_backward(d, c)[0], [x, gamma, beta], ["dx"])
    assert not result.passed and result.error > 1e-2
