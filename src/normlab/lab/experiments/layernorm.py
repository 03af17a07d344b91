"""``layernorm``: layer norm vs batch norm across small batch sizes.

Layer norm normalizes each example over its features, so it does not care
how many examples share a batch; batch norm normalizes each feature over the
batch, so with only a few examples its statistics are noise. At small batch
sizes layer norm should keep training well while batch norm degrades.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from . import batch_size as _bs
from . import common, plots

NAME = "layernorm"
DESCRIPTION = ("Layer norm vs batch norm across small batch sizes: best validation accuracy against batch size, "
               "and per-epoch curves at the smallest batch size.")
VARIANTS = {"batchnorm": "batchnorm", "layernorm": "layernorm"}


@dataclass(frozen=True)
class Config(common.SweepConfig):
    batch_sizes: tuple = (2, 4, 8, 16)


def run(config: Config, log: common.Log = print) -> dict:
    """Train both norms at every batch size; ``variants[label][str(batch_size)]`` is one run."""
    return common.sweep_batch_sizes(sys.modules[__name__], config, log)


def finding(runs, batch_sizes) -> str:
    pairs = ", ".join(f"batch {bs}: {runs['layernorm'][str(bs)]['best_val_acc']:.3f} vs "
                      f"{runs['batchnorm'][str(bs)]['best_val_acc']:.3f}" for bs in batch_sizes)
    wins = [bs for bs in batch_sizes
            if runs["layernorm"][str(bs)]["best_val_acc"] > runs["batchnorm"][str(bs)]["best_val_acc"]]
    return (f"Best validation accuracy, layer norm vs batch norm: {pairs}. Layer norm is ahead at batch sizes "
            f"{', '.join(map(str, wins)) or 'none'}.")


def plot(results: dict, out_dir) -> list:
    cfg = results["config"]
    smallest = str(min(cfg["batch_sizes"]))
    curves = {label: results["variants"][label][smallest] for label in VARIANTS}
    net = f"{len(cfg['hidden_dims'])} hidden layers of {cfg['hidden_dims'][0]} on {cfg['dataset']}"
    out_dir = Path(out_dir)
    return [
        plots.plot_by_batch_size(cfg["batch_sizes"], _bs.by_batch_size(results), out_dir / "layernorm_summary.png",
                                 f"Layer norm vs batch norm by batch size: {net}, {cfg['epochs']} epochs"),
        plots.plot_histories(curves, out_dir / "layernorm_curves.png",
                             f"Layer norm vs batch norm at batch size {smallest}: {net}"),
    ]


def table(results: dict):
    headers = ("batch size", "batchnorm best val acc", "layernorm best val acc", "batchnorm test acc",
               "layernorm test acc")
    rows = []
    for bs in results["config"]["batch_sizes"]:
        b, n = results["variants"]["batchnorm"][str(bs)], results["variants"]["layernorm"][str(bs)]
        rows.append((bs, f"{b['best_val_acc']:.3f}", f"{n['best_val_acc']:.3f}", _acc(b["test_acc"]),
                     _acc(n["test_acc"])))
    return headers, rows


def _acc(value):
    return "n/a" if value is None else f"{value:.3f}"
