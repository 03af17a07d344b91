"""Solver: learning, minibatch sampling, determinism, histories, progress output, validation."""

import io

import numpy as np
import pytest

from normlab.lab import FullyConnectedNet, Solver


def blobs(n=240, d=6, c=3, seed=0):
    """Well-separated Gaussian blobs: a tiny problem any working trainer solves."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((c, d))
    y = rng.integers(0, c, size=n)
    X = centres[y] + rng.standard_normal((n, d))
    cut = n * 3 // 4
    return {"X_train": X[:cut], "y_train": y[:cut], "X_val": X[cut:], "y_val": y[cut:]}


def small_net(normalization=None, **kw):
    return FullyConnectedNet([16, 16], 6, 3, normalization=normalization, weight_scale=0.1, seed=0, **kw)


@pytest.mark.parametrize("normalization", [None, "batchnorm", "layernorm"])
def test_solver_learns_and_keeps_histories(normalization):
    data = blobs()
    solver = Solver(small_net(normalization), data, optim_config={"learning_rate": 1e-2}, batch_size=20,
                    num_epochs=4, seed=0, verbose=False)
    solver.train()
    assert len(solver.loss_history) == 4 * (180 // 20)
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 4
    assert solver.best_val_acc == max(solver.val_acc_history) > 0.9
    assert np.mean(solver.loss_history[-5:]) < np.mean(solver.loss_history[:5])
    for k, v in solver.best_params.items():
        np.testing.assert_array_equal(solver.model.params[k], v)   # best params swapped in
    assert solver.train_time > 0


class RecordingModel:
    """A stand-in model that records which labels (sample ids) each training step saw."""

    def __init__(self):
        self.params = {"w": np.zeros(1)}
        self.batches = []

    def loss(self, X, y=None):
        if y is None:
            return np.zeros((X.shape[0], 2))
        self.batches.append(y.copy())
        return 0.0, {"w": np.zeros(1)}


def test_minibatches_are_drawn_without_replacement_each_epoch():
    ids = np.arange(23)
    data = {"X_train": np.zeros((23, 1)), "y_train": ids, "X_val": np.zeros((4, 1)), "y_val": np.zeros(4, int)}
    model = RecordingModel()
    Solver(model, data, update_rule="sgd", batch_size=5, num_epochs=3, seed=1, verbose=False).train()
    assert len(model.batches) == 3 * 4                       # 23 // 5 batches; 3 samples sit out each epoch
    epochs = [np.concatenate(model.batches[e * 4:(e + 1) * 4]) for e in range(3)]
    for seen in epochs:
        assert len(np.unique(seen)) == 20                    # no sample twice within an epoch
    assert not np.array_equal(epochs[0], epochs[1])          # a fresh order each epoch


def test_same_seed_same_run_other_seed_other_run():
    def run(seed):
        s = Solver(small_net("batchnorm", dropout=0.2), blobs(), batch_size=30, num_epochs=2, seed=seed,
                   verbose=False)
        s.train()
        return s
    a, b, c = run(3), run(3), run(4)
    assert a.loss_history == b.loss_history and a.val_acc_history == b.val_acc_history
    np.testing.assert_array_equal(a.model.params["W1"], b.model.params["W1"])
    assert a.loss_history != c.loss_history


def test_lr_decay_applies_per_epoch():
    s = Solver(small_net(), blobs(), update_rule="sgd_momentum", optim_config={"learning_rate": 0.1},
               lr_decay=0.5, batch_size=60, num_epochs=3, seed=0, verbose=False)
    s.train()
    assert all(st["learning_rate"] == pytest.approx(0.1 * 0.5**3) for st in s.optim_states.values())
    assert all(st["momentum"] == 0.9 for st in s.optim_states.values())


def test_train_accuracy_uses_a_subsample():
    data = blobs()
    s = Solver(small_net(), data, batch_size=60, num_epochs=1, seed=0, num_train_samples=7, verbose=False)
    evaluated, loss = [], s.model.loss

    def spy(X, y=None, **kw):
        if y is None:  # a test-mode evaluation
            evaluated.append(np.array(X))
        return loss(X, y, **kw)

    s.model.loss = spy
    s.train()
    train_rows = evaluated[0]  # the epoch's first evaluation is the train accuracy, then validation
    assert train_rows.shape == (7, 6)
    index = [int(np.flatnonzero((data["X_train"] == row).all(axis=1))[0]) for row in train_rows]
    assert len(set(index)) == 7  # drawn without replacement
    correct = np.argmax(loss(train_rows), axis=1) == data["y_train"][index]
    assert s.train_acc_history[0] == correct.mean()  # one epoch: the final model is the evaluated one
    assert evaluated[1].shape == data["X_val"].shape  # validation: every sample


def test_plain_progress_lines_when_not_a_terminal():
    out = io.StringIO()
    Solver(small_net(), blobs(), batch_size=20, num_epochs=2, seed=0, print_every=5, stream=out).train()
    lines = out.getvalue().splitlines()
    assert "(Iteration 5 / 18) loss:" in lines[0]
    assert sum(line.startswith("(Epoch ") for line in lines) == 2
    assert lines[-1].startswith("(Epoch 2 / 2) train acc:")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_rich_bar_on_a_terminal_and_silence_when_not_verbose():
    term = FakeTerminal()
    solver = Solver(small_net(), blobs(), batch_size=20, num_epochs=2, seed=0, stream=term).train()
    final_line = term.getvalue().split("\r")[-1]
    assert "epoch 2/2" in final_line and "18/18" in final_line and "(Iteration" not in term.getvalue()
    assert f"val acc {solver.val_acc_history[-1]:.3f}" in final_line   # the last epoch's, not the one before
    quiet = io.StringIO()
    Solver(small_net(), blobs(), batch_size=20, num_epochs=1, seed=0, stream=quiet, verbose=False).train()
    assert quiet.getvalue() == ""


def test_bad_arguments_are_rejected():
    data = blobs()
    with pytest.raises(ValueError, match="known: sgd, sgd_momentum, rmsprop, adam"):
        Solver(small_net(), data, update_rule="lbfgs")
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        Solver(small_net(), data, optim_config={"lr": 1e-3})
    with pytest.raises(ValueError, match="batch_size"):
        Solver(small_net(), data, batch_size=0)
    with pytest.raises(ValueError, match=r"missing \['X_val', 'y_val'\]"):
        Solver(small_net(), {"X_train": data["X_train"], "y_train": data["y_train"]})
    with pytest.raises(ValueError, match="y_train"):
        Solver(small_net(), {**data, "y_train": data["y_train"][:-1]})
    with pytest.raises(ValueError, match="num_train_samples"):
        Solver(small_net(), data, num_train_samples=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        Solver(small_net(), data, resume=True)
