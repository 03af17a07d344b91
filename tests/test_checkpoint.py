"""Checkpoints: bit-for-bit resume (also after SIGKILL), atomicity, clear errors on damage or mismatch."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import normlab
from _procs import kill_when
from normlab.lab import FullyConnectedNet, Solver
from normlab.lab import checkpoint as ckpt


def blobs(n=120, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = 2 * rng.standard_normal((c, d))
    y = rng.integers(0, c, size=n)
    X = centres[y] + rng.standard_normal((n, d))
    return {"X_train": X[:90], "y_train": y[:90], "X_val": X[90:], "y_val": y[90:]}


# Batch norm + dropout + adam + lr decay: every piece of state a resume must restore.
MODEL = dict(hidden_dims=[12, 12], input_dim=5, num_classes=3, normalization="batchnorm", dropout=0.2,
             weight_scale=0.1, seed=3)
SOLVER = dict(update_rule="adam", optim_config={"learning_rate": 5e-3}, lr_decay=0.9, batch_size=15, seed=5,
              num_train_samples=50, verbose=False)


def make_solver(num_epochs, data=None, **kw):
    return Solver(FullyConnectedNet(**MODEL), data or blobs(), num_epochs=num_epochs, **{**SOLVER, **kw})


def assert_same_run(a: Solver, b: Solver):
    assert a.epoch == b.epoch
    assert a.loss_history == b.loss_history
    assert a.train_acc_history == b.train_acc_history and a.val_acc_history == b.val_acc_history
    assert a.best_val_acc == b.best_val_acc
    for k in a.model.params:
        np.testing.assert_array_equal(a.model.params[k], b.model.params[k])
    for name, stats in a.model.batch_stats.items():
        np.testing.assert_array_equal(stats.mean, b.model.batch_stats[name].mean)
        np.testing.assert_array_equal(stats.var, b.model.batch_stats[name].var)
    for k, state in a.optim_states.items():
        np.testing.assert_array_equal(state["m"], b.optim_states[k]["m"])
        assert state["t"] == b.optim_states[k]["t"]
        assert state["learning_rate"] == b.optim_states[k]["learning_rate"]
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert a.model.dropout_rng.bit_generator.state == b.model.dropout_rng.bit_generator.state


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    full = make_solver(5).train()
    first = make_solver(2, checkpoint_dir=tmp_path).train()
    assert first.loss_history == full.loss_history[:len(first.loss_history)]
    resumed = make_solver(5, checkpoint_dir=tmp_path, resume=True)
    assert resumed.epoch == 2
    resumed.train()
    assert_same_run(full, resumed)


def test_resume_float32_layernorm_momentum_bit_for_bit(tmp_path):
    model = {**MODEL, "normalization": "layernorm", "dtype": np.float32}
    solver = {**SOLVER, "update_rule": "sgd_momentum", "optim_config": {"learning_rate": 0.05}}

    def make(num_epochs, **kw):
        return Solver(FullyConnectedNet(**model), blobs(), num_epochs=num_epochs, **{**solver, **kw})

    full = make(4).train()
    make(3, checkpoint_dir=tmp_path).train()
    resumed = make(4, checkpoint_dir=tmp_path, resume=True).train()
    assert resumed.loss_history == full.loss_history
    for k, v in full.model.params.items():
        assert resumed.model.params[k].dtype == np.float32
        np.testing.assert_array_equal(resumed.model.params[k], v)
        np.testing.assert_array_equal(resumed.optim_states[k]["velocity"], full.optim_states[k]["velocity"])


def test_checkpoint_files_are_npz_without_pickle_and_json(tmp_path):
    make_solver(2, checkpoint_dir=tmp_path).train()
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["epoch"] == 2 and meta["model"]["normalization"] == "batchnorm"
    assert meta["rng"]["bit_generator"] == "PCG64"
    assert meta["optim_state"]["W1"]["t"] == 12
    npz_files = list(tmp_path.glob("*.npz"))
    assert [p.name for p in npz_files] == [meta["arrays_file"]]          # the old arrays file was removed
    with np.load(npz_files[0], allow_pickle=False) as npz:
        assert {"params/W1", "optim/W1/m", "batch_stats/layer1/mean", "loss_history"} <= set(npz.files)


def test_a_crash_between_arrays_and_metadata_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    solver = make_solver(1, checkpoint_dir=tmp_path).train()
    good = (tmp_path / "checkpoint.json").read_text()
    real_replace = os.replace

    def crash_on_metadata(src, dst):
        if str(dst).endswith("checkpoint.json"):
            raise KeyboardInterrupt("killed while writing the metadata")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_metadata)
    solver.num_epochs = 2
    with pytest.raises(KeyboardInterrupt):
        solver.train()
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.json").read_text() == good
    arrays, meta = ckpt.load(tmp_path)
    assert meta["epoch"] == 1
    assert make_solver(3, checkpoint_dir=tmp_path, resume=True).epoch == 1


def test_leftovers_of_a_killed_save_are_ignored_then_swept(tmp_path):
    solver = make_solver(1, checkpoint_dir=tmp_path).train()
    (tmp_path / ".state-deadbeef.npz.1234abcd.tmp").write_bytes(b"half a zip")   # killed mid-write
    (tmp_path / "state-0123456789ab.npz").write_bytes(b"renamed, metadata never written")
    assert ckpt.load(tmp_path)[1]["epoch"] == 1
    solver.num_epochs = 2
    solver.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["checkpoint.json", json.loads((tmp_path / "checkpoint.json").read_text())["arrays_file"]])


def test_damaged_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        make_solver(1, checkpoint_dir=tmp_path / "nothing", resume=True)

    make_solver(1, checkpoint_dir=tmp_path).train()
    meta_path = tmp_path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    arrays_path = tmp_path / meta["arrays_file"]

    payload = bytearray(arrays_path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    arrays_path.write_bytes(bytes(payload))
    with pytest.raises(ckpt.CheckpointError, match="does not match the SHA-256"):
        make_solver(2, checkpoint_dir=tmp_path, resume=True)
    arrays_path.unlink()
    with pytest.raises(ckpt.CheckpointError, match="which is missing"):
        ckpt.load(tmp_path)

    meta_path.write_text(json.dumps(meta)[:40])
    with pytest.raises(ckpt.CheckpointError, match="not valid JSON"):
        ckpt.load(tmp_path)
    meta_path.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ckpt.CheckpointError, match="version 99"):
        ckpt.load(tmp_path)
    meta_path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ckpt.CheckpointError, match="not a normlab checkpoint"):
        ckpt.load(tmp_path)


def test_mismatched_checkpoints_are_refused_and_change_nothing(tmp_path):
    make_solver(1, checkpoint_dir=tmp_path).train()
    other_model = FullyConnectedNet(**{**MODEL, "hidden_dims": [12, 13]})
    solver = Solver(other_model, blobs(), num_epochs=3, **SOLVER)
    before = {k: v.copy() for k, v in other_model.params.items()}
    with pytest.raises(ckpt.CheckpointError, match="written for model"):
        solver.load_checkpoint(tmp_path)
    assert solver.epoch == 0 and solver.loss_history == []
    for k, v in before.items():
        np.testing.assert_array_equal(other_model.params[k], v)
    with pytest.raises(ckpt.CheckpointError, match="solver settings"):
        make_solver(3, checkpoint_dir=tmp_path, resume=True, batch_size=10)
    with pytest.raises(ckpt.CheckpointError, match="different training/validation data"):
        make_solver(3, data=blobs(seed=1), checkpoint_dir=tmp_path, resume=True)


# A training run the test can kill: tiny net, checkpoint every epoch, far more epochs than it will live.
KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {test_dir!r})
    from test_checkpoint import make_solver
    make_solver(100000, checkpoint_dir={ckpt_dir!r}).train()
""")


def test_resume_after_sigkill_mid_run(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    script = KILL_SCRIPT.format(test_dir=str(Path(__file__).parent), ckpt_dir=str(ckpt_dir))
    env = {**os.environ, "PYTHONPATH": str(Path(normlab.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta = ckpt_dir / "checkpoint.json"
    # let it get mid-epoch or mid-save (0.05 s after epoch 3's checkpoint); any moment must do
    kill_when(proc, lambda: meta.exists() and json.loads(meta.read_text() or "{}").get("epoch", 0) >= 3, after=0.05)
    assert proc.returncode == -signal.SIGKILL

    _, meta = ckpt.load(ckpt_dir)
    killed_at = meta["epoch"]
    assert 3 <= killed_at < 100000
    resumed = make_solver(killed_at + 2, checkpoint_dir=ckpt_dir, resume=True).train()
    full = make_solver(killed_at + 2).train()
    assert_same_run(full, resumed)
