"""Precise BN (update_bn_stats) for the lab's nets and for torch models: exactly the pooled population
statistics, empty and short iterables, and nothing else changed (modes, momentum, counters, params)."""

import warnings

import numpy as np
import pytest
import torch

import normlab.torch as nt
from normlab.lab import ConvNet, FullyConnectedNet
from normlab.lab.precise_bn import update_bn_stats

SIZES = (7, 13, 20)  # unequal batches: the pool must weight them by their counts


def _batches(X, sizes=SIZES):
    bounds = np.cumsum((0, *sizes))
    return [X[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _data(seed=0, shape=(6,)):
    rng = np.random.default_rng(seed)
    # Batches drawn from different places, so the average of batch variances misses the spread of batch means.
    X = rng.standard_normal((sum(SIZES), *shape)) * 2 + np.repeat(np.arange(len(SIZES)), SIZES).reshape(
        -1, *(1,) * len(shape)) * 3
    return X, rng.integers(0, 3, len(X))


def test_lab_first_layer_gets_exactly_the_population_statistics():
    X, y = _data()
    net = FullyConnectedNet([5, 4], 6, 3, normalization="batchnorm", dropout=0.2, weight_scale=0.5, seed=1)
    net.loss(X[:10], y[:10])  # some training: running statistics and the dropout generator move
    before = {k: v.copy() for k, v in net.params.items()}
    stats = net.batch_stats["layer1"]
    tracked, momentum, rng_state = stats.num_batches_tracked, stats.momentum, net.dropout_rng.bit_generator.state
    done = []
    assert update_bn_stats(net, [(b, None) for b in _batches(X)], progress=done.append) == 3
    h = X @ net.params["W1"]  # layer 1's input: no batch statistic before it
    np.testing.assert_allclose(stats.mean, h.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.var, h.var(axis=0), rtol=1e-12)  # the pooled variance, not an average
    averaged = np.mean([(b @ net.params["W1"]).var(axis=0) for b in _batches(X)], axis=0)
    assert not np.allclose(stats.var, averaged, rtol=1e-3)
    assert done == [1, 2, 3] and stats.num_batches_tracked == tracked and stats.momentum == momentum
    assert net.dropout_rng.bit_generator.state == rng_state
    for k, v in before.items():
        np.testing.assert_array_equal(net.params[k], v)


@pytest.mark.parametrize("normalization", ["batchnorm", "batchrenorm", "ghostbatchnorm"])
def test_lab_convnet_one_batch_equals_the_training_forwards_statistics(normalization):
    X, y = _data(1, shape=(2, 10))
    net = ConvNet((2, 10), 3, conv_channels=(4, 4), normalization=normalization, virtual_batch_size=10, seed=2)
    whole = ConvNet((2, 10), 3, conv_channels=(4, 4), normalization=normalization, virtual_batch_size=10, seed=2)
    for stats in whole.batch_stats.values():
        stats.momentum = 1.0  # a training step then leaves exactly this batch's statistics (variance unbiased)
    first = net.batch_stats["layer1"]
    update_bn_stats(net, [X[:20]])
    if normalization == "batchnorm":
        whole.loss(X[:20], y[:20])
        for name, stats in whole.batch_stats.items():
            count = 20 * (10 if name == "layer1" else 5)  # values per channel: samples x positions
            np.testing.assert_allclose(net.batch_stats[name].mean, stats.mean, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(net.batch_stats[name].var * count / (count - 1), stats.var, rtol=1e-12)
    # Split into batches, the first layer's statistics pool to the same numbers as one batch.
    mean, var = first.mean.copy(), first.var.copy()
    update_bn_stats(net, [X[:10], X[10:20]])
    np.testing.assert_allclose(first.mean, mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(first.var, var, rtol=1e-12)


def test_lab_empty_short_and_failing_iterables():
    X, y = _data()
    net = FullyConnectedNet([5], 6, 3, normalization="batchnorm", seed=1)
    stats = net.batch_stats["layer1"]
    with pytest.warns(RuntimeWarning, match="got no batches"):
        assert update_bn_stats(net, iter([])) == 0
    np.testing.assert_array_equal(stats.mean, np.zeros(5))
    with pytest.warns(RuntimeWarning, match="asked for 5 batches but the data ended after 3"):
        assert update_bn_stats(net, _batches(X), num_batches=5) == 3
    all_three = stats.mean.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert update_bn_stats(net, iter(_batches(X)), num_batches=2) == 2
    np.testing.assert_allclose(stats.mean, (X[:20] @ net.params["W1"]).mean(axis=0), rtol=1e-12)
    bad = X[:20].copy()
    bad[3, 1] = np.nan
    mean = stats.mean.copy()
    with pytest.raises(ValueError, match="NaN or inf"):
        update_bn_stats(net, [X[:7], bad])
    np.testing.assert_array_equal(stats.mean, mean)
    assert not np.array_equal(mean, all_three)
    with pytest.raises(ValueError, match="num_batches"):
        update_bn_stats(net, [X], num_batches=0)
    assert update_bn_stats(FullyConnectedNet([5], 6, 3, normalization="layernorm"), [X]) == 1  # nothing to update
    with pytest.raises(TypeError, match="normlab.torch.update_bn_stats"):
        update_bn_stats(_torch_model(), [X])
    with pytest.raises(TypeError, match="normlab.lab.precise_bn.update_bn_stats"):
        nt.update_bn_stats(net, [X])


# ----------------------------------------------------------------------------- torch

def _torch_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(32, 5), nt.BatchNorm(5, momentum=None)).double()


def test_torch_population_statistics_and_everything_restored():
    X, y = _data(2, shape=(2, 10))
    model = _torch_model()
    model(torch.from_numpy(X[:8]))  # train mode: running statistics move, num_batches_tracked counts
    model.eval()
    model[1].train()  # a module in another mode than its parent keeps it
    conv_bn, lin_bn = model[1], model[5]
    tracked = [bn.num_batches_tracked.item() for bn in (conv_bn, lin_bn)]
    weights = [p.detach().clone() for p in model.parameters()]
    batches = [(torch.from_numpy(b), torch.from_numpy(t)) for b, t in zip(_batches(X), _batches(y))]
    done = []
    assert nt.update_bn_stats(model, batches, progress=done.append) == 3
    with torch.no_grad():
        h = model[0](torch.from_numpy(X)).numpy()  # the first norm's input: nothing batch-dependent before it
    np.testing.assert_allclose(conv_bn.running_mean.numpy(), h.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(conv_bn.running_var.numpy(), h.var(axis=(0, 2)), rtol=1e-12)
    assert done == [1, 2, 3]
    assert not model.training and conv_bn.training and not lin_bn.training
    assert (conv_bn.momentum, lin_bn.momentum) == (0.1, None)
    assert [bn.num_batches_tracked.item() for bn in (conv_bn, lin_bn)] == tracked
    for before, after in zip(weights, model.parameters()):
        assert torch.equal(before, after)
    # One batch holding everything gives the same pooled statistics (weighted by counts, not by batches).
    mean, var = conv_bn.running_mean.clone(), conv_bn.running_var.clone()
    nt.update_bn_stats(model, [torch.from_numpy(X)])
    torch.testing.assert_close(conv_bn.running_mean, mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(conv_bn.running_var, var, rtol=1e-12, atol=1e-14)


def test_torch_empty_and_failing_iterables_change_nothing():
    X, _ = _data(3, shape=(2, 10))
    model = _torch_model()
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="got no batches"):
        assert nt.update_bn_stats(model, []) == 0
    with pytest.raises(RuntimeError):
        nt.update_bn_stats(model, [torch.from_numpy(X[:5]), torch.zeros(4, 3, 10, dtype=torch.float64)])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not model.training and model[1].momentum == 0.1 and model[5].momentum is None
    assert all(not hooks for hooks in (model[1]._forward_pre_hooks, model[5]._forward_pre_hooks))
