"""The experiments' figures, drawn with matplotlib's Agg renderer: the mean over seeds with its spread.

Every curve is the mean over the seeds with one shaded band around it (min
to max for up to three seeds, ±1 std beyond: ``normlab.lab.stats.spread``),
and the legend says which; bars carry error bars of the same spread. With
one seed there is no band.

Figures are built with ``matplotlib.figure.Figure`` and never through
``pyplot``, so plotting touches no global state (no backend switch, no open
figures left behind) and needs no display. Each ``figure_*`` function
returns the Figure; :func:`save` writes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import stats

#: Colours of the named variants, so one variant looks the same in every figure.
VARIANT_COLORS = {"baseline": "#d62728", "batchnorm": "#1f77b4", "layernorm": "#2ca02c", "groupnorm": "#ff7f0e",
                  "batchrenorm": "#9467bd", "ghostbatchnorm": "#8c564b", "instancenorm": "#e377c2",
                  "logistic": "#7f7f7f", "mlp": "#d62728", "cnn": "#17becf", "cnn + batchnorm": "#1f77b4",
                  "cnn + groupnorm": "#ff7f0e", "cnn + layernorm": "#2ca02c", "cnn + instancenorm": "#e377c2",
                  "cnn + batchrenorm": "#9467bd"}
BAND_ALPHA = 0.2


def _figure(ncols, width=5.0, height=4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, np.atleast_1d(axes)


def save(fig, path) -> Path:
    """Write ``fig`` as PNG to ``path`` (its directory created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _columns(points: list):
    """A list of ``stats.describe`` dicts (None where no value) -> (means, (lows, highs) or None, n)."""
    means = _nan([None if p is None else p["mean"] for p in points])
    bands = [stats.spread(p) for p in points]
    n = max((p["n"] for p in points if p is not None), default=0)
    if all(b is None for b in bands):
        return means, None, n
    return means, (_nan([b and b[0] for b in bands]), _nan([b and b[1] for b in bands])), n


def curve(ax, x, means, band, *, color, label, **style) -> None:
    """The mean as a line with markers and, given (lows, highs), one shaded band in its colour."""
    ax.plot(x, means, color=color, label=label, **{"marker": "o", "markersize": 3, **style})
    if band is not None:
        ax.fill_between(x, band[0], band[1], color=color, alpha=BAND_ALPHA, linewidth=0)


def legend(ax, n: int, **kwargs) -> None:
    """The axes' legend, with a last entry saying what the bands are (none for one seed)."""
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    if n > 1:
        handles.append(Patch(facecolor="0.5", alpha=BAND_ALPHA + 0.1, linewidth=0))
        labels.append(f"band: {stats.spread_name(n)}")
    ax.legend(handles, labels, **{"fontsize": "small", **kwargs})


def figure_histories(curves: dict, title: str, styles: dict | None = None):
    """Training loss, train accuracy and val accuracy against epochs: per curve, the mean over seeds and its band.

    curves: label -> the seeds' runs from ``common.fit`` (``loss``, ``epoch_loss``,
        ``train_acc``, ``val_acc``, ``iterations_per_epoch``).
    styles: label -> matplotlib line keywords (color, linestyle, ...).
    The loss panel also shows each iteration's loss (mean over seeds) faintly,
    on one epoch axis, so runs with different batch sizes line up.
    """
    styles = styles or {}
    fig, (ax_loss, ax_train, ax_val) = _figure(3, width=4.6)
    n = 0
    for i, (label, runs) in enumerate(curves.items()):
        style = {"color": VARIANT_COLORS.get(label, f"C{i}"), **styles.get(label, {})}
        color = style.pop("color")
        epochs = np.arange(1, len(runs[0]["val_acc"]) + 1)
        iters = np.arange(1, len(runs[0]["loss"]) + 1) / runs[0]["iterations_per_epoch"]
        ax_loss.plot(iters, np.mean(_nan_rows([r["loss"] for r in runs]), axis=0), color=color, alpha=0.15,
                     linewidth=0.6)
        for ax, key in ((ax_loss, "epoch_loss"), (ax_train, "train_acc"), (ax_val, "val_acc")):
            series = stats.describe_series([r[key] for r in runs])
            band = stats.series_spread(series)
            curve(ax, epochs, _nan(series["mean"]), band and (_nan(band[0]), _nan(band[1])), color=color,
                  label=label, **style)
        n = max(n, len(runs))
    ax_loss.set(title="Training loss", xlabel="epoch", ylabel="cross-entropy loss")
    ax_loss.set_yscale("log")
    ax_train.set(title="Train accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax_val.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_train, ax_val):
        ax.grid(True, alpha=0.3)
    legend(ax_val, n, loc="lower right")
    ax_loss.text(0.98, 0.98, "faint: per iteration; bold: epoch mean", transform=ax_loss.transAxes,
                 ha="right", va="top", fontsize="x-small", color="0.4")
    fig.suptitle(title)
    return fig


def _nan_rows(rows) -> np.ndarray:
    return np.array([_nan(r) for r in rows], dtype=float)


def figure_weight_scale(scales, curves: dict, title: str, chance: float | None = None):
    """Best val accuracy and final training loss against the weight-initialization scale (log x).

    curves: label -> {"best_val_acc": [...], "final_train_loss": [...]}, one ``stats.describe`` per scale.
    The loss axis is logarithmic: a baseline at a bad scale can be many orders larger.
    """
    fig, (ax_acc, ax_loss) = _figure(2, width=5.4)
    n = _draw_metrics(scales, curves, ax_acc, ax_loss)
    if chance is not None:
        ax_acc.axhline(chance, color="0.5", linestyle=":", linewidth=1, label="chance")
    ax_acc.set(title="Best validation accuracy", xlabel="weight initialization scale (std)",
               ylabel="accuracy", ylim=(0, 1.02))
    ax_loss.set(title="Final training loss (last epoch mean)", xlabel="weight initialization scale (std)",
                ylabel="cross-entropy loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ax_loss.set_yscale("log")
    legend(ax_acc, n, loc="center left", bbox_to_anchor=(0.0, 0.35))
    legend(ax_loss, n, loc="upper left")
    fig.suptitle(title)
    return fig


def _draw_metrics(x, curves: dict, ax_acc, ax_loss) -> int:
    """best_val_acc on ax_acc and final_train_loss on ax_loss, per curve; returns the most seeds of any point."""
    n = 0
    for i, (label, metrics) in enumerate(curves.items()):
        color = VARIANT_COLORS.get(label, f"C{i}")
        for ax, key in ((ax_acc, "best_val_acc"), (ax_loss, "final_train_loss")):
            means, band, seeds = _columns(metrics[key])
            curve(ax, x, means, band, color=color, label=label, markersize=4)
            n = max(n, seeds)
    return n


def figure_by_batch_size(batch_sizes, curves: dict, title: str):
    """Best val accuracy and final training loss against batch size (log x), one curve per normalization.

    curves: label -> {"best_val_acc": [...], "final_train_loss": [...]}, one ``stats.describe`` per batch size.
    """
    fig, (ax_acc, ax_loss) = _figure(2, width=5.0)
    n = _draw_metrics(batch_sizes, curves, ax_acc, ax_loss)
    ax_acc.set(title="Best validation accuracy", xlabel="batch size", ylabel="accuracy", ylim=(0, 1.02))
    ax_loss.set(title="Final training loss (last epoch mean)", xlabel="batch size", ylabel="cross-entropy loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xscale("log")
        ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    ax_loss.set_yscale("log")
    legend(ax_acc, n, loc="lower right")
    fig.suptitle(title)
    return fig


def figure_accuracy_bars(labels, ours: list, reference, title: str, reference_label: str = "paper"):
    """Horizontal bars of our mean test accuracies (``stats.describe`` each) with error bars of their
    spread, and a reference accuracy marked across each bar (dashed)."""
    fig, (ax,) = _figure(1, width=8.5, height=0.55 * len(labels) + 2.0)
    rows = np.arange(len(labels))[::-1]
    colors = [VARIANT_COLORS.get(label, f"C{i}") for i, label in enumerate(labels)]
    means, band, n = _columns(ours)
    ax.barh(rows, means, color=colors, alpha=0.85, label="ours (test, mean)")
    if band is not None:
        ax.errorbar(means, rows, xerr=[means - band[0], band[1] - means], fmt="none", ecolor="black",
                    elinewidth=1.5, capsize=5, label=f"ours: {stats.spread_name(n)}")
    ax.vlines(reference, rows - 0.42, rows + 0.42, colors="0.15", linestyles="--", linewidth=1.5, zorder=3,
              label=reference_label)
    for row, value, ref in zip(rows, means, reference):
        ax.text(min(value, 1.0) - 0.03, row, f"{value:.1%}", ha="right", va="center", color="white",
                fontweight="bold", fontsize="small")
        ax.text(ref + 0.012, row + 0.3, f"{ref:.0%}", ha="left", va="center", fontsize="x-small")
    ax.set_yticks(rows, labels)
    ax.set(xlim=(0, 1.06), xlabel="test accuracy")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize="small", frameon=False)
    ax.set_title(title, fontsize="small")
    return fig


def _batch_axis(ax, batch_sizes, title: str, xlabel: str, n: int) -> None:
    """Batch size on a log axis, largest on the left (as the Group Norm paper draws it); error in % upwards;
    the legend below the axes, where no band hides it."""
    ax.set_xscale("log")
    ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
    ax.minorticks_off()
    ax.set_xlim(max(batch_sizes) * 1.3, min(batch_sizes) / 1.3)
    ax.set(title=title, xlabel=xlabel, ylabel="validation error (%)")
    ax.grid(True, alpha=0.3)
    legend(ax, n, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize="x-small", frameon=False)


def figure_small_batch(batch_sizes, errors: dict, paper: dict, title: str, ghost_batch: int,
                       precise: tuple = ("batchnorm",)):
    """Three panels: our validation error by batch size per norm; running vs precise statistics; the GN paper's.

    errors: label -> validation error (%) per batch size, one ``stats.describe`` each; "<norm> (precise)"
        labels are the same nets evaluated with precise statistics.
    precise: the norms whose running and precise curves the middle panel compares.
    paper: {"batch_sizes", "batchnorm", "groupnorm"}, the Group Norm paper's ImageNet numbers (one value each).
    """
    fig, (ax_ours, ax_precise, ax_paper) = _figure(3, width=4.8, height=4.8)
    names = {"ghostbatchnorm": f"ghost BN (batch {ghost_batch}, chunks of b)"}
    n = 0
    for label, points in errors.items():
        norm = label.removesuffix(" (precise)")
        color = VARIANT_COLORS.get(norm)
        means, band, seeds = _columns(points)
        n = max(n, seeds)
        if label == norm:
            curve(ax_ours, batch_sizes, means, band, color=color, label=names.get(norm, norm), markersize=5)
        if norm in precise:
            is_precise = label != norm
            curve(ax_precise, batch_sizes, means, band, color=color, linestyle="--" if is_precise else "-",
                  marker="s" if is_precise else "o", markersize=5,
                  label=f"{norm}, {'precise' if is_precise else 'running'} statistics")
    for norm in ("batchnorm", "groupnorm"):
        ax_paper.plot(paper["batch_sizes"], paper[norm], marker="o", color=VARIANT_COLORS[norm], label=norm)
    _batch_axis(ax_ours, batch_sizes, "Ours: best validation error", "batch size b", n)
    _batch_axis(ax_precise, batch_sizes, "Eval with running vs precise statistics", "batch size b", n)
    _batch_axis(ax_paper, paper["batch_sizes"], "Reference shape: GN paper, ResNet-50 ImageNet", "images per GPU", 1)
    fig.suptitle(title)
    return fig
