"""Stateful layers: PyTorch-exact running statistics, modes, params apart from buffers."""

import numpy as np
import pytest

import normlab
from normlab.gradcheck import rel_error

torch = pytest.importorskip("torch")


def _torch_bn(shape, **kw):
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[len(shape)]
    return cls(shape[1], dtype=torch.float64, **kw)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_batchnorm_running_statistics_match_torch(shape, momentum, backend, rng):
    ours = normlab.BatchNorm(shape[1], momentum=momentum, backend=backend)
    theirs = _torch_bn(shape, momentum=momentum)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    ours.params["gamma"][...] = gamma
    ours.params["beta"][...] = beta
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(gamma))
        theirs.bias.copy_(torch.from_numpy(beta))
    for step in range(4):
        x = rng.normal(step, 1 + step, shape)
        dout = rng.standard_normal(shape)
        out = ours.forward(x)
        dx = ours.backward(dout)
        tx = torch.tensor(x, requires_grad=True)
        tout = theirs(tx)
        tout.backward(torch.from_numpy(dout))
        assert rel_error(out, tout.detach().numpy()) < 1e-12
        assert rel_error(dx, tx.grad.numpy()) < 1e-12
        assert rel_error(ours.grads["gamma"], theirs.weight.grad.numpy()) < 1e-12
        assert rel_error(ours.grads["beta"], theirs.bias.grad.numpy()) < 1e-12
        theirs.weight.grad = theirs.bias.grad = None
        assert rel_error(ours.running_mean, theirs.running_mean.numpy()) < 1e-14
        assert rel_error(ours.running_var, theirs.running_var.numpy()) < 1e-14
        assert ours.num_batches_tracked == int(theirs.num_batches_tracked) == step + 1
    ours.eval()
    theirs.eval()
    x = rng.normal(size=shape)
    dout = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    tout = theirs(tx)
    tout.backward(torch.from_numpy(dout))
    assert rel_error(ours.forward(x), tout.detach().numpy()) < 1e-12
    assert rel_error(ours.backward(dout), tx.grad.numpy()) < 1e-12
    before = ours.running_mean.copy(), ours.running_var.copy(), ours.num_batches_tracked
    ours.forward(x)
    assert np.array_equal(before[0], ours.running_mean) and np.array_equal(before[1], ours.running_var)
    assert before[2] == ours.num_batches_tracked


def test_batchnorm_without_running_stats_always_uses_the_batch(rng):
    ours = normlab.BatchNorm(3, track_running_stats=False)
    theirs = _torch_bn((5, 3), track_running_stats=False)
    assert ours.running_mean is None and ours.running_var is None and ours.num_batches_tracked is None
    x = rng.normal(2, 3, (5, 3))
    ours.eval()
    theirs.eval()
    assert rel_error(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy()) < 1e-12


def test_momentum_none_is_the_cumulative_average(rng):
    bn = normlab.BatchNorm(2, momentum=None)
    batches = [rng.normal(i, 1, (6, 2)) for i in range(5)]
    for x in batches:
        bn.forward(x)
    assert np.allclose(bn.running_mean, np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-13)
    assert np.allclose(bn.running_var, np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0), rtol=1e-13)


def test_layernorm_and_groupnorm_layers_match_torch(backend, rng):
    x = rng.normal(1, 2, (3, 4, 2, 5))
    dout = rng.standard_normal(x.shape)
    pairs = [
        (normlab.LayerNorm((4, 2, 5), backend=backend), torch.nn.LayerNorm((4, 2, 5), dtype=torch.float64)),
        (normlab.GroupNorm(2, 4, backend=backend), torch.nn.GroupNorm(2, 4, dtype=torch.float64)),
    ]
    for ours, theirs in pairs:
        gamma = rng.normal(size=ours.params["gamma"].shape)
        ours.params["gamma"][...] = gamma
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(gamma))
        tx = torch.tensor(x, requires_grad=True)
        tout = theirs(tx)
        tout.backward(torch.from_numpy(dout))
        assert rel_error(ours.forward(x), tout.detach().numpy()) < 1e-12
        assert rel_error(ours.backward(dout), tx.grad.numpy()) < 1e-12
        assert rel_error(ours.grads["gamma"], theirs.weight.grad.numpy()) < 1e-12
        ours.eval()  # no running statistics: eval changes nothing
        assert rel_error(ours.forward(x), tout.detach().numpy()) < 1e-12


def test_params_grads_and_buffers_are_apart(rng):
    bn = normlab.BatchNorm(3)
    assert set(bn.params) == {"gamma", "beta"} and bn.grads == {}
    bn.forward(rng.normal(size=(4, 3)))
    bn.backward(rng.normal(size=(4, 3)))
    assert set(bn.grads) == {"gamma", "beta"}
    assert set(bn.state_dict()) == {"gamma", "beta", "running_mean", "running_var", "num_batches_tracked"}
    assert not normlab.BatchNorm(3, affine=False).params


def test_state_dict_round_trip_and_rejection(rng):
    a = normlab.BatchNorm(3)
    for _ in range(2):
        a.forward(rng.normal(size=(5, 3)))
    b = normlab.BatchNorm(3)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.running_var, b.running_var) and b.num_batches_tracked == 2
    bad = a.state_dict()
    bad["running_var"] = np.ones(4)
    before = b.state_dict()
    with pytest.raises(ValueError, match="running_var.*shape"):
        b.load_state_dict(bad)
    after = b.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        normlab.LayerNorm(3).backward(np.ones((2, 3)))


def test_running_stats_reset_starts_over(rng):
    stats = normlab.RunningStats(3, momentum=None)
    stats.update(rng.normal(size=3), rng.uniform(1, 2, size=3), count=5)
    stats.reset()
    fresh = normlab.RunningStats(3, momentum=None)
    assert np.array_equal(stats.mean, fresh.mean) and np.array_equal(stats.var, fresh.var)
    assert stats.num_batches_tracked == 0


def test_apply_is_the_layer_as_a_function(rng):
    # State in and out: apply changes nothing; forward is apply plus committing the new statistics.
    bn, twin = normlab.BatchNorm(3), normlab.BatchNorm(3)
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    twin.params = {"gamma": gamma.copy(), "beta": beta.copy()}
    running = normlab.RunningStats(3)
    for step in range(3):
        x = rng.normal(step, 2.0, (6, 3, 2))
        out, cache, new = bn.apply(x, gamma, beta, running, training=True)
        assert running.num_batches_tracked == step and new.num_batches_tracked == step + 1
        assert bn.num_batches_tracked == 0  # the layer's own state is untouched
        np.testing.assert_array_equal(out, twin.forward(x))
        dout = rng.standard_normal(x.shape)
        for a, b in zip(bn.apply_backward(dout, cache), (twin.backward(dout), *twin.grads.values())):
            np.testing.assert_array_equal(a, b)
        running = new
    np.testing.assert_array_equal(running.mean, twin.running_mean)
    np.testing.assert_array_equal(running.var, twin.running_var)
    x = rng.normal(size=(4, 3, 2))
    out, cache, new = bn.apply(x, gamma, beta, running, training=False)
    assert new is None and cache.stats_given
    np.testing.assert_array_equal(out, twin.eval().forward(x))
    # Per-sample norms keep no statistics.
    assert normlab.LayerNorm(2).apply(x, None, None, running)[2] is None


def test_running_stats_copy_state_dict_and_validation(rng):
    stats = normlab.RunningStats(3, momentum=0.3)
    stats.update(rng.normal(size=3), rng.uniform(1, 2, size=3), count=4)
    copy = stats.copy()
    copy.update(rng.normal(size=3), rng.uniform(1, 2, size=3), count=4)
    assert stats.num_batches_tracked == 1 and copy.num_batches_tracked == 2 and copy.momentum == 0.3
    assert not np.array_equal(stats.mean, copy.mean)
    loaded = normlab.RunningStats(3, momentum=0.3)
    loaded.load_state_dict(stats.state_dict())
    for key, value in stats.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)
    before = loaded.state_dict()
    for bad, message in (({"running_var": np.ones(4)}, "running_var.*shape"),
                         ({"num_batches_tracked": np.asarray(1.5)}, "num_batches_tracked"),
                         ({"num_batches_tracked": -1}, "num_batches_tracked")):
        with pytest.raises(ValueError, match=message):
            loaded.load_state_dict({**stats.state_dict(), **bad})
        after = loaded.state_dict()
        assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_numpy_sync_batchnorm_without_a_group_is_batchnorm(rng):
    from normlab import distributed

    bn = normlab.BatchNorm(4, momentum=None)
    bn.params["gamma"][...] = rng.normal(size=4)
    sync = distributed.synchronized(bn)
    assert isinstance(sync, distributed.SyncBatchNorm) and sync.momentum is None
    assert distributed.synchronized(sync) is sync
    ln = normlab.LayerNorm(4)
    assert distributed.synchronized(ln) is ln  # per-sample statistics need no synchronization
    for _ in range(2):
        x, dout = rng.normal(1.0, 3.0, (5, 4, 3)), rng.standard_normal((5, 4, 3))
        np.testing.assert_allclose(sync.forward(x), bn.forward(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sync.backward(dout), bn.backward(dout), rtol=1e-10, atol=1e-12)
        for key in ("gamma", "beta"):
            np.testing.assert_allclose(sync.grads[key], bn.grads[key], rtol=1e-10)
    np.testing.assert_allclose(sync.running_var, bn.running_var, rtol=1e-12)
    assert sync.num_batches_tracked == bn.num_batches_tracked == 2
    with pytest.raises(ValueError, match="expects x with 4 channels"):
        sync.forward(rng.normal(size=(5, 3)))
