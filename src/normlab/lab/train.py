"""``normlab train``: train one configured net (``MODELS``: fc or convnet), with checkpoints, and summarize.

:func:`train` is the whole command without the command line: a
:class:`TrainConfig` in, a summary dict out (the CLI in ``normlab.cli`` only
parses options and prints).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from .. import distributed
from .._params import MAX_TIMEOUT_S
from . import checkpoint as ckpt
from . import launch, pool, stats
from .convnet import ConvNet
from .data import INPUT_SHAPES, load_dataset, num_classes
from .model import FullyConnectedNet
from .progress import RunsProgress
from .solver import Solver


@dataclasses.dataclass
class TrainConfig:
    """One training run. Defaults train a 2-hidden-layer net on the bundled digits in seconds."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "fc"
    conv_channels: tuple[int, ...] = (16, 32)
    groups: int = 4
    hidden_dims: tuple[int, ...] = (100, 100)
    normalization: str | None = None
    dropout: float = 0.0
    reg: float = 0.0
    weight_scale: float = 5e-2
    dtype: str = "float64"
    update_rule: str = "adam"
    learning_rate: float = 1e-3
    lr_decay: float = 1.0
    batch_size: int = 100
    epochs: int = 10
    seed: int = 0
    seeds: int = 1
    jobs: int | None = None
    num_train: int | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1
    resume: bool = False
    print_every: int = 100
    nproc: int = 1
    timeout: float = 120.0


def train(config: TrainConfig, *, verbose: bool = True, progress: str = "auto", stream=None) -> dict | None:
    """Load the data, build the net and Solver, train (resuming if asked) and evaluate.

    Returns a summary: best/final accuracies, test accuracy of the best
    parameters, epochs, iterations, seconds, where the checkpoint is.
    Raises FileExistsError when ``checkpoint_dir`` already holds a checkpoint
    and ``resume`` is False (a new run would overwrite it).

    ``config.nproc > 1`` trains data-parallel in that many local processes,
    and a process started by torchrun joins its group
    (``normlab.lab.launch``); then the processes print to stdout (not
    ``stream``), and under torchrun ranks other than 0 return None.
    ``config.seeds > 1`` trains the run once per seed (:func:`train_seeds`).
    """
    for name in ("nproc", "seeds"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if (isinstance(config.timeout, bool) or not isinstance(config.timeout, (int, float))
            or not 0 < config.timeout <= MAX_TIMEOUT_S):
        raise ValueError(f"timeout must be a number of seconds > 0 and at most {MAX_TIMEOUT_S:g}, "
                         f"got {config.timeout!r}")
    if config.seeds > 1:
        return train_seeds(config, verbose=verbose, progress=progress, stream=stream)
    if config.nproc > 1 or launch.launched_by_torchrun():
        single = dataclasses.replace(config, nproc=1)
        return launch.run_data_parallel(train_in_process, (single, verbose, progress, None, True),
                                        config.nproc, config.timeout)
    return train_in_process(config, verbose=verbose, progress=progress, stream=stream)


def train_in_process(config: TrainConfig, verbose: bool = True, progress: str = "auto", stream=None,
                     data_parallel: bool = False) -> dict:
    """:func:`train` in this process; ``data_parallel``: as one rank of the initialized default
    process group (only rank 0 prints)."""
    started = time.perf_counter()
    _refuse_overwrite(config)
    if data_parallel:
        verbose = verbose and distributed.rank() == 0
    data = load_dataset(config.dataset, seed=config.seed, data_dir=config.data_dir, num_train=config.num_train)
    model = get_model(config.model)(config, data)
    solver = Solver(model, data, update_rule=config.update_rule,
                    optim_config={"learning_rate": config.learning_rate}, lr_decay=config.lr_decay,
                    batch_size=config.batch_size, num_epochs=config.epochs, seed=config.seed,
                    verbose=verbose, progress=progress, print_every=config.print_every, stream=stream,
                    checkpoint_dir=config.checkpoint_dir, checkpoint_every=config.checkpoint_every,
                    resume=config.resume, data_parallel=data_parallel)
    resumed_from = solver.epoch if config.resume else None
    solver.train()  # ends with the best epoch's parameters in the model
    return _summary(config, solver, model, data, started, resumed_from)


#: The numbers of a run's summary that :func:`train_seeds` describes over the seeds.
SEED_NUMBERS = ("final_loss", "final_train_acc", "final_val_acc", "best_val_acc", "test_acc", "train_seconds")


def seed_configs(config: TrainConfig) -> list[TrainConfig]:
    """One config per seed, seed .. seed + seeds - 1; checkpoints in ``checkpoint_dir/seed-S``."""
    return [dataclasses.replace(config, seed=seed, seeds=1, checkpoint_dir=None if config.checkpoint_dir is None
                                else str(Path(config.checkpoint_dir) / f"seed-{seed}"))
            for seed in range(config.seed, config.seed + config.seeds)]


def train_seeds(config: TrainConfig, *, verbose: bool = True, progress: str = "auto", stream=None) -> dict:
    """The run once per seed, in up to ``config.jobs`` processes (None: every core), each quiet, with one
    progress display; the summary of the first seed's settings, every seed's summary under ``runs`` and
    the mean/std/n/min/max of each of ``SEED_NUMBERS`` under ``summary``."""
    if config.nproc > 1 or launch.launched_by_torchrun():
        raise ValueError("seeds > 1 trains whole runs side by side in processes of their own; data-parallel "
                         "training (--nproc > 1 or torchrun) spreads one run over several: use one or the other")
    configs = seed_configs(config)
    for each in configs:
        _refuse_overwrite(each)
    started = time.perf_counter()
    stream = sys.stdout if stream is None else stream
    display = RunsProgress(f"{len(configs)} seeds", [1.0] * len(configs), mode=progress if verbose else "none",
                           log=lambda line: print(line, file=stream, flush=True), stream=stream)

    def done(index, summary):
        display.done(index, f"seed {configs[index].seed}: best val acc {summary['best_val_acc']:.4f}, "
                            f"test acc {summary['test_acc']:.4f}")

    try:
        runs = pool.run_all(_train_quietly, configs, pool.default_jobs() if config.jobs is None else config.jobs,
                            labels=[f"seed {c.seed}" for c in configs], on_done=done, on_wait=display.tick)
    finally:
        display.close()
    shared = {k: v for k, v in runs[0].items() if k not in (*SEED_NUMBERS, "checkpoint", "total_seconds")}
    return {**shared, "seeds": [c.seed for c in configs], "runs": runs,
            "summary": {k: stats.describe([r[k] for r in runs]) for k in SEED_NUMBERS},
            "total_seconds": time.perf_counter() - started,
            "checkpoint": None if config.checkpoint_dir is None else str(Path(config.checkpoint_dir) / "seed-*")}


def _train_quietly(config: TrainConfig) -> dict:
    return train_in_process(config, verbose=False)


def _refuse_overwrite(config: TrainConfig) -> None:
    if config.checkpoint_dir is not None and not config.resume and ckpt.exists(config.checkpoint_dir):
        raise FileExistsError(
            f"{Path(config.checkpoint_dir) / ckpt.META_NAME} already exists; resume it with --resume "
            f"or choose another --checkpoint-dir")


def _fully_connected(config: TrainConfig, data: dict) -> FullyConnectedNet:
    return FullyConnectedNet(
        list(config.hidden_dims), data["X_train"].shape[1], num_classes(data),
        normalization=config.normalization, dropout=config.dropout, reg=config.reg,
        weight_scale=config.weight_scale, dtype=np.dtype(config.dtype), seed=config.seed)


def _convnet(config: TrainConfig, data: dict) -> ConvNet:
    if config.dropout:
        raise ValueError("the convnet model has no dropout; leave --dropout at 0")
    return ConvNet(INPUT_SHAPES[config.dataset], num_classes(data), list(config.conv_channels),
                   list(config.hidden_dims), normalization=config.normalization, groups=config.groups,
                   reg=config.reg, weight_scale=config.weight_scale, dtype=np.dtype(config.dtype), seed=config.seed)


#: model name -> builder(config, data) of the net ``normlab train --model`` trains.
MODELS = {"fc": _fully_connected, "convnet": _convnet}


def get_model(name: str):
    """The builder of model ``name``; unknown names list the known ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def _summary(config, solver, model, data, started, resumed_from) -> dict:
    return {
        "dataset": config.dataset,
        "seed": config.seed,
        "model": config.model,
        "conv_channels": list(config.conv_channels) if config.model == "convnet" else None,
        "normalization": config.normalization or "none",
        "hidden_dims": list(config.hidden_dims),
        "epochs": solver.epoch,
        "resumed_from_epoch": resumed_from,
        "iterations": len(solver.loss_history),
        "final_loss": solver.loss_history[-1] if solver.loss_history else None,
        "final_train_acc": solver.train_acc_history[-1] if solver.train_acc_history else None,
        "final_val_acc": solver.val_acc_history[-1] if solver.val_acc_history else None,
        "best_val_acc": solver.best_val_acc,
        "test_acc": float(np.mean(model.predict(data["X_test"]) == data["y_test"])),
        "train_seconds": solver.train_time,
        "total_seconds": time.perf_counter() - started,
        "processes": solver.world_size,
        "checkpoint": None if config.checkpoint_dir is None else str(Path(config.checkpoint_dir) / ckpt.META_NAME),
    }


def format_summary(summary: dict) -> list[str]:
    """The summary as aligned ``label  value`` lines; over several seeds, "mean ± std % (n seeds)" and one
    line per seed."""
    over = summary.get("summary")

    def number(key, pct=True):
        if over is not None:
            d = over[key]
            if d is None:
                return "n/a"
            scale, unit, spec = (100, " %", ".2f") if pct else (1, "", ".4f")
            std = "" if d["std"] is None else f" ± {scale * d['std']:{spec}}"
            return f"{scale * d['mean']:{spec}}{std}{unit} ({d['n']} seeds)"
        value = summary[key]
        return "n/a" if value is None else (f"{100 * value:.2f}%" if pct else f"{value:.4f}")

    resumed = summary["resumed_from_epoch"]
    rows = [
        ("dataset", summary["dataset"]),
        ("net", (f"conv {summary['conv_channels']}, " if summary.get("conv_channels") else "")
         + f"hidden {summary['hidden_dims']}, normalization {summary['normalization']}"),
        ("epochs", f"{summary['epochs']} ({summary['iterations']} iterations"
                   + (f", resumed from epoch {resumed})" if resumed is not None else ")")),
        ("final loss", number("final_loss", pct=False)),
        ("final train acc", number("final_train_acc")),
        ("final val acc", number("final_val_acc")),
        ("best val acc", number("best_val_acc")),
        ("test acc (best)", number("test_acc")),
    ]
    if over is None:
        rows.append(("training time", f"{summary['train_seconds']:.1f} s (total {summary['total_seconds']:.1f} s)"))
    else:
        rows.append(("training time", f"{over['train_seconds']['mean']:.1f} s per seed (total "
                                      f"{summary['total_seconds']:.1f} s)"))
        rows += [(f"seed {run['seed']}", f"best val acc {100 * run['best_val_acc']:.2f}%, test acc "
                                         f"{100 * run['test_acc']:.2f}%") for run in summary["runs"]]
    if summary.get("processes", 1) > 1:
        rows.append(("processes", f"{summary['processes']} (data-parallel)"))
    if summary["checkpoint"]:
        rows.append(("checkpoint", summary["checkpoint"]))
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows]
