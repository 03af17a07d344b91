"""Points per function: equal by default, or read from a JSON or TOML file mapping function to points.

A function scores its points when its row passes (a warning such as
alt-not-faster still passes) and 0 otherwise; a function the submission does
not define scores 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .cases import FUNCTIONS


class PointsError(ValueError):
    """A points file that cannot be used; the message names the file and what is wrong."""


def equal(functions=FUNCTIONS) -> dict[str, float]:
    return {f: 1.0 for f in functions}


def load(path) -> dict[str, float]:
    """{function: points} from a .json or .toml file (a table of numbers). Raises PointsError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PointsError(f"--points: cannot read {path}: {exc}") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise PointsError("--points: reading TOML needs Python 3.11; give a .json file") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise PointsError(f"--points: {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise PointsError(f"--points: {path} must map function names to points, e.g. {{\"batchnorm_forward\": 10}}")
    unknown = [k for k in data if k not in FUNCTIONS]
    if unknown:
        raise PointsError(f"--points: {path}: unknown function {', '.join(unknown)}; known: {', '.join(FUNCTIONS)}")
    bad = [k for k, v in data.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v) or v < 0]
    if bad:
        raise PointsError(f"--points: {path}: points must be numbers >= 0 (not for {', '.join(bad)})")
    return {f: float(data[f]) for f in FUNCTIONS if f in data}


def award(rows, points: dict[str, float]) -> dict[str, float]:
    """{function: points scored} for every function in ``points``."""
    status = {row.function: row.status for row in rows}
    return {f: (p if status.get(f) == "pass" else 0.0) for f, p in points.items()}
