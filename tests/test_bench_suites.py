"""Smoke runs of ``normlab bench --suite torch`` and ``--suite sync`` on tiny shapes, and of
benchmarks/per_call.py (no timing assertions)."""

import json
import math

import pytest
from click.testing import CliRunner

from normlab.cli import main

pytest.importorskip("torch")


def _bench(tmp_path, *args):
    path, md = tmp_path / "bench.json", tmp_path / "bench.md"
    result = CliRunner().invoke(main, ["bench", *args, "--rounds", "1", "--json", str(path), "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text()), md.read_text()


def test_torch_suite_quick(tmp_path):
    data, md = _bench(tmp_path, "--suite", "torch", "--quick", "--threads", "1")
    assert data["suite"] == "torch" and data["machine"]["threads"] == 1
    cases = {(r["case"], r["dtype"]) for r in data["rows"]}
    assert cases == {(c, d) for c in ("bn:512x64", "sbn:8x16x14x14") for d in ("float32", "float64")}
    for case, dtype in cases:
        rows = {r["impl"]: r for r in data["rows"] if (r["case"], r["dtype"]) == (case, dtype)}
        assert set(rows) == {"normlab.torch", "torch.nn", "numba", "torch"}
        assert all(r[f"{p}_ms"] > 0 for r in rows.values() for p in ("forward", "backward", "both"))
        # The ratio is torch's time over normlab's: torch.nn over the module, ATen over the kernels.
        assert math.isclose(rows["normlab.torch"]["both_ratio"],
                            rows["torch.nn"]["both_ms"] / rows["normlab.torch"]["both_ms"])
        assert math.isclose(rows["numba"]["backward_ratio"],
                            rows["torch"]["backward_ms"] / rows["numba"]["backward_ms"])
        assert "both_ratio" not in rows["torch.nn"]
    assert set(data["summary"]["module_ratio_both"]) == {f"{c} {d}" for c, d in cases}
    assert "| sbn:8x16x14x14 | float64 | normlab.torch | module |" in md


def test_sync_suite_quick_spawns_two_ranks(tmp_path):
    data, md = _bench(tmp_path, "--suite", "sync", "--quick", "--timeout", "60")
    machine = data["machine"]
    assert data["suite"] == "sync" and machine["world_size"] == 2 and machine["threads_per_rank"] == 1
    assert {r["dtype"] for r in data["rows"]} == {"float32"}
    for row in data["rows"]:
        assert sum(row["shard_rows"]) == row["shape"][0] and len(row["ranks"]) == 2
        # The reported time is the slower rank's.
        assert row["both_ms"] == max(r["both_ms"] for r in row["ranks"]) > 0
    assert {r["impl"] for r in data["rows"]} == {"local", "torch.nn", "sync-math", "sync", "collectives"}
    summary = data["summary"]["bn:64x8 float32"]
    by = {r["impl"]: r["both_ms"] for r in data["rows"] if r["case"] == "bn:64x8"}
    assert math.isclose(summary["communication_ms"], by["sync"] - by["sync-math"])
    assert "| bn:64x8 | 32+32 | float32 | sync |" in md


def test_torch_and_sync_suites_reject_other_norms_and_tiny_batches(tmp_path):
    bad = CliRunner().invoke(main, ["bench", "--suite", "torch", "--cases", "ln:8x4"])
    assert bad.exit_code != 0 and "batch norm only" in bad.output
    from normlab.bench.sync_suite import run_sync
    with pytest.raises(ValueError, match="too small to split over 2 ranks"):
        run_sync(cases=["bn:3x4"], log=lambda _: None)


def test_sync_suite_stops_its_ranks_after_the_timeout():
    import multiprocessing
    import time

    from normlab.bench.sync_suite import run_sync
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="sync benchmark did not finish within 0.5 s; they were stopped"):
        run_sync(cases=["sbn:32x64x56x56"], rounds=5, timeout_s=0.5, log=lambda _: None)  # minutes if not stopped
    assert time.monotonic() - start < 8  # the ranks are killed, not waited for
    assert not multiprocessing.active_children()


def test_models_suite_quick_times_both_twins_in_a_child_process(tmp_path):
    data, md = _bench(tmp_path, "--suite", "models", "--quick", "--repeat", "7")
    assert data["suite"] == "models" and list(data["environments"]) == ["default"]
    default = data["environments"]["default"]
    assert default["variables"] == {} and default["busy_processes"] == 0
    assert default["machine"]["omp_wait_policy"] is None  # the default environment sets no thread variable
    rows = {r["model"]: r for r in default["rows"]}
    assert set(rows) == {"mlp", "tiny-bn"} and rows["tiny-bn"]["mode"] == "fwd+bwd"
    for row in rows.values():
        assert row["torch_ms"] > 0 and row["normlab_ms"] > 0
        low, high = row["ratio_interval"]
        assert 0 < low <= row["ratio"] <= high
        assert len(row["round_ratios"]) == data["rounds"] and all(r > 0 for r in row["round_ratios"])
    assert math.isclose(default["geomean"], rows["mlp"]["ratio"])  # the fixed-cost row is reported apart
    assert math.isclose(default["fixed_cost_multiple"], 1 / rows["tiny-bn"]["ratio"])
    assert "| mlp: 256-512-512-10 with BatchNorm1d, batch 128 | train |" in md
    mlp = rows["mlp"]
    line = [line for line in md.splitlines() if line.startswith("| mlp:")][0]
    assert line.endswith(f"| {mlp['ratio']:.3f} | {mlp['ratio_interval'][0]:.3f}-{mlp['ratio_interval'][1]:.3f} "
                         f"| {min(mlp['round_ratios']):.2f}-{max(mlp['round_ratios']):.2f} |")


def test_models_suite_pairs_steps_and_takes_the_median_ratio(monkeypatch):
    from normlab.bench import models_suite

    # Each "step" is its twin's name (torch.nn's is made first); the timer hands out known seconds per step.
    names = iter(["torch", "normlab"])
    monkeypatch.setattr(models_suite, "_stepper", lambda model, x, y, mode: next(names))
    calls = []
    seconds = {"torch": iter([9.0, 0.002, 0.004, 0.006, 0.006, 0.030, 0.009]),  # warm-up, then 3 pairs x 2
               "normlab": iter([9.0, 0.001, 0.001, 0.002, 0.003, 0.001, 0.004])}

    def timer(step, repeat, warmup):
        calls.append(step)
        return [next(seconds[step])] * (3 if repeat == 3 else 1)

    monkeypatch.setattr(models_suite, "timed_runs", timer)
    row = models_suite.time_model(models_suite.MODELS["tiny-bn"], repeat=3, rounds=2)
    # pairs (torch / normlab): 2, 4, 3 | 2, 30, 2.25; the first of a pair alternates
    assert calls[2:] == ["torch", "normlab", "normlab", "torch", "torch", "normlab",
                         "normlab", "torch", "torch", "normlab", "normlab", "torch"]
    assert row["round_ratios"] == pytest.approx([3.0, 2.25])
    assert row["ratio"] == pytest.approx((2.25 + 3.0) / 2)  # the median of the six pairs, warm-up left out
    low, high = row["ratio_interval"]
    assert 2.0 <= low <= row["ratio"] <= high <= 30.0
    assert row["torch_ms"] == pytest.approx(6.0) and row["normlab_ms"] == pytest.approx(1.5)


def test_models_suite_compile_times_four_steps_per_turn_and_compiling_apart(monkeypatch):
    from normlab.bench import models_suite

    names = iter(["nn", "nl", "nn-c", "nl-c"])  # made in this order: eager twins, then compiled ones
    monkeypatch.setattr(models_suite, "_stepper", lambda model, x, y, mode: next(names))
    calls = []
    seconds = {"nn": iter([1.0, 0.004, 0.004]), "nl": iter([1.0, 0.002, 0.008]),
               "nn-c": iter([20.0, 0.003, 0.006]), "nl-c": iter([30.0, 0.001, 0.002])}  # warm-up, then 2 turns

    def timer(step, repeat, warmup):
        calls.append(step)
        return [next(seconds[step])] * repeat

    monkeypatch.setattr(models_suite, "timed_runs", timer)
    row = models_suite.time_model(models_suite.MODELS["tiny-bn"], repeat=2, rounds=1, compiled=True)
    assert len(calls) == 12 and all(sorted(calls[i:i + 4]) == ["nl", "nl-c", "nn", "nn-c"] for i in (4, 8))
    assert row["ratio"] == pytest.approx((2.0 + 0.5) / 2) and row["torch_ms"] == pytest.approx(4.0)
    compiled = row["compiled"]
    assert compiled["ratio"] == pytest.approx((3.0 + 3.0) / 2) and compiled["normlab_ms"] == pytest.approx(1.5)
    assert compiled["torch_compile_s"] == 20.0 and compiled["normlab_compile_s"] == 30.0  # the first step's
    md = models_suite.markdown_models({"rounds": 1, "repeat": 2, "compiled": True, "environments": {"default": {
        "machine": {"cpu": "cpu", "cores": 2, "loadavg_start": [1.0], "loadavg_end": [1.0]}, "variables": {},
        "busy_processes": 0, "rows": [row], **models_suite._summary([row])}}})
    assert "**Compiled**" in md and "| 3.000 |" in md and "| 20.0, 30.0 |" in md and "eager and compiled" in md
    assert "normlab's arithmetic float64" in md
    md32 = models_suite.markdown_models({"rounds": 1, "repeat": 2, "compiled": True, "compute_dtype": "float32",
                                         "environments": {"default": {
        "machine": {"cpu": "cpu", "cores": 2, "loadavg_start": [1.0], "loadavg_end": [1.0]}, "variables": {},
        "busy_processes": 0, "rows": [row], **models_suite._summary([row])}}})
    assert "normlab's arithmetic float32, `normlab.torch.set_compute_dtype(torch.float32)`" in md32
    result = CliRunner().invoke(main, ["bench", "--suite", "torch", "--compile"])
    assert result.exit_code == 2 and "--compile is for the models suite" in result.output
    result = CliRunner().invoke(main, ["bench", "--suite", "models", "--compute-dtype", "float32"])
    assert result.exit_code == 2 and "give --compile too" in result.output


def test_models_suite_compile_order_favours_no_variant(monkeypatch):
    """Four variants reversed every turn would run two of them (one per pair) twice in a row at every turn's
    end; shuffled, each is first and follows itself about equally often, and a seed repeats the order."""
    from normlab.bench import models_suite

    names = ["nn", "nl", "nn-c", "nl-c"]

    def run():
        made = iter(names)
        monkeypatch.setattr(models_suite, "_stepper", lambda model, x, y, mode: next(made))
        calls = []
        monkeypatch.setattr(models_suite, "timed_runs",
                            lambda step, repeat, warmup: calls.append(step) or [0.001] * repeat)
        models_suite.time_model(models_suite.MODELS["tiny-bn"], repeat=40, rounds=2, compiled=True)
        return [calls[i:i + 4] for i in range(4, len(calls), 4)]

    turns = run()
    assert len(turns) == 80 and all(sorted(t) == sorted(names) for t in turns)
    first = {n: sum(t[0] == n for t in turns) for n in names}
    again = {n: sum(a[-1] == b[0] == n for a, b in zip(turns, turns[1:])) for n in names}
    assert min(first.values()) >= 10, first  # 20 each on average
    assert max(again.values()) <= 12, again  # reversal: 40 for two of them, 0 for the others
    assert run() == turns  # seeded


def test_models_suite_control_times_torch_nn_against_its_own_copy(monkeypatch):
    from torch import nn

    import normlab.torch as nt
    from normlab.bench import models_suite

    seen, real_stepper = [], models_suite._stepper

    def stepper(model, x, y, mode):
        seen.append(model)
        return real_stepper(model, x, y, mode)

    monkeypatch.setattr(models_suite, "_stepper", stepper)
    monkeypatch.setattr(models_suite, "timed_runs", lambda step, repeat, warmup: [0.001] * repeat)
    result = models_suite.run_here(["mlp"], repeat=7, rounds=2, log=lambda _: None, control=True)
    kinds = [{type(m) for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nt.BatchNorm))} for model in seen]
    assert kinds == [{nn.BatchNorm1d}, {nt.BatchNorm}, {nn.BatchNorm1d}, {nn.BatchNorm1d}]
    assert seen[3] is not seen[2]  # a copy, timed against the original
    row = result["rows"][0]
    assert row["control"] == {"ratio": 1.0, "ratio_interval": [1.0, 1.0], "round_ratios": [1.0, 1.0]}
    md = models_suite.markdown_models({"rounds": 2, "repeat": 7, "control": True,
                                       "environments": {"default": {**result, "variables": {}, "busy_processes": 0}}})
    assert "| A/A | A/A 95% |" in md and md.count("| 1.000 | 1.000-1.000 | 1.00-1.00 | 1.000 | 1.000-1.000 |") == 1
    assert "median over 14 turns (one step of each twin, the first of a pair alternating" in md
    assert "A/A (torch.nn against its own copy): 1.000x to 1.000x over the models." in md


def _process_result(ratios, control_ratio, torch_ms):
    """A run_here result of one process with the given per-model ratios (mlp, tiny-bn)."""
    rows = [{"model": name, "description": name, "mode": mode, "torch_ms": torch_ms, "normlab_ms": torch_ms / r,
             "torch_min_ms": torch_ms / 2, "normlab_min_ms": torch_ms / r / 2, "ratio": r,
             "ratio_interval": [r * 0.99, r * 1.01], "round_ratios": [r, r], "loadavg": 0.5,
             "control": {"ratio": control_ratio, "ratio_interval": [0.99, 1.01], "round_ratios": [control_ratio]}}
            for (name, mode), r in zip((("mlp", "train"), ("tiny-bn", "fwd+bwd")), ratios)]
    machine = {"cpu": "x", "cores": 2, "loadavg_start": [0.1], "loadavg_end": [0.2 + torch_ms]}
    return {"machine": machine, "rows": rows, "geomean": ratios[0], "slowest_ratio": ratios[0],
            "fixed_cost_multiple": 1 / ratios[1]}


def test_models_suite_processes_reports_the_median_over_fresh_processes(monkeypatch):
    from normlab.bench import models_suite

    # the medians are the middle process's, neither the first nor the last
    runs = iter([_process_result((0.96, 2.0), 0.98, 3.0), _process_result((1.01, 1.8), 1.00, 4.0),
                 _process_result((1.08, 1.6), 1.02, 5.0)])
    calls = []

    def child_run(models, repeat, rounds, variables, timeout_s, log, control=False, compiled=False,
                  compute_dtype="float64"):
        calls.append((models, repeat, rounds, variables, control))
        return next(runs)

    monkeypatch.setattr(models_suite, "_child_run", child_run)
    result = models_suite.run_models(["mlp", "tiny-bn"], repeat=7, rounds=2, log=lambda _: None, control=True,
                                     processes=3)
    assert len(calls) == 3 and all(c == (["mlp", "tiny-bn"], 7, 2, {}, True) for c in calls)  # fresh processes
    assert result["processes"] == 3
    default = result["environments"]["default"]
    assert default["processes"] == 3 and default["variables"] == {} and default["busy_processes"] == 0
    mlp, tiny = default["rows"]
    assert mlp["ratio"] == 1.01 and mlp["process_ratios"] == [0.96, 1.01, 1.08]
    assert mlp["ratio_interval"] == [0.96, 1.08] and mlp["torch_ms"] == 4.0 and mlp["normlab_ms"] == pytest.approx(4.0 / 1.01) and mlp["torch_min_ms"] == 1.5
    assert mlp["round_ratios"] == [0.96, 0.96, 1.01, 1.01, 1.08, 1.08]
    assert mlp["control"]["ratio"] == 1.0 and mlp["control"]["ratio_interval"] == [0.98, 1.02]
    assert default["geomean"] == pytest.approx(1.01) and default["slowest_ratio"] == 1.01
    assert default["fixed_cost_multiple"] == pytest.approx(1 / 1.8)  # the tiny row's median, not the last one's
    assert default["machine"]["loadavg_end"] == [5.2]  # the last process's
    md = models_suite.markdown_models(result)
    assert "| torch.nn / normlab | processes | rounds | A/A | A/A processes |" in md
    assert "the median over 3 fresh processes" in md and "95%" not in md
    assert "| 1.010 | 0.960-1.080 | 0.96-1.08 | 1.000 | 0.980-1.020 |" in md
    with pytest.raises(ValueError, match="processes must be >= 1, got 0"):
        models_suite.run_models(["mlp"], processes=0)


def test_models_suite_twin_has_normlab_norms_and_the_same_outputs():
    import torch

    import normlab.torch as nt
    from normlab.bench.models_suite import MODELS, normlab_twin

    torch.manual_seed(0)
    for name in ("cnn", "transformer"):
        model, x, _ = MODELS[name].build()
        twin = normlab_twin(model)
        norms = [m for m in twin.modules() if isinstance(m, (nt.BatchNorm, nt.LayerNorm))]
        assert norms and not any(type(m) in (torch.nn.BatchNorm2d, torch.nn.LayerNorm) for m in twin.modules())
        with torch.no_grad():
            assert torch.allclose(model.eval()(x[:4]), twin.eval()(x[:4]), atol=1e-5)


def test_models_suite_rejects_unknown_models_and_environments(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--suite", "models", "--cases", "vgg"])
    assert result.exit_code == 2 and "unknown model(s) vgg" in result.output
    result = CliRunner().invoke(main, ["bench", "--suite", "models", "--env", "turbo"])
    assert result.exit_code == 2 and "--env takes default, passive, default+load, workqueue" in result.output
    result = CliRunner().invoke(main, ["bench", "--suite", "torch", "--control"])
    assert result.exit_code == 2 and "--control is for the models suite" in result.output
    result = CliRunner().invoke(main, ["bench", "--suite", "torch", "--processes", "3"])
    assert result.exit_code == 2 and "--processes is for the models suite" in result.output
    result = CliRunner().invoke(main, ["bench", "--suite", "models", "--processes", "0"])
    assert result.exit_code == 2 and "--processes must be >= 1, got 0" in result.output


def test_per_call_script_times_each_norm_of_both_twins():
    """benchmarks/per_call.py: a row per norm and pass, with both twins' times, on the MLP's two BatchNorm1d."""
    import pathlib
    import re
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "per_call.py"
    done = subprocess.run([sys.executable, str(script), "mlp", "--steps", "3"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "the second column's norms: normlab" in done.stdout
    rows = [line for line in done.stdout.splitlines() if re.match(r"^\d+\s", line)]
    assert [tuple(r.split()[:2]) for r in rows] == [(n, p) for n in ("1", "4") for p in ("forward", "backward")], \
        done.stdout
    for r in rows:  # torch.nn's median, its p10, normlab's median, its p10, the ratio: all positive numbers
        numbers = [float(v) for v in re.findall(r"\d+\.\d+", r)]
        assert len(numbers) == 5 and all(v > 0 for v in numbers), r
    # --control: the same table with torch.nn's norms in both twins, and the header says so
    done = subprocess.run([sys.executable, str(script), "mlp", "--steps", "3", "--control"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "CONTROL (A/A)" in done.stdout and "the second column's norms: torch" in done.stdout
    assert len([line for line in done.stdout.splitlines() if re.match(r"^\d+\s", line)]) == 4, done.stdout


def test_layer_norm_floor_script_times_the_kernels_own_passes():
    """benchmarks/layer_norm_floor.py: every pass timed (the script itself refuses to time passes whose dx
    differs from the kernel's)."""
    import pathlib
    import re
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "layer_norm_floor.py"
    done = subprocess.run([sys.executable, str(script), "--shape", "6x40", "--runs", "3"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    times = dict(re.findall(r"^\s+(\S.*?\S)\s+(\d+\.\d) us", done.stdout, flags=re.M))
    assert set(times) == {"sums", "dx float64", "dx float32", "kernel", "ATen", "sums + dx float64",
                          "sums + dx float32 (floor)"}, done.stdout
    assert all(float(v) > 0 for v in times.values()), done.stdout
