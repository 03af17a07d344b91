"""The class at a glance: per function the pass rate, the diagnoses ranked by students, what could not be read.

``summary.md`` holds it all as text; ``summary.png`` draws the first two
(matplotlib, the lab's plotting library, is optional here: without it the
figure is skipped and summary.md says why and how to get it).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import NamedTuple

from .diagnose import CODES
from .feedback import escape

STATUSES = ("pass", "fail", "error", "missing")
COLORS = {"pass": "#4c9f70", "fail": "#d1495b", "error": "#8d5a97", "missing": "#c9c9c9"}
TOP = 12


class Diagnosis(NamedTuple):
    code: str
    students: int
    functions: dict[str, int]  # function -> students whose function got the code


class Stats(NamedTuple):
    graded: int
    per_function: dict[str, Counter]
    diagnoses: list[Diagnosis]
    not_graded: list[tuple[str, str]]   # (student, reason)


def stats(students, functions) -> Stats:
    graded = [s for s in students if s.result is not None]
    per_function = {f: Counter() for f in functions}
    by_code: dict[str, Counter] = {}
    for student in graded:
        for row in student.result.rows:
            if row.function in per_function:
                per_function[row.function][row.status] += 1
            for code in row.diagnosis:
                by_code.setdefault(code, Counter())[row.function] += 1
    diagnoses = []
    for code, functions_hit in by_code.items():
        count = sum(any(code in row.diagnosis for row in s.result.rows) for s in graded)
        diagnoses.append(Diagnosis(code, count, dict(functions_hit.most_common())))
    order = list(CODES)
    diagnoses.sort(key=lambda d: (-d.students, order.index(d.code) if d.code in order else len(order)))
    return Stats(len(graded), per_function, diagnoses, [(s.name, s.reason) for s in students if s.result is None])


def markdown(st: Stats, total: int, figure_note: str | None, notes) -> str:
    parts = ["# Class summary",
             f"{total} students: {st.graded} graded, {len(st.not_graded)} not graded."]
    if figure_note is None:
        parts.append("![pass rates and diagnoses](summary.png)")
    else:
        parts.append(f"_{escape(figure_note)}_")
    lines = ["| function | pass rate | " + " | ".join(STATUSES) + " |", "|---|---|" + "---|" * len(STATUSES)]
    for function, counts in st.per_function.items():
        rate = f"{100 * counts['pass'] / st.graded:.0f} %" if st.graded else "–"
        lines.append(f"| `{function}` | {rate} | " + " | ".join(str(counts[s]) for s in STATUSES) + " |")
    parts += ["## Per function", "\n".join(lines)]
    if st.diagnoses:
        items = []
        for i, d in enumerate(st.diagnoses, 1):
            where = ", ".join(f"`{f}` {n}" for f, n in d.functions.items())
            entry = CODES.get(d.code)
            meaning = f" — {escape(entry.explanation)}. Fix: {escape(entry.fix)}" if entry else ""
            items.append(f"{i}. **`{d.code}`: {d.students} student{'s' * (d.students != 1)}** ({where}){meaning}")
        parts += ["## Diagnoses across the class", "\n".join(items)]
    if st.not_graded:
        parts += ["## Not graded", "\n".join(f"- {escape(name)}: {escape(reason)}" for name, reason in st.not_graded)]
    if notes:
        parts += ["## Sandbox", "\n".join(f"- {escape(n)}" for n in notes)]
    return "\n\n".join(parts) + "\n"


def figure(path: Path, st: Stats) -> str | None:
    """Draw summary.png; returns why it was not drawn, or None."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "summary.png not drawn: matplotlib is not installed (pip install matplotlib, or \"normlab[lab]\")"
    functions = list(st.per_function)
    diagnoses = st.diagnoses[:TOP]
    fig = Figure(figsize=(11, 0.42 * max(len(functions), len(diagnoses), 4) + 1.6))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    rows = max(len(functions), len(diagnoses), 1)
    _pass_rates(left, functions, st, rows)
    _ranked(right, diagnoses, st.graded, rows)
    for ax in (left, right):
        ax.set_ylim(-0.6, rows - 0.4)  # one bar height in both panels
    fig.suptitle(f"{st.graded} students graded", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


def _from_top(n: int, rows: int) -> list[int]:
    """y positions of n bars from the top of a panel of ``rows`` bars."""
    return [rows - 1 - i for i in range(n)]


def _pass_rates(ax, functions, st: Stats, rows: int) -> None:
    y = _from_top(len(functions), rows)
    start = [0.0] * len(functions)
    for status in STATUSES:
        share = [100 * st.per_function[f][status] / max(st.graded, 1) for f in functions]
        ax.barh(y, share, left=start, color=COLORS[status], label=status, height=0.7)
        start = [a + b for a, b in zip(start, share)]
    ax.set_yticks(y, functions, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of graded students")
    ax.set_title("status per function", fontsize=10)
    ax.legend(ncol=4, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.05), frameon=False)


def _ranked(ax, diagnoses, graded: int, rows: int) -> None:
    if not diagnoses:
        ax.text(0.5, 0.5, "no diagnoses", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    y = _from_top(len(diagnoses), rows)
    ax.barh(y, [d.students for d in diagnoses], color="#3b6ea5", height=0.7)
    for yi, d in zip(y, diagnoses):
        ax.text(d.students, yi, f" {d.students}", va="center", fontsize=8)
    ax.set_yticks(y, [d.code for d in diagnoses], fontsize=8)
    ax.set_xlim(0, max(d.students for d in diagnoses) * 1.15)
    ax.set_xlabel(f"students (of {graded})")
    ax.set_title("diagnoses across the class", fontsize=10)


def write(out: Path, students, points: dict, notes) -> str | None:
    """summary.md and summary.png under ``out``; returns why the figure was not drawn, or None."""
    st = stats(students, list(points))
    png = out / "summary.png"
    if png.exists():
        png.unlink()  # never leave last run's figure next to this run's summary
    note = figure(png, st)
    (out / "summary.md").write_text(markdown(st, len(students), note, notes), encoding="utf-8")
    return note
