"""What every experiment shares: the common config fields, the data, and one training run."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ... import _checks
from ..._checks import check_positive_int
from ..data import num_classes

#: A progress callback: one line per run. ``print`` in the CLI, a no-op or a list's append in tests.
Log = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True)
class BaseConfig:
    """Fields every experiment has; the CLI's --dataset/--epochs/--seed/--data-dir override them.

    num_train: keep at most this many training examples (None: all); handy on CIFAR-10.
    """

    dataset: str = "digits"
    epochs: int = 10
    seed: int = 0
    data_dir: str | None = None
    num_train: int | None = None

    def __post_init__(self):
        from ..data import DATASETS

        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known datasets: {', '.join(DATASETS)}")
        self._check("epochs", check_positive_int)
        self._check("seed", lambda v, name: _checks.check_seed(v, name, optional=False))
        if self.num_train is not None:
            self._check("num_train", check_positive_int)

    def _check(self, name: str, check) -> None:
        """Validate field ``name`` with ``check(value, name)`` and keep what it returns (plain ints stay JSON-able)."""
        object.__setattr__(self, name, check(getattr(self, name), name))


@dataclass(frozen=True)
class SweepConfig(BaseConfig):
    """The batch-size sweeps' fields: one deep net trained at every ``batch_sizes``."""

    hidden_dims: tuple = (100, 100, 100, 100, 100, 100)
    weight_scale: float = 2e-2
    update_rule: str = "adam"
    learning_rate: float = 1e-3
    batch_sizes: tuple = (2, 4, 8, 16)

    def __post_init__(self):
        super().__post_init__()
        self._check("hidden_dims", check_positive_ints)
        self._check("batch_sizes", check_positive_ints)


@dataclass(frozen=True)
class CNNConfig(BaseConfig):
    """The conv experiments' CNN, by default the MNIST-1D paper's: three stride-2 convolutions of 25
    channels with kernels 5, 3, 3, no pooling; groups: group norm's groups per layer; trained with
    ``update_rule`` at ``learning_rate`` (the paper's Adam at 1e-2)."""

    dataset: str = "mnist1d"
    conv_channels: tuple = (25, 25, 25)
    kernel_size: tuple = (5, 3, 3)
    stride: int = 2
    groups: int = 5
    update_rule: str = "adam"
    learning_rate: float = 1e-2

    def __post_init__(self):
        super().__post_init__()
        self._check("conv_channels", check_positive_ints)
        self._check("kernel_size", check_positive_ints)


def build_cnn(config: CNNConfig, data: dict, normalization: str, **options):
    """The config's CNN for ``data`` (one sample's shape from the dataset), seeded with ``config.seed``."""
    from .. import ConvNet
    from ..data import INPUT_SHAPES

    return ConvNet(INPUT_SHAPES[config.dataset], num_classes(data), list(config.conv_channels),
                   kernel_size=list(config.kernel_size), stride=config.stride, pool=None,
                   normalization=normalization, groups=config.groups, seed=config.seed, **options)


def check_positive_ints(values, name):
    """A non-empty sequence of positive integers, as a tuple of plain ints."""
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    return tuple(check_positive_int(v, f"{name} entries") for v in values)


def check_names(known: tuple[str, ...]):
    """A check (for ``BaseConfig._check``) of a non-empty sequence of names from ``known``, as a tuple."""
    def check(values, name):
        values = tuple(values)
        unknown = [v for v in values if v not in known]
        if not values or unknown:
            raise ValueError(f"{name} must be a non-empty sequence of {', '.join(known)}; got {values!r}")
        return values
    return check


@contextlib.contextmanager
def single_threaded():
    """Run the fused kernels and BLAS on one thread inside the block (both restored after).

    The conv nets' per-layer tensors are small: on a 2-core machine shared
    with other work, two Numba threads per kernel were measured 3-4x slower
    per training step than one, and so is multi-threaded BLAS in evaluation
    (the Solver keeps BLAS at one thread while it trains, for the same reason).
    """
    from threadpoolctl import threadpool_limits

    from ... import threads

    before = threads.get_num_threads()
    threads.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        threads.set_num_threads(before)


def epochs_to_reach(accuracies, threshold):
    """The first epoch (1-based) whose accuracy is >= threshold, or None if none is."""
    for epoch, acc in enumerate(accuracies, start=1):
        if acc >= threshold:
            return epoch
    return None


def load_data(config: BaseConfig) -> dict:
    """The config's dataset, split and centred with the config's seed."""
    from ..data import load_dataset

    return load_dataset(config.dataset, seed=config.seed, data_dir=config.data_dir, num_train=config.num_train)


def train_run(data: dict, *, hidden_dims, normalization, weight_scale, learning_rate, batch_size, epochs,
              seed, update_rule="adam", label="", log: Log = _quiet) -> dict:
    """Train one FullyConnectedNet with a Solver (see :func:`fit`) and return its histories as JSON-able lists.

    The model and the minibatch order are seeded with the same ``seed`` for
    every variant, so two variants of one experiment start from the same
    weights and see the same minibatches: they differ only in what the
    experiment varies.
    """
    from .. import FullyConnectedNet

    model = FullyConnectedNet(list(hidden_dims), data["X_train"].shape[1], num_classes(data),
                              normalization=normalization, weight_scale=float(weight_scale), seed=seed)
    return fit(model, data, learning_rate=learning_rate, batch_size=batch_size, epochs=epochs, seed=seed,
               update_rule=update_rule, label=label or normalization or "baseline", log=log)


def fit(model, data: dict, *, learning_rate, batch_size, epochs, seed, update_rule="adam", label="",
        log: Log = _quiet) -> dict:
    """Train ``model`` with a Solver seeded with ``seed``; the model ends with the best epoch's state.

    Returns ``loss`` (per iteration), ``epoch_loss`` (mean training loss per
    epoch), ``train_acc`` and ``val_acc`` (per epoch), ``best_val_acc``,
    ``final_train_loss`` (the last epoch's mean), ``test_acc`` (of the best
    epoch's parameters) and ``seconds`` (wall time, the only field that is not
    reproducible).
    """
    from .. import Solver

    solver = Solver(model, data, update_rule=update_rule, optim_config={"learning_rate": float(learning_rate)},
                    batch_size=int(batch_size), num_epochs=int(epochs), seed=seed, verbose=False)
    started = time.perf_counter()
    solver.train()
    seconds = time.perf_counter() - started
    loss = [float(v) for v in solver.loss_history]
    per_epoch = solver.iterations_per_epoch
    epoch_loss = [float(np.mean(loss[i:i + per_epoch])) for i in range(0, len(loss), per_epoch)]
    test_acc = accuracy(model, data, "test") if "X_test" in data else None  # the best epoch's parameters
    result = {
        "loss": loss,
        "epoch_loss": epoch_loss,
        "train_acc": [float(v) for v in solver.train_acc_history],
        "val_acc": [float(v) for v in solver.val_acc_history],
        "best_val_acc": float(solver.best_val_acc),
        "final_train_loss": epoch_loss[-1],
        "test_acc": test_acc,
        "batch_size": solver.batch_size,
        "iterations_per_epoch": per_epoch,
        "seconds": seconds,
    }
    log(f"{label}: best val acc {result['best_val_acc']:.3f}, "
        f"final train loss {result['final_train_loss']:.3f}, test acc {_fmt(test_acc)} ({seconds:.1f} s)")
    return result


def accuracy(model, data: dict, split: str) -> float:
    """Test-mode accuracy of ``model`` on ``data``'s split ("train", "val" or "test")."""
    return float(np.mean(model.predict(data[f"X_{split}"]) == data[f"y_{split}"]))


def sweep_batch_sizes(module, config, log: Log = _quiet) -> dict:
    """Train each of ``module.VARIANTS`` at every ``config.batch_sizes``: the batch-size sweeps.

    Returns the results dict of experiment ``module`` (its NAME, DESCRIPTION and
    ``finding(runs, batch_sizes)``), with ``variants[label][str(batch_size)]`` one run.
    """
    from dataclasses import asdict

    started = time.perf_counter()
    data = load_data(config)
    runs = {label: {} for label in module.VARIANTS}
    for bs in config.batch_sizes:
        for label, normalization in module.VARIANTS.items():
            runs[label][str(bs)] = train_run(
                data, hidden_dims=config.hidden_dims, normalization=normalization, weight_scale=config.weight_scale,
                learning_rate=config.learning_rate, batch_size=bs, epochs=config.epochs, seed=config.seed,
                update_rule=config.update_rule, label=f"{label}, batch {bs}", log=log)
    return {
        "experiment": module.NAME,
        "description": module.DESCRIPTION,
        "config": asdict(config),
        "data": data_summary(data),
        "variants": runs,
        "finding": module.finding(runs, config.batch_sizes),
        "timing": {"seconds": time.perf_counter() - started},
    }


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def data_summary(data: dict) -> dict:
    """Sizes of the splits, for results.json."""
    return {"num_train": int(len(data["y_train"])), "num_val": int(len(data["y_val"])),
            "num_test": int(len(data["y_test"])), "features": int(data["X_train"].shape[1]),
            "classes": num_classes(data)}


def strip_timing(results):
    """results without its wall-time fields (``seconds``, ``timing``): what reruns must reproduce exactly."""
    if isinstance(results, dict):
        return {k: strip_timing(v) for k, v in results.items() if k not in ("seconds", "timing")}
    if isinstance(results, list):
        return [strip_timing(v) for v in results]
    return results
