"""``layernorm``: layer norm vs batch norm across small batch sizes.

Layer norm normalizes each example over its features, so it does not care
how many examples share a batch; batch norm normalizes each feature over the
batch, so with only a few examples its statistics are noise. At small batch
sizes layer norm should keep training well while batch norm degrades.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import stats
from . import batch_size as _bs
from . import common, plots

NAME = "layernorm"
DESCRIPTION = ("Layer norm vs batch norm across small batch sizes: best validation accuracy against batch size, "
               "and per-epoch curves at the smallest batch size.")
VARIANTS = {"batchnorm": "batchnorm", "layernorm": "layernorm"}


@dataclass(frozen=True)
class Config(common.SweepConfig):
    batch_sizes: tuple = (2, 4, 8, 16)


SWEEP = common.Sweep(VARIANTS, ("layernorm", "batchnorm"), ("layer norm", "batch norm"))
plan, train, assemble, extras, finding = SWEEP.plan, SWEEP.train, SWEEP.assemble, SWEEP.extras, SWEEP.finding


def plot(results: dict, out_dir) -> list:
    cfg = results["config"]
    smallest = str(min(cfg["batch_sizes"]))
    curves = {label: common.seed_runs(results, label, smallest) for label in VARIANTS}
    net = f"{len(cfg['hidden_dims'])} hidden layers of {cfg['hidden_dims'][0]} on {cfg['dataset']}"
    out_dir = Path(out_dir)
    return [
        plots.save(plots.figure_by_batch_size(cfg["batch_sizes"], _bs.by_batch_size(results),
                                              f"Layer norm vs batch norm by batch size: {net}, {cfg['epochs']} epochs"),
                   out_dir / "layernorm_summary.png"),
        plots.save(plots.figure_histories(curves, f"Layer norm vs batch norm at batch size {smallest}: {net}"),
                   out_dir / "layernorm_curves.png"),
    ]


def table(results: dict):
    headers = ("batch size", "batchnorm best val acc", "layernorm best val acc", "batchnorm test acc",
               "layernorm test acc")
    rows = []
    for bs in results["config"]["batch_sizes"]:
        b, n = (results["summary"]["variants"][label][str(bs)] for label in ("batchnorm", "layernorm"))
        rows.append((bs, stats.fmt(b["best_val_acc"]), stats.fmt(n["best_val_acc"]), stats.fmt(b["test_acc"]),
                     stats.fmt(n["test_acc"])))
    return headers, rows
