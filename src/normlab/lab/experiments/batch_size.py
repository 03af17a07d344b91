"""``batch-size``: batch norm at several batch sizes against the baseline.

Batch norm normalizes with statistics of the minibatch, so its behaviour
depends on the batch size: a tiny batch gives noisy statistics in training
and running averages that match test-time inputs poorly. Each batch size is
trained with and without batch norm for the same number of epochs (so
smaller batches take more steps).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from . import common, plots

NAME = "batch-size"
DESCRIPTION = ("Batch norm at several batch sizes against the baseline (no normalization) at the same batch "
               "sizes: per-epoch curves, and best validation accuracy against batch size.")
VARIANTS = {"baseline": None, "batchnorm": "batchnorm"}


@dataclass(frozen=True)
class Config(common.SweepConfig):
    """batch_sizes: trained for both variants; reference_batch_size: the baseline drawn in the curves figure."""

    batch_sizes: tuple = (2, 5, 10, 50, 200)
    reference_batch_size: int = 50

    def __post_init__(self):
        super().__post_init__()
        if self.reference_batch_size not in self.batch_sizes:
            raise ValueError(f"reference_batch_size {self.reference_batch_size!r} must be one of the "
                             f"batch_sizes {self.batch_sizes}")


def run(config: Config, log: common.Log = print) -> dict:
    """Train both variants at every batch size; ``variants[label][str(batch_size)]`` is one run."""
    return common.sweep_batch_sizes(sys.modules[__name__], config, log)


def finding(runs, batch_sizes) -> str:
    wins = [bs for bs in batch_sizes
            if runs["batchnorm"][str(bs)]["best_val_acc"] > runs["baseline"][str(bs)]["best_val_acc"]]
    accs = ", ".join(f"{bs}: {runs['batchnorm'][str(bs)]['best_val_acc']:.3f}" for bs in batch_sizes)
    return (f"Batch norm beats the baseline's best validation accuracy at batch sizes "
            f"{', '.join(map(str, wins)) or 'none'} of {', '.join(map(str, batch_sizes))}. "
            f"Batch norm's best validation accuracy by batch size: {accs}.")


def by_batch_size(results: dict) -> dict:
    """label -> {metric: [value per batch size]} for the summary figure and table."""
    sizes = [str(bs) for bs in results["config"]["batch_sizes"]]
    return {label: {m: [float("nan") if r[s][m] is None else r[s][m] for s in sizes]
                    for m in ("best_val_acc", "final_train_loss")}
            for label, r in results["variants"].items()}


def plot(results: dict, out_dir) -> list:
    cfg = results["config"]
    ref = str(cfg["reference_batch_size"])
    curves = {f"baseline, batch {ref}": results["variants"]["baseline"][ref]}
    styles = {f"baseline, batch {ref}": {"color": "black", "linestyle": "--"}}
    sizes = cfg["batch_sizes"]
    for i, bs in enumerate(sizes):
        label = f"batchnorm, batch {bs}"
        curves[label] = results["variants"]["batchnorm"][str(bs)]
        styles[label] = {"color": _shade(i, len(sizes))}
    net = f"{len(cfg['hidden_dims'])} hidden layers of {cfg['hidden_dims'][0]} on {cfg['dataset']}"
    out_dir = Path(out_dir)
    return [
        plots.plot_histories(curves, out_dir / "batch_size_curves.png",
                             f"Batch norm at several batch sizes vs baseline: {net}", styles),
        plots.plot_by_batch_size(sizes, by_batch_size(results), out_dir / "batch_size_summary.png",
                                 f"Batch size: baseline vs batch norm, {net}, {cfg['epochs']} epochs"),
    ]


def _shade(i, n):
    from matplotlib import colormaps

    return colormaps["viridis"](0.1 + 0.8 * i / max(n - 1, 1))


def table(results: dict):
    headers = ("batch size", "baseline best val acc", "batchnorm best val acc", "baseline final loss",
               "batchnorm final loss")
    rows = []
    for bs in results["config"]["batch_sizes"]:
        b, n = results["variants"]["baseline"][str(bs)], results["variants"]["batchnorm"][str(bs)]
        rows.append((bs, f"{b['best_val_acc']:.3f}", f"{n['best_val_acc']:.3f}",
                     _loss(b["final_train_loss"]), _loss(n["final_train_loss"])))
    return headers, rows


def _loss(value):
    return "diverged" if value is None or value != value else f"{value:.3f}"
