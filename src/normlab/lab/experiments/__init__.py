"""The lab's experiments: each a config dataclass and the runs it trains, over seeds, in parallel processes.

``EXPERIMENTS`` maps a name to an :class:`Experiment`; :func:`run_experiment`
runs one and writes ``OUT/NAME/results.json``, its PNG figures and
``OUT/NAME/report.md``::

    from normlab.lab.experiments import run_experiment
    paths = run_experiment("batchnorm", "results", epochs=5, seeds=3, jobs=2)

Every configuration is trained with seeds ``seed`` .. ``seed + seeds - 1``
(``runner``); results.json keeps every run and the mean, std and n of every
number, the figures draw means with their spread, the report's tables say
"mean ± std (n)".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Callable, NamedTuple

from . import batch_size, batchnorm, convnet, layernorm, runner, small_batch, weight_scale
from .common import strip_timing


class Experiment(NamedTuple):
    """module: plan/train/assemble/extras for ``runner``; config: the config dataclass (defaults are the
    documented run); plot(results, out_dir) -> figure paths; table(results) -> (headers, rows) of key numbers."""

    module: ModuleType
    config: type
    plot: Callable
    table: Callable
    description: str


EXPERIMENTS: dict[str, Experiment] = {
    module.NAME: Experiment(module, module.Config, module.plot, module.table, module.DESCRIPTION)
    for module in (batchnorm, weight_scale, batch_size, layernorm, convnet, small_batch)
}
DEFAULT_EXPERIMENT = "batchnorm"


def get_experiment(name: str) -> Experiment:
    """Look an experiment up by name; unknown names list the known ones."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def make_config(name: str, **overrides):
    """The experiment's default config with ``overrides`` applied (None values are ignored)."""
    cls = get_experiment(name).config
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"experiment {name!r} has no setting {', '.join(unknown)}; it has {', '.join(sorted(fields))}")
    return cls(**{k: v for k, v in overrides.items() if v is not None})


def run_experiment(name: str, out, *, config=None, jobs: int | None = None, progress: str = "auto",
                   log: Callable[[str], None] = print, command: str | None = None, **overrides) -> dict:
    """Run experiment ``name`` and write its results.json, figures and report.md under ``out/name``.

    config: a ready config (else the defaults with ``overrides``, e.g. epochs=5, seed=1, seeds=3).
    jobs: processes for the runs (None: every core); the results do not depend on it.
    progress: "auto" (a bar in a terminal, else plain lines through ``log``), "rich", "plain" or "none".
    log: called with the experiment's lines (its description, plain progress, what it wrote).
    Returns the paths written: ``{"dir", "results", "figures", "report"}``.
    """
    from . import report

    experiment = get_experiment(name)
    if config is None:
        config = make_config(name, **overrides)
    elif overrides:
        raise ValueError("pass either config or overrides, not both")
    out_dir = Path(out) / name
    log(f"[{name}] {experiment.description}")
    results = runner.run_seeds(experiment.module, config, jobs=jobs, progress=progress,
                               log=lambda line: log(f"[{name}] {line}"))
    results["environment"] = environment()
    results_path = report.write_json(results, out_dir / "results.json")
    figures = experiment.plot(results, out_dir)
    headers, rows = experiment.table(results)
    report_path = report.write_report(out_dir, name=name, results=results, figures=figures, headers=headers,
                                      rows=rows, command=command or _command(name, config, out))
    log(f"[{name}] wrote {results_path}, {report_path} and {len(figures)} figure(s) "
        f"in {results['timing']['seconds']:.1f} s")
    return {"dir": out_dir, "results": results_path, "figures": figures, "report": report_path}


def environment() -> dict:
    """What the numbers depend on beyond the config: the backend that ran and the library versions.

    Backends agree to the last few bits per step, but training amplifies such
    differences, so results.json reproduces exactly only on the same backend.
    """
    import platform

    import numpy as np

    from ...backends import get_backend

    env = {"backend": get_backend("auto").NAME, "numpy": np.__version__, "python": platform.python_version()}
    if env["backend"] == "numba":
        import numba

        env["numba"] = numba.__version__
    return env


def _command(name, config, out) -> str:
    """The CLI line that reproduces ``config`` (its CLI-settable fields that differ from the defaults)."""
    default = get_experiment(name).config()
    parts = ["normlab experiment", name, "--out", str(out)]
    for field, flag in (("dataset", "--dataset"), ("epochs", "--epochs"), ("seed", "--seed"),
                        ("seeds", "--seeds"), ("num_train", "--num-train"), ("data_dir", "--data-dir")):
        value = getattr(config, field)
        if value != getattr(default, field):
            parts += [flag, str(value)]
    return " ".join(parts)


__all__ = ["DEFAULT_EXPERIMENT", "EXPERIMENTS", "Experiment", "get_experiment", "make_config", "run_experiment",
           "strip_timing"]
