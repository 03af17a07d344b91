"""``weight-scale``: how sensitive is a deep net to its weight initialization, with and without batch norm?

For each of ~20 weight-initialization scales on a log grid, a deep net is
trained without and with batch norm, by default with three seeds each; the
figure shows the best validation accuracy and the final training loss
against the scale (mean and spread over the seeds). Without
normalization the signal shrinks or explodes through the layers unless the
scale is just right; batch norm undoes the scale layer by layer, so a much
wider range of scales trains well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import stats
from . import common, plots

NAME = "weight-scale"
DESCRIPTION = ("Best validation accuracy and final training loss against the weight-initialization scale "
               "(log grid), baseline vs batch norm, in a deep fully-connected net.")
VARIANTS = {"baseline": None, "batchnorm": "batchnorm"}


@dataclass(frozen=True)
class Config(common.BaseConfig):
    """points scales from scale_min to scale_max, evenly spaced in log10.

    seeds: 3 by default, so that one lucky or unlucky initialization does not make the curve.
    good_fraction: a scale counts as "good" when its mean best val accuracy is
    at least this fraction of the best mean accuracy of the whole sweep.
    """

    epochs: int = 10
    hidden_dims: tuple = (50, 50, 50, 50, 50, 50, 50, 50)
    scale_min: float = 1e-4
    scale_max: float = 1.0
    points: int = 20
    update_rule: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 50
    seeds: int = 3
    good_fraction: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        self._check("hidden_dims", common.check_positive_ints)
        self._check("points", common.check_positive_int)
        self._check("batch_size", common.check_positive_int)
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min!r} and {self.scale_max!r}")

    def scales(self) -> list:
        return [float(s) for s in np.logspace(np.log10(self.scale_min), np.log10(self.scale_max), self.points)]


def plan(config: Config, data: dict) -> list:
    """Both variants at every scale, at one seed."""
    cost = common.run_cost(len(data["y_train"]), config.batch_size, config.epochs)
    scales = config.scales()
    return [common.Run((label, i), f"{label}, scale {i + 1}/{len(scales)} = {scale:.2e}", cost)
            for i, scale in enumerate(scales) for label in VARIANTS]


def train(config: Config, key: tuple, data: dict) -> dict:
    label, i = key
    return common.train_run(data, hidden_dims=config.hidden_dims, normalization=VARIANTS[label],
                            weight_scale=config.scales()[i], learning_rate=config.learning_rate,
                            batch_size=config.batch_size, epochs=config.epochs, seed=config.seed,
                            update_rule=config.update_rule)


def assemble(config: Config, runs: dict) -> dict:
    """One seed's ``variants[label]``: its runs, one per scale (indexed like ``scales``)."""
    return {label: [runs[(label, i)] for i in range(config.points)] for label in VARIANTS}


def curves(summary: dict) -> dict:
    """label -> {metric: [stats.describe per scale]} for best_val_acc, final_train_loss and test_acc."""
    return {label: {m: [run[m] for run in runs] for m in ("best_val_acc", "final_train_loss", "test_acc")}
            for label, runs in summary.items()}


def extras(config: Config, results: dict) -> dict:
    """The scales, and the good ones per variant: those whose mean best val accuracy reaches the threshold."""
    scales = config.scales()
    means = {label: [p["mean"] for p in c["best_val_acc"]]
             for label, c in curves(results["summary"]["variants"]).items()}
    threshold = config.good_fraction * max(max(m) for m in means.values())
    good = {label: good_range(scales, m, threshold) for label, m in means.items()}
    return {"scales": scales, "good_threshold": threshold, "good_scales": good,
            "finding": finding(good, threshold, len(scales), config.good_fraction)}


def good_range(scales, accuracies, threshold) -> dict:
    """How many scales reach ``threshold``, and the widest run of consecutive such scales (min, max)."""
    good = [acc >= threshold for acc in accuracies]
    best_run, start = (0, -1), None
    for i, ok in enumerate(good + [False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            if i - start > best_run[1] - best_run[0] + 1:
                best_run = (start, i - 1)
            start = None
    lo, hi = best_run
    found = hi >= lo
    return {"count": int(sum(good)), "run": hi - lo + 1 if found else 0,
            "min": scales[lo] if found else None, "max": scales[hi] if found else None}


def finding(good, threshold, points, fraction) -> str:
    base, bn = good["baseline"], good["batchnorm"]
    wider = "wider" if bn["run"] > base["run"] else ("as wide" if bn["run"] == base["run"] else "narrower")
    return (f"Scales reaching a mean validation accuracy of at least {threshold:.3f} ({fraction:.0%} of the "
            f"sweep's best mean): "
            f"batch norm {bn['count']} of {points} (widest unbroken range {_span(bn)}), baseline {base['count']} "
            f"of {points} ({_span(base)}): batch norm's good range is {wider}.")


def _span(good):
    if not good["run"]:
        return "none"
    if good["run"] == 1:
        return f"{good['min']:.2g} only"
    return f"{good['min']:.2g} to {good['max']:.2g}, {good['run']} consecutive points"


def plot(results: dict, out_dir) -> list:
    cfg = results["config"]
    title = (f"{len(cfg['hidden_dims'])} hidden layers of {cfg['hidden_dims'][0]} on {cfg['dataset']}, "
             f"{cfg['epochs']} epochs of {cfg['update_rule']} (lr {cfg['learning_rate']:g}, "
             f"batch {cfg['batch_size']})")
    chance = 1.0 / results["data"]["classes"]
    fig = plots.figure_weight_scale(results["scales"], curves(results["summary"]["variants"]), title, chance)
    return [plots.save(fig, Path(out_dir) / "weight_scale.png")]


def table(results: dict):
    headers = ("variant", "good scales", "widest unbroken good range", "best val acc (at scale)",
               "best val acc at the scale nearest 1e-2")
    rows = []
    scales = np.asarray(results["scales"])
    near = int(np.argmin(np.abs(np.log10(scales) + 2)))
    for label, c in curves(results["summary"]["variants"]).items():
        accs = c["best_val_acc"]
        top = int(np.argmax([p["mean"] for p in accs]))
        good = results["good_scales"][label]
        rows.append((label, f"{good['count']} of {len(scales)}", _span(good),
                     f"{stats.fmt(accs[top])} ({scales[top]:.2g})", f"{stats.fmt(accs[near])} ({scales[near]:.2g})"))
    return headers, rows
