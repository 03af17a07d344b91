"""``small-batch``: the Group Norm paper's figure in miniature, with the remedies for batch norm at small batches.

Wu & He (2018) train ResNet-50 on ImageNet with 32 down to 2 images per
GPU: batch norm's validation error climbs from 23.6 % to 34.7 %, group
norm's stays at 24.0-24.2 %. Here the same CNN as in ``convnet`` (MNIST-1D
by default) is trained with batch norm, group norm, batch renormalization
and ghost batch norm at batch sizes 64 down to 2, for the same number of
epochs, so every run sees the same number of examples (smaller batches take
more, noisier steps). Adam's learning rate follows the square-root rule,
``learning_rate * sqrt(b / ghost_batch_size)`` (the GN paper scales SGD's
linearly; for Adam a linear rule starves the small batches, measured: group
norm alone fell from 92 % to 72 % validation accuracy at batch 2). Ghost batch norm separates the two effects: it trains
with batches of ``ghost_batch_size`` (the optimizer's view of the largest
batch) and normalizes each chunk of b samples with that chunk's statistics,
as b images per GPU would be without synchronization.

Batch norm's eval mode uses running statistics, a moving average of the
training batches' statistics. After training, every net with running
statistics is also evaluated with precise statistics (``update_bn_stats``:
the population statistics of the training set, in batches of
``precise_batch_size``), which shows how much of the small-batch loss is
the running statistics' and how much the training's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import stats
from . import common, plots

NAME = "small-batch"
DESCRIPTION = ("Validation error against batch size (64 down to 2) for batch norm, group norm, batch "
               "renormalization and ghost batch norm in a small CNN, same number of examples seen; each net "
               "with running statistics also evaluated with precise (population) statistics.")
VARIANTS = ("batchnorm", "groupnorm", "batchrenorm", "ghostbatchnorm")
#: With running statistics, so precise BN applies.
RUNNING = ("batchnorm", "batchrenorm", "ghostbatchnorm")
#: Wu & He (2018), Figure 1 / Table 2: ResNet-50 on ImageNet, validation error (%) by images per GPU.
GN_PAPER = {"batch_sizes": [32, 16, 8, 4, 2], "batchnorm": [23.6, 23.7, 24.8, 27.3, 34.7],
            "groupnorm": [24.1, 24.2, 24.0, 24.2, 24.1]}

NOTES = ("The reference shape: Wu & He (2018) report ResNet-50 on ImageNet with validation error 23.6 / 23.7 / "
         "24.8 / 27.3 / 34.7 % for batch norm and 24.1 / 24.2 / 24.0 / 24.2 / 24.1 % for group norm at 32 / 16 / "
         "8 / 4 / 2 images per GPU (right panel). Those are their numbers on their data, shown for the shape of the "
         "curves, not as a claim about this data set or net.")


@dataclass(frozen=True)
class Config(common.CNNConfig):
    """batch_sizes: the x axis; ghost_batch_size: ghost batch norm's real batch (statistics per chunk of
    each batch size) and the batch at which the learning rate is ``learning_rate``; renorm_warmup_epochs:
    batch renorm is batch norm for the first of these epochs, then its limits rise to rmax, dmax over the
    second; precise_batch_size: the batches of the precise-BN pass."""

    epochs: int = 10
    seeds: int = 3
    batch_sizes: tuple = (64, 32, 16, 8, 4, 2)
    ghost_batch_size: int = 64
    rmax: float = 3.0
    dmax: float = 5.0
    renorm_warmup_epochs: tuple = (1, 2)
    precise_batch_size: int = 200

    def __post_init__(self):
        super().__post_init__()
        self._check("batch_sizes", common.check_positive_ints)
        for name in ("ghost_batch_size", "precise_batch_size"):
            self._check(name, common.check_positive_int)
        bad = [b for b in self.batch_sizes if b > self.ghost_batch_size or self.ghost_batch_size % b]
        if bad:
            raise ValueError(f"every batch size must divide ghost_batch_size {self.ghost_batch_size}, got {bad}")
        hold, ramp = self.renorm_warmup_epochs
        object.__setattr__(self, "renorm_warmup_epochs", (int(hold), int(ramp)))


def _model(config: Config, data: dict, variant: str, stats_batch: int, train_batch: int):
    """The CNN of ``variant`` trained at ``train_batch``; ghost batch norm's statistics per chunk of ``stats_batch``."""
    steps = len(data["y_train"]) // train_batch  # the Solver's steps per epoch: batch renorm's warm-up counts them
    hold, ramp = config.renorm_warmup_epochs
    return common.build_cnn(config, data, variant, virtual_batch_size=stats_batch, rmax=config.rmax,
                            dmax=config.dmax, warmup=(hold * steps, ramp * steps))


def learning_rate(config: Config, batch_size: int) -> float:
    """The square-root rule: ``learning_rate`` at ``ghost_batch_size``, times sqrt(batch_size / ghost_batch_size)."""
    return config.learning_rate * math.sqrt(batch_size / config.ghost_batch_size)


def _precise(model, data: dict, config: Config) -> dict:
    """Val and test accuracy after replacing the running statistics with the training set's population ones,
    and how far the running statistics were from those: per layer, the mean over channels of
    |running mean - mean| / std and of |running var / var - 1|."""
    from ..precise_bn import update_bn_stats

    running = {name: stats.copy() for name, stats in model.batch_stats.items()}
    X, size = data["X_train"], config.precise_batch_size
    update_bn_stats(model, (X[i:i + size] for i in range(0, len(X), size)))
    gap = {}
    for name, stats in model.batch_stats.items():
        std = np.sqrt(stats.var)
        gap[name] = {"mean": float(np.mean(np.abs(running[name].mean - stats.mean) / std)),
                     "var": float(np.mean(np.abs(running[name].var / stats.var - 1)))}
    return {"val_acc": common.accuracy(model, data, "val"), "test_acc": common.accuracy(model, data, "test"),
            "running_vs_population": gap}


def plan(config: Config, data: dict) -> list:
    """Every variant at every batch size, at one seed (ghost batch norm trains at ``ghost_batch_size``)."""
    n = len(data["y_train"])
    runs = []
    for b in config.batch_sizes:
        for variant in VARIANTS:
            train_batch = config.ghost_batch_size if variant == "ghostbatchnorm" else b
            label = f"{variant}, batch {train_batch}" + (f" in chunks of {b}" if train_batch != b else "")
            runs.append(common.Run((variant, b), label, common.run_cost(n, train_batch, config.epochs)))
    return runs


def train(config: Config, key: tuple, data: dict) -> dict:
    """One variant at batch size b (ghost batch norm: chunks of b), with ``precise`` where it applies."""
    variant, b = key
    train_batch = config.ghost_batch_size if variant == "ghostbatchnorm" else b
    model = _model(config, data, variant, b, train_batch)
    run = common.fit(model, data, learning_rate=learning_rate(config, train_batch), batch_size=train_batch,
                     epochs=config.epochs, seed=config.seed, update_rule=config.update_rule)
    if variant in RUNNING:
        run["precise"] = _precise(model, data, config)
    return run


def assemble(config: Config, runs: dict) -> dict:
    """One seed's ``variants[variant][str(b)]``: one run each."""
    return {variant: {str(b): runs[(variant, b)] for b in config.batch_sizes} for variant in VARIANTS}


def extras(config: Config, results: dict) -> dict:
    return {"gn_paper": GN_PAPER, "finding": finding(results["summary"]["variants"], config.batch_sizes),
            "notes": NOTES}


def errors(results: dict) -> dict:
    """label -> validation error (%) per batch size, a ``stats.describe`` each: each variant, and
    "<variant> (precise)" where it applies."""
    sizes = [str(b) for b in results["config"]["batch_sizes"]]
    summary = results["summary"]["variants"]
    out = {variant: [_error(runs[s]["best_val_acc"]) for s in sizes] for variant, runs in summary.items()}
    for variant in RUNNING:
        if variant in summary:
            out[f"{variant} (precise)"] = [_error(summary[variant][s]["precise"]["val_acc"]) for s in sizes]
    return out


def _error(accuracy: dict) -> dict:
    return stats.affine(accuracy, 100.0, -100.0)


def finding(summary: dict, batch_sizes) -> str:
    large, small = str(max(batch_sizes)), str(min(batch_sizes))

    def err(variant, size, key=None):
        run = summary[variant][size]
        return _error(run["best_val_acc"] if key is None else run["precise"][key])

    moves = "; ".join(f"{v} {stats.fmt(err(v, large), '.1f')} % -> {stats.fmt(err(v, small), '.1f')} % "
                      f"{stats.verdict(err(v, large), err(v, small))}" for v in VARIANTS)
    bn = summary["batchnorm"][small]
    gap = bn["precise"]["running_vs_population"]
    off = ", ".join(f"{100 * g['var']['mean']:.0f} %" for g in gap.values())
    return (f"Validation error from batch {large} to batch {small}: {moves}. At batch {small}, batch norm "
            f"evaluated with precise statistics instead of its running averages: validation error "
            f"{stats.fmt(err('batchnorm', small), '.1f')} % -> {stats.fmt(err('batchnorm', small, 'val_acc'), '.1f')} "
            f"%, test error {stats.fmt(_error(bn['test_acc']), '.1f')} % -> "
            f"{stats.fmt(_error(bn['precise']['test_acc']), '.1f')} % (its running variances were off the "
            f"population's by {off} on average in layers {', '.join(gap)}).")


def plot(results: dict, out_dir) -> list:
    cfg = results["config"]
    net = (f"CNN {list(cfg['conv_channels'])} on {cfg['dataset']}, {cfg['epochs']} epochs at every batch size b, "
           f"{cfg['update_rule']} lr {cfg['learning_rate']:g}·sqrt(b/{cfg['ghost_batch_size']})")
    fig = plots.figure_small_batch(cfg["batch_sizes"], errors(results), results["gn_paper"], net,
                                   cfg["ghost_batch_size"], precise=("batchnorm", "batchrenorm"))
    return [plots.save(fig, Path(out_dir) / "small_batch.png")]


def table(results: dict):
    by_label = errors(results)
    labels = list(by_label)
    headers = ("batch size", *(f"{label} val err %" for label in labels))
    rows = [(b, *(stats.fmt(by_label[label][i], ".1f") for label in labels))
            for i, b in enumerate(results["config"]["batch_sizes"])]
    return headers, rows
