"""The convnet and small-batch experiments, shrunk to seconds: results, figures, report, determinism."""

import dataclasses

import pytest
from test_experiments import check_written, only_seed, read, run_quietly

from normlab.lab.experiments import convnet, make_config, run_experiment, small_batch, strip_timing

CNN = {"conv_channels": (4, 4, 4), "num_train": 128, "epochs": 2, "seeds": 1}


def test_convnet_against_the_paper(tmp_path):
    config = make_config("convnet", mlp_hidden_dims=(16,), normalizations=("none", "groupnorm"), groups=2, **CNN)
    lines = []
    a = run_experiment("convnet", tmp_path / "a", config=config, jobs=1, progress="plain", log=lines.append)
    results = check_written(a, "convnet")
    assert list(only_seed(results)) == ["logistic", "mlp", "cnn", "cnn + groupnorm"]
    assert results["paper_test_acc"] == {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94}
    assert only_seed(results)["cnn"]["parameters"] == (4 * 5 + 4) + 2 * (4 * 4 * 3 + 4) + (4 * 5 * 10 + 10)
    assert results["summary"]["variants"]["cnn"]["parameters"] == only_seed(results)["cnn"]["parameters"]
    for run in only_seed(results).values():
        assert len(run["val_acc"]) == 2 and 0 <= run["test_acc"] <= 1
    text = a["report"].read_text()
    assert "(paper 94 %)" in text and "Where this setup differs from the paper's" in text
    assert "| variant | parameters | test acc | paper test acc |" in text
    b = run_quietly("convnet", tmp_path / "b", config)
    assert strip_timing(read(b["results"])) == strip_timing(results)
    assert any("| cnn + groupnorm, seed 0: best val acc" in line for line in lines)


def test_small_batch_sweep_with_precise_statistics(tmp_path):
    config = make_config("small-batch", batch_sizes=(8, 2), ghost_batch_size=8, renorm_warmup_epochs=(0, 1),
                         groups=2, **CNN)
    results = check_written(run_quietly("small-batch", tmp_path, config), "small-batch")
    assert list(only_seed(results)) == list(small_batch.VARIANTS)
    for variant, runs in only_seed(results).items():
        assert set(runs) == {"8", "2"}
        for b, run in runs.items():
            # Ghost batch norm trains at the ghost batch size, with statistics per chunk of b.
            assert run["batch_size"] == (8 if variant == "ghostbatchnorm" else int(b))
            assert ("precise" in run) == (variant in small_batch.RUNNING)
            if "precise" in run:
                assert 0 <= run["precise"]["val_acc"] <= 1
                assert set(run["precise"]["running_vs_population"]) == {"layer1", "layer2", "layer3"}
    assert small_batch.learning_rate(config, 2) == pytest.approx(config.learning_rate / 2)
    errors = small_batch.errors(results)
    assert set(errors) == {*small_batch.VARIANTS, *(f"{v} (precise)" for v in small_batch.RUNNING)}
    gn = only_seed(results)["groupnorm"]["2"]["best_val_acc"]
    assert errors["groupnorm"][1] == {"mean": pytest.approx(100 * (1 - gn)), "std": None, "n": 1,
                                      "min": pytest.approx(100 * (1 - gn)), "max": pytest.approx(100 * (1 - gn))}
    text = (tmp_path / "small-batch" / "report.md").read_text()
    assert "23.6 / 23.7 / 24.8 / 27.3 / 34.7 %" in text and "batch norm evaluated with precise statistics" in text


def test_configs_are_checked():
    with pytest.raises(ValueError, match="must divide ghost_batch_size 64, got \\[48\\]"):
        make_config("small-batch", batch_sizes=(48, 2))
    with pytest.raises(ValueError, match="normalizations must be a non-empty sequence"):
        make_config("convnet", normalizations=("none", "rmsnorm"))
    config = make_config("convnet")
    assert dataclasses.asdict(config)["kernel_size"] == (5, 3, 3) and convnet.cnn_label("none") == "cnn"
