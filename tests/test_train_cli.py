"""``normlab train``: summary, checkpoint and resume through the CLI, and clear errors."""

import json
import re

import pytest
from click.testing import CliRunner

from normlab.cli import main

FAST = ["--hidden-dims", "24,24", "--batch-size", "50", "--num-train", "300", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, ["train", *FAST, *args], catch_exceptions=False)


def summary_value(output, label):
    match = re.search(rf"^{re.escape(label)}\s+(.+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def test_train_prints_a_summary():
    result = run("--epochs", "2", "--normalization", "batchnorm")
    assert result.exit_code == 0, result.output
    assert "normalization batchnorm" in summary_value(result.output, "net")
    assert summary_value(result.output, "epochs") == "2 (12 iterations)"
    for label in ("final train acc", "final val acc", "best val acc", "test acc (best)"):
        assert float(summary_value(result.output, label).rstrip("%")) > 40  # digits: well above chance (10%)
    assert re.match(r"[\d.]+ s \(total [\d.]+ s\)", summary_value(result.output, "training time"))


def test_progress_lines_when_output_is_not_a_terminal():
    result = CliRunner().invoke(main, ["train", *FAST[:-1], "--epochs", "2", "--print-every", "4"])
    assert result.exit_code == 0, result.output
    assert "(Iteration 4 / 12) loss:" in result.output
    assert "(Epoch 2 / 2) train acc:" in result.output


def test_checkpoint_and_resume_match_an_uninterrupted_run(tmp_path):
    straight = run("--epochs", "3", "--lr-decay", "0.9")
    first = run("--epochs", "2", "--lr-decay", "0.9", "--checkpoint-dir", str(tmp_path))
    assert first.exit_code == 0, first.output
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == 2
    refused = run("--epochs", "3", "--lr-decay", "0.9", "--checkpoint-dir", str(tmp_path))
    assert refused.exit_code == 1 and "already exists; resume it with --resume" in refused.output
    resumed = run("--epochs", "3", "--lr-decay", "0.9", "--checkpoint-dir", str(tmp_path), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert summary_value(resumed.output, "epochs") == "3 (18 iterations, resumed from epoch 2)"
    for label in ("final loss", "final train acc", "final val acc", "best val acc", "test acc (best)"):
        assert summary_value(resumed.output, label) == summary_value(straight.output, label)


def test_resume_with_other_settings_or_damage_fails_clearly(tmp_path):
    assert run("--epochs", "1", "--checkpoint-dir", str(tmp_path)).exit_code == 0
    other = run("--epochs", "2", "--hidden-dims", "24,25", "--checkpoint-dir", str(tmp_path), "--resume")
    assert other.exit_code == 1 and "was written for model" in other.output
    (tmp_path / "checkpoint.json").write_text("{not json")
    damaged = run("--epochs", "2", "--checkpoint-dir", str(tmp_path), "--resume")
    assert damaged.exit_code == 1 and "corrupt checkpoint" in damaged.output and "not valid JSON" in damaged.output
    missing = run("--epochs", "2", "--checkpoint-dir", str(tmp_path / "none"), "--resume")
    assert missing.exit_code == 1 and "no checkpoint found" in missing.output
    nowhere = run("--epochs", "2", "--resume")
    assert nowhere.exit_code == 2 and "--resume needs --checkpoint-dir" in nowhere.output, nowhere.output


@pytest.mark.parametrize("args,message", [
    (["--hidden-dims", "24,x"], "comma-separated integers"),
    (["--normalization", "rmsnorm"], "'rmsnorm' is not one of"),
    (["--update-rule", "lbfgs"], "'lbfgs' is not one of"),
])
def test_bad_options_are_reported(args, message):
    result = run("--epochs", "1", *args)
    assert result.exit_code != 0 and message in result.output, result.output


@pytest.mark.parametrize("args,flag", [
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--num-train", "0"], "--num-train"),
    (["--dropout", "1.5"], "--dropout"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
])
def test_out_of_range_options_are_usage_errors_naming_the_flag(args, flag):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}'" in result.output and "is not in the range" in result.output, result.output


def test_missing_cifar10_says_where_it_looked(tmp_path):
    result = run("--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert str(tmp_path / "nowhere") in result.output
