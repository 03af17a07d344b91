"""``normlab grade SUBMISSIONS --class``: every student of a folder, graded in parallel, with a class summary.

SUBMISSIONS holds one entry per student: a folder, a ``.py`` or a ``.zip``
(``submission``). Each is read in this process, hashed, and — unless its hash
and the options match the last run's ``grades.json`` — graded in a pool of
processes (``--jobs``, default the cores), each student in the sandbox.
Writes, under ``--out`` (default ``SUBMISSIONS/../grades``):

- ``grades.json``: every student's result (the cache of the next run);
- ``grades.csv``: one row per student, each function's status and points, the total;
- ``feedback/<student>.md``: that student's table, findings and fixes (``feedback``);
- ``summary.md``, ``summary.png``: per function the pass rate, and the diagnoses ranked (``summary``).
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

from . import feedback, points as points_mod, summary
from .checks import Row
from .protocol import printable
from .report import Result, to_json
from .runner import OUTPUT_NOTE
from .sandbox import Limits
from .submission import Submission, SubmissionError, from_entry

#: Seconds between plain progress lines when the output is not a terminal.
PLAIN_EVERY_S = 10.0
RESULTS = "grades.json"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class Graded(NamedTuple):
    """One student's outcome. result is None when the submission could not be graded (reason says why)."""

    name: str
    entry: str
    digest: str | None
    result: Result | None
    reason: str = ""


class ClassRun(NamedTuple):
    students: list[Graded]
    regraded: int                # run in the sandbox this time
    reused: int                  # unchanged since the last run: its results kept
    notes: tuple[str, ...]       # the sandbox's notes, said once
    figure: str | None           # why summary.png was not drawn, or None


def result_from_json(data: dict) -> Result:
    """The inverse of report.to_json."""
    rows = [Row(c["function"], c["status"], c["max_rel_error"], tuple(c["diagnosis"]), c["message"],
                c.get("speedup")) for c in data["checks"]]
    return Result(data["path"], rows, data["speedup_alt"], tuple(data.get("notes", ())))


def _graded_json(student: Graded) -> dict:
    return {"entry": student.entry, "digest": student.digest, "reason": student.reason,
            "result": None if student.result is None else to_json(student.result)}


# ----------------------------------------------------------------------------- one student (in a pool process)

def _grade_one(submission: Submission, options: dict) -> dict:
    from . import UsageError, grade_submission

    limits = Limits(**options["limits"])
    try:
        result = grade_submission(submission, only=options["only"], timeout=options["timeout"], limits=limits,
                                  hide=options["hide"], label=submission.name,
                                  gn_gamma_shape=options["gn_gamma_shape"])
    except UsageError as exc:
        return {"reason": str(exc), "result": None}
    except Exception as exc:  # noqa: BLE001 - one student's trouble must not end the class
        return {"reason": f"the grader failed on it: {type(exc).__name__}: {exc}", "result": None}
    return {"reason": "", "result": to_json(result)}


# ----------------------------------------------------------------------------- the class

def entries(folder: Path, out: Path) -> list[Path]:
    """The class folder's entries, sorted; hidden ones and the output folder left out."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.resolve() == out.resolve():
            continue
        found.append(entry)
    return found


def _names(paths: list[Path]) -> dict[Path, str]:
    """Each entry's student name: without .py/.zip, unless two entries would share it; printable."""
    stems = [printable(p.stem if p.suffix in (".py", ".zip") and not p.is_dir() else p.name) for p in paths]
    return {p: (s if stems.count(s) == 1 else printable(p.name)) for p, s in zip(paths, stems)}


def _previous(out: Path, options: dict) -> dict:
    """Last run's students by name, when it ran with the same options and normlab; else nothing."""
    try:
        data = json.loads((out / RESULTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("options") != _comparable(options):
        return {}
    return data.get("students", {}) if isinstance(data.get("students"), dict) else {}


def _comparable(options: dict) -> dict:
    """What a kept result depends on besides the submission: the options and the grader's own code."""
    from .. import __version__

    return {"normlab": __version__, "grader": _grader_digest(), "only": options["only"],
            "timeout": options["timeout"], "memory": options["limits"]["memory"],
            "gn_gamma_shape": options["gn_gamma_shape"]}


#: Modules that only present results: a change to them does not call for grading again.
_PRESENTATION = {"classroom.py", "summary.py", "feedback.py", "command.py", "gradescope.py", "points.py"}


def _grader_digest() -> str:
    """A hash of the grader's source that makes the results (this package and the core it compares with)."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent
    sources = [p for p in package.glob("*.py") if p.name not in _PRESENTATION]
    for path in sorted([*sources, *(package.parent / n for n in ("core.py", "norms.py"))]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _reused(old: dict | None, name: str, entry: Path, submission: Submission) -> Graded | None:
    if not old or old.get("digest") != submission.digest() or old.get("entry") != entry.name:
        return None
    try:
        result = None if old.get("result") is None else result_from_json(old["result"])
    except (KeyError, TypeError, ValueError):
        return None
    return Graded(name, entry.name, old["digest"], result, old.get("reason", ""))


def grade_class(folder, out=None, *, jobs: int | None = None, force: bool = False, only: str | None = None,
                timeout: float = 10.0, limits: Limits = Limits(), points: dict | None = None,
                gn_gamma_shape: str | None = None, console=None) -> ClassRun:
    """Grade every entry of ``folder``; write the files listed in the module's docstring under ``out``.

    With more than one job the students are graded in processes started with the spawn method: a
    script that calls this needs the usual ``if __name__ == "__main__":`` guard.
    """
    from . import selected_functions

    folder = Path(folder)
    out = Path(out) if out is not None else folder.resolve().parent / "grades"
    if points and only is None:
        only = ",".join(points)  # a points file says which functions count
    points = points or points_mod.equal(selected_functions(only))
    out.mkdir(parents=True, exist_ok=True)
    options = {"only": only, "timeout": timeout, "limits": limits._asdict(), "gn_gamma_shape": gn_gamma_shape,
               "hide": [str(folder.resolve()), str(out.resolve()), str(Path.cwd())]}
    previous = {} if force else _previous(out, options)
    paths = entries(folder, out)
    names = _names(paths)
    students: dict[str, Graded] = {}
    pending: dict[str, Submission] = {}
    for entry in paths:
        name = names[entry]
        try:
            submission = from_entry(entry)._replace(name=name)
        except SubmissionError as exc:
            students[name] = Graded(name, entry.name, None, None, f"could not be read: {printable(str(exc))}")
            continue
        reused = _reused(previous.get(name), name, entry, submission)
        if reused is not None:
            students[name] = reused
        else:
            pending[name] = submission
    reused = sum(1 for s in students.values() if s.digest is not None)
    _grade_pending(pending, options, jobs, students, console, reused=len(paths) - len(pending))
    ordered = [students[names[p]] for p in paths]
    notes = tuple(dict.fromkeys(n for s in ordered if s.result for n in s.result.notes
                                if not n.startswith(OUTPUT_NOTE)))
    figure = write_outputs(out, ordered, options, points, notes)
    return ClassRun(ordered, len(pending), reused, notes, figure)


def _grade_pending(pending: dict[str, Submission], options: dict, jobs, students: dict, console, reused: int):
    """Grade the pending students: in a pool of processes, or here, one after the other, with one job."""
    if not pending:
        return
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(pending)))
    progress = _Progress(len(pending) + reused, reused, console)

    def record(name: str, done: dict) -> None:
        submission = pending[name]
        result = None if done["result"] is None else result_from_json(done["result"])
        students[name] = Graded(name, submission.origin.name, submission.digest(), result, done["reason"])
        progress.advance(name)

    try:
        if jobs == 1:
            for name, submission in pending.items():
                record(name, _grade_one(submission, options))
            return
        context = multiprocessing.get_context("spawn")  # nothing of this process (threads, locks) leaks into them
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(_grade_one, submission, options): name for name, submission in pending.items()}
            try:
                for future in concurrent.futures.as_completed(futures):
                    try:
                        done = future.result()
                    except Exception as exc:  # noqa: BLE001 - a pool process that died: that student's row says so
                        done = {"reason": f"the grader failed on it: {type(exc).__name__}: {exc}", "result": None}
                    record(futures[future], done)
            finally:
                for future in futures:
                    future.cancel()
    finally:
        progress.close()


# ----------------------------------------------------------------------------- progress

class _Progress:
    """A rich bar with an ETA on a terminal; otherwise a plain line every PLAIN_EVERY_S seconds and at the end."""

    def __init__(self, total: int, done: int, console):
        self.total, self.done, self.start, self.last = total, done, time.monotonic(), time.monotonic()
        self.first, self.printed = done, None
        self.bar = None
        stream = getattr(console, "file", sys.stdout)
        if getattr(stream, "isatty", lambda: False)():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("grading"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[last]}", markup=False), console=console, transient=False)
            self.bar.start()
            self.task = self.bar.add_task("grading", total=total, completed=done, last="")
        self.stream = stream

    def advance(self, name: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, last=name)
        elif time.monotonic() - self.last >= PLAIN_EVERY_S:
            self._line()

    def _line(self) -> None:
        self.last, self.printed = time.monotonic(), self.done
        elapsed = self.last - self.start
        graded = self.done - self.first
        left = (self.total - self.done) * elapsed / graded if graded else float("nan")
        eta = f", about {_duration(left)} left" if graded and self.done < self.total else ""
        print(f"graded {self.done}/{self.total} students in {_duration(elapsed)}{eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.printed != self.done:
            self._line()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ----------------------------------------------------------------------------- the files

def write_outputs(out: Path, students: list[Graded], options: dict, points: dict, notes) -> str | None:
    """grades.json, grades.csv, feedback/*.md, summary.md and summary.png; returns why the figure is missing."""
    data = {"options": _comparable(options), "students": {s.name: _graded_json(s) for s in students}}
    (out / RESULTS).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _write_csv(out / "grades.csv", students, points)
    folder = out / "feedback"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.md"):
        old.unlink()
    for student in students:
        (folder / f"{feedback_name(student.name)}.md").write_text(_feedback(student, points), encoding="utf-8")
    return summary.write(out, students, points, notes)


def feedback_name(name: str) -> str:
    """A student's name as a file name: no separators, no leading dot."""
    return _SAFE_NAME.sub("_", name).lstrip(".") or "_"


def _feedback(student: Graded, points: dict) -> str:
    if student.result is None:
        return f"# {feedback.escape(student.name)}\n\nNot graded: {feedback.escape(student.reason)}\n"
    scored = points_mod.award(student.result.rows, points)
    return feedback.markdown(student.result, student.name, points, scored)


def _write_csv(path: Path, students: list[Graded], points: dict) -> None:
    functions = list(points)
    header = ["student", "graded", "points", "max_points"]
    for f in functions:
        header += [f, f"{f}_points"]
    header += ["diagnoses", "note"]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for s in students:
            if s.result is None:
                writer.writerow(_no_formulas([s.name, "no", 0, f"{sum(points.values()):g}"] + ["", 0] * len(functions)
                                             + ["", s.reason]))
                continue
            status = {row.function: row.status for row in s.result.rows}
            scored = points_mod.award(s.result.rows, points)
            cells = [s.name, "yes", f"{sum(scored.values()):g}", f"{sum(points.values()):g}"]
            for f in functions:
                cells += [status.get(f, "missing"), f"{scored[f]:g}"]
            codes = dict.fromkeys(c for row in s.result.rows for c in row.diagnosis)
            cells += [" ".join(codes), "; ".join(n for n in s.result.notes if n.startswith(OUTPUT_NOTE))]
            writer.writerow(_no_formulas(cells))


def _no_formulas(cells) -> list:
    """Cells a spreadsheet would run as a formula (=, +, -, @ first) get a leading apostrophe."""
    return [f"'{c}" if isinstance(c, str) and c[:1] in ("=", "+", "-", "@") else c for c in cells]
