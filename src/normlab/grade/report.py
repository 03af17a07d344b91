"""The grade's table, its JSON and its exit code.

JSON schema::

    {"path": str,
     "checks": [{"function": str, "status": "pass" | "fail" | "missing" | "error",
                 "max_rel_error": float | null, "diagnosis": [code, ...], "message": str}, ...],
     "speedup_alt": float | null,
     "notes": [str, ...]}

speedup_alt is batchnorm_backward's median time over batchnorm_backward_alt's
at the course's shape (100, 500); null when it was not measured.
max_rel_error is null when no output could be compared (or it is not a number).
notes: what the sandbox could not apply here, and output of the student's beyond what was kept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .checks import Row
from .diagnose import CODES

STATUS_STYLE = {"pass": "green", "fail": "red", "error": "red", "missing": "dim"}


class Result(NamedTuple):
    path: str
    rows: list[Row]
    speedup_alt: float | None
    notes: tuple[str, ...] = ()


def exit_code(result: Result) -> int:
    """0 when every function present passes (warnings included), else 1."""
    return 1 if any(row.status in ("fail", "error") for row in result.rows) else 0


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or inf: an error that is not a number is null."""
    return value if value is not None and math.isfinite(value) else None


def to_json(result: Result) -> dict:
    return {
        "path": result.path,
        "checks": [{"function": row.function, "status": row.status, "max_rel_error": _finite(row.max_rel_error),
                    "diagnosis": list(row.diagnosis), "message": row.message} for row in result.rows],
        "speedup_alt": _finite(result.speedup_alt),
        "notes": list(result.notes),
    }


def write_json(result: Result, path) -> None:
    Path(path).write_text(json.dumps(to_json(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _speedup_cell(row: Row) -> str:
    if not row.speedup:
        return ""
    return " / ".join(f"{value:.2f}x" for value in row.speedup.values())


def print_report(result: Result, console: Console) -> None:
    """The table, each row's findings, then what each code found means and how to fix it."""
    table = Table(title=Text(f"normlab grade: {result.path}"))  # a path is not markup
    for column in ("function", "status", "worst rel. error", "diagnosis", "alt speedup"):
        table.add_column(column, justify="right" if column in ("worst rel. error", "alt speedup") else "left")
    for row in result.rows:
        error = "-" if row.max_rel_error is None else f"{row.max_rel_error:.1e}"
        style = STATUS_STYLE[row.status]
        table.add_row(row.function, f"[{style}]{row.status}[/{style}]", error, ", ".join(row.diagnosis),
                      _speedup_cell(row))
    console.print(table)
    for row in result.rows:
        if row.status != "missing":
            console.print(f"{row.function}: {row.message}", markup=False, highlight=False, soft_wrap=True)
    found = [c for c in CODES if any(c in row.diagnosis for row in result.rows)]
    if found:
        console.print()
    for code in found:
        entry = CODES[code]
        errata = f" (erratum {', '.join(entry.errata)} of docs/derivation.md)" if entry.errata else ""
        console.print(f"{code}: {entry.explanation}{errata}\n  fix: {entry.fix}", markup=False, highlight=False,
                      soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True, style="dim")
    counts = {s: sum(row.status == s for row in result.rows) for s in STATUS_STYLE}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n), markup=False, highlight=False)
