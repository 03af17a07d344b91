"""``normlab grade``: check a student's own normalization layers and say what is wrong.

Loads a course-style ``layers.py`` in a sandboxed worker process (``runner``,
``sandbox``, ``protocol``), runs
each function it defines on the inputs of ``cases`` against normlab's core
(``checks``), names the most likely mistake behind every wrong number
(``hypotheses``, ``diagnose``), times ``batchnorm_backward_alt`` (``timing``)
and prints a table or writes JSON (``report``). ``classroom`` grades a
folder of submissions in parallel, ``gradescope`` writes Gradescope's
results.json and its autograder bundle. See docs/grade.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import timing
from .cases import FUNCTIONS, NORMS, edition_named
from .checks import Row, check_backward, check_forward, group_edition
from .diagnose import CODES
from .report import Result, exit_code, print_report, write_json
from .runner import Worker
from .sandbox import Limits
from .submission import Submission, SubmissionError, from_file

DEFAULT_TIMEOUT = 10.0

__all__ = ["CODES", "DEFAULT_TIMEOUT", "FUNCTIONS", "Limits", "Result", "Row", "UsageError", "grade",
           "grade_submission", "main"]


class UsageError(ValueError):
    """No such path, no recognizable function, an unknown --only name: exit status 2."""


def resolve(path) -> Path:
    """PATH as given: a file, or a folder holding layers.py."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such file or folder: {path}")
    if p.is_dir():
        if not (p / "layers.py").is_file():
            raise UsageError(f"{path} is a folder without a layers.py")
        return p / "layers.py"
    return p


def selected_functions(only: str | None) -> tuple[str, ...]:
    """--only's comma-separated names, checked against the known functions."""
    if only is None:
        return FUNCTIONS
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FUNCTIONS]
    if unknown or not names:
        raise UsageError(f"--only: unknown function {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(FUNCTIONS)}")
    return tuple(n for n in FUNCTIONS if n in names)


def _missing(function: str) -> Row:
    return Row(function, "missing", None, (), "not defined")


def _rows(worker: Worker, selected, present, course_edition: str | None = None) -> list[Row]:
    group = set(selected) & {NORMS[3].forward, *NORMS[3].backwards}
    edition = group_edition(worker, present, course_edition) if group else None
    rows = []
    for norm in NORMS:
        wanted = [f for f in (norm.forward, *norm.backwards) if f in selected]
        if not wanted:
            continue
        # The forward is checked whenever a backward is: the backward's message depends on it.
        forward_row = check_forward(worker, norm, edition) if norm.forward in present else None
        for function in wanted:
            if function not in present:
                rows.append(_missing(function))
            elif function == norm.forward:
                rows.append(forward_row)
            else:
                rows.append(check_backward(worker, norm, function, edition, forward_row))
    return rows


def _time_alt(worker: Worker, rows: list[Row], present) -> tuple[list[Row], float | None]:
    """Add the speedup to a passing batchnorm_backward_alt row (alt-not-faster when it is not faster)."""
    backward, alt = NORMS[0].backwards
    index = next((i for i, row in enumerate(rows) if row.function == alt and row.status == "pass"), None)
    if index is None:
        return rows, None
    row = rows[index]
    speedups, reason = timing.speedups(worker) if backward in present else ({}, f"{backward} is not defined")
    if reason is not None:
        rows[index] = row._replace(message=f"{row.message}; not timed: {reason}")
        return rows, None
    message = f"{row.message}; {timing.describe(speedups)} against {backward}"
    codes = row.diagnosis
    if max(speedups.values()) < timing.MIN_SPEEDUP:
        codes += ("alt-not-faster",)
    rows[index] = row._replace(diagnosis=codes, message=message, speedup=speedups)
    return rows, next(iter(speedups.values()))


def course_edition(gn_gamma_shape: str | None) -> str | None:
    """Group norm's gamma shape a course fixes ("1,C,1,1" or "C"), as a key of cases.EDITIONS; None: detect it."""
    if gn_gamma_shape is None:
        return None
    try:
        return edition_named(gn_gamma_shape)
    except ValueError as exc:
        raise UsageError(f"--gn-gamma-shape: {exc}") from None


def grade_submission(submission: Submission, *, only: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                     limits: Limits = Limits(), hide=(), label: str | None = None,
                     gn_gamma_shape: str | None = None) -> Result:
    """Check the functions of a submission in a sandboxed worker. Raises UsageError when it defines none.

    gn_gamma_shape: group norm's gamma/beta shape as the course passes them, "1,C,1,1" or "C";
    None: the one the student's forward gets right.
    """
    selected = selected_functions(only)
    edition = course_edition(gn_gamma_shape)
    label = str(submission.origin) if label is None else label
    with Worker(submission, FUNCTIONS, timeout, limits=limits, hide=hide) as worker:
        loaded = worker.loaded()
        present = [f for f in loaded.functions if f in FUNCTIONS]
        if not set(present) & set(selected):
            reason = f" (importing it failed: {loaded.error})" if loaded.error else ""
            raise UsageError(f"{label} defines none of {', '.join(selected)}{reason}")
        if loaded.error is not None:
            rows = [Row(f, "error", None, ("raises",), f"importing {submission.module.name} failed: {loaded.error}")
                    if f in present else _missing(f) for f in selected]
            speedup = None
        else:
            rows, speedup = _time_alt(worker, _rows(worker, selected, present, edition), present)
    return Result(label, rows, speedup, worker.notes)


def grade(path, *, only: str | None = None, timeout: float = DEFAULT_TIMEOUT, limits: Limits = Limits(),
          gn_gamma_shape: str | None = None) -> Result:
    """Check the functions of a student's layers.py (PATH: the file or its folder). Raises UsageError.

    The student's process sees the file's folder and the current directory empty (where the OS allows).
    gn_gamma_shape: as for :func:`grade_submission`.
    """
    file = resolve(path)
    selected_functions(only)  # a bad --only is a usage error before anything runs
    course_edition(gn_gamma_shape)  # and so is a bad --gn-gamma-shape
    try:
        submission = from_file(file)
    except SubmissionError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return grade_submission(submission, only=only, timeout=timeout, limits=limits,
                            hide=(file.parent, Path.cwd()), label=str(path), gn_gamma_shape=gn_gamma_shape)


def main(path, *, json_path=None, only: str | None = None, timeout: float = DEFAULT_TIMEOUT,
         limits: Limits = Limits(), gn_gamma_shape: str | None = None, console=None) -> int:
    """Grade PATH, print the report (and write JSON): 0 all present pass, 1 something fails, 2 usage error."""
    from rich.console import Console

    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    try:
        if json_path is not None and not Path(json_path).resolve().parent.is_dir():
            raise UsageError(f"--json: no folder {Path(json_path).parent} to write {Path(json_path).name} in")
        result = grade(path, only=only, timeout=timeout, limits=limits, gn_gamma_shape=gn_gamma_shape)
    except UsageError as exc:
        console.print(f"normlab grade: {exc}", markup=False)
        return 2
    print_report(result, console)
    if json_path is not None:
        write_json(result, json_path)
    return exit_code(result)
