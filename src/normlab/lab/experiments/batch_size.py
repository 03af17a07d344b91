"""``batch-size``: batch norm at several batch sizes against the baseline.

Batch norm normalizes with statistics of the minibatch, so its behaviour
depends on the batch size: a tiny batch gives noisy statistics in training
and running averages that match test-time inputs poorly. Each batch size is
trained with and without batch norm for the same number of epochs (so
smaller batches take more steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import stats
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


SWEEP = common.Sweep(VARIANTS, ("batchnorm", "baseline"), ("batch norm", "the baseline"))
plan, train, assemble, extras, finding = SWEEP.plan, SWEEP.train, SWEEP.assemble, SWEEP.extras, SWEEP.finding


def by_batch_size(results: dict) -> dict:
    """label -> {metric: [stats.describe per batch size]} for the summary figure."""
    sizes = [str(bs) for bs in results["config"]["batch_sizes"]]
    return {label: {m: [runs[s][m] for s in sizes] for m in ("best_val_acc", "final_train_loss")}
            for label, runs in results["summary"]["variants"].items()}


def plot(results: dict, out_dir) -> list:
    cfg = results["config"]
    ref = str(cfg["reference_batch_size"])
    curves = {f"baseline, batch {ref}": common.seed_runs(results, "baseline", ref)}
    styles = {f"baseline, batch {ref}": {"color": "black", "linestyle": "--"}}
    sizes = cfg["batch_sizes"]
    for i, bs in enumerate(sizes):
        label = f"batchnorm, batch {bs}"
        curves[label] = common.seed_runs(results, "batchnorm", str(bs))
        styles[label] = {"color": _shade(i, len(sizes))}
    net = f"{len(cfg['hidden_dims'])} hidden layers of {cfg['hidden_dims'][0]} on {cfg['dataset']}"
    out_dir = Path(out_dir)
    return [
        plots.save(plots.figure_histories(curves, f"Batch norm at several batch sizes vs baseline: {net}", styles),
                   out_dir / "batch_size_curves.png"),
        plots.save(plots.figure_by_batch_size(sizes, by_batch_size(results),
                                              f"Batch size: baseline vs batch norm, {net}, {cfg['epochs']} epochs"),
                   out_dir / "batch_size_summary.png"),
    ]


def _shade(i, n):
    from matplotlib import colormaps

    return colormaps["viridis"](0.1 + 0.8 * i / max(n - 1, 1))


def table(results: dict):
    headers = ("batch size", "baseline best val acc", "batchnorm best val acc", "baseline final loss",
               "batchnorm final loss")
    rows = []
    for bs in results["config"]["batch_sizes"]:
        b, n = (results["summary"]["variants"][label][str(bs)] for label in ("baseline", "batchnorm"))
        rows.append((bs, stats.fmt(b["best_val_acc"]), stats.fmt(n["best_val_acc"]),
                     stats.fmt(b["final_train_loss"], none="diverged"),
                     stats.fmt(n["final_train_loss"], none="diverged")))
    return headers, rows
