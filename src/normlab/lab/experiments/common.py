"""What every experiment shares: the common config fields, the data, one training run, the batch-size sweeps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from ... import _checks
from ..._checks import check_positive_int
from .. import stats
from ..data import num_classes

#: A progress callback: one line at a time. ``print`` in the CLI, a list's append in tests.
Log = Callable[[str], None]


class Run(NamedTuple):
    """One training run of one seed, as an experiment's ``plan`` lists it: key identifies it within the
    seed (JSON-able), label names it in progress lines, cost is relative (see :func:`run_cost`)."""

    key: tuple
    label: str
    cost: float


@dataclass(frozen=True)
class BaseConfig:
    """Fields every experiment has; the CLI's --dataset/--epochs/--seed/--seeds/--data-dir override them.

    seed, seeds: every configuration is trained with seeds ``seed`` .. ``seed + seeds - 1``; each seeds
        the data split, the initial weights and the minibatch order of its runs.
    num_train: keep at most this many training examples (None: all); handy on CIFAR-10.
    """

    dataset: str = "digits"
    epochs: int = 10
    seed: int = 0
    seeds: int = 1
    data_dir: str | None = None
    num_train: int | None = None

    def __post_init__(self):
        from ..data import DATASETS

        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known datasets: {', '.join(DATASETS)}")
        self._check("epochs", check_positive_int)
        self._check("seeds", check_positive_int)
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


def epochs_to_reach(accuracies, threshold):
    """The first epoch (1-based) whose accuracy is >= threshold, or None if none is."""
    for epoch, acc in enumerate(accuracies, start=1):
        if acc >= threshold:
            return epoch
    return None


def run_cost(num_train: int, batch_size: int, epochs: int) -> float:
    """A run's relative cost, for scheduling and the ETA: its steps, each a fixed overhead plus its samples.

    (Measured on the MNIST-1D CNN, CPU time per step: 1.3 ms at batch 2, 3.1 ms at 32, 4.5 ms at 64.)
    """
    return epochs * max(num_train // batch_size, 1) * (1.0 + batch_size / 32)


def train_run(data: dict, *, hidden_dims, normalization, weight_scale, learning_rate, batch_size, epochs,
              seed, update_rule="adam") -> dict:
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
               update_rule=update_rule)


def fit(model, data: dict, *, learning_rate, batch_size, epochs, seed, update_rule="adam") -> dict:
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
    return result


def describe_run(run: dict) -> str:
    """A run's key numbers on one line, for the progress display."""
    test = "n/a" if run.get("test_acc") is None else f"{run['test_acc']:.3f}"
    return (f"best val acc {run['best_val_acc']:.3f}, final train loss {run['final_train_loss']:.3f}, "
            f"test acc {test} ({run['seconds']:.1f} s)")


def accuracy(model, data: dict, split: str) -> float:
    """Test-mode accuracy of ``model`` on ``data``'s split ("train", "val" or "test")."""
    return float(np.mean(model.predict(data[f"X_{split}"]) == data[f"y_{split}"]))


class Sweep:
    """The batch-size sweeps (``batch-size``, ``layernorm``): each of ``variants`` (label -> normalization)
    trained at every ``config.batch_sizes``; one seed's ``variants[label][str(batch_size)]`` is one run.
    The finding compares ``compared = (label, reference label)``, called ``names`` in its text."""

    def __init__(self, variants: dict, compared: tuple[str, str], names: tuple[str, str]):
        self.variants, self.compared, self.names = variants, compared, names

    def plan(self, config, data) -> list:
        n = len(data["y_train"])
        return [Run((label, bs), f"{label}, batch {bs}", run_cost(n, bs, config.epochs))
                for bs in config.batch_sizes for label in self.variants]

    def train(self, config, key, data) -> dict:
        label, bs = key
        return train_run(data, hidden_dims=config.hidden_dims, normalization=self.variants[label],
                         weight_scale=config.weight_scale, learning_rate=config.learning_rate, batch_size=bs,
                         epochs=config.epochs, seed=config.seed, update_rule=config.update_rule)

    def assemble(self, config, runs: dict) -> dict:
        return {label: {str(bs): runs[(label, bs)] for bs in config.batch_sizes} for label in self.variants}

    def extras(self, config, results: dict) -> dict:
        return {"finding": self.finding(results["summary"]["variants"], config.batch_sizes)}

    def finding(self, summary: dict, batch_sizes) -> str:
        """Best val accuracy of the compared pair per batch size, and where one is ahead beyond the spread."""
        (a, b), (name, other) = self.compared, self.names
        pairs = {bs: (summary[a][str(bs)]["best_val_acc"], summary[b][str(bs)]["best_val_acc"]) for bs in batch_sizes}
        accs = ", ".join(f"batch {bs}: {stats.fmt(x)} vs {stats.fmt(y)}" for bs, (x, y) in pairs.items())
        ahead = {bs: p for bs, p in pairs.items() if p[0]["mean"] > p[1]["mean"]}
        behind = {bs: p for bs, p in pairs.items() if p[0]["mean"] < p[1]["mean"]}
        return (f"Best validation accuracy, {name} vs {other}: {accs}. The mean of {name} is ahead at batch sizes "
                f"{sizes_text(ahead)} ({stats.beyond_text(ahead)}) and behind at {sizes_text(behind)} "
                f"({stats.beyond_text(behind)}).")


def sizes_text(sizes) -> str:
    """'2, 4, 8', or 'none'."""
    return ", ".join(map(str, sizes)) or "none"


def seed_runs(results: dict, *path) -> list:
    """What every seed holds at ``variants[path[0]][path[1]]...``: one entry per seed, in seed order."""
    out = []
    for seed in results["runs"]:
        value = seed["variants"]
        for key in path:
            value = value[key]
        out.append(value)
    return out


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
