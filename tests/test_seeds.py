"""Experiments over seeds: per-seed runs and their spread in results.json, the same numbers whatever --jobs,
the figures' bands, and the pieces (statistics, the pool, the progress display, normlab train --seeds)."""

import dataclasses
import os

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.collections import PolyCollection
from test_experiments import read, run_quietly, tiny_config

from normlab.cli import main
from normlab.lab import pool, stats
from normlab.lab.experiments import convnet, make_config, plots, small_batch, strip_timing
from normlab.lab.progress import RunsProgress, format_duration


def test_results_keep_every_seed_and_describe_them(tmp_path):
    config = tiny_config("batchnorm", seeds=3, seed=4)
    results = read(run_quietly("batchnorm", tmp_path / "three", config)["results"])
    assert results["seeds"] == [4, 5, 6] and results["config"]["seeds"] == 3
    assert [run["seed"] for run in results["runs"]] == [4, 5, 6]
    # seed s of the three is exactly the experiment run with --seed s alone
    alone = read(run_quietly("batchnorm", tmp_path / "alone", dataclasses.replace(config, seed=5, seeds=1))["results"])
    assert strip_timing(results["runs"][1]) == strip_timing(alone["runs"][0]) | {"seed": 5}
    summary = results["summary"]["variants"]["batchnorm"]
    per_seed = [run["variants"]["batchnorm"] for run in results["runs"]]
    accs = [r["best_val_acc"] for r in per_seed]
    assert len(set(accs)) > 1  # the seeds differ, so the spread is not trivially 0
    assert summary["best_val_acc"] == {"mean": np.mean(accs), "std": np.std(accs, ddof=1), "n": 3,
                                       "min": min(accs), "max": max(accs)}
    val = summary["val_acc"]
    assert val["n"] == 3 and len(val["mean"]) == config.epochs
    np.testing.assert_array_equal(val["mean"], np.mean([r["val_acc"] for r in per_seed], axis=0))
    np.testing.assert_array_equal(val["min"], np.min([r["val_acc"] for r in per_seed], axis=0))
    assert "loss" not in summary and summary["batch_size"] == config.batch_size  # settings stay plain
    assert summary["test_acc"]["std"] > 0


def test_same_seeds_same_results_whatever_the_jobs(tmp_path):
    # The conv sweep: numba kernels, ghost batch norm, precise BN, a sort of the runs by cost.
    config = make_config("small-batch", batch_sizes=(4, 2), ghost_batch_size=4, renorm_warmup_epochs=(0, 1),
                         groups=2, conv_channels=(4, 4, 4), num_train=32, epochs=1, seeds=2)
    texts = {jobs: strip_timing(read(run_quietly("small-batch", tmp_path / str(jobs), config, jobs)["results"]))
             for jobs in (1, 2)}
    assert texts[1]["seeds"] == [0, 1] and len(texts[1]["runs"]) == 2
    assert texts[1] == texts[2]  # float for float, through JSON


def test_describe_and_spread():
    d = stats.describe([0.9, 0.8, None, float("nan"), 0.7])
    assert d == {"mean": pytest.approx(0.8), "std": pytest.approx(0.1), "n": 3, "min": 0.7, "max": 0.9,
                 "missing": 2}
    assert stats.describe([None]) is None and stats.describe([0.5])["std"] is None
    assert stats.spread(d) == (0.7, 0.9)  # up to three seeds: min to max
    five = stats.describe([1.0, 2.0, 3.0, 4.0, 10.0])
    assert stats.spread(five) == pytest.approx((4.0 - np.std([1, 2, 3, 4, 10], ddof=1),
                                                4.0 + np.std([1, 2, 3, 4, 10], ddof=1)))
    assert stats.spread_name(3) == "min–max of 3 seeds" and stats.spread_name(5) == "±1 std of 5 seeds"
    assert stats.fmt(d) == "0.800 ± 0.100 (3 of 5)" and stats.fmt(stats.describe([0.5])) == "0.500 (1)"
    err = stats.affine(stats.describe([0.9, 0.8]), 100, -100)
    assert (err["min"], err["max"], err["mean"]) == pytest.approx((10, 20, 15))
    assert stats.separated(stats.describe([1, 2]), stats.describe([2.5, 3])) is True
    assert stats.separated(stats.describe([1, 2.6]), stats.describe([2.5, 3])) is False
    assert stats.separated(stats.describe([1]), stats.describe([3])) is None
    with pytest.raises(ValueError, match="differ in shape"):
        stats.aggregate([{"a": 1.0}, {"b": 1.0}])


def _bands_per_curve(ax):
    """(labelled curves, shaded bands) of an axes, and whether each band has its curve's colour."""
    from matplotlib.colors import to_rgb

    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    colours = sorted(to_rgb(line.get_color()) for line in lines)
    return len(lines), len(bands), colours == sorted(to_rgb(b.get_facecolor()[0][:3]) for b in bands)


def _legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_every_curve_has_one_band_and_the_legend_says_what_it_is():
    run = {"loss": [2.0, 1.0, 0.5, 0.4], "epoch_loss": [1.5, 0.45], "train_acc": [0.5, 0.8], "val_acc": [0.4, 0.7],
           "iterations_per_epoch": 2}
    other = dict(run, val_acc=[0.5, 0.6], epoch_loss=[1.4, 0.5], train_acc=[0.6, 0.7])
    fig = plots.figure_histories({"baseline": [run, other, run], "batchnorm": [other, run, run]}, "t")
    for ax in fig.axes:
        assert _bands_per_curve(ax) == (2, 2, True)
    assert "band: min–max of 3 seeds" in _legend_texts(fig.axes[2])
    three = [stats.describe([0.7, 0.8, 0.9])] * 3
    curves = {"batchnorm": {"best_val_acc": three, "final_train_loss": three},
              "layernorm": {"best_val_acc": three, "final_train_loss": three}}
    for ax in plots.figure_by_batch_size([2, 4, 8], curves, "t").axes:
        assert _bands_per_curve(ax) == (2, 2, True)
    errors = {"batchnorm": three, "groupnorm": three, "batchnorm (precise)": three, "groupnorm (precise)": three}
    fig = plots.figure_small_batch([8, 4, 2], errors, small_batch.GN_PAPER, "t", 8, precise=("batchnorm",))
    # ours, running vs precise: one band per curve; the paper's panel: its numbers, no band
    assert [_bands_per_curve(ax)[:2] for ax in fig.axes] == [(2, 2), (2, 2), (2, 0)]
    assert _bands_per_curve(fig.axes[0])[2] and _bands_per_curve(fig.axes[1])[2]
    # one seed: no band, and the legend does not claim one
    fig = plots.figure_histories({"baseline": [run]}, "t")
    assert _bands_per_curve(fig.axes[2]) == (1, 0, False) and not any("band" in t for t in _legend_texts(fig.axes[2]))


def test_accuracy_bars_carry_the_spread():
    ours = [stats.describe([0.3, 0.32, 0.31]), stats.describe([0.9, 0.95, 0.93])]
    fig = plots.figure_accuracy_bars(["logistic", "cnn"], ours, [0.32, 0.94], "t")
    (ax,) = fig.axes
    (bars,) = ax.containers[1:2]  # the error bars after the bars
    segments = bars.lines[2][0].get_segments()
    assert [(s[0][0], s[1][0]) for s in segments] == [(0.3, 0.32), (0.9, 0.95)]
    assert "ours: min–max of 3 seeds" in [t.get_text() for t in ax.get_legend().get_texts()]


def _square_or_fail(x):
    if x == 3:
        raise ValueError("three is not allowed")
    return x * x


def test_pool_returns_in_order_and_names_a_failed_run():
    done = []
    assert pool.run_all(_square_or_fail, [1, 2, 4], 2, costs=[1, 5, 2], on_done=lambda i, v: done.append(i)) == \
        [1, 4, 16]
    assert sorted(done) == [0, 1, 2]
    assert pool.run_all(_square_or_fail, [5, 6], 1, costs=[1, 2], on_done=lambda i, v: done.append(i)) == [25, 36]
    assert done[-2:] == [1, 0]  # the costlier first
    for jobs in (1, 2):
        with pytest.raises(pool.RunError, match="run b failed: ValueError: three is not allowed") as info:
            pool.run_all(_square_or_fail, [1, 3, 2], jobs, labels=["run a", "run b", "run c"])
        assert "Traceback" in info.value.details and info.value.index == 1
    with pytest.raises(ValueError, match="jobs"):
        pool.run_all(_square_or_fail, [1], 0)


def test_progress_lines_and_eta():
    now = [0.0]
    lines = []
    display = RunsProgress("t", [3.0, 1.0], mode="plain", log=lines.append, every=30, clock=lambda: now[0])
    now[0] = 10.0
    display.tick()
    assert lines == []
    now[0] = 31.0
    display.tick()
    assert lines == ["0/2 runs, 31 s elapsed, time left not known until a run finishes"]
    now[0] = 60.0
    display.done(0, "a: best val acc 0.9")
    assert lines[-1] == "1/2 runs, 1 min 00 s elapsed, about 20 s left | a: best val acc 0.9"  # 3/4 of the cost in 60 s
    now[0] = 70.0
    display.done(1)
    assert lines[-1] == "2/2 runs, 1 min 10 s elapsed"
    assert format_duration(3725) == "1 h 02 min"
    with pytest.raises(ValueError, match="progress must be one of"):
        RunsProgress("t", [1.0], mode="bars")


def test_train_over_seeds(tmp_path):
    args = ["train", "--epochs", "2", "--num-train", "200", "--hidden-dims", "20", "--seeds", "2", "--jobs", "1"]
    result = CliRunner().invoke(main, [*args, "--checkpoint-dir", str(tmp_path / "ck")])
    assert result.exit_code == 0, result.output
    assert "2/2 runs" in result.output and "(2 seeds)" in result.output and " ± " in result.output
    assert "seed 1 " in result.output and sorted(os.listdir(tmp_path / "ck")) == ["seed-0", "seed-1"]
    again = CliRunner().invoke(main, [*args, "--checkpoint-dir", str(tmp_path / "ck")])
    assert again.exit_code == 1 and "seed-0" in again.output and "already exists" in again.output
    refused = CliRunner().invoke(main, [*args, "--nproc", "2"])
    assert refused.exit_code == 1 and "use one or the other" in refused.output


def test_convnet_table_reads_mean_std_n():
    row = {"parameters": 5, "test_acc": stats.describe([0.9, 0.92]), "best_val_acc": stats.describe([0.91, 0.93]),
           "final_train_loss": stats.describe([0.01, 0.03]), "seconds": stats.describe([1.0, 2.0])}
    headers, rows = convnet.table({"summary": {"variants": {"cnn": row}}, "paper_test_acc": convnet.PAPER})
    assert rows == [("cnn", 5, "0.910 ± 0.014 (2)", "0.94", "0.920 ± 0.014 (2)", "0.0200 ± 0.0141 (2)", "1.5")]
