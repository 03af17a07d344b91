"""``normlab grade``'s options, checked once, and the run they ask for.

One submission (the table, ``--json``, ``--format gradescope``), a class
(``--class``: ``classroom``) or Gradescope's bundle (``--autograder OUT.zip``).
Exit status: 0 done (one submission: every function it defines passes), 1 a
function fails or errs, 2 a usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import DEFAULT_TIMEOUT, UsageError, course_edition, gradescope, points as points_mod, selected_functions
from .sandbox import Limits, format_size, parse_size

#: Below this the worker's Python and NumPy do not start.
MIN_MEMORY = 256 << 20


def _limits(memory: str) -> Limits:
    try:
        size = parse_size(memory)
    except ValueError as exc:
        raise UsageError(f"--memory: {exc}") from None
    if size < MIN_MEMORY:
        raise UsageError(f"--memory: {format_size(size)} is too little for Python and NumPy to start "
                         f"(at least {format_size(MIN_MEMORY)})")
    return Limits(memory=size)


def _points(path, only):
    if path is None:
        return None
    try:
        points = points_mod.load(path)
    except points_mod.PointsError as exc:
        raise UsageError(str(exc)) from None
    if only is not None:
        selected = selected_functions(only)
        points = {f: p for f, p in points.items() if f in selected}
    return points


def _check_combination(path, class_, out, jobs, force, fmt, json_path, autograder) -> None:
    if autograder is not None:
        if path is not None or class_:
            raise UsageError("--autograder writes Gradescope's bundle and takes no PATH (nor --class)")
        return
    if path is None:
        raise UsageError("missing PATH: a student's layers.py, its folder, or with --class a folder of submissions")
    if not class_:
        given = [name for name, value in (("--out", out), ("--jobs", jobs), ("--force", force)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} only go with --class")
    elif fmt == "gradescope" or json_path is not None:
        raise UsageError("--class writes grades.csv, grades.json and feedback under --out; "
                         "--json and --format gradescope are for one submission")


def run(path=None, *, json_path=None, only=None, timeout=DEFAULT_TIMEOUT, gn_gamma_shape=None, memory="2G",
        class_=False, out=None, jobs=None, force=False, fmt="normlab", points=None, autograder=None,
        console=None) -> int:
    from rich.console import Console

    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    try:
        _check_combination(path, class_, out, jobs, force, fmt, json_path, autograder)
        limits = _limits(memory)
        selected_functions(only)
        course_edition(gn_gamma_shape)  # a bad --gn-gamma-shape is a usage error before anything runs
        point_map = _points(points, only)
        if autograder is not None:
            return _autograder(autograder, point_map, only, timeout, limits, gn_gamma_shape, console)
        if class_:
            return _class(path, out, jobs, force, only, timeout, limits, gn_gamma_shape, point_map, console)
        if fmt == "gradescope":
            return _gradescope(path, json_path, only, timeout, limits, gn_gamma_shape, point_map, console)
        from . import main

        return main(path, json_path=json_path, only=only, timeout=timeout, limits=limits,
                    gn_gamma_shape=gn_gamma_shape, console=console)
    except UsageError as exc:
        console.print(f"normlab grade: {exc}", markup=False, soft_wrap=True)
        return 2


def _autograder(target, point_map, only, timeout, limits, gn_gamma_shape, console) -> int:
    target = Path(target)
    if target.suffix != ".zip" or not target.resolve().parent.is_dir():
        raise UsageError(f"--autograder: {target} must be a .zip in an existing folder")
    point_map = point_map or points_mod.equal(selected_functions(only))
    gradescope.bundle(target, points=point_map, timeout=timeout, memory=limits.memory, gn_gamma_shape=gn_gamma_shape)
    console.print(f"wrote {target}: upload it as the assignment's autograder on Gradescope "
                  f"({len(point_map)} functions, {sum(point_map.values()):g} points)", markup=False)
    return 0


def _gradescope(path, json_path, only, timeout, limits, gn_gamma_shape, point_map, console) -> int:
    from . import grade

    target = Path(json_path or "results.json")
    if not target.resolve().parent.is_dir():
        raise UsageError(f"--json: no folder {target.parent} to write {target.name} in")
    point_map = point_map or points_mod.equal(selected_functions(only))
    result = grade(path, only=",".join(point_map), timeout=timeout, limits=limits, gn_gamma_shape=gn_gamma_shape)
    data = gradescope.results(result, point_map)
    gradescope.write_results(target, data)
    console.print(f"wrote {target}: {data['score']:g} / {sum(point_map.values()):g} points", markup=False)
    return 0


def _class(path, out, jobs, force, only, timeout, limits, gn_gamma_shape, point_map, console) -> int:
    from . import classroom

    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"--class: {path} is not a folder of submissions")
    run = classroom.grade_class(folder, out, jobs=jobs, force=force, only=only, timeout=timeout, limits=limits,
                                points=point_map, gn_gamma_shape=gn_gamma_shape, console=console)
    out = Path(out) if out is not None else folder.resolve().parent / "grades"
    graded = sum(s.result is not None for s in run.students)
    console.print(f"{len(run.students)} students: {graded} graded, {len(run.students) - graded} not graded "
                  f"({run.regraded} run now, {run.reused} unchanged since the last run)", markup=False)
    for note in run.notes:
        console.print(f"note: {note}", markup=False, style="dim")
    if run.figure is not None:
        console.print(run.figure, markup=False)
    console.print(f"wrote {out / 'grades.csv'}, {out / 'summary.md'}, feedback in {out / 'feedback'}", markup=False)
    return 0
