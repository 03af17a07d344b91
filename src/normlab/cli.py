"""The ``normlab`` command line."""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="normlab")
def main():
    """normlab: batch normalization and its siblings, derived, verified and fast."""


@main.command()
@click.option("--backend", default="auto", show_default=True, help="numpy, numba or auto.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs and dout.")
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
@click.option("--suite", type=click.Choice(["kernels", "torch", "sync", "all"]), default="kernels", show_default=True,
              help="kernels: numpy/numba/ATen kernels and the bandwidth bound; torch: normlab.torch.BatchNorm vs "
                   "torch.nn.BatchNorm1d/2d through autograd; sync: SyncBatchNorm on 2 ranks vs local batch norm.")
@click.option("--quick", is_flag=True, help="One small shape per norm (a smoke run).")
@click.option("--cases", "cases", default=None,
              help="Comma-separated case ids, e.g. bn:4096x1024,sbn:32x64x56x56,ln:4096x1024,gn8:32x64x56x56 "
                   "(torch and sync suites: bn and sbn only; sync splits the batch over the ranks).")
@click.option("--dtype", type=click.Choice(["float32", "float64", "both"]), default=None,
              help="[default: both; sync suite: float32]")
@click.option("--repeat", default=7, show_default=True, help="Timed runs per measurement (median; >= 7).")
@click.option("--rounds", default=3, show_default=True,
              help="Blocks per implementation, taken in turn (spreads load from elsewhere over all of them).")
@click.option("--threads", type=int, default=None,
              help="Threads for Numba and PyTorch alike [all cores; sync suite: 1 per rank].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Sync suite: seconds before the ranks are stopped and the run fails.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the result as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Write the Markdown report.")
def bench(suite, quick, cases, dtype, repeat, rounds, threads, timeout, json_path, markdown_path):
    """Time numpy, numba and PyTorch's native kernels; report ratios and the bandwidth bound (--suite for more)."""
    from . import bench as bench_mod

    try:
        case_list = [bench_mod.parse_case(c) for c in cases.split(",")] if cases else None
        if case_list and suite in ("torch", "sync", "all"):
            from .bench.torch_suite import batchnorm_case
            case_list = [batchnorm_case(c) for c in case_list]
        dtypes = None if dtype is None else ("float32", "float64") if dtype == "both" else (dtype,)
        if rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {rounds}")
        if repeat < 7:
            raise ValueError(f"--repeat must be >= 7 (a median of at least 7 runs), got {repeat}")
        if threads is not None:
            from .threads import max_threads
            if not 1 <= threads <= max_threads():
                raise ValueError(f"--threads must be in [1, {max_threads()}] (NUMBA_NUM_THREADS), got {threads}")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        bench_mod.main(cases=case_list, dtypes=dtypes, repeat=repeat, threads=threads, quick=quick, rounds=rounds,
                       json_path=json_path, markdown_path=markdown_path, suite=suite, sync_timeout_s=timeout)
    except ImportError as exc:  # the torch and sync suites need PyTorch
        raise click.ClickException(f"--suite {suite} needs PyTorch (pip install 'normlab[torch]'): {exc}") from exc


@main.command()
@click.option("--dataset", type=click.Choice(["digits", "mnist1d", "cifar10"]), default="digits", show_default=True)
@click.option("--data-dir", default=None, help="CIFAR-10: the cifar-10-batches-py directory (default: $NORMLAB_DATA).")
@click.option("--hidden-dims", default="100,100", show_default=True, help="Hidden layer sizes, comma-separated.")
@click.option("--normalization", type=click.Choice(["none", "batchnorm", "layernorm"]), default="none",
              show_default=True)
@click.option("--dropout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Probability of dropping a hidden unit.")
@click.option("--reg", default=0.0, show_default=True, type=click.FloatRange(min=0), help="L2 regularization strength.")
@click.option("--weight-scale", default=5e-2, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Std of the normal weight init.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--update-rule", type=click.Choice(["sgd", "sgd_momentum", "rmsprop", "adam"]), default="adam",
              show_default=True)
@click.option("--learning-rate", "--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0))
@click.option("--lr-decay", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Learning-rate factor per epoch.")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1),
              help="Total epochs (a resumed run continues up to it).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seeds the split, init, dropout and batch order.")
@click.option("--num-train", default=None, type=click.IntRange(min=1), help="Use at most this many training examples.")
@click.option("--checkpoint-dir", default=None, help="Write a checkpoint here every --checkpoint-every epochs.")
@click.option("--checkpoint-every", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--resume", is_flag=True, help="Continue the run checkpointed in --checkpoint-dir.")
@click.option("--print-every", default=100, show_default=True, type=click.IntRange(min=1),
              help="Iterations between log lines (no terminal).")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="Data-parallel processes on this machine (gloo over 127.0.0.1; needs PyTorch).")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Data-parallel: seconds a process waits for its peers before failing.")
@click.option("--quiet", is_flag=True, help="No progress output, only the summary.")
def train(quiet, hidden_dims, normalization, **options):
    """Train one fully-connected net, checkpoint it, and print a summary."""
    from .lab import train as lab_train

    if options["resume"] and options["checkpoint_dir"] is None:
        raise click.UsageError("--resume needs --checkpoint-dir: the directory of the run to continue")
    try:
        dims = tuple(int(h) for h in hidden_dims.split(",") if h.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {hidden_dims!r}",
                                 param_hint="--hidden-dims") from None
    config = lab_train.TrainConfig(hidden_dims=dims, normalization=None if normalization == "none" else normalization,
                                   **options)
    try:
        summary = lab_train.train(config, verbose=not quiet)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:  # bad settings, data or checkpoint
        raise click.ClickException(str(exc)) from exc
    if summary is None:  # a rank other than 0 under torchrun: rank 0 prints the summary
        return
    for line in lab_train.format_summary(summary):
        click.echo(line)


@main.command()
@click.argument("name", default="batchnorm")
@click.option("--out", default="results", show_default=True, help="Writes OUT/NAME/results.json, plots, report.md.")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Epochs per training run (default: per experiment).")
@click.option("--seed", default=None, type=click.IntRange(min=0),
              help="Seeds the split, init and batch order [default: 0].")
@click.option("--dataset", default=None, type=click.Choice(["digits", "mnist1d", "cifar10"]), help="[default: digits]")
@click.option("--data-dir", default=None, help="CIFAR-10: the cifar-10-batches-py directory (default: $NORMLAB_DATA).")
@click.option("--num-train", default=None, type=click.IntRange(min=1), help="Use at most this many training examples.")
def experiment(name, out, **overrides):
    """Run experiment NAME (batchnorm, weight-scale, batch-size, layernorm, or all) and write its report."""
    from .experiments import EXPERIMENTS, run_experiment

    names = list(EXPERIMENTS) if name == "all" else [name]
    if name != "all" and name not in EXPERIMENTS:
        raise click.BadParameter(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)} or all",
                                 param_hint="NAME")
    for each in names:
        try:
            paths = run_experiment(each, out, log=lambda line: click.echo(line), **overrides)
        except (ValueError, OSError, RuntimeError) as exc:  # bad settings or a missing/corrupt dataset
            raise click.ClickException(str(exc)) from exc
        click.echo(f"report: {paths['report']}")


@main.command()
@click.argument("path")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the result as JSON too.")
@click.option("--only", default=None, help="Comma-separated function names to check [default: all it defines].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds a single call of the student's code may take.")
def grade(path, json_path, only, timeout):
    """Check a student's layers.py (or its folder) and diagnose what is wrong; exit 0 pass, 1 fail, 2 usage."""
    from .grade import main as grade_main

    sys.exit(grade_main(path, json_path=json_path, only=only, timeout=timeout))


if __name__ == "__main__":  # pragma: no cover
    main()
