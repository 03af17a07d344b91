"""The lab's commands, ``normlab train`` and ``normlab experiment``; ``normlab.cli`` loads them on demand.

Choices (datasets, normalizations, update rules, experiments) are read from
the registries that implement them, so a new entry shows up here by itself.
"""

from __future__ import annotations

import contextlib

import click

from .._params import FiniteFloatRange, PositiveIntList, one_line, timeout_option
from .convnet import CONV_NORMALIZATIONS
from .data import DATASETS, DatasetError
from .experiments import EXPERIMENTS
from .launch import DataParallelError, TorchMissingError
from .model import NORMALIZATIONS
from .optim import UPDATE_RULES
from .pool import RunError
from .train import MODELS

#: What a lab command turns into a one-line error (exit 1): bad settings, data, checkpoints (CheckpointError
#: is a ValueError), processes.
#: Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, DatasetError, DataParallelError, TorchMissingError)

_DATA_DIR_HELP = "CIFAR-10: the cifar-10-batches-py directory (default: $NORMLAB_DATA)."


jobs_option = click.option("--jobs", default=None, type=click.IntRange(min=1),
                           help="Processes the runs share [default: every core]; the numbers do not depend on it.")


@click.command()
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True)
@click.option("--data-dir", default=None, help=_DATA_DIR_HELP)
@click.option("--model", type=click.Choice(list(MODELS)), default="fc", show_default=True,
              help="fc: fully-connected net; convnet: conv layers, then the hidden layers.")
@click.option("--conv-channels", default="16,32", show_default=True, type=PositiveIntList(),
              help="convnet: channels of the conv layers (3x3, each followed by 2x max pooling), comma-separated.")
@click.option("--groups", default=4, show_default=True, type=click.IntRange(min=1),
              help="convnet with groupnorm: groups per conv layer.")
@click.option("--hidden-dims", default="100,100", show_default=True, type=PositiveIntList(allow_none=True),
              help="Hidden layer sizes, comma-separated; convnet: none for no hidden layer after the convs.")
@click.option("--normalization", type=click.Choice(list(dict.fromkeys([*NORMALIZATIONS, *CONV_NORMALIZATIONS]))),
              default="none", show_default=True,
              help=f"fc: {', '.join(NORMALIZATIONS)}; convnet: {', '.join(CONV_NORMALIZATIONS)}.")
@click.option("--dropout", default=0.0, show_default=True, type=FiniteFloatRange(0, 1, max_open=True),
              help="Probability of dropping a hidden unit.")
@click.option("--reg", default=0.0, show_default=True, type=FiniteFloatRange(min=0), help="L2 regularization strength.")
@click.option("--weight-scale", default=5e-2, show_default=True, type=FiniteFloatRange(min=0, min_open=True),
              help="Std of the normal weight init.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--update-rule", type=click.Choice(list(UPDATE_RULES)), default="adam", show_default=True)
@click.option("--learning-rate", "--lr", default=1e-3, show_default=True, type=FiniteFloatRange(min=0))
@click.option("--lr-decay", default=1.0, show_default=True, type=FiniteFloatRange(0, 1, min_open=True),
              help="Learning-rate factor per epoch.")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1),
              help="Total epochs (a resumed run continues up to it).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seeds the split, init, dropout and batch order (the first seed, with --seeds).")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Train with seeds SEED .. SEED+N-1, side by side in --jobs processes, and report mean ± std.")
@jobs_option
@click.option("--num-train", default=None, type=click.IntRange(min=1), help="Use at most this many training examples.")
@click.option("--checkpoint-dir", default=None, help="Write a checkpoint here every --checkpoint-every epochs.")
@click.option("--checkpoint-every", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--resume", is_flag=True, help="Continue the run checkpointed in --checkpoint-dir.")
@click.option("--print-every", default=100, show_default=True, type=click.IntRange(min=1),
              help="Iterations between log lines (no terminal).")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="Data-parallel processes on this machine (gloo over 127.0.0.1; needs PyTorch).")
@timeout_option("--timeout", default=120.0,
                help="Data-parallel: seconds a process waits for its peers before the run fails.")
@click.option("--quiet", is_flag=True, help="No progress output, only the summary.")
def train(quiet, hidden_dims, conv_channels, normalization, **options):
    """Train one net (fully-connected or convolutional), checkpoint it, and print a summary."""
    from . import train as lab_train

    if options["resume"] and options["checkpoint_dir"] is None:
        raise click.UsageError("--resume needs --checkpoint-dir: the directory of the run to continue")
    fitting = {"fc": NORMALIZATIONS, "convnet": CONV_NORMALIZATIONS}[options["model"]]
    if normalization not in fitting:
        raise click.BadParameter(f"{normalization!r} is not one of the {options['model']} net's normalizations: "
                                 f"{', '.join(fitting)}", param_hint="'--normalization'")
    if not hidden_dims and options["model"] == "fc":
        raise click.BadParameter("a fully-connected net needs at least one hidden layer", param_hint="'--hidden-dims'")
    config = lab_train.TrainConfig(hidden_dims=hidden_dims, conv_channels=conv_channels,
                                   normalization=None if normalization == "none" else normalization, **options)
    with user_errors():
        summary = lab_train.train(config, verbose=not quiet)
    if summary is None:  # a rank other than 0 under torchrun: rank 0 prints the summary
        return
    for line in lab_train.format_summary(summary):
        click.echo(line)


@click.command()
@click.argument("name", default="batchnorm")
@click.option("--out", default="results", show_default=True, help="Writes OUT/NAME/results.json, plots, report.md.")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Epochs per training run (default: per experiment).")
@click.option("--seed", default=None, type=click.IntRange(min=0),
              help="The first seed; each seeds the split, init and batch order of its runs [default: 0].")
@click.option("--seeds", default=None, type=click.IntRange(min=1),
              help="Train every configuration with seeds SEED .. SEED+N-1 and report mean ± std [default: 3 for "
                   "weight-scale, convnet and small-batch, 1 for the others].")
@jobs_option
@click.option("--dataset", default=None, type=click.Choice(DATASETS), help="[default: digits]")
@click.option("--data-dir", default=None, help=_DATA_DIR_HELP)
@click.option("--num-train", default=None, type=click.IntRange(min=1), help="Use at most this many training examples.")
def experiment(name, out, jobs, **overrides):
    """Run experiment NAME (or all) and write its results.json, plots and report.md."""
    from .experiments import run_experiment

    names = list(EXPERIMENTS) if name == "all" else [name]
    if name != "all" and name not in EXPERIMENTS:
        raise click.BadParameter(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)} or all",
                                 param_hint="NAME")
    for each in names:
        with user_errors():
            paths = run_experiment(each, out, jobs=jobs, log=lambda line: click.echo(line), **overrides)
        click.echo(f"report: {paths['report']}")


@contextlib.contextmanager
def user_errors():
    """Bad settings, a missing or corrupt dataset, a failed run: one line (and a run's traceback on stderr), exit 1."""
    try:
        yield
    except RunError as exc:
        if exc.details:
            click.echo(exc.details, err=True)
        raise click.ClickException(one_line(exc)) from exc
    except USER_ERRORS as exc:
        raise click.ClickException(one_line(exc)) from exc


experiment.help = (f"Run experiment NAME ({', '.join(EXPERIMENTS)}, or all) and write its results.json, "
                   f"plots and report.md.")
