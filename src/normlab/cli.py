"""The ``normlab`` command line.

The library's commands live here (check, bench). Other commands plug in
through the ``normlab.commands`` entry-point group and are imported only when
one of them is run or listed: the lab registers ``train`` and ``experiment``
(``normlab.lab.cli``), so the library never imports the lab. A plugged-in
command that cannot be imported (the lab extra not installed) says in one
line why and how to install it.

Errors: a bad option is a usage error (exit 2), a failure a command expects
(bad settings, data, checkpoints, processes) one ``Error:`` line (exit 1).
Anything else is a bug: one line saying so (exit 1), and its traceback with
``normlab --debug`` or ``NORMLAB_DEBUG=1``.
"""

from __future__ import annotations

import math
import sys
from importlib.metadata import entry_points

import click

from ._params import one_line, timeout_option
from .bench import SUITES

COMMAND_GROUP = "normlab.commands"


class _Main(click.Group):
    """The library's commands plus those registered under the ``normlab.commands`` entry points."""

    @staticmethod
    def _plugins() -> dict:
        return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        plugin = self._plugins().get(name)
        if command is not None or plugin is None:
            return command
        try:
            return plugin.load()
        except ImportError as exc:  # e.g. the lab extra is missing
            return _not_installed(name, str(exc))
        except Exception as exc:  # a broken plugin: one line (its traceback under --debug)
            if ctx.params.get("debug"):
                raise
            return _not_installed(name, f"the command {name!r} ({plugin.value}) cannot be loaded, "
                                        f"{type(exc).__name__}: {one_line(exc)}")

    def invoke(self, ctx):
        """Run the command; an exception no command expected becomes one line unless --debug is on."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(
                f"internal error (a bug in normlab), {type(exc).__name__}: {one_line(exc)}; "
                f"run with normlab --debug or NORMLAB_DEBUG=1 for the traceback") from exc


def _not_installed(name: str, message: str) -> click.Command:
    """A stand-in for a command that cannot be imported: it says why and exits 1."""
    def fail(**_):
        raise click.ClickException(message)

    return click.Command(name, callback=fail, help=f"(not installed) {message}",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="normlab")
@click.option("--debug", is_flag=True, envvar="NORMLAB_DEBUG",
              help="Show the traceback of an internal error (also NORMLAB_DEBUG=1).")
def main(debug):
    """normlab: batch normalization and its siblings, derived, verified and fast."""


@main.command()
@click.option("--backend", default="auto", show_default=True, help="numpy, numba or auto.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the random inputs and dout.")
def check(backend, seed):
    """Check every norm's gradients and the derivation; exit 1 on any failure."""
    from rich.console import Console
    from rich.table import Table

    from . import selfcheck
    from .backends import get_backend

    try:
        chosen = get_backend(backend).NAME
    except (ValueError, ImportError) as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from exc
    # Without a terminal rich assumes 80 columns; a log file can afford the full table.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
    rows = selfcheck.gradient_checks(chosen, seed)
    torch_rows = selfcheck.torch_checks(chosen, seed)
    derivation_rows = selfcheck.derivation_checks()
    table = Table(title=f"normlab check (backend: {chosen}, float64, random dout, seed {seed})")
    for column in ("group", "check", "rel. error", "criterion", "result"):
        table.add_column(column, justify="right" if column == "rel. error" else "left")
    for row in rows + torch_rows + derivation_rows:
        error = "-" if row.error is None else f"{row.error:.2e}"
        table.add_row(row.group, row.name, error, row.criterion,
                      "[green]pass[/green]" if row.passed else "[red]FAIL[/red]")
    console.print(table)
    if not torch_rows:
        console.print("PyTorch not installed: oracle checks skipped (pip install 'normlab[torch]').", markup=False)
    if not derivation_rows:
        console.print("SymPy not installed: derivation checks skipped (pip install 'normlab[derive]').", markup=False)
    failed = [r for r in rows + torch_rows + derivation_rows if not r.passed]
    all_rows = len(rows) + len(torch_rows) + len(derivation_rows)
    console.print(f"{all_rows - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--suite", type=click.Choice([*SUITES, "all"]), default="kernels", show_default=True,
              help="kernels: numpy/numba/ATen kernels and the bandwidth bound; torch: normlab.torch.BatchNorm vs "
                   "torch.nn.BatchNorm1d/2d through autograd; sync: SyncBatchNorm on 2 ranks vs local batch norm; "
                   "models: whole training steps of ordinary models, torch.nn norms vs normlab.torch norms.")
@click.option("--quick", is_flag=True, help="One small shape per norm (a smoke run).")
@click.option("--cases", "cases", default=None,
              help="Comma-separated case ids, e.g. bn:4096x1024,sbn:32x64x56x56,ln:4096x1024,gn8:32x64x56x56 "
                   "(torch and sync suites: bn and sbn only; sync splits the batch over the ranks); "
                   "models suite: model names, e.g. cnn,mlp.")
@click.option("--dtype", type=click.Choice(["float32", "float64", "both"]), default=None,
              help="[default: both; sync and models suites: float32]")
@click.option("--repeat", default=7, show_default=True,
              help="Timed runs per measurement (median; >= 7); models suite: pairs of steps per round.")
@click.option("--rounds", default=3, show_default=True,
              help="Blocks per implementation, taken in turn (spreads load from elsewhere over all of them); "
                   "models suite: rounds of pairs (rounds x repeat pairs in all).")
@click.option("--threads", default=None,
              help="Threads for Numba and PyTorch alike [all cores; sync suite: 1 per rank; models suite: "
                   "as the environment leaves them]; the kernel suite takes several, e.g. 1,2 (one run each, "
                   "in one process, reported side by side).")
@click.option("--env", "environments", default="default", show_default=True,
              help="Models suite: comma-separated environments, each a fresh process: default (no thread "
                   "variables), passive (OMP_WAIT_POLICY=PASSIVE), default+load (a busy process beside it).")
@click.option("--control", is_flag=True,
              help="Models suite: also time each torch.nn model against an identical copy of itself, the same "
                   "way (an A/A run): the ratios this machine gives with nothing changed.")
@click.option("--compile", "compiled", is_flag=True,
              help="Models suite: also time both models under torch.compile (inductor) in the same turns; the "
                   "first compiled step (compiling) is reported apart.")
@click.option("--compute-dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="Models suite with --compile: the arithmetic of normlab's compiled norms "
                   "(normlab.torch.set_compute_dtype; float64 keeps the README's numerics).")
@click.option("--processes", default=1, show_default=True,
              help="Models suite: run each environment in this many fresh processes, one after another, and "
                   "report the median of their ratios and the range (a process's allocator state moves a ratio "
                   "by more than one process's interval shows).")
@timeout_option("--timeout", default=600.0,
                help="Sync and models suites: seconds before the processes are stopped and the run fails "
                     "(models suite: per process).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the result as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Write the Markdown report.")
def bench(suite, quick, cases, dtype, repeat, rounds, threads, environments, control, compiled, compute_dtype,
          processes, timeout,
          json_path, markdown_path):
    """Time numpy, numba and PyTorch's native kernels; report ratios and the bandwidth bound (--suite for more)."""
    from . import bench as bench_mod
    from .bench.runner import check_repeat

    try:
        case_list = _bench_cases(suite, cases)
        dtypes = None if dtype is None else ("float32", "float64") if dtype == "both" else (dtype,)
        if rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {rounds}")
        check_repeat(repeat)
        threads = _thread_counts(threads, suite)
        env_list = tuple(e.strip() for e in environments.split(","))
        from .bench.models_suite import ENVIRONMENTS
        if not set(env_list) <= set(ENVIRONMENTS):
            raise ValueError(f"--env takes {', '.join(ENVIRONMENTS)}, got {environments!r}")
        if control and suite not in ("models", "all"):
            raise ValueError(f"--control is for the models suite (--suite models), not --suite {suite}")
        if compiled and suite not in ("models", "all"):
            raise ValueError(f"--compile is for the models suite (--suite models), not --suite {suite}")
        if compute_dtype != "float64" and not compiled:
            raise ValueError("--compute-dtype is the arithmetic of the compiled norms: give --compile too")
        if processes < 1:
            raise ValueError(f"--processes must be >= 1, got {processes}")
        if processes > 1 and suite not in ("models", "all"):
            raise ValueError(f"--processes is for the models suite (--suite models), not --suite {suite}")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        bench_mod.main(cases=case_list, dtypes=dtypes, repeat=repeat, threads=threads, quick=quick, rounds=rounds,
                       json_path=json_path, markdown_path=markdown_path, suite=suite, sync_timeout_s=timeout,
                       environments=env_list, control=control, processes=processes, compiled=compiled,
                       compute_dtype=compute_dtype)
    except ImportError as exc:  # the torch, sync and models suites need PyTorch
        raise click.ClickException(f"--suite {suite} needs PyTorch (pip install 'normlab[torch]'): {exc}") from exc


def _thread_counts(text: str | None, suite: str):
    """--threads as the suites take it: None, one count, or (kernel suite) a tuple of counts."""
    if text is None:
        return None
    from .threads import max_threads
    try:
        counts = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"--threads takes a count or comma-separated counts such as 1,2, got {text!r}") from None
    if not all(1 <= t <= max_threads() for t in counts):
        raise ValueError(f"--threads must be in [1, {max_threads()}] (NUMBA_NUM_THREADS), got {text}")
    if len(counts) > 1 and suite != "kernels":
        raise ValueError(f"several thread counts are for the kernel suite only, not --suite {suite}")
    return counts if len(counts) > 1 else counts[0]


def _bench_cases(suite: str, cases: str | None):
    """--cases as the suite reads it: model names (models), batch-norm cases (torch, sync), any case (kernels)."""
    if cases is None:
        return None
    items = [c.strip() for c in cases.split(",")]
    if suite == "models":
        from .bench.models_suite import MODELS
        unknown = [c for c in items if c not in MODELS]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
        return items
    if suite == "all":
        raise ValueError("--cases needs one --suite: kernel cases and model names differ")
    from . import _checks
    from . import bench as bench_mod
    parsed = [bench_mod.parse_case(c) for c in items]
    for case in parsed:
        # x, dout, y, dx and the NumPy backend's float64 temporaries: check before allocating any
        _checks.check_allocation(8 * 8 * math.prod(case.shape), f"bench case {case.kind}{case.groups or ''}:"
                                 f"{'x'.join(map(str, case.shape))}")
    if suite in ("torch", "sync"):
        from .bench.torch_suite import batchnorm_case
        parsed = [batchnorm_case(c) for c in parsed]
    return parsed


@main.command()
@click.argument("path", required=False)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the result as JSON too (with --format gradescope: Gradescope's results.json).")
@click.option("--only", default=None, help="Comma-separated function names to check [default: all it defines].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds a single call of the student's code may take.")
@click.option("--gn-gamma-shape", default=None, metavar="1,C,1,1|C",
              help="Group norm's gamma/beta shape in your course [default: the one the student's forward takes].")
@click.option("--memory", default="2G", show_default=True,
              help="Address space the student's process may use (e.g. 2G, 512M).")
@click.option("--class", "class_", is_flag=True,
              help="PATH is a folder with one submission per student (a folder, .py or .zip each).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="--class: where grades.csv, feedback/ and summary.md go [default: next to PATH, grades/].")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="--class: students at once [default: cores].")
@click.option("--force", is_flag=True, help="--class: grade every student again, changed or not.")
@click.option("--format", "fmt", type=click.Choice(["normlab", "gradescope"]), default="normlab", show_default=True,
              help="gradescope: write Gradescope's results.json (to --json FILE, default results.json).")
@click.option("--points", type=click.Path(dir_okay=False), default=None,
              help="JSON or TOML file mapping function to points [default: 1 each].")
@click.option("--autograder", type=click.Path(dir_okay=False), default=None,
              help="Write Gradescope's autograder bundle (setup.sh, run_autograder) to this .zip; no PATH.")
def grade(path, json_path, only, timeout, gn_gamma_shape, memory, class_, out, jobs, force, fmt, points, autograder):
    """Check a student's layers.py (or its folder), or a class (--class), in a sandbox; exit 0 pass, 1 fail, 2 usage."""
    from .grade.command import run

    sys.exit(run(path, json_path=json_path, only=only, timeout=timeout, gn_gamma_shape=gn_gamma_shape, memory=memory,
                 class_=class_, out=out, jobs=jobs, force=force, fmt=fmt, points=points, autograder=autograder))


if __name__ == "__main__":  # pragma: no cover
    main()
