"""The experiments' figures, drawn with matplotlib's Agg renderer.

Figures are built with ``matplotlib.figure.Figure`` and never through
``pyplot``, so plotting touches no global state (no backend switch, no open
figures left behind) and needs no display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Colours of the named variants, so one variant looks the same in every figure.
VARIANT_COLORS = {"baseline": "#d62728", "batchnorm": "#1f77b4", "layernorm": "#2ca02c", "groupnorm": "#ff7f0e",
                  "batchrenorm": "#9467bd", "ghostbatchnorm": "#8c564b", "instancenorm": "#e377c2",
                  "logistic": "#7f7f7f", "mlp": "#d62728", "cnn": "#17becf", "cnn + batchnorm": "#1f77b4",
                  "cnn + groupnorm": "#ff7f0e", "cnn + layernorm": "#2ca02c", "cnn + instancenorm": "#e377c2",
                  "cnn + batchrenorm": "#9467bd"}


def _figure(ncols, width=5.0, height=4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, np.atleast_1d(axes)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_histories(runs: dict, path, title: str, styles: dict | None = None) -> Path:
    """Training loss, train accuracy and val accuracy against epochs, one line per run.

    runs: label -> a run from ``common.train_run`` (``loss``, ``epoch_loss``,
        ``train_acc``, ``val_acc``, ``iterations_per_epoch``).
    styles: label -> matplotlib line keywords (color, linestyle, ...).
    The loss panel shows each iteration's loss faintly and each epoch's mean
    boldly, on one epoch axis, so runs with different batch sizes line up.
    """
    styles = styles or {}
    fig, (ax_loss, ax_train, ax_val) = _figure(3, width=4.6)
    for i, (label, run) in enumerate(runs.items()):
        style = {"color": VARIANT_COLORS.get(label, f"C{i}"), **styles.get(label, {})}
        epochs = np.arange(1, len(run["val_acc"]) + 1)
        iters = np.arange(1, len(run["loss"]) + 1) / run["iterations_per_epoch"]
        ax_loss.plot(iters, run["loss"], color=style["color"], alpha=0.15, linewidth=0.6)
        ax_loss.plot(epochs, run["epoch_loss"], marker="o", markersize=3, label=label, **style)
        ax_train.plot(epochs, run["train_acc"], marker="o", markersize=3, label=label, **style)
        ax_val.plot(epochs, run["val_acc"], marker="o", markersize=3, label=label, **style)
    ax_loss.set(title="Training loss", xlabel="epoch", ylabel="cross-entropy loss")
    ax_loss.set_yscale("log")
    ax_train.set(title="Train accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax_val.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_train, ax_val):
        ax.grid(True, alpha=0.3)
    ax_val.legend(loc="lower right", fontsize="small")
    ax_loss.text(0.98, 0.98, "faint: per iteration; bold: epoch mean", transform=ax_loss.transAxes,
                 ha="right", va="top", fontsize="x-small", color="0.4")
    fig.suptitle(title)
    return _save(fig, path)


def plot_weight_scale(scales, runs: dict, path, title: str, chance: float | None = None) -> Path:
    """Best val accuracy and final training loss against the weight-initialization scale (log x).

    runs: label -> {"best_val_acc": [...], "final_train_loss": [...]}, one value per scale.
    The loss axis is logarithmic: a baseline at a bad scale can be many orders larger.
    """
    fig, (ax_acc, ax_loss) = _figure(2, width=5.4)
    for i, (label, run) in enumerate(runs.items()):
        color = VARIANT_COLORS.get(label, f"C{i}")
        ax_acc.plot(scales, run["best_val_acc"], marker="o", markersize=4, color=color, label=label)
        ax_loss.plot(scales, run["final_train_loss"], marker="o", markersize=4, color=color, label=label)
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
    ax_acc.legend(loc="center left", bbox_to_anchor=(0.0, 0.35), fontsize="small")
    ax_loss.legend(loc="upper left", fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def plot_by_batch_size(batch_sizes, runs: dict, path, title: str) -> Path:
    """Best val accuracy and final training loss against batch size (log x), one line per normalization.

    runs: label -> {"best_val_acc": [...], "final_train_loss": [...]}, one value per batch size.
    """
    fig, (ax_acc, ax_loss) = _figure(2, width=5.0)
    for i, (label, run) in enumerate(runs.items()):
        color = VARIANT_COLORS.get(label, f"C{i}")
        ax_acc.plot(batch_sizes, run["best_val_acc"], marker="o", color=color, label=label)
        ax_loss.plot(batch_sizes, run["final_train_loss"], marker="o", color=color, label=label)
    ax_acc.set(title="Best validation accuracy", xlabel="batch size", ylabel="accuracy", ylim=(0, 1.02))
    ax_loss.set(title="Final training loss (last epoch mean)", xlabel="batch size", ylabel="cross-entropy loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xscale("log")
        ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    ax_loss.set_yscale("log")
    ax_acc.legend(loc="lower right", fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def plot_accuracy_bars(labels, ours, reference, path, title: str, reference_label: str = "paper") -> Path:
    """Horizontal bars of our accuracies, one per label, with a reference accuracy marked on each bar."""
    fig, (ax,) = _figure(1, width=8.5, height=0.55 * len(labels) + 2.0)
    rows = np.arange(len(labels))[::-1]
    colors = [VARIANT_COLORS.get(label, f"C{i}") for i, label in enumerate(labels)]
    ax.barh(rows, ours, color=colors, alpha=0.85, label="ours (test)")
    ax.scatter(reference, rows, marker="|", s=600, color="black", linewidths=2.5, zorder=3, label=reference_label)
    for row, value, ref in zip(rows, ours, reference):
        ax.text(min(value, 1.0) - 0.01, row, f"{value:.1%}", ha="right", va="center", color="white",
                fontweight="bold", fontsize="small")
        ax.text(ref + 0.012, row, f"{ref:.0%}", ha="left", va="center", fontsize="x-small")
    ax.set_yticks(rows, labels)
    ax.set(xlim=(0, 1.06), xlabel="test accuracy")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize="small", frameon=False)
    ax.set_title(title, fontsize="small")
    return _save(fig, path)


def _batch_axis(ax, batch_sizes, title: str, xlabel: str) -> None:
    """Batch size on a log axis, largest on the left (as the Group Norm paper draws it); error in % upwards."""
    ax.set_xscale("log")
    ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
    ax.minorticks_off()
    ax.set_xlim(max(batch_sizes) * 1.3, min(batch_sizes) / 1.3)
    ax.set(title=title, xlabel=xlabel, ylabel="validation error (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")


def plot_small_batch(batch_sizes, errors: dict, paper: dict, path, title: str, ghost_batch: int) -> Path:
    """Three panels: our validation error by batch size per norm; running vs precise statistics; the GN paper's.

    errors: label -> validation error (%) per batch size; labels "<norm> (precise)" go to the middle panel.
    paper: {"batch_sizes", "batchnorm", "groupnorm"}, the Group Norm paper's ImageNet numbers.
    """
    fig, (ax_ours, ax_precise, ax_paper) = _figure(3, width=4.8, height=4.2)
    names = {"ghostbatchnorm": f"ghost BN (batch {ghost_batch}, chunks of b)"}
    for label, values in errors.items():
        norm = label.removesuffix(" (precise)")
        color = VARIANT_COLORS.get(norm)
        if label == norm:
            ax_ours.plot(batch_sizes, values, marker="o", color=color, label=names.get(norm, norm))
        if norm in {n.removesuffix(" (precise)") for n in errors if n.endswith("(precise)")}:
            precise = label != norm
            ax_precise.plot(batch_sizes, values, marker="s" if precise else "o", color=color,
                            linestyle="--" if precise else "-",
                            label=f"{norm}, {'precise' if precise else 'running'} statistics")
    for norm in ("batchnorm", "groupnorm"):
        ax_paper.plot(paper["batch_sizes"], paper[norm], marker="o", color=VARIANT_COLORS[norm], label=norm)
    _batch_axis(ax_ours, batch_sizes, "Ours: best validation error", "batch size b")
    _batch_axis(ax_precise, batch_sizes, "Eval with running vs precise statistics", "batch size b")
    _batch_axis(ax_paper, paper["batch_sizes"], "Reference shape: GN paper, ResNet-50 ImageNet", "images per GPU")
    fig.suptitle(title)
    return _save(fig, path)
