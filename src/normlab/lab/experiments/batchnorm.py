"""``batchnorm``: a deep fully-connected net trained with and without batch norm.

The two variants share everything (weights at initialization, minibatch
order, optimizer, learning rate) except the normalization. The default weight
scale is small enough that the plain deep net's signal shrinks layer by layer
and it learns slowly, but not so small that it cannot learn at all; batch norm
rescales every layer's pre-activations and trains at once.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

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


def run(config: Config, log: common.Log = print) -> dict:
    """Train both variants; returns the results dict that results.json holds."""
    started = time.perf_counter()
    data = common.load_data(config)
    runs = {}
    for label, normalization in VARIANTS.items():
        runs[label] = common.train_run(
            data, hidden_dims=config.hidden_dims, normalization=normalization, weight_scale=config.weight_scale,
            learning_rate=config.learning_rate, batch_size=config.batch_size, epochs=config.epochs,
            seed=config.seed, update_rule=config.update_rule, label=label, log=log)
        runs[label]["epochs_to_reach"] = common.epochs_to_reach(runs[label]["val_acc"], config.reach)
    return {
        "experiment": NAME,
        "description": DESCRIPTION,
        "config": asdict(config),
        "data": common.data_summary(data),
        "variants": runs,
        "finding": finding(runs, config),
        "timing": {"seconds": time.perf_counter() - started},
    }


def finding(runs: dict, config: Config) -> str:
    """One sentence on what the numbers show, from the numbers (never a fixed claim)."""
    base, bn = runs["baseline"], runs["batchnorm"]
    faster = _reach_phrase(bn["epochs_to_reach"], base["epochs_to_reach"], config.reach)
    better = "higher" if bn["best_val_acc"] > base["best_val_acc"] else (
        "equal" if bn["best_val_acc"] == base["best_val_acc"] else "lower")
    return (f"Batch norm's best validation accuracy is {better} than the baseline's "
            f"({bn['best_val_acc']:.3f} vs {base['best_val_acc']:.3f}); {faster}")


def _reach_phrase(bn_epoch, base_epoch, reach):
    def at(epoch):
        return "never" if epoch is None else f"at epoch {epoch}"

    return f"it reaches {reach:.0%} validation accuracy {at(bn_epoch)}, the baseline {at(base_epoch)}."


def plot(results: dict, out_dir) -> list:
    """One figure: loss, train accuracy and val accuracy per epoch for both variants."""
    cfg = results["config"]
    depth = len(cfg["hidden_dims"])
    title = (f"{depth} hidden layers of {cfg['hidden_dims'][0]} on {cfg['dataset']}, weight scale "
             f"{cfg['weight_scale']:g}, {cfg['update_rule']} lr {cfg['learning_rate']:g}, batch {cfg['batch_size']}")
    return [plots.plot_histories(results["variants"], Path(out_dir) / "batchnorm.png", title)]


def table(results: dict):
    """Key numbers: one row per variant."""
    reach = results["config"]["reach"]
    headers = ("variant", "best val acc", "final train loss", "test acc", f"first epoch with val acc >= {reach:g}")
    rows = []
    for label, r in results["variants"].items():
        rows.append((label, f"{r['best_val_acc']:.3f}", f"{r['final_train_loss']:.3f}",
                     "n/a" if r["test_acc"] is None else f"{r['test_acc']:.3f}",
                     "never" if r["epochs_to_reach"] is None else r["epochs_to_reach"]))
    return headers, rows
