"""An experiment over seeds: every (seed, configuration) a run, the runs in parallel processes, then the spread.

An experiment module lists the training runs of one seed and knows how to
train one of them; this module does the rest for every experiment alike:

``plan(config, data) -> [common.Run]``
    the runs of one seed (``config.seed``): a JSON-able key, a label for
    the progress lines and a cost (roughly its training steps) for
    scheduling and the ETA.
``train(config, key, data) -> dict``
    one run, at ``config.seed``; a function of its arguments alone, so any
    process may run it and get the same floats.
``assemble(config, runs) -> variants``
    one seed's runs (key -> run) as that seed's ``variants``, the shape a
    single-seed experiment writes.
``extras(config, results) -> dict``
    the fields computed from the whole (``finding``, reference numbers, ...).

Seed s trains exactly what ``--seed s`` alone trains (its split, weights and
minibatch order), so the runs of ``--seeds 3`` are those of three separate
single-seed experiments. results.json keeps every seed's ``variants`` under
``runs`` and describes them under ``summary`` (``normlab.lab.stats``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import time
from typing import NamedTuple

from .. import pool, stats
from ..progress import RunsProgress
from . import common


class Task(NamedTuple):
    """What a worker needs to train a run: the experiment's module name, the seed's config, the run's key."""

    module: str
    config: object
    key: tuple


def seed_configs(config) -> list:
    """One config per seed, ``config.seed`` to ``config.seed + config.seeds - 1``, each with ``seeds=1``."""
    return [dataclasses.replace(config, seed=config.seed + k, seeds=1) for k in range(config.seeds)]


@functools.lru_cache(maxsize=1)
def _data(dataset, seed, data_dir, num_train) -> dict:
    # One data set per process at a time: CIFAR-10 is a gigabyte in float64.
    from ..data import load_dataset

    return load_dataset(dataset, seed=seed, data_dir=data_dir, num_train=num_train)


def data_for(config) -> dict:
    """The config's data, loaded once per process and seed in a row."""
    return _data(config.dataset, config.seed, config.data_dir, config.num_train)


def execute(task: Task) -> dict:
    """Train one run (in a worker or here): the module's ``train`` on the seed's data."""
    module = importlib.import_module(task.module)
    return module.train(task.config, task.key, data_for(task.config))


def run_seeds(module, config, *, jobs: int | None = None, progress: str = "auto", log=print) -> dict:
    """Every run of every seed of ``module``'s experiment in ``jobs`` processes; the results dict.

    jobs: processes (None: every core); progress: the display's mode (``normlab.lab.progress``),
    plain lines through ``log``.
    """
    started = time.perf_counter()
    data = data_for(config)  # a missing data set fails here, before any process starts
    configs = seed_configs(config)
    runs = [(c, run) for c in configs for run in module.plan(c, data)]
    tasks = [Task(module.__name__, c, run.key) for c, run in runs]
    labels = [f"{run.label}, seed {c.seed}" for c, run in runs]
    costs = [run.cost for _, run in runs]
    display = RunsProgress(f"{module.NAME}: {len(tasks)} runs", costs, mode=progress, log=log)

    def done(index, result):
        display.done(index, f"{labels[index]}: {common.describe_run(result)}")

    jobs = pool.default_jobs() if jobs is None else jobs
    try:
        outputs = pool.run_all(execute, tasks, jobs, costs=costs, labels=labels, on_done=done,
                               on_wait=display.tick)
    finally:
        display.close()
    per_seed = []
    for c in configs:
        mine = {run.key: out for (rc, run), out in zip(runs, outputs) if rc.seed == c.seed}
        per_seed.append({"seed": c.seed, "variants": module.assemble(c, mine)})
    results = {
        "experiment": module.NAME,
        "description": module.DESCRIPTION,
        "config": dataclasses.asdict(config),
        "seeds": [c.seed for c in configs],
        "data": common.data_summary(data),
        "runs": per_seed,
        "summary": {"variants": stats.aggregate([s["variants"] for s in per_seed])},
    }
    results.update(module.extras(config, results))
    results["timing"] = {"seconds": time.perf_counter() - started, "jobs": jobs}
    return results
