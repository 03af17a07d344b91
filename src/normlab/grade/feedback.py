"""A grade as Markdown: the student's table, each function's findings, and what each code means.

The same content as the terminal report (``report.print_report``), for the
class's ``feedback/<student>.md`` and for Gradescope's per-test output. What
comes from the student's code (exception messages, printed names) is escaped,
so it cannot add markup, links or HTML to the page.
"""

from __future__ import annotations

import re

from .diagnose import CODES
from .report import Result

_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!])")


def escape(text: str) -> str:
    """``text`` with Markdown's and HTML's special characters escaped, on one line."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _error(value: float | None) -> str:
    return "–" if value is None else f"{value:.1e}"


def table(result: Result, points: dict[str, float] | None = None, scored: dict[str, float] | None = None) -> str:
    head = ["function", "status", "worst rel. error", "diagnosis"] + (["points"] if points else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result.rows:
        cells = [f"`{row.function}`", f"**{row.status}**", _error(row.max_rel_error),
                 ", ".join(f"`{c}`" for c in row.diagnosis)]
        if points:
            cells.append(f"{scored.get(row.function, 0):g} / {points.get(row.function, 0):g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def explain(codes) -> str:
    """Each code's meaning and fix, as a list."""
    items = []
    for code in [c for c in CODES if c in set(codes)]:
        entry = CODES[code]
        errata = f" (erratum {', '.join(entry.errata)} of docs/derivation.md)" if entry.errata else ""
        items.append(f"- **`{code}`**: {escape(entry.explanation)}{errata}.  \n  Fix: {escape(entry.fix)}")
    return "\n".join(items)


def function_text(row) -> str:
    """One function's finding and the meaning of its codes (Gradescope's per-test output)."""
    parts = [escape(row.message)]
    if row.diagnosis:
        parts.append(explain(row.diagnosis))
    return "\n\n".join(parts)


def markdown(result: Result, title: str, points=None, scored=None) -> str:
    """The whole feedback page for one student."""
    parts = [f"# {escape(title)}", table(result, points, scored)]
    if points:
        parts.append(f"**Points: {sum(scored.values()):g} / {sum(points.values()):g}**")
    findings = [f"- **`{row.function}`** ({row.status}): {escape(row.message)}"
                for row in result.rows if row.status != "missing"]
    if findings:
        parts += ["## Findings", "\n".join(findings)]
    codes = [c for row in result.rows for c in row.diagnosis]
    if codes:
        parts += ["## What the codes mean", explain(codes)]
    if result.notes:
        parts += ["## Notes", "\n".join(f"- {escape(n)}" for n in result.notes)]
    return "\n\n".join(parts) + "\n"
