"""Numbers over seeds: mean, standard deviation, n, min and max of every number the runs report.

:func:`aggregate` walks the per-seed results (dicts of runs, as one seed's
experiment writes them) in step and puts a :func:`describe` where the seeds
hold numbers: ``{"mean", "std", "n", "min", "max"}``, or the same keys with
one list per epoch for a history. ``std`` is the sample standard deviation
(ddof = 1), None for a single seed. A value that is None in some seeds (an
epoch never reached, a diverged loss) is described over the others, with
``missing`` counting the rest.

:func:`spread` is the band the figures draw and :func:`separated` the test
the findings apply: min to max for up to three seeds (a standard deviation
of two or three values says little), mean ± 1 std beyond.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

#: Seeds up to which the spread is min–max rather than ±1 std.
MIN_MAX_UP_TO = 3
#: Per-iteration histories: kept in every run, not described (they are long and the figures use epochs).
NOT_DESCRIBED = ("loss",)
#: Settings of a run rather than results: equal in every seed, kept as they are.
SETTINGS = ("batch_size", "iterations_per_epoch", "parameters")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def describe(values) -> dict | None:
    """mean, std (ddof 1; None for one value), n, min, max of the finite values; None when there are none.

    ``missing`` (only when positive): how many values were None or not finite.
    """
    kept = [float(v) for v in values if _finite(v)]
    if not kept:
        return None
    array = np.asarray(kept, dtype=np.float64)
    out = {"mean": float(np.mean(array)), "std": float(np.std(array, ddof=1)) if len(kept) > 1 else None,
           "n": len(kept), "min": float(np.min(array)), "max": float(np.max(array))}
    if len(kept) < len(values):
        out["missing"] = len(values) - len(kept)
    return out


def describe_series(series) -> dict:
    """Per-position description of equally long lists: mean/std/min/max lists (None where no value), n."""
    columns = [describe(column) for column in zip(*series)]
    out = {key: [None if c is None else c[key] for c in columns] for key in ("mean", "std", "min", "max")}
    out["n"] = len(series)
    return out


def aggregate(trees: list):
    """The seeds' results (equally shaped trees of dicts, lists and numbers) described position by position.

    Numbers become :func:`describe` dicts; lists of numbers of one length, :func:`describe_series`;
    ``SETTINGS`` and values that are not numbers (names) must agree over the seeds and stay as they are.
    """
    first = trees[0]
    if isinstance(first, dict):
        if any(not isinstance(t, dict) or t.keys() != first.keys() for t in trees):
            raise ValueError("the seeds' results differ in shape: cannot describe them together")
        return {k: _same(k, [t[k] for t in trees]) if k in SETTINGS else aggregate([t[k] for t in trees])
                for k in first if k not in NOT_DESCRIBED}
    if all(v is None or _is_number(v) for v in trees) and not all(v is None for v in trees):
        return describe(trees)
    if isinstance(first, list) and all(isinstance(t, list) and len(t) == len(first) for t in trees):
        if first and all(v is None or _is_number(v) for t in trees for v in t):
            return describe_series(trees)
        return [aggregate(list(column)) for column in zip(*trees)]
    return _same("a value", trees)


def _same(what: str, values: list):
    if any(v != values[0] for v in values):
        raise ValueError(f"the seeds' results differ where they should agree ({what}): {values!r:.200}")
    return values[0]


def spread(stats: dict):
    """(low, high) of the band around the mean, or None for one seed: min–max up to three seeds, else ±1 std."""
    if stats is None or stats["n"] < 2:
        return None
    if stats["n"] <= MIN_MAX_UP_TO:
        return stats["min"], stats["max"]
    return stats["mean"] - stats["std"], stats["mean"] + stats["std"]


def series_spread(series: dict):
    """(low list, high list) of a :func:`describe_series`, or None for one seed."""
    if series["n"] < 2:
        return None
    if series["n"] <= MIN_MAX_UP_TO:
        return series["min"], series["max"]
    low = [None if m is None or s is None else m - s for m, s in zip(series["mean"], series["std"])]
    high = [None if m is None or s is None else m + s for m, s in zip(series["mean"], series["std"])]
    return low, high


def spread_name(n: int) -> str:
    """What the band is, for a legend: 'min–max of 3 seeds', '±1 std of 5 seeds', or 'one seed'."""
    if n < 2:
        return "one seed"
    return f"min–max of {n} seeds" if n <= MIN_MAX_UP_TO else f"±1 std of {n} seeds"


def separated(a: dict, b: dict) -> bool | None:
    """Whether the bands of a and b do not overlap (the difference exceeds the spread); None for one seed."""
    band_a, band_b = spread(a), spread(b)
    if band_a is None or band_b is None:
        return None
    return band_a[1] < band_b[0] or band_b[1] < band_a[0]


def fmt(stats: dict | None, spec: str = ".3f", scale: float = 1.0, none: str = "n/a") -> str:
    """'0.953 ± 0.004 (3)': mean ± std (n); '0.953 (1)' for one seed; ``(2 of 3)`` when some seeds had no value."""
    if stats is None:
        return none
    n = f"{stats['n']} of {stats['n'] + stats['missing']}" if stats.get("missing") else str(stats["n"])
    mean = format(scale * stats["mean"], spec)
    if stats["std"] is None:
        return f"{mean} ({n})"
    return f"{mean} ± {format(scale * stats['std'], spec)} ({n})"


def affine(stats: dict | None, offset: float, scale: float) -> dict | None:
    """The description of ``offset + scale * x`` from that of x (e.g. error % from accuracy: 100, -100)."""
    if stats is None:
        return None
    ends = sorted((offset + scale * stats["min"], offset + scale * stats["max"]))
    out = dict(stats, mean=offset + scale * stats["mean"], min=ends[0], max=ends[1])
    out["std"] = None if stats["std"] is None else abs(scale) * stats["std"]
    return out


def beyond_text(pairs: dict) -> str:
    """'beyond the spread at 2, 4' / 'at none' for {name: (a, b)} whose bands do not overlap; a single seed
    says there is no spread to judge by."""
    judged = {name: separated(a, b) for name, (a, b) in pairs.items()}
    if any(v is None for v in judged.values()):
        return "one seed: no spread to judge the differences by (--seeds N gives one)"
    return "beyond the spread at " + (", ".join(str(name) for name, apart in judged.items() if apart) or "none")


def verdict(a: dict, b: dict) -> str:
    """Whether the difference between a and b exceeds the spread, as a parenthetical phrase."""
    apart = separated(a, b)
    if apart is None:
        return "(one seed: no spread to compare with)"
    return "(beyond the spread)" if apart else "(within the spread)"
