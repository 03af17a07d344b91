"""``weight-scale``: how sensitive is a deep net to its weight initialization, with and without batch norm?

For each of ~20 weight-initialization scales on a log grid, a deep net is
trained once without and once with batch norm; the figure shows the best
validation accuracy and the final training loss against the scale. Without
normalization the signal shrinks or explodes through the layers unless the
scale is just right; batch norm undoes the scale layer by layer, so a much
wider range of scales trains well.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import common, plots

NAME = "weight-scale"
DESCRIPTION = ("Best validation accuracy and final training loss against the weight-initialization scale "
               "(log grid), baseline vs batch norm, in a deep fully-connected net.")
VARIANTS = {"baseline": None, "batchnorm": "batchnorm"}


@dataclass(frozen=True)
class Config(common.BaseConfig):
    """points scales from scale_min to scale_max, evenly spaced in log10.

    repeats: every (scale, variant) is trained with this many seeds (seed,
    seed + 1, ...; the data split stays that of ``seed``) and the metrics are
    averaged, so one lucky or unlucky initialization does not make the curve.
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
    repeats: int = 3
    good_fraction: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        self._check("hidden_dims", common.check_positive_ints)
        self._check("points", common.check_positive_int)
        self._check("repeats", common.check_positive_int)
        self._check("batch_size", common.check_positive_int)
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min!r} and {self.scale_max!r}")

    def scales(self) -> list:
        return [float(s) for s in np.logspace(np.log10(self.scale_min), np.log10(self.scale_max), self.points)]


def run(config: Config, log: common.Log = print) -> dict:
    """Train both variants at every scale, ``repeats`` times each.

    ``variants[label][metric]`` is a list indexed like ``scales`` holding the
    mean over the repeats of best_val_acc, final_train_loss and test_acc;
    ``variants[label]["per_seed"][metric]`` holds the individual values
    (one list of ``repeats`` values per scale).
    """
    started = time.perf_counter()
    data = common.load_data(config)
    scales = config.scales()
    metrics = ("best_val_acc", "final_train_loss", "test_acc")
    runs = {label: {**{m: [] for m in metrics}, "per_seed": {m: [] for m in metrics}} for label in VARIANTS}
    for i, scale in enumerate(scales, start=1):
        for label, normalization in VARIANTS.items():
            seeds = [common.train_run(
                data, hidden_dims=config.hidden_dims, normalization=normalization, weight_scale=scale,
                learning_rate=config.learning_rate, batch_size=config.batch_size, epochs=config.epochs,
                seed=config.seed + k, update_rule=config.update_rule,
                label=f"scale {i}/{len(scales)} = {scale:.2e} {label}, seed {config.seed + k}", log=log)
                for k in range(config.repeats)]
            for m in metrics:
                values = [r[m] for r in seeds]
                runs[label]["per_seed"][m].append(values)
                runs[label][m].append(None if None in values else float(np.mean(values)))
    best = max(max(r["best_val_acc"]) for r in runs.values())
    threshold = config.good_fraction * best
    for label, r in runs.items():
        r["good_scales"] = good_range(scales, r["best_val_acc"], threshold)
    return {
        "experiment": NAME,
        "description": DESCRIPTION,
        "config": asdict(config),
        "data": common.data_summary(data),
        "scales": scales,
        "good_threshold": threshold,
        "variants": runs,
        "finding": finding(runs, threshold, len(scales)),
        "timing": {"seconds": time.perf_counter() - started},
    }


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


def finding(runs, threshold, points) -> str:
    base, bn = runs["baseline"]["good_scales"], runs["batchnorm"]["good_scales"]
    wider = "wider" if bn["run"] > base["run"] else ("as wide" if bn["run"] == base["run"] else "narrower")
    return (f"Scales reaching a mean validation accuracy of at least {threshold:.3f} (90% of the sweep's best): "
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
             f"batch {cfg['batch_size']}), mean of {cfg['repeats']} seed(s)")
    runs = {label: {k: np.asarray(r[k], dtype=float) for k in ("best_val_acc", "final_train_loss")}
            for label, r in results["variants"].items()}
    chance = 1.0 / results["data"]["classes"]
    return [plots.plot_weight_scale(results["scales"], runs, Path(out_dir) / "weight_scale.png", title, chance)]


def table(results: dict):
    headers = ("variant", "good scales", "widest unbroken good range", "best val acc (at scale)",
               "best val acc at the scale nearest 1e-2")  # accuracies: means over the repeats
    rows = []
    scales = np.asarray(results["scales"])
    near = int(np.argmin(np.abs(np.log10(scales) + 2)))
    for label, r in results["variants"].items():
        accs = r["best_val_acc"]
        top = int(np.argmax(accs))
        rows.append((label, f"{r['good_scales']['count']} of {len(scales)}", _span(r["good_scales"]),
                     f"{accs[top]:.3f} ({scales[top]:.2g})", f"{accs[near]:.3f} ({scales[near]:.2g})"))
    return headers, rows
