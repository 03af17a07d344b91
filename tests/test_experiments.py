"""The lab's experiments: registry, results.json/plots/report.md, determinism, the honest default, the CLI."""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from normlab.cli import main
from normlab.lab.stats import describe
from normlab.lab.experiments import (DEFAULT_EXPERIMENT, EXPERIMENTS, get_experiment, make_config, run_experiment,
                                     strip_timing)
from normlab.lab.experiments import batchnorm, plots, report, runner, weight_scale

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = {"num_train": 200, "epochs": 2}  # a few seconds per experiment


def tiny_config(name, **extra):
    """Each experiment shrunk to seconds, still exercising every variant and loop."""
    shrink = {
        "batchnorm": {"hidden_dims": (20, 20, 20)},
        "weight-scale": {"hidden_dims": (20, 20, 20), "points": 3, "scale_min": 1e-3, "scale_max": 1e-1,
                         "seeds": 2},
        "batch-size": {"hidden_dims": (20, 20), "batch_sizes": (20, 50), "reference_batch_size": 50},
        "layernorm": {"hidden_dims": (20, 20), "batch_sizes": (10, 40)},
    }[name]
    return make_config(name, **{**SMALL, **shrink, **extra})


def read(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def run_quietly(name, out, config, jobs=1):
    """run_experiment in this process, no progress display."""
    return run_experiment(name, out, config=config, jobs=jobs, progress="none", log=lambda _: None)


def only_seed(results):
    """The variants of a one-seed results.json."""
    assert results["seeds"] == [results["config"]["seed"]] and len(results["runs"]) == 1
    return results["runs"][0]["variants"]


def test_registry_names_and_configs():
    assert list(EXPERIMENTS) == ["batchnorm", "weight-scale", "batch-size", "layernorm", "convnet", "small-batch"]
    assert DEFAULT_EXPERIMENT == "batchnorm"
    for name, exp in EXPERIMENTS.items():
        assert dataclasses.is_dataclass(exp.config)
        config = exp.config()
        assert config.dataset == ("mnist1d" if name in ("convnet", "small-batch") else "digits") and config.seed == 0
        assert config.seeds == (3 if name in ("weight-scale", "convnet", "small-batch") else 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.epochs = 3


def test_unknown_names_and_settings_are_refused():
    with pytest.raises(ValueError, match="known experiments: batchnorm, weight-scale, batch-size, layernorm"):
        get_experiment("batch_norm")
    with pytest.raises(ValueError, match="has no setting learning_rat"):
        make_config("batchnorm", learning_rat=1e-3)
    with pytest.raises(ValueError, match="digits, mnist1d, cifar10"):
        make_config("batchnorm", dataset="mnist")
    with pytest.raises(ValueError, match="epochs"):
        make_config("weight-scale", epochs=0)
    with pytest.raises(ValueError, match="reference_batch_size"):
        make_config("batch-size", batch_sizes=(5, 10), reference_batch_size=50)
    with pytest.raises(ValueError, match="scale_min"):
        make_config("weight-scale", scale_min=1.0, scale_max=0.1)
    with pytest.raises(ValueError, match="seeds"):
        make_config("batchnorm", seeds=0)


def check_written(paths, name):
    out = paths["dir"]
    assert out.name == name and paths["results"] == out / "results.json"
    for fig in paths["figures"]:
        assert fig.parent == out and fig.suffix == ".png"
        assert fig.read_bytes()[:8] == PNG_MAGIC and fig.stat().st_size > 10_000  # a drawn figure, not a stub
    text = paths["report"].read_text()
    assert text.startswith(f"# Experiment `{name}`")
    for fig in paths["figures"]:
        assert f"]({fig.name})" in text  # embedded with a relative link that resolves next to report.md
    assert "| variant" in text or "| batch size" in text
    return read(paths["results"])


def test_batchnorm_writes_results_plot_report_and_is_deterministic(tmp_path):
    config = tiny_config("batchnorm")
    lines = []
    a = run_experiment("batchnorm", tmp_path / "a", config=config, jobs=1, progress="plain", log=lines.append)
    b = run_quietly("batchnorm", tmp_path / "b", config)
    results = check_written(a, "batchnorm")
    assert set(only_seed(results)) == {"baseline", "batchnorm"}
    for run in only_seed(results).values():
        assert len(run["train_acc"]) == len(run["val_acc"]) == len(run["epoch_loss"]) == 2
        assert len(run["loss"]) == 2 * run["iterations_per_epoch"] and run["iterations_per_epoch"] == 200 // 50
        assert run["best_val_acc"] == max(run["val_acc"])
        assert 0 <= run["test_acc"] <= 1
    assert results["config"]["hidden_dims"] == [20, 20, 20] and results["data"]["num_train"] == 200
    # same seed, same numbers: every float equal, only wall times may differ
    assert strip_timing(results) == strip_timing(read(b["results"]))
    assert "seconds" in results["timing"]
    # one progress line per finished run: runs done / total, and what the run gave
    assert [line.split(" runs,")[0] for line in lines if " runs," in line] == ["[batchnorm] 1/2", "[batchnorm] 2/2"]
    assert any("| baseline, seed 0: best val acc" in line for line in lines)
    assert any("| batchnorm, seed 0: best val acc" in line for line in lines)
    # a different seed changes the numbers
    c = run_quietly("batchnorm", tmp_path / "c", dataclasses.replace(config, seed=1))
    assert strip_timing(read(c["results"]))["runs"][0]["variants"] != strip_timing(results)["runs"][0]["variants"]


def test_variants_start_from_the_same_weights():
    """The comparison is controlled: same seed, same initial weights with and without a norm."""
    from normlab.lab import FullyConnectedNet

    nets = [FullyConnectedNet([30, 30], 64, 10, normalization=norm, weight_scale=2e-2, seed=0)
            for norm in (None, "batchnorm", "layernorm")]
    for key in ("W1", "W2", "W3"):
        for net in nets[1:]:
            np.testing.assert_array_equal(nets[0].params[key], net.params[key])


def test_weight_scale_sweep(tmp_path):
    results = check_written(run_quietly("weight-scale", tmp_path, tiny_config("weight-scale")), "weight-scale")
    np.testing.assert_allclose(results["scales"], [1e-3, 1e-2, 1e-1])
    assert results["seeds"] == [0, 1]
    curves = weight_scale.curves(results["summary"]["variants"])
    for label, curve in curves.items():
        for metric in ("best_val_acc", "final_train_loss", "test_acc"):
            per_seed = [[run[metric] for run in seed["variants"][label]] for seed in results["runs"]]
            assert np.shape(per_seed) == (2, 3)
            np.testing.assert_allclose([p["mean"] for p in curve[metric]], np.mean(per_seed, axis=0), rtol=1e-12)
            assert [p["n"] for p in curve[metric]] == [2, 2, 2]
        good = results["good_scales"][label]
        assert 0 <= good["run"] <= good["count"] <= 3
    assert curves["baseline"]["best_val_acc"] != curves["batchnorm"]["best_val_acc"]
    assert math.isclose(results["good_threshold"],
                        0.9 * max(p["mean"] for c in curves.values() for p in c["best_val_acc"]))


def test_good_range_picks_the_widest_unbroken_run():
    r = weight_scale.good_range([1, 2, 3, 4, 5, 6], [0.9, 0.1, 0.95, 0.96, 0.97, 0.2], 0.9)
    assert r == {"count": 4, "run": 3, "min": 3, "max": 5}
    assert weight_scale.good_range([1, 2], [0.1, 0.2], 0.9) == {"count": 0, "run": 0, "min": None, "max": None}


@pytest.mark.parametrize("name", ["batch-size", "layernorm"])
def test_batch_size_sweeps(tmp_path, name):
    config = tiny_config(name)
    results = check_written(run_quietly(name, tmp_path, config), name)
    labels = {"batch-size": {"baseline", "batchnorm"}, "layernorm": {"batchnorm", "layernorm"}}[name]
    assert set(only_seed(results)) == labels
    assert "one seed: no spread to judge the differences by" in results["finding"]
    for runs in only_seed(results).values():
        assert set(runs) == {str(bs) for bs in config.batch_sizes}
        for bs, run in runs.items():
            assert run["batch_size"] == int(bs) and run["iterations_per_epoch"] == 200 // int(bs)


def test_default_batchnorm_run_shows_the_effect(tmp_path):
    """The documented default (digits, 6x100, weight scale 2e-2, 15 epochs): batch norm trains faster and better.

    This guards the README's claim: if a change to the defaults or the model loses the effect, this fails.
    """
    results = runner.run_seeds(batchnorm, batchnorm.Config(), jobs=1, progress="none")
    base, bn = results["runs"][0]["variants"]["baseline"], results["runs"][0]["variants"]["batchnorm"]
    assert bn["best_val_acc"] > base["best_val_acc"] + 0.02
    assert bn["epochs_to_reach"] is not None
    assert base["epochs_to_reach"] is None or bn["epochs_to_reach"] + 3 <= base["epochs_to_reach"]
    assert np.mean(bn["val_acc"]) > np.mean(base["val_acc"]) + 0.1  # area under the curve, not one lucky epoch


def test_json_has_no_nan_and_plots_survive_divergence(tmp_path):
    path = report.write_json({"a": [1.5, float("nan"), float("inf")], "b": {"c": (0.1, -float("inf"))}},
                             tmp_path / "r.json")
    assert read(path) == {"a": [1.5, None, None], "b": {"c": [0.1, None]}}
    scales = [1e-2, 1e-1, 1.0]
    curves = {"baseline": {"best_val_acc": [describe([0.1, 0.2]), describe([0.9, 0.8]), describe([0.2, 0.1])],
                           "final_train_loss": [describe([2.3, 2.2]), describe([0.1, 0.2]),
                                                describe([float("nan"), None])]},
              "batchnorm": {"best_val_acc": [describe([0.8, 0.7])] * 3, "final_train_loss": [describe([0.5])] * 3}}
    fig = plots.figure_weight_scale(scales, curves, "diverged baseline", chance=0.1)
    assert plots.save(fig, tmp_path / "ws.png").read_bytes()[:8] == PNG_MAGIC


def test_plotting_never_touches_pyplot(tmp_path):
    # In a fresh process: drawing every kind of figure must not import pyplot (no global figure state).
    code = f"""
import sys
from normlab.lab.experiments import plots
run = {{"loss": [2.0, 1.0, 0.5, 0.4], "epoch_loss": [1.5, 0.45], "train_acc": [0.5, 0.8],
        "val_acc": [0.4, 0.7], "iterations_per_epoch": 2}}
fig = plots.figure_histories({{"baseline": [run, run], "batchnorm": [run]}}, "t")
path = plots.save(fig, {str(tmp_path / "h.png")!r})
assert path.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
print("matplotlib" in sys.modules, "matplotlib.pyplot" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_cli_default_is_batchnorm_on_digits(tmp_path):
    result = CliRunner().invoke(main, ["experiment", "--out", str(tmp_path), "--epochs", "1", "--num-train", "100"])
    assert result.exit_code == 0, result.output
    assert "[batchnorm] 2/2 runs, " in result.output and "| baseline, seed 0: best val acc" in result.output
    results = read(tmp_path / "batchnorm" / "results.json")
    assert results["config"]["dataset"] == "digits" and results["config"]["epochs"] == 1
    assert results["seeds"] == [0]
    assert (tmp_path / "batchnorm" / "batchnorm.png").is_file() and (tmp_path / "batchnorm" / "report.md").is_file()
    assert f"normlab experiment batchnorm --out {tmp_path} --epochs 1 --num-train 100" in \
        (tmp_path / "batchnorm" / "report.md").read_text()


def test_cli_refuses_unknown_experiment_and_dataset(tmp_path):
    result = CliRunner().invoke(main, ["experiment", "batch_norm", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown experiment 'batch_norm'" in result.output
    assert "batchnorm, weight-scale, batch-size, layernorm" in result.output
    result = CliRunner().invoke(main, ["experiment", "--dataset", "mnist", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "digits" in result.output
    assert not (tmp_path / "batchnorm").exists()


def test_cli_missing_cifar_says_where_it_looked(tmp_path):
    missing = tmp_path / "no-cifar-here"
    result = CliRunner().invoke(main, ["experiment", "--dataset", "cifar10", "--data-dir", str(missing),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "CIFAR-10 not found" in result.output and str(missing) in result.output
    assert not (tmp_path / "batchnorm" / "results.json").exists()


def test_cli_runs_on_a_local_cifar_copy(tmp_path):
    from test_data import write_cifar

    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n_per_batch=30)
    result = CliRunner().invoke(main, ["experiment", "layernorm", "--dataset", "cifar10", "--data-dir",
                                       str(tmp_path / "data"), "--epochs", "1", "--jobs", "1",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    results = read(tmp_path / "out" / "layernorm" / "results.json")
    assert results["data"]["features"] == 3072 and results["config"]["dataset"] == "cifar10"


def test_cli_all_runs_every_experiment(tmp_path):
    result = CliRunner().invoke(main, ["experiment", "all", "--epochs", "1", "--num-train", "100", "--seed", "3",
                                       "--seeds", "1", "--jobs", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in EXPERIMENTS:
        results = read(tmp_path / name / "results.json")
        assert results["experiment"] == name and results["config"]["seed"] == 3 and results["seeds"] == [3]
        assert (tmp_path / name / "report.md").is_file()
    assert result.output.count("report: ") == len(EXPERIMENTS)
