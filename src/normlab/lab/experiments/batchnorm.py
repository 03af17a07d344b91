"""``batchnorm``: a deep fully-connected net trained with and without batch norm.

The two variants share everything (weights at initialization, minibatch
order, optimizer, learning rate) except the normalization. The default weight
scale is small enough that the plain deep net's signal shrinks layer by layer
and it learns slowly, but not so small that it cannot learn at all; batch norm
rescales every layer's pre-activations and trains at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import stats
from . import common, plots

NAME = "batchnorm"
DESCRIPTION = ("A deep fully-connected net, baseline (no normalization) vs batch norm: training loss, "
               "train accuracy and validation accuracy per epoch. Same initial weights and minibatches.")
VARIANTS = {"baseline": None, "batchnorm": "batchnorm"}


@dataclass(frozen=True)
class Config(common.BaseConfig):
    """hidden_dims: widths of the hidden layers; weight_scale: std of the initial weights.

    reach: the validation accuracy whose first epoch the report quotes ("epochs to reach").
    """

    epochs: int = 15
    hidden_dims: tuple = (100, 100, 100, 100, 100, 100)
    weight_scale: float = 2e-2
    update_rule: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 50
    reach: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        self._check("hidden_dims", common.check_positive_ints)
        self._check("batch_size", common.check_positive_int)


def plan(config: Config, data: dict) -> list:
    """Both variants, at one seed."""
    cost = common.run_cost(len(data["y_train"]), config.batch_size, config.epochs)
    return [common.Run((label,), label, cost) for label in VARIANTS]


def train(config: Config, key: tuple, data: dict) -> dict:
    """One variant at ``config.seed``, with the first epoch that reaches ``config.reach``."""
    (label,) = key
    run = common.train_run(data, hidden_dims=config.hidden_dims, normalization=VARIANTS[label],
                           weight_scale=config.weight_scale, learning_rate=config.learning_rate,
                           batch_size=config.batch_size, epochs=config.epochs, seed=config.seed,
                           update_rule=config.update_rule)
    run["epochs_to_reach"] = common.epochs_to_reach(run["val_acc"], config.reach)
    return run


def assemble(config: Config, runs: dict) -> dict:
    return {label: runs[(label,)] for label in VARIANTS}


def extras(config: Config, results: dict) -> dict:
    return {"finding": finding(results["summary"]["variants"], config)}


def finding(summary: dict, config: Config) -> str:
    """What the numbers show, from the numbers (never a fixed claim): means over the seeds and their spread."""
    base, bn = summary["baseline"], summary["batchnorm"]
    better = "higher" if bn["best_val_acc"]["mean"] > base["best_val_acc"]["mean"] else "not higher"
    return (f"Batch norm's best validation accuracy is {better} than the baseline's: "
            f"{stats.fmt(bn['best_val_acc'])} vs {stats.fmt(base['best_val_acc'])} "
            f"{stats.verdict(bn['best_val_acc'], base['best_val_acc'])}. First epoch with validation accuracy "
            f">= {config.reach:g}: batch norm {_reach(bn)}, baseline {_reach(base)}.")


def _reach(summary: dict) -> str:
    reach = summary["epochs_to_reach"]
    return "never" if reach is None else stats.fmt(reach, ".1f")


def plot(results: dict, out_dir) -> list:
    """One figure: loss, train accuracy and val accuracy per epoch for both variants, mean and spread over seeds."""
    cfg = results["config"]
    depth = len(cfg["hidden_dims"])
    title = (f"{depth} hidden layers of {cfg['hidden_dims'][0]} on {cfg['dataset']}, weight scale "
             f"{cfg['weight_scale']:g}, {cfg['update_rule']} lr {cfg['learning_rate']:g}, batch {cfg['batch_size']}")
    curves = {label: common.seed_runs(results, label) for label in VARIANTS}
    return [plots.save(plots.figure_histories(curves, title), Path(out_dir) / "batchnorm.png")]


def table(results: dict):
    """Key numbers: one row per variant, each "mean ± std (seeds)"."""
    reach = results["config"]["reach"]
    headers = ("variant", "best val acc", "final train loss", "test acc", f"first epoch with val acc >= {reach:g}")
    rows = []
    for label, r in results["summary"]["variants"].items():
        rows.append((label, stats.fmt(r["best_val_acc"]), stats.fmt(r["final_train_loss"]), stats.fmt(r["test_acc"]),
                     _reach(r)))
    return headers, rows
