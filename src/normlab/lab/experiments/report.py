"""results.json and report.md for one experiment run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..._files import write_atomic


def write_json(results: dict, path) -> Path:
    """Write results as JSON, atomically (a reader never sees half a file).

    Floats are written with ``repr`` precision, so they read back exactly and
    two runs with the same seed give identical files apart from timing.
    Non-finite floats (a diverged loss) become null: strict JSON has no NaN.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(finite_or_none(results), indent=1, allow_nan=False) + "\n"
    return write_atomic(path, text.encode("utf-8"))


def finite_or_none(value):
    """value with every NaN/inf float replaced by None, recursively through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def markdown_table(headers, rows) -> str:
    """A GitHub-flavoured markdown table; numbers are already formatted by the caller."""
    lines = ["| " + " | ".join(map(str, headers)) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def seeds_note(seeds: list) -> str:
    """What the numbers and bands are, for the report under its table."""
    from .. import stats

    if len(seeds) == 1:
        return f"One seed ({seeds[0]}): each number is one run's, shown as 'value (1)'; no spread."
    return (f"Seeds {seeds[0]} to {seeds[-1]}: each number is the mean ± standard deviation (ddof 1) over the "
            f"{len(seeds)} seeds, with their number in brackets (fewer where a run gave no value). Figures: the mean "
            f"with a band showing the {stats.spread_name(len(seeds))}.")


def write_report(out_dir, *, name: str, results: dict, figures, headers, rows, command: str) -> Path:
    """Write ``out_dir/report.md``: what ran, the figures (relative links) and a table of key numbers."""
    out_dir = Path(out_dir)
    config = results["config"]
    data = results.get("data", {})
    timing = results.get("timing", {})
    parts = [
        f"# Experiment `{name}`",
        "",
        results.get("description", ""),
        "",
        f"Reproduce: `{command}`",
        "",
        "## Key numbers",
        "",
        markdown_table(headers, rows),
        "",
        seeds_note(results["seeds"]),
        "",
    ]
    if results.get("finding"):
        parts += [results["finding"], ""]
    if results.get("notes"):  # what the numbers are compared with, and what differs from there
        parts += [results["notes"], ""]
    parts += ["## Figures", ""]
    for fig in figures:
        fig = Path(fig)
        parts += [f"![{fig.stem}]({fig.relative_to(out_dir).as_posix()})", ""]
    parts += ["## Setup", ""]
    if data:
        parts += [f"Data: {config.get('dataset')} ({data['num_train']} train / {data['num_val']} val / "
                  f"{data['num_test']} test examples, {data['features']} features, {data['classes']} classes).", ""]
    parts += [markdown_table(("setting", "value"), [(k, f"`{v}`") for k, v in config.items()]), ""]
    if "seconds" in timing:
        backend = results.get("environment", {}).get("backend")
        on = f" on the same backend ({backend})" if backend else ""
        jobs = f" with {timing['jobs']} process(es)" if "jobs" in timing else ""
        parts += [f"Wall time: {timing['seconds']:.1f} s{jobs}. Every run and every number in results.json; the "
                  f"same seeds reproduce them exactly{on}, whatever the number of processes.", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
