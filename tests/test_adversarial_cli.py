"""Hostile command lines and checkpoints: exact exit codes, one-line errors naming the option or field.

Parse errors are exit 2 with "Invalid value for '--option'"; failures a
command expects are exit 1 with one "Error:" line; nothing prints a
traceback. Checkpoint JSON is checked field by field like the arrays, and a
save that fails (a full disk, a kill) leaves the last good checkpoint and at
most one pending temporary file.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import normlab
from _procs import kill_when
from normlab.cli import main
from normlab.lab import checkpoint as ckpt

from test_checkpoint import make_solver

SRC = str(Path(normlab.__file__).parents[1])


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, OverflowError))
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output


# ----------------------------------------------------------------------------- normlab train: parsing

TRAIN_USAGE = [
    ("--hidden-dims", ",,,", "an empty item"),
    ("--hidden-dims", "10,,10", "an empty item"),
    ("--hidden-dims", "", "an empty item"),
    ("--hidden-dims", " ", "an empty item"),
    ("--hidden-dims", "10,", "an empty item"),
    ("--hidden-dims", ",10", "an empty item"),
    ("--hidden-dims", "0", "every size must be >= 1"),
    ("--hidden-dims", "10,-5", "every size must be >= 1"),
    ("--hidden-dims", "1e3", "comma-separated integers"),
    ("--hidden-dims", "10;10", "comma-separated integers"),
    ("--hidden-dims", "ten", "comma-separated integers"),
    ("--reg", "nan", "'nan' is not a finite number"),
    ("--reg", "inf", "'inf' is not a finite number"),
    ("--reg", "-inf", "'-inf' is not a finite number"),
    ("--reg", "-1", "is not in the range x>=0"),
    ("--learning-rate", "inf", "is not a finite number"),
    ("--lr", "nan", "is not a finite number"),
    ("--lr", "-0.1", "is not in the range"),
    ("--weight-scale", "0", "is not in the range x>0"),
    ("--weight-scale", "inf", "is not a finite number"),
    ("--weight-scale", "NaN", "is not a finite number"),
    ("--dropout", "nan", "is not a finite number"),
    ("--dropout", "1", "is not in the range 0<=x<1"),
    ("--dropout", "-0.1", "is not in the range"),
    ("--lr-decay", "nan", "is not a finite number"),
    ("--lr-decay", "0", "is not in the range 0<x<=1"),
    ("--lr-decay", "1.5", "is not in the range"),
    ("--timeout", "inf", "is not a finite number"),
    ("--timeout", "nan", "is not a finite number"),
    ("--timeout", "0", "is not in the range 0<x<=604800"),
    ("--timeout", "-1", "is not in the range"),
    ("--timeout", "1e9", "is not in the range"),
    ("--batch-size", "0", "is not in the range x>=1"),
    ("--epochs", "-1", "is not in the range x>=1"),
    ("--seed", "-1", "is not in the range x>=0"),
    ("--nproc", "0", "is not in the range x>=1"),
    ("--print-every", "0", "is not in the range x>=1"),
    ("--num-train", "0", "is not in the range x>=1"),
    ("--checkpoint-every", "0", "is not in the range x>=1"),
    ("--batch-size", "1.5", "is not a valid integer"),
    ("--normalization", "groupnorm", "'groupnorm' is not one of the fc net's normalizations"),
    ("--hidden-dims", "none", "a fully-connected net needs at least one hidden layer"),
    ("--dtype", "float16", "'float16' is not one of"),
]


@pytest.mark.parametrize("flag, value, message", TRAIN_USAGE, ids=[f"{f}={v!r}" for f, v, _ in TRAIN_USAGE])
def test_train_refuses_bad_options_as_usage_errors(flag, value, message):
    result = invoke("train", "--epochs", "1", "--quiet", flag, value) if flag != "--epochs" else \
        invoke("train", "--quiet", flag, value)
    assert_one_line_error(result, 2, f"Invalid value for '{'--learning-rate' if flag == '--lr' else flag}'",
                          message)


def test_a_net_too_big_for_memory_is_refused_before_allocating():
    result = invoke("train", "--hidden-dims", "100000000000", "--epochs", "1", "--quiet")
    assert_one_line_error(result, 1, "hidden_dims [100000000000]", "GiB of memory, more than the")


def test_resume_without_a_directory_is_a_usage_error():
    assert_one_line_error(invoke("train", "--resume", "--quiet"), 2, "--resume needs --checkpoint-dir")


# ----------------------------------------------------------------------------- the library's commands

LIBRARY_USAGE = [
    (["bench", "--timeout", "inf"], "--timeout", "is not a finite number"),
    (["bench", "--timeout", "nan"], "--timeout", "is not a finite number"),
    (["bench", "--cases", "bn:4x4,,"], "", "case '' must look like"),
    (["bench", "--cases", ""], "", "case '' must look like"),
    (["bench", "--cases", "bn:0x4"], "", "must be >= 1"),
    (["bench", "--cases", "bn:1x4"], "", "need at least 2"),
    (["bench", "--repeat", "1"], "", "repeat must be an integer >= 7"),
    (["bench", "--rounds", "0"], "", "--rounds must be >= 1"),
    (["bench", "--threads", "0"], "", "--threads must be in [1,"),
    (["bench", "--suite", "gpu"], "--suite", "'gpu' is not one of"),
    (["check", "--seed", "-1"], "--seed", "is not in the range x>=0"),
    (["check", "--backend", "cuda"], "", "unknown backend 'cuda'"),
    (["experiment", "nonsense"], "", "for NAME: unknown experiment 'nonsense'"),
    (["experiment", "--epochs", "0"], "--epochs", "is not in the range x>=1"),
    (["experiment", "--dataset", "imagenet"], "--dataset", "'imagenet' is not one of"),
]


@pytest.mark.parametrize("args, flag, message", LIBRARY_USAGE, ids=[" ".join(a) for a, _, _ in LIBRARY_USAGE])
def test_library_commands_refuse_bad_options_as_usage_errors(args, flag, message):
    assert_one_line_error(invoke(*args), 2, f"Invalid value{' for ' + repr(flag) if flag else ''}", message)


def test_a_bench_case_too_big_for_memory_is_refused_before_allocating():
    result = invoke("bench", "--cases", "bn:100000000x100000")
    assert_one_line_error(result, 2, "bench case bn:100000000x100000 needs about", "GiB of memory")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_of_a_bug_and_not_otherwise(monkeypatch, how):
    from normlab import selfcheck

    monkeypatch.setattr(selfcheck, "gradient_checks", lambda *a: 1 / 0)
    plain = invoke("check")
    assert_one_line_error(plain, 1, "internal error (a bug in normlab), ZeroDivisionError: division by zero",
                          "--debug")
    result = (CliRunner().invoke(main, ["--debug", "check"]) if how == "flag"
              else CliRunner().invoke(main, ["check"], env={"NORMLAB_DEBUG": "1"}))
    assert isinstance(result.exception, ZeroDivisionError)


def test_a_plugin_command_that_fails_to_load_is_one_line(monkeypatch):
    from importlib.metadata import EntryPoint

    import normlab.cli as cli

    broken = EntryPoint("broken", "normlab.lab.cli:no_such_command", cli.COMMAND_GROUP)
    monkeypatch.setattr(cli._Main, "_plugins", staticmethod(lambda: {"broken": broken}))
    assert_one_line_error(invoke("broken"), 1, "the command 'broken' (normlab.lab.cli:no_such_command) cannot "
                                               "be loaded, AttributeError")
    assert isinstance(CliRunner().invoke(main, ["--debug", "broken"]).exception, AttributeError)


# ----------------------------------------------------------------------------- checkpoint JSON

@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("good")
    make_solver(1, checkpoint_dir=directory).train()
    return directory


def _edited(good, tmp_path, edit):
    """A copy of the good checkpoint whose JSON text went through ``edit`` (text -> text)."""
    directory = tmp_path / "ckpt"
    shutil.copytree(good, directory)
    meta_path = directory / ckpt.META_NAME
    meta_path.write_text(edit(meta_path.read_text()))
    return directory


def _field(key, raw):
    """Set a top-level field to the raw JSON text ``raw`` (1e999 stays 1e999, not Infinity)."""
    def edit(text):
        meta = json.loads(text)
        meta[key] = "@@"
        return json.dumps(meta).replace('"@@"', raw)
    return edit


def _without(key):
    return lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != key})


JSON_CASES = {
    "epoch 1e999": (_field("epoch", "1e999"), "field 'epoch' has an invalid value inf"),
    "epoch -1": (_field("epoch", "-1"), "field 'epoch' has an invalid value -1"),
    "epoch 1.5": (_field("epoch", "1.5"), "field 'epoch' has an invalid value 1.5"),
    "epoch string": (_field("epoch", '"1"'), "field 'epoch' has an invalid value '1'"),
    "epoch true": (_field("epoch", "true"), "field 'epoch' has an invalid value True"),
    "epoch null": (_field("epoch", "null"), "field 'epoch' has an invalid value None"),
    "epoch missing": (_without("epoch"), "has no field 'epoch'"),
    "epoch beyond the histories": (_field("epoch", "5"), "accuracy histories of 1 and 1 epochs for epoch 5"),
    "num_epochs 0": (_field("num_epochs", "0"), "field 'num_epochs' has an invalid value 0"),
    "best_val_acc 2": (_field("best_val_acc", "2"), "field 'best_val_acc' has an invalid value 2"),
    "best_val_acc NaN": (_field("best_val_acc", "NaN"), "field 'best_val_acc' has an invalid value nan"),
    "train_time -1": (_field("train_time", "-1"), "field 'train_time' has an invalid value -1"),
    "train_time Infinity": (_field("train_time", "Infinity"), "field 'train_time' has an invalid value inf"),
    "optim_state list": (_field("optim_state", "[]"), "field 'optim_state' has an invalid value []"),
    "learning_rate string": (_field("optim_state", '{"W1": {"learning_rate": "x"}}'), "field 'optim_state'"),
    "t 1e999": (_field("optim_state", '{"W1": {"t": 1e999}}'), "field 'optim_state'"),
    "num_batches_tracked -1": (_field("num_batches_tracked", '{"batch_stats/layer1": -1}'),
                               "field 'num_batches_tracked'"),
    "rng 5": (_field("rng", "5"), "field 'rng' has an invalid value 5"),
    "rng state garbage": (_field("rng", '{"bit_generator": "PCG64", "state": "x"}'), "incomplete or inconsistent"),
    "dropout_rng 3": (_field("dropout_rng", "3"), "field 'dropout_rng' has an invalid value 3"),
    "arrays_file outside": (_field("arrays_file", '"../../etc/passwd"'), "field 'arrays_file'"),
    "arrays_file number": (_field("arrays_file", "5"), "field 'arrays_file' has an invalid value 5"),
    "sha256 number": (_field("sha256", "5"), "field 'sha256' has an invalid value 5"),
}


@pytest.mark.parametrize("case", JSON_CASES)
def test_checkpoint_json_fields_are_checked(good_checkpoint, tmp_path, case):
    edit, message = JSON_CASES[case]
    directory = _edited(good_checkpoint, tmp_path, edit)
    with pytest.raises(ckpt.CheckpointError) as info:
        make_solver(3, checkpoint_dir=directory, resume=True)
    assert message in str(info.value), str(info.value)


def test_epoch_1e999_through_the_command_line_is_one_line(tmp_path):
    directory = tmp_path / "run"
    args = ["train", "--hidden-dims", "8", "--num-train", "100", "--quiet", "--checkpoint-dir", str(directory)]
    assert invoke(*args, "--epochs", "1").exit_code == 0
    meta_path = directory / ckpt.META_NAME
    meta_path.write_text(_field("epoch", "1e999")(meta_path.read_text()))
    assert_one_line_error(invoke(*args, "--epochs", "2", "--resume"), 1, "field 'epoch' has an invalid value inf")


def test_nan_running_variance_in_the_arrays_is_refused_naming_it(good_checkpoint, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(good_checkpoint, directory)
    arrays, meta = ckpt.load(directory)
    arrays["batch_stats/layer1/var"][0] = np.nan
    ckpt.save(directory, arrays, {k: v for k, v in meta.items() if k not in ("format", "version", "arrays_file",
                                                                             "sha256")})
    with pytest.raises(ckpt.CheckpointError, match=r"'running_var' holds 1 NaN or inf"):
        make_solver(3, checkpoint_dir=directory, resume=True)


# ----------------------------------------------------------------------------- failed saves

def _files(directory):
    return sorted(p.name for p in Path(directory).iterdir())


def _assert_only_the_good_checkpoint(directory, epoch):
    meta = json.loads((directory / ckpt.META_NAME).read_text())
    assert _files(directory) == sorted([ckpt.META_NAME, meta["arrays_file"]]) and meta["epoch"] == epoch


@pytest.mark.parametrize("failing", ["arrays", "metadata"])
def test_a_save_that_fails_removes_what_it_wrote(tmp_path, monkeypatch, failing):
    solver = make_solver(1, checkpoint_dir=tmp_path).train()
    real_fsync, calls = os.fsync, []

    def disk_full(fd):
        calls.append(fd)
        if len(calls) == (1 if failing == "arrays" else 3):  # arrays file, its directory, then the JSON
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full)
    solver.num_epochs = 2
    with pytest.raises(OSError, match="No space left"):
        solver.train()
    monkeypatch.undo()
    _assert_only_the_good_checkpoint(tmp_path, 1)


FULL_DISK_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from normlab.lab import checkpoint as ckpt
    ckpt.save(sys.argv[1], {"w": np.zeros(10)}, {"epoch": 1})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)                # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    failures = 0
    for epoch in range(2, 12):
        try:
            ckpt.save(sys.argv[1], {"w": np.ones(100_000)}, {"epoch": epoch})  # 800 kB: never fits
        except OSError:
            failures += 1
    print(failures)
""")


def test_saves_on_a_full_disk_leave_only_the_last_good_checkpoint(tmp_path):
    out = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": SRC})
    assert out.returncode == 0 and out.stdout.strip() == "10", out.stderr
    _assert_only_the_good_checkpoint(tmp_path, 1)


SAVE_LOOP = textwrap.dedent("""
    import sys
    import numpy as np
    from normlab.lab import checkpoint as ckpt
    rng = np.random.default_rng(int(sys.argv[2]))
    for epoch in range(1, 10**6):
        ckpt.save(sys.argv[1], {"w": rng.standard_normal(400_000)}, {"epoch": epoch})  # 3.2 MB per save
""")


def test_sigkill_mid_save_leaves_only_that_saves_files(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(tmp_path), str(attempt)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # somewhere in a save, a different moment each time
        kill_when(proc, lambda: ckpt.exists(tmp_path), after=0.3 + 0.17 * attempt)
        named = json.loads((tmp_path / ckpt.META_NAME).read_text())["arrays_file"]
        pending = [name for name in _files(tmp_path) if name not in (ckpt.META_NAME, named)]
        # The killed save's own files only: one temporary file (arrays or JSON being written) and/or its
        # arrays, renamed into place before the JSON that would name them.
        temporary = [name for name in pending if name.endswith(".tmp")]
        arrays = [name for name in pending if name.startswith("state-") and name.endswith(".npz")]
        assert len(temporary) <= 1 and len(arrays) <= 1 and len(pending) == len(temporary) + len(arrays), pending
        assert ckpt.load(tmp_path)[1]["epoch"] >= 1
    ckpt.save(tmp_path, {"w": np.zeros(3)}, {"epoch": 0})
    _assert_only_the_good_checkpoint(tmp_path, 0)
