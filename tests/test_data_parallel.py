"""Data-parallel training (normlab.lab.launch, normlab.procs) against single-process training on the same global batches.

Two ranks over gloo on 127.0.0.1 train the lab net with the Solver
(data_parallel=True) on unequal shards; the checkpoint rank 0 writes (the
last epoch's weights, running statistics and optimizer state) must equal a
single-process run's within 1e-8, float64. Then the CLI end to end
(``normlab train --nproc 2``, resume included) and failures: a rank that
raises, and no PyTorch. Every process is bounded by a timeout.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _procs import free_port
from _procs import run as run_bounded
from normlab import distributed, procs
from normlab.gradcheck import rel_error
from normlab.lab import FullyConnectedNet, Solver
from normlab.lab import checkpoint as ckpt
from normlab.lab.data import load_dataset
from normlab.lab.sharding import Shard

TOL = 1e-8
SPAWN_DEADLINE_S = 300  # the spawned ranks' whole run; they take about a minute on 2 busy cores
SRC = str(Path(__file__).resolve().parents[1] / "src")

# Deep nets on a slice of digits; batch 45 splits 23 + 22, so the shards differ in size.
CASES = {
    "batchnorm": dict(net=dict(hidden_dims=[32, 32, 32, 32], normalization="batchnorm"),
                      solver=dict(update_rule="adam", optim_config={"learning_rate": 3e-3})),
    "batchnorm-dropout-reg": dict(net=dict(hidden_dims=[32, 32, 32], normalization="batchnorm", dropout=0.2,
                                           reg=1e-2, momentum=None),
                                  solver=dict(update_rule="sgd_momentum", optim_config={"learning_rate": 5e-2})),
    "layernorm-reg": dict(net=dict(hidden_dims=[32, 32, 32], normalization="layernorm", reg=1e-2),
                          solver=dict(update_rule="adam", optim_config={"learning_rate": 3e-3})),
}


def _train_case(name, directory, data_parallel):
    data = load_dataset("digits", seed=0, num_train=300)
    case = CASES[name]
    model = FullyConnectedNet(input_dim=64, num_classes=10, weight_scale=0.1, seed=3, dtype=np.float64,
                              **case["net"])
    solver = Solver(model, data, batch_size=45, num_epochs=3, seed=5, verbose=False, num_train_samples=200,
                    checkpoint_dir=directory, data_parallel=data_parallel, **case["solver"])
    solver.train()
    return solver


def _dp_worker(out_dir):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank = dist.get_rank()
    for name in CASES:
        solver = _train_case(name, Path(out_dir) / name, data_parallel=True)
        np.savez(Path(out_dir) / f"{name}-rank{rank}.npz",
                 loss=solver.loss_history, val=solver.val_acc_history, train=solver.train_acc_history,
                 **{f"best/{k}": v for k, v in solver.best_params.items()})
        dist.barrier()  # rank 0's last checkpoint is complete before anyone reads it
    data = load_dataset("digits", seed=0, num_train=300)
    try:
        Solver(FullyConnectedNet([8], 64, 10), data, batch_size=1, data_parallel=True)
    except ValueError as exc:
        Path(out_dir, f"batch-size-error-rank{rank}.txt").write_text(str(exc))
    # Bad input on rank 1 only, in a net without normalization (no synchronized norm to notice NaN):
    # every rank must raise the single-process path's error, none may wait for its peer.
    start, stop = distributed.shard_bounds(10, rank, 2)
    for bad in ("nan", "label"):
        X, y = data["X_train"][start:stop].copy(), data["y_train"][start:stop].copy()
        if rank == 1:
            X[0, 3], y[0] = (np.nan, y[0]) if bad == "nan" else (X[0, 3], 10)
        try:
            FullyConnectedNet([8], 64, 10, seed=0).loss(X, y, shard=Shard(start, 10))
        except ValueError as exc:
            Path(out_dir, f"{bad}-error-rank{rank}.txt").write_text(str(exc))


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("dp")
    procs.run_ranks(_dp_worker, (str(out),), 2, group_timeout=30, timeout=SPAWN_DEADLINE_S)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_train_like_one_process(two_rank_runs, tmp_path, name):
    single = _train_case(name, tmp_path, data_parallel=False)
    ranks = [np.load(two_rank_runs / f"{name}-rank{r}.npz") for r in range(2)]
    # Both ranks hold the same state bit for bit: they apply the same summed gradients.
    for key in ranks[0].files:
        assert np.array_equal(ranks[0][key], ranks[1][key]), key
    # Every step's global loss, the accuracies, and the best epoch's weights equal the single run's.
    assert rel_error(ranks[0]["loss"], np.array(single.loss_history)) < TOL
    assert ranks[0]["val"].tolist() == single.val_acc_history
    assert ranks[0]["train"].tolist() == single.train_acc_history
    for k, v in single.best_params.items():
        assert rel_error(ranks[0][f"best/{k}"], v) < TOL, k

    # The checkpoint rank 0 wrote after the last epoch: live weights, running statistics
    # (global count, unbiased), optimizer buffers and generator states.
    dp_arrays, dp_meta = ckpt.load(two_rank_runs / name)
    one_arrays, one_meta = ckpt.load(tmp_path)
    assert sorted(dp_arrays) == sorted(one_arrays)
    assert any(k.startswith("batch_stats/") for k in one_arrays) == name.startswith("batchnorm")
    for key, value in one_arrays.items():
        if value.size and value.dtype.kind == "f":
            assert rel_error(dp_arrays[key], value) < TOL, key
    for key in ("epoch", "rng", "dropout_rng", "num_batches_tracked", "optim_state", "solver", "model"):
        assert dp_meta[key] == one_meta[key], key


def test_a_batch_smaller_than_the_world_is_refused_on_every_rank(two_rank_runs):
    for rank in range(2):
        message = (two_rank_runs / f"batch-size-error-rank{rank}.txt").read_text()
        assert "batch_size 1 is smaller than the 2 data-parallel processes" in message


@pytest.mark.parametrize("bad, message", [
    ("nan", r"X \(shape \(\d, 64\)\) contains NaN or inf: 1 non-finite values over all ranks of the global batch"),
    ("label", r"labels y must lie in \[0, 10\): 1 labels outside it over all ranks of the global batch"),
])
def test_bad_input_on_one_rank_raises_the_same_error_on_every_rank(two_rank_runs, bad, message):
    errors = [(two_rank_runs / f"{bad}-error-rank{rank}.txt").read_text() for rank in range(2)]
    assert re.fullmatch(message, errors[0]) and re.fullmatch(message, errors[1]), errors


def _stop_rank_1(rank, directory):
    if rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(1.0)
    raise ValueError(f"rank {rank} gives up")


def test_a_stopped_worker_is_ended_without_waiting_for_the_grace(tmp_path):
    started = time.monotonic()
    with pytest.raises(procs.WorkerError, match="failed on rank 0 of 2: ValueError: rank 0 gives up"):
        procs.spawn(_stop_rank_1, (str(tmp_path),), 2, timeout=60)
    assert time.monotonic() - started < procs.STOP_GRACE_S  # the stopped rank went on SIGTERM, not SIGKILL


def test_data_parallel_needs_a_process_group_and_sane_settings():
    from normlab.lab.train import TrainConfig, train

    data = load_dataset("digits", seed=0, num_train=100)
    with pytest.raises(ValueError, match="needs an initialized torch.distributed process group"):
        Solver(FullyConnectedNet([8], 64, 10), data, data_parallel=True)
    with pytest.raises(ValueError, match="nproc must be an integer >= 1, got 0"):
        train(TrainConfig(nproc=0))
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        train(TrainConfig(nproc=2, timeout=-1))


# ----------------------------------------------------------------------------- model level, one process

def test_a_whole_batch_shard_in_one_process_equals_the_plain_loss():
    # World size 1: the synchronized norm and the packed reduction run without communicating.
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((12, 6)), rng.integers(0, 4, 12)
    nets = [FullyConnectedNet([8, 8], 6, 4, normalization="batchnorm", dropout=0.3, reg=0.1, seed=1)
            for _ in range(2)]
    loss, grads = nets[0].loss(X, y)
    shard_loss, shard_grads = nets[1].loss(X, y, shard=Shard(0, 12))
    assert rel_error(shard_loss, loss) < 1e-12
    for k in grads:
        assert rel_error(shard_grads[k], grads[k]) < 1e-10, k
    for name, stats in nets[0].batch_stats.items():
        assert rel_error(nets[1].batch_stats[name].var, stats.var) < 1e-12


@pytest.mark.parametrize("kwargs,message", [
    ({"shard": (0, 12)}, "shard must be a normlab.lab.sharding.Shard"),
    ({"shard": Shard(4, 12)}, "inside the global batch"),
    ({"shard": Shard(0, 12), "y": None}, "shard needs labels y"),
])
def test_bad_shards_are_rejected_without_state_change(kwargs, message):
    net = FullyConnectedNet([8], 6, 4, normalization="batchnorm", seed=1)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((12, 6)), rng.integers(0, 4, 12)
    kwargs = {"y": y, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        net.loss(X, **kwargs)
    assert net.batch_stats["layer1"].num_batches_tracked == 0


def test_shard_bounds_are_array_split():
    for n in (0, 1, 5, 45, 100):
        for k in (1, 2, 3, 7):
            sizes = [len(part) for part in np.array_split(np.arange(n), k)]
            starts = np.cumsum([0, *sizes[:-1]])
            assert [distributed.shard_bounds(n, r, k) for r in range(k)] == \
                [(int(start), int(start) + size) for start, size in zip(starts, sizes)]


# ----------------------------------------------------------------------------- bounded processes

def _sleep_long(rank, directory):
    Path(directory, f"{rank}.pid").write_text(str(os.getpid()))
    time.sleep(600)


def _raise_on_rank_1(rank, directory):
    if rank == 1:
        raise ValueError("rank 1 cannot go on")
    _sleep_long(rank, directory)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_spawn_stops_every_worker_when_the_deadline_passes(tmp_path):
    # The deadline leaves room for two fresh interpreters to import this module on a busy machine (the suite
    # runs in parallel): both must have written their pid before they are stopped.
    started = time.monotonic()
    with pytest.raises(procs.WorkerError, match="did not finish within 10 s; they were stopped"):
        procs.spawn(_sleep_long, (str(tmp_path),), 2, timeout=10)
    assert time.monotonic() - started < 10 + procs.STOP_GRACE_S + 5
    pids = [int(p.read_text()) for p in sorted(tmp_path.glob("*.pid"))]
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)


def test_spawn_names_the_failing_worker_and_stops_the_others(tmp_path):
    with pytest.raises(procs.WorkerError, match="failed on rank 1 of 2: ValueError: rank 1 cannot go on") as info:
        procs.spawn(_raise_on_rank_1, (str(tmp_path),), 2, timeout=120)
    assert info.value.rank == 1
    pid = int((tmp_path / "0.pid").read_text()) if (tmp_path / "0.pid").exists() else None
    assert pid is None or _gone(pid)


def test_bounded_run_kills_the_whole_process_group_on_timeout(tmp_path):
    # The command starts a grandchild and waits for it, as `normlab train --nproc 2` waits for its ranks.
    marker = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "open(sys.argv[1], 'w').write(str(p.pid)); p.wait()")
    with pytest.raises(subprocess.TimeoutExpired):
        run_bounded([sys.executable, "-c", code, str(marker)], timeout=5)
    grandchild = int(marker.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # killed at once; reaped by init shortly after
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail(f"the grandchild {grandchild} outlived the timeout")


# ----------------------------------------------------------------------------- the command line

FAST = ["--hidden-dims", "24,24,24", "--batch-size", "45", "--num-train", "300", "--normalization", "batchnorm",
        "--dropout", "0.1", "--quiet", "--timeout", "30"]


def _cli(*args, env=None, timeout=120):
    environ = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return run_bounded([sys.executable, "-m", "normlab", "train", *args], env=environ, timeout=timeout)


def _summary(output):
    rows = dict(re.findall(r"^(\S.*?)\s{2,}(.+)$", output, re.MULTILINE))
    assert "final loss" in rows, output
    return {k: v for k, v in rows.items() if k not in ("training time", "processes")}


def test_cli_nproc_2_prints_the_single_process_summary_and_resumes(tmp_path):
    pytest.importorskip("torch")
    single = _cli(*FAST, "--epochs", "3")
    assert single.returncode == 0, single.stderr
    first = _cli(*FAST, "--epochs", "2", "--nproc", "2", "--checkpoint-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "2 (data-parallel)" in first.stdout
    resumed = _cli(*FAST, "--epochs", "3", "--nproc", "2", "--checkpoint-dir", str(tmp_path), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    expected = _summary(single.stdout)
    expected["epochs"] = expected["epochs"].replace(")", ", resumed from epoch 2)")
    expected["checkpoint"] = str(tmp_path / "checkpoint.json")
    assert _summary(resumed.stdout) == expected


def test_a_failing_rank_ends_every_rank_clearly_and_quickly(tmp_path):
    # Two processes started as torchrun starts them (env://); rank 1 cannot load its data.
    pytest.importorskip("torch")
    # env:// needs a port number, so here (only) a free port is picked.
    common = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
              "GLOO_SOCKET_IFNAME": "lo"}  # loopback only
    bad = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere")]
    environ = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ranks = [subprocess.Popen([sys.executable, "-m", "normlab", "train", *FAST, *(bad if rank else [])],
                              env={**environ, **common, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
             for rank in range(2)]
    outputs = []
    try:
        for p in ranks:
            outputs.append(p.communicate(timeout=90))
    finally:
        for p in ranks:
            procs.kill_group(p)
            p.wait()
    (_, err0), (_, err1) = outputs
    assert ranks[1].returncode == 1 and "nowhere" in err1, err1
    assert ranks[0].returncode == 1, err0
    assert "failed on rank 0 of 2" in err0 and "a peer rank may have crashed" in err0, err0

    # Spawned by --nproc: the launcher names the failing rank and its error.
    spawned = _cli(*FAST, *bad, "--nproc", "2")
    assert spawned.returncode == 1
    assert re.search(r"data-parallel training failed on rank [01] of 2: DatasetNotFoundError: CIFAR-10 not found",
                     spawned.stderr), spawned.stderr
    assert str(tmp_path / "nowhere") in spawned.stderr


def test_without_torch_nproc_2_says_how_to_install_it_and_nproc_1_needs_none(monkeypatch):
    from click.testing import CliRunner

    from normlab.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    args = ["train", *FAST, "--epochs", "1"]
    result = CliRunner().invoke(main, [*args, "--nproc", "2"])
    assert result.exit_code == 1 and 'pip install "normlab[torch]"' in result.output, result.output
    result = CliRunner().invoke(main, [*args, "--nproc", "1"])
    assert result.exit_code == 0 and "final loss" in result.output, result.output
