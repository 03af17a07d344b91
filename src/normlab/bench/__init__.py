"""Benchmarks of the normalization kernels against PyTorch's native CPU kernels
and the memory-bandwidth bound; ``normlab bench`` and ``benchmarks/run.py`` call ``main``."""

from __future__ import annotations

import json
import shlex
import sys

from .cases import QUICK, SUITE, parse_case
from .report import markdown
from .runner import run

__all__ = ["QUICK", "SUITE", "main", "markdown", "parse_case", "run"]


def main(cases=None, dtypes=("float32", "float64"), repeat=7, threads=None, quick=False, rounds=3,
         json_path=None, markdown_path=None, command=None) -> dict:
    """Run, print the Markdown table, write JSON/Markdown files when asked; returns the result."""
    result = run(cases=cases, dtypes=dtypes, repeat=repeat, threads=threads, quick=quick, rounds=rounds,
                 log=lambda line: print(line, file=sys.stderr, flush=True))
    if command is None:
        prog = sys.argv[0]
        prog = "normlab" if prog.endswith(("__main__.py", "normlab")) else f"python {prog}"
        command = " ".join([prog, *(shlex.quote(a) for a in sys.argv[1:])])
    result["command"] = command
    text = markdown(result, command)
    print(text)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(result, fh, indent=1)
    if markdown_path:
        with open(markdown_path, "w") as fh:
            fh.write(text)
    return result
