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


if __name__ == "__main__":  # pragma: no cover
    main()
