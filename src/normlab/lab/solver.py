"""Minibatch training of a classification model, with histories, progress and checkpoints.

The model needs ``params`` (dict of arrays), ``loss(X, y) -> (loss, grads)``
in training mode and ``loss(X) -> scores`` in test mode (see
:class:`normlab.lab.FullyConnectedNet`). Running statistics
(``model.batch_stats``) and the model's dropout generator are checkpointed
when present.

Example::

    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-3},
                    num_epochs=10, batch_size=100, seed=0)
    solver.train()
    solver.loss_history, solver.train_acc_history, solver.val_acc_history, solver.best_val_acc
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time

import numpy as np

from .. import _checks, distributed
from . import checkpoint as ckpt
from . import optim
from .sharding import Shard

DATA_KEYS = ("X_train", "y_train", "X_val", "y_val")


def _hyperparameters(state) -> bool:
    """An optimizer state's JSON part: a dict of finite numbers (the arrays are in the npz)."""
    return isinstance(state, dict) and all(ckpt.number()(v) for v in state.values())


# What the checkpoint JSON of a Solver must hold (model, solver and data are compared, not ranged).
_META_RULES = {
    "epoch": ckpt.integer(0),
    "num_epochs": ckpt.integer(1),
    "best_val_acc": lambda v: ckpt.number(0, 1)(v) or v == -math.inf,  # -inf: no epoch evaluated yet
    "train_time": ckpt.number(0),
    "optim_state": lambda v: isinstance(v, dict) and all(_hyperparameters(s) for s in v.values()),
    "num_batches_tracked": lambda v: isinstance(v, dict) and all(ckpt.integer(0)(n) for n in v.values()),
    "rng": lambda v: isinstance(v, dict),
    "dropout_rng": lambda v: v is None or isinstance(v, dict),
}


class Solver:
    """Train ``model`` on ``data`` with a pure update rule.

    data: dict with X_train (N, D), y_train (N,), X_val, y_val (any other keys,
        e.g. X_test, are ignored).
    update_rule: a name in ``normlab.lab.optim.UPDATE_RULES``.
    optim_config: hyperparameters of the rule, e.g. ``{"learning_rate": 1e-3}``;
        each parameter gets its own copy (and its own buffers).
    lr_decay: the learning rate is multiplied by this after every epoch.
    batch_size, num_epochs: each epoch visits ``N // batch_size`` minibatches
        drawn without replacement from a fresh permutation (the remainder
        ``N % batch_size`` samples sit out that epoch, so batch norm never
        sees a tiny last batch). batch_size is clamped to N.
    seed: seeds the minibatch order and the train-accuracy subsample.
    num_train_samples: train accuracy is measured on a random subsample of
        this many training samples (None: all); num_val_samples likewise.
    verbose: print progress at all. progress: "auto" (a rich progress bar when
        stdout is a terminal, plain lines otherwise), "rich", "plain" or "none".
    print_every: plain mode prints the loss every this many iterations, plus
        one line per epoch.
    checkpoint_dir: if given, a checkpoint is written there (atomically)
        every ``checkpoint_every`` epochs and after the last one.
    resume: load the checkpoint in ``checkpoint_dir`` first and continue from
        it; training then reproduces the uninterrupted run bit for bit (on
        the same machine and BLAS thread count, which fix the float rounding).
    blas_threads: BLAS threads during train() (None leaves BLAS alone). The
        lab's matrices are small, and multi-threaded OpenBLAS on them was
        measured up to 8x slower than one thread on a busy 2-core machine.
    data_parallel: train over the ranks of ``process_group`` (None: the
        default torch.distributed group; it must be initialized). Every rank
        runs this Solver with the same arguments: it draws the same global
        minibatches, passes its contiguous shard (``np.array_split`` sizes)
        to ``model.loss(X, y, shard=Shard(...))``, which returns the global
        batch's loss and gradients, so every rank makes the same updates as
        a single process on the whole batch. Accuracies are evaluated alike
        on every rank (identical histories); only rank 0 writes checkpoints,
        every rank reads them to resume. batch_size must be at least the
        number of ranks.

    After :meth:`train`: ``loss_history`` (one float per iteration),
    ``train_acc_history`` and ``val_acc_history`` (one per epoch),
    ``best_val_acc``, ``best_params`` (copies of the params of the best epoch,
    swapped into the model at the end along with its running statistics; see
    :meth:`train` for what that means for a second call),
    ``epoch``, ``train_time`` (seconds spent in train()).
    """

    def __init__(self, model, data: dict, update_rule: str = "adam", optim_config: dict | None = None,
                 lr_decay: float = 1.0, batch_size: int = 100, num_epochs: int = 10, seed: int | None = None,
                 *, num_train_samples: int | None = 1000, num_val_samples: int | None = None,
                 verbose: bool = True, progress: str = "auto", print_every: int = 100,
                 checkpoint_dir=None, checkpoint_every: int = 1, resume: bool = False, stream=None,
                 blas_threads: int | None = 1, data_parallel: bool = False, process_group=None):
        missing = [k for k in DATA_KEYS if k not in data]
        if missing:
            raise ValueError(f"data is missing {missing}; it needs {list(DATA_KEYS)}")
        self.X_train, self.y_train = np.asarray(data["X_train"]), np.asarray(data["y_train"])
        self.X_val, self.y_val = np.asarray(data["X_val"]), np.asarray(data["y_val"])
        for split in ("train", "val"):
            X, y = getattr(self, f"X_{split}"), getattr(self, f"y_{split}")
            if X.ndim < 2 or y.shape != (X.shape[0],) or X.shape[0] == 0:
                raise ValueError(f"data X_{split} must be (N, ...) with N > 0 and y_{split} (N,), "
                                 f"got {X.shape} and {y.shape}")
        self.update_rule_name = update_rule
        self.update_rule = optim.get_update_rule(update_rule)
        self.optim_config = optim.check_config(update_rule, optim_config)
        if not isinstance(lr_decay, (int, float)) or not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
        for name, value in (("batch_size", batch_size), ("num_epochs", num_epochs),
                            ("print_every", print_every), ("checkpoint_every", checkpoint_every)):
            _checks.check_positive_int(value, name)
        for name, value in (("num_train_samples", num_train_samples), ("num_val_samples", num_val_samples)):
            if value is not None:  # None: all samples
                _checks.check_positive_int(value, name)
        if progress not in ("auto", "rich", "plain", "none"):
            raise ValueError(f"progress must be 'auto', 'rich', 'plain' or 'none', got {progress!r}")
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")

        self.model = model
        self.lr_decay = float(lr_decay)
        num_train = self.X_train.shape[0]
        self.batch_size = int(min(batch_size, num_train))
        self.num_epochs = int(num_epochs)
        self.seed = _checks.check_seed(seed)
        self.num_train_samples = num_train_samples
        self.num_val_samples = num_val_samples
        self.verbose = bool(verbose)
        self.progress = progress
        self.print_every = int(print_every)
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = int(checkpoint_every)
        self.stream = stream
        self.blas_threads = blas_threads
        self.iterations_per_epoch = max(num_train // self.batch_size, 1)
        if data_parallel and not distributed.is_initialized():
            raise ValueError("data_parallel=True needs an initialized torch.distributed process group "
                             "(torch.distributed.init_process_group), e.g. as started by normlab.lab.launch")
        self.process_group = process_group
        self.world_size = distributed.world_size(process_group) if data_parallel else 1
        self.rank = distributed.rank(process_group) if data_parallel else 0
        if self.batch_size < self.world_size:
            raise ValueError(f"batch_size {self.batch_size} is smaller than the {self.world_size} data-parallel "
                             f"processes: every process needs at least one sample per batch")

        self.rng = np.random.default_rng(self.seed)
        self.epoch = 0
        self.loss_history: list[float] = []
        self.train_acc_history: list[float] = []
        self.val_acc_history: list[float] = []
        self.best_val_acc = -math.inf
        self.best_params = {k: v.copy() for k, v in model.params.items()}
        self.best_batch_stats = _copy_stats(getattr(model, "batch_stats", {}))
        self.optim_states = {k: {**optim.DEFAULTS[update_rule], **self.optim_config} for k in model.params}
        self.train_time = 0.0
        if resume:
            self.load_checkpoint()

    # ------------------------------------------------------------------ training

    def _step(self, batch):
        if self.world_size == 1:
            loss, grads = self.model.loss(self.X_train[batch], self.y_train[batch])
        else:
            start, stop = distributed.shard_bounds(len(batch), self.rank, self.world_size)
            mine = batch[start:stop]
            loss, grads = self.model.loss(self.X_train[mine], self.y_train[mine],
                                          shard=Shard(start, len(batch), self.process_group))
        self.loss_history.append(float(loss))
        params = self.model.params
        for key, w in params.items():
            params[key], self.optim_states[key] = self.update_rule(w, grads[key], self.optim_states[key])
        return loss

    def check_accuracy(self, X, y, num_samples: int | None = None, batch_size: int = 1000) -> float:
        """Test-mode accuracy on (X, y), on a random subsample of ``num_samples`` rows if given."""
        n = X.shape[0]
        if num_samples is not None and n > num_samples:
            index = self.rng.choice(n, num_samples, replace=False)
            X, y = X[index], y[index]
            n = num_samples
        correct = 0
        for start in range(0, n, batch_size):
            scores = self.model.loss(X[start:start + batch_size])
            correct += int(np.sum(np.argmax(scores, axis=1) == y[start:start + batch_size]))
        return correct / n

    def train(self):
        """Train until ``num_epochs`` epochs are done (continuing a resumed run); returns self.

        At the end the model holds the best epoch's parameters and running
        statistics (``best_params``, ``best_batch_stats``), not the last
        epoch's, so predictions after train() use the best model. The optimizer
        state, the generators and ``epoch`` stay those of the last epoch: a
        second train() (after raising ``num_epochs``) therefore continues from
        the best parameters with the last epoch's optimizer state, which is
        not the uninterrupted run. To continue that run exactly, resume from a
        checkpoint (``resume=True``), which restores the last epoch's parameters.
        """
        if self.blas_threads is None:
            return self._train()
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=self.blas_threads, user_api="blas"):
            return self._train()

    def _train(self):
        reporter = _make_reporter(self)
        started = time.perf_counter()
        total = self.num_epochs * self.iterations_per_epoch
        reporter.start(total, self.epoch * self.iterations_per_epoch)
        try:
            while self.epoch < self.num_epochs:
                order = self.rng.permutation(self.X_train.shape[0])
                for k in range(self.iterations_per_epoch):
                    loss = self._step(order[k * self.batch_size:(k + 1) * self.batch_size])
                    reporter.iteration(len(self.loss_history), total, loss)
                self.epoch += 1
                for state in self.optim_states.values():
                    state["learning_rate"] = state["learning_rate"] * self.lr_decay
                train_acc = self.check_accuracy(self.X_train, self.y_train, self.num_train_samples)
                val_acc = self.check_accuracy(self.X_val, self.y_val, self.num_val_samples)
                self.train_acc_history.append(train_acc)
                self.val_acc_history.append(val_acc)
                if val_acc > self.best_val_acc:
                    self.best_val_acc = val_acc
                    self.best_params = {k: v.copy() for k, v in self.model.params.items()}
                    self.best_batch_stats = _copy_stats(getattr(self.model, "batch_stats", {}))
                reporter.epoch(self.epoch, self.num_epochs, train_acc, val_acc)
                if self.checkpoint_dir is not None and self.rank == 0 and (
                        self.epoch % self.checkpoint_every == 0 or self.epoch == self.num_epochs):
                    self.save_checkpoint()
        finally:
            reporter.close()
            self.train_time += time.perf_counter() - started
        self.model.params = {k: v.copy() for k, v in self.best_params.items()}
        if getattr(self.model, "batch_stats", None):
            self.model.batch_stats = _copy_stats(self.best_batch_stats)
        return self

    # ------------------------------------------------------------------ checkpoints

    def config(self) -> dict:
        """The settings a resumed run must share with the run that wrote the checkpoint."""
        return {"update_rule": self.update_rule_name, "optim_config": self.optim_config,
                "lr_decay": self.lr_decay, "batch_size": self.batch_size, "seed": self.seed,
                "num_train_samples": self.num_train_samples, "num_val_samples": self.num_val_samples}

    def _data_fingerprint(self) -> str:
        # Shapes, all labels and up to ~1000 evenly spaced rows: cheap even for CIFAR-10,
        # and enough to tell one data set or split from another.
        h = hashlib.sha256()
        for X, y in ((self.X_train, self.y_train), (self.X_val, self.y_val)):
            h.update(repr((X.shape, str(X.dtype))).encode())
            h.update(np.ascontiguousarray(y).tobytes())
            step = max(X.shape[0] // 1000, 1)
            h.update(np.ascontiguousarray(X[::step]).tobytes())
        return h.hexdigest()

    def save_checkpoint(self, directory=None):
        """Write the full training state (model, running stats, optimizer, RNGs, histories)."""
        directory = self.checkpoint_dir if directory is None else directory
        arrays = {f"params/{k}": v for k, v in self.model.params.items()}
        arrays.update({f"best_params/{k}": v for k, v in self.best_params.items()})
        stats_meta = {}
        for prefix, stats in (("batch_stats", getattr(self.model, "batch_stats", {})),
                              ("best_batch_stats", self.best_batch_stats)):
            for name, rs in stats.items():
                arrays[f"{prefix}/{name}/mean"] = rs.mean
                arrays[f"{prefix}/{name}/var"] = rs.var
                stats_meta[f"{prefix}/{name}"] = rs.num_batches_tracked
        optim_meta = {}
        for key, state in self.optim_states.items():
            optim_meta[key] = {}
            for name, value in state.items():
                if isinstance(value, np.ndarray):
                    arrays[f"optim/{key}/{name}"] = value
                else:
                    optim_meta[key][name] = value
        arrays["loss_history"] = np.asarray(self.loss_history, dtype=np.float64)
        arrays["train_acc_history"] = np.asarray(self.train_acc_history, dtype=np.float64)
        arrays["val_acc_history"] = np.asarray(self.val_acc_history, dtype=np.float64)
        model_config = self.model.config() if hasattr(self.model, "config") else None
        dropout_rng = getattr(self.model, "dropout_rng", None)
        meta = {
            "epoch": self.epoch, "num_epochs": self.num_epochs, "best_val_acc": self.best_val_acc,
            "train_time": self.train_time, "model": model_config, "solver": self.config(),
            "data": self._data_fingerprint(), "optim_state": optim_meta, "num_batches_tracked": stats_meta,
            "rng": self.rng.bit_generator.state,
            "dropout_rng": None if dropout_rng is None else dropout_rng.bit_generator.state,
        }
        return ckpt.save(directory, arrays, meta)

    def load_checkpoint(self, directory=None) -> int:
        """Restore the state saved by :meth:`save_checkpoint`; returns the epoch it continues from.

        Raises CheckpointError if the checkpoint is damaged or was written for
        another model, solver configuration or data set; nothing is changed then.
        """
        directory = self.checkpoint_dir if directory is None else directory
        arrays, meta = ckpt.load(directory)
        where = f"checkpoint in {directory}"
        ckpt.check_fields(meta, _META_RULES, where)
        model_config = self.model.config() if hasattr(self.model, "config") else None
        if meta.get("model") != model_config:
            raise ckpt.CheckpointError(f"{where} was written for model {meta.get('model')}, "
                                       f"not this one {model_config}")
        saved_solver = meta.get("solver")
        if saved_solver != json_roundtrip(self.config()):
            raise ckpt.CheckpointError(f"{where} was written with solver settings {saved_solver}, "
                                       f"not these {self.config()}")
        if meta.get("data") != self._data_fingerprint():
            raise ckpt.CheckpointError(f"{where} was written for different training/validation data")
        try:
            params = {k: _take(arrays, f"params/{k}", v) for k, v in self.model.params.items()}
            best_params = {k: _take(arrays, f"best_params/{k}", v) for k, v in self.model.params.items()}
            live_stats = getattr(self.model, "batch_stats", {})
            stats, best_stats = {}, {}
            for prefix, out in (("batch_stats", stats), ("best_batch_stats", best_stats)):
                for name, rs in live_stats.items():
                    out[name] = rs.copy()
                    out[name].load_state_dict({
                        "running_mean": _take(arrays, f"{prefix}/{name}/mean", rs.mean),
                        "running_var": _take(arrays, f"{prefix}/{name}/var", rs.var),
                        "num_batches_tracked": meta["num_batches_tracked"][f"{prefix}/{name}"]})
            optim_states = {}
            for key, w in self.model.params.items():
                state = dict(meta["optim_state"][key])
                prefix = f"optim/{key}/"
                for name in arrays:
                    if name.startswith(prefix):
                        state[name[len(prefix):]] = _take(arrays, name, w)
                optim_states[key] = state
            histories = [arrays[k].tolist() for k in ("loss_history", "train_acc_history", "val_acc_history")]
            if not len(histories[1]) == len(histories[2]) == meta["epoch"]:
                raise ValueError(f"accuracy histories of {len(histories[1])} and {len(histories[2])} epochs "
                                 f"for epoch {meta['epoch']}")
            rng = np.random.default_rng()
            rng.bit_generator.state = meta["rng"]
            dropout_state = meta["dropout_rng"]
            epoch = int(meta["epoch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ckpt.CheckpointError(f"{where} is incomplete or inconsistent: {exc}") from exc

        # Everything checked: now change state.
        self.model.params = params
        if live_stats:
            self.model.batch_stats = stats
        if dropout_state is not None and getattr(self.model, "dropout_rng", None) is not None:
            self.model.dropout_rng.bit_generator.state = dropout_state
        self.best_params, self.best_batch_stats = best_params, best_stats
        self.optim_states = optim_states
        self.loss_history, self.train_acc_history, self.val_acc_history = histories
        self.rng = rng
        self.epoch = epoch
        self.best_val_acc = float(meta["best_val_acc"])
        self.train_time = float(meta["train_time"])
        return epoch


def json_roundtrip(value):
    """value as it reads back from JSON (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def _take(arrays, name, like):
    value = arrays[name]
    if value.shape != like.shape or value.dtype != like.dtype:
        raise ValueError(f"{name} has shape {value.shape} dtype {value.dtype}, expected {like.shape} {like.dtype}")
    return value


def _copy_stats(stats: dict) -> dict:
    return {name: rs.copy() for name, rs in stats.items()}


# ---------------------------------------------------------------------- progress

class _Silent:
    def start(self, total, done):
        pass

    def iteration(self, it, total, loss):
        pass

    def epoch(self, epoch, num_epochs, train_acc, val_acc):
        pass

    def close(self):
        pass


class _PlainLines(_Silent):
    """Periodic plain lines, flushed, so a log file shows progress during a long run."""

    def __init__(self, stream, print_every):
        self.stream, self.print_every = stream, print_every

    def _print(self, line):
        print(line, file=self.stream, flush=True)

    def iteration(self, it, total, loss):
        if it % self.print_every == 0:
            self._print(f"(Iteration {it} / {total}) loss: {loss:.6f}")

    def epoch(self, epoch, num_epochs, train_acc, val_acc):
        self._print(f"(Epoch {epoch} / {num_epochs}) train acc: {train_acc:.4f}; val acc: {val_acc:.4f}")


class _RichBar(_Silent):
    """A rich progress bar with the current loss and the last epoch's accuracies."""

    def __init__(self, stream):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                 console=Console(file=stream), transient=False)
        self.task = None

    def start(self, total, done):
        self.progress.start()
        self.task = self.progress.add_task("training", total=total, completed=done, status="")
        self.loss = self.accs = ""

    def iteration(self, it, total, loss):
        self.loss = f"loss {loss:.4f}"
        self.progress.update(self.task, completed=it, status=self.loss + self.accs)

    def epoch(self, epoch, num_epochs, train_acc, val_acc):
        self.accs = f"  train acc {train_acc:.3f}  val acc {val_acc:.3f}"
        self.progress.update(self.task, description=f"epoch {epoch}/{num_epochs}", status=self.loss + self.accs)

    def close(self):
        self.progress.stop()


def _make_reporter(solver: Solver):
    stream = solver.stream if solver.stream is not None else sys.stdout
    mode = solver.progress if solver.verbose else "none"
    if mode == "auto":
        mode = "rich" if getattr(stream, "isatty", lambda: False)() else "plain"
    if mode == "rich":
        return _RichBar(stream)
    if mode == "plain":
        return _PlainLines(stream, solver.print_every)
    return _Silent()
