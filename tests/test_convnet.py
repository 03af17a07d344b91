"""ConvNet: float64 gradient checks for every normalization on (C, L) and (C, H, W) inputs, batch renorm at
rmax=1, dmax=0 as batch norm, state kept apart and committed on success, the Solver with checkpoints."""

import numpy as np
import pytest

import normlab
from normlab.gradcheck import numerical_gradient, rel_error
from normlab.lab import CONV_NORMALIZATIONS, ConvNet, Solver
from normlab.lab.sharding import Shard

N, C = 6, 3


def _problem(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, *shape)), rng.integers(0, C, size=N)


def _state(net):
    return ({k: v.copy() for k, v in net.params.items()},
            {k: (s.mean.copy(), s.var.copy(), s.num_batches_tracked) for k, s in net.batch_stats.items()})


def _restore_stats(net, stats):
    for k, (mean, var, tracked) in stats.items():
        net.batch_stats[k].mean, net.batch_stats[k].var = mean.copy(), var.copy()
        net.batch_stats[k].num_batches_tracked = tracked


def _gradient_errors(net, X, y):
    """Every analytic gradient against centred differences of the training loss (running statistics reset
    after every evaluation, so each sees the same r and d schedule step)."""
    state = _state(net)
    _, grads = net.loss(X, y)
    assert set(grads) == set(net.params)

    def loss(_):
        value = net.loss(X, y)[0]
        _restore_stats(net, state[1])
        return value

    _restore_stats(net, state[1])
    return {k: rel_error(grads[k], numerical_gradient(loss, net.params[k], h=1e-6)) for k in net.params}


def _net(shape, normalization, **kw):
    settings = dict(conv_channels=(4, 4), hidden_dims=(5,), normalization=normalization, groups=2,
                    virtual_batch_size=3, reg=0.1, seed=1)
    return ConvNet(shape, C, **{**settings, **kw})


@pytest.mark.parametrize("normalization", list(CONV_NORMALIZATIONS))
def test_gradients_1d(normalization):
    X, y = _problem((2, 9))
    net = _net((2, 9), normalization, rmax=1.2, dmax=0.05)
    if normalization == "batchrenorm":
        # Running statistics far from the batch's: every r and d sits at its limit, so they do not depend
        # on x and the stop-gradient backward is the true gradient that centred differences measure.
        for stats in net.batch_stats.values():
            stats.mean, stats.var = np.full(4, 5.0), np.full(4, 9.0)
    errors = _gradient_errors(net, X, y)
    assert max(errors.values()) < 1e-7, errors
    with_bias = CONV_NORMALIZATIONS[normalization].conv_bias
    assert ("b1" in net.params) == with_bias and ("gamma1" in net.params) == (normalization != "none")


@pytest.mark.parametrize("normalization, pool, global_pool", [(None, "max", False), ("batchnorm", "avg", True),
                                                               ("groupnorm", None, True)])
def test_gradients_2d(normalization, pool, global_pool):
    X, y = _problem((2, 5, 6), seed=1)
    net = _net((2, 5, 6), normalization, pool=pool, global_pool=global_pool, stride=(1, 2 if pool is None else 1))
    errors = _gradient_errors(net, X, y)
    assert max(errors.values()) < 1e-7, errors


def test_batch_renorm_with_rmax_1_dmax_0_trains_like_batch_norm():
    X, y = _problem((2, 9), seed=2)
    bn, rn = _net((2, 9), "batchnorm"), _net((2, 9), "batchrenorm", rmax=1.0, dmax=0.0)
    for _ in range(2):
        (loss_bn, grads_bn), (loss_rn, grads_rn) = bn.loss(X, y), rn.loss(X, y)
        assert loss_bn == loss_rn
        for k in grads_bn:
            np.testing.assert_array_equal(grads_rn[k], grads_bn[k])
    # The running statistics differ by design: batch renorm averages the std (the paper), batch norm the variance.
    assert not np.array_equal(rn.batch_stats["layer1"].var, bn.batch_stats["layer1"].var)


def test_running_statistics_state_and_test_mode():
    X, y = _problem((2, 9))
    net = _net((2, 9), "batchnorm")
    assert set(net.batch_stats) == {"layer1", "layer2"} and not any("mean" in k for k in net.params)
    before = net.loss(X)
    net.loss(X, y)
    assert net.batch_stats["layer1"].num_batches_tracked == 1
    after = net.loss(X)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(net.loss(X[:2]), after[:2], rtol=1e-12)  # test mode: per sample
    assert _net((2, 9), "groupnorm").batch_stats == {}
    # Flattened inputs are the same samples.
    np.testing.assert_array_equal(net.loss(X.reshape(N, -1)), after)


def test_a_rejected_batch_changes_nothing():
    X, y = _problem((2, 9))
    net = _net((2, 9), "batchrenorm")
    net.loss(X, y)
    before = _state(net)
    X_bad = X.copy()
    X_bad[1, 0, 3] = np.nan
    with pytest.raises(ValueError, match="contains NaN or inf"):
        net.loss(X_bad, y)
    with pytest.raises(ValueError, match=r"18 features per sample \(input shape \(2, 9\)\), got shape \(6, 17\)"):
        net.loss(X.reshape(N, -1)[:, :-1], y)
    after = _state(net)
    for k in before[0]:
        np.testing.assert_array_equal(after[0][k], before[0][k])
    for k, (mean, var, tracked) in before[1].items():
        np.testing.assert_array_equal(after[1][k][0], mean)
        assert after[1][k][2] == tracked


def test_solver_checkpoint_and_resume_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 16)), rng.integers(0, 3, 60)
    X[np.arange(60), y * 5] += 3.0  # learnable
    data = {"X_train": X[:45], "y_train": y[:45], "X_val": X[45:], "y_val": y[45:]}

    def make(epochs, **kw):
        net = ConvNet((1, 16), 3, conv_channels=(4,), normalization="batchrenorm", warmup=(2, 4), seed=3)
        return Solver(net, data, optim_config={"learning_rate": 1e-2}, batch_size=9, num_epochs=epochs, seed=1,
                      verbose=False, **kw)

    full = make(3).train()
    assert full.best_val_acc > 0.5
    make(2, checkpoint_dir=tmp_path).train()
    resumed = make(3, checkpoint_dir=tmp_path, resume=True).train()
    assert resumed.loss_history == full.loss_history
    for k, v in full.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[k], v)
    assert resumed.model.batch_stats["layer1"].num_batches_tracked == full.model.batch_stats["layer1"].num_batches_tracked


def test_data_parallel_placement():
    X, y = _problem((2, 9))
    nets = [_net((2, 9), "batchnorm") for _ in range(2)]
    loss, grads = nets[0].loss(X, y)
    shard_loss, shard_grads = nets[1].loss(X, y, shard=Shard(0, N))  # one rank: synchronized norm, no traffic
    assert rel_error(shard_loss, loss) < 1e-12 and all(rel_error(shard_grads[k], grads[k]) < 1e-10 for k in grads)
    net = _net((2, 9), "batchrenorm")
    with pytest.raises(ValueError, match="BatchRenorm has no synchronized form"):
        net.loss(X, y, shard=Shard(0, N))
    assert net.batch_stats["layer1"].num_batches_tracked == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="known: None, 'none', 'batchnorm', 'groupnorm'"):
        ConvNet((1, 8), 3, normalization="rmsnorm")
    with pytest.raises(ValueError, match=r"num_groups \(3\) must divide num_channels \(4\)"):
        ConvNet((1, 8), 3, conv_channels=(4,), normalization="groupnorm", groups=3)
    with pytest.raises(ValueError, match="input_shape must be"):
        ConvNet((8,), 3)
    with pytest.raises(ValueError, match="needs a virtual_batch_size"):
        ConvNet((1, 8), 3, normalization="ghostbatchnorm")
    with pytest.raises(ValueError, match=r"conv layer 4 of input shape \(1, 8, 8\).*does not fit"):
        ConvNet((1, 8, 8), 3, conv_channels=(4, 4, 4, 4))  # 8 -> 4 -> 2 -> 1 -> pooling a 1x1 map
    with pytest.raises(ValueError, match="kernel_size"):
        ConvNet((1, 8), 3, conv_channels=(4, 4), kernel_size=(3,))
    with pytest.raises(ValueError, match="weight_scale must be a finite number > 0 or None"):
        ConvNet((1, 8), 3, weight_scale=0)
    with pytest.raises(ValueError, match="rmax"):
        ConvNet((1, 8), 3, normalization="batchrenorm", rmax=0.5)
    net = ConvNet((1, 8), 3, seed=np.int64(2), conv_channels=(4,), kernel_size=5, weight_scale=None)
    assert net.config()["seed"] == 2 and net.params["W1"].shape == (4, 1, 5)
    assert net.params["W1"].std() == pytest.approx(np.sqrt(2 / 5), rel=0.4)  # He init
    assert "ConvNet(input_shape=[1, 8]" in repr(net)


def test_float32():
    X, y = _problem((2, 5, 6))
    net = _net((2, 5, 6), "groupnorm", dtype=np.float32)
    loss, grads = net.loss(X, y)
    assert np.isfinite(loss) and all(g.dtype == np.float32 for g in grads.values())
    assert net.loss(X).dtype == np.float32
    assert isinstance(net.norms["layer1"], normlab.GroupNorm)


def test_normlab_train_model_convnet_with_resume(tmp_path):
    import re

    from click.testing import CliRunner

    from normlab.cli import main

    def run(*args):
        fast = ["train", "--model", "convnet", "--conv-channels", "8,8", "--hidden-dims", "none", "--num-train", "300",
                "--batch-size", "50", "--quiet", "--normalization", "groupnorm", "--groups", "2", "--lr", "0.01"]
        return CliRunner().invoke(main, [*fast, *args], catch_exceptions=False)

    def value(output, label):
        return re.search(rf"^{label}\s+(.+)$", output, re.MULTILINE).group(1)

    straight = run("--epochs", "3")
    assert straight.exit_code == 0, straight.output
    assert value(straight.output, "net") == "conv [8, 8], hidden [], normalization groupnorm"
    assert float(value(straight.output, "best val acc").rstrip("%")) > 50  # digits: well above chance
    assert run("--epochs", "2", "--checkpoint-dir", str(tmp_path)).exit_code == 0
    resumed = run("--epochs", "3", "--checkpoint-dir", str(tmp_path), "--resume")
    assert value(resumed.output, "epochs") == "3 (18 iterations, resumed from epoch 2)"
    for label in ("final loss", "best val acc", r"test acc \(best\)"):
        assert value(resumed.output, label) == value(straight.output, label)
    for args, code, message in ((["--model", "fc", "--normalization", "groupnorm"], 2,
                                 "'groupnorm' is not one of the fc net's normalizations"),
                                (["--dropout", "0.5"], 1, "the convnet model has no dropout"),
                                (["--groups", "3"], 1, r"num_groups \(3\) must divide num_channels \(8\)")):
        result = CliRunner().invoke(main, ["train", "--model", "convnet", "--conv-channels", "8,8",
                                           "--normalization", "groupnorm", *args])
        assert result.exit_code == code and re.search(message, result.output), result.output
