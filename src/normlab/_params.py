"""Strict command-line parameter types, shared by the library's commands and the lab's.

click's FloatRange lets NaN through every bound (NaN < 0 is False) and inf
through an open upper end; a comma-separated list parsed by hand drops empty
items. These types refuse both, as usage errors (exit 2) naming the option.
"""

from __future__ import annotations

import math

import click

#: The longest timeout an option accepts, in seconds (a week): beyond it a
#: timeout bounds nothing, and datetime.timedelta overflows near 1e14.
MAX_TIMEOUT_S = 7 * 24 * 3600.0


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses NaN and ±inf."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


class PositiveIntList(click.ParamType):
    """Comma-separated integers >= 1, at least one, no empty items: "100,100" -> (100, 100).

    allow_none: the word "none" means an empty list (a net without hidden layers), said
    explicitly so that an empty or mistyped value is never read as one.
    """

    name = "int,int,..."

    def __init__(self, allow_none: bool = False):
        self.allow_none = allow_none

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        if self.allow_none and str(value).strip().lower() == "none":
            return ()
        items = str(value).split(",")
        if not str(value).strip() or any(not item.strip() for item in items):
            self.fail(f"expected comma-separated integers >= 1 like 100,100, got {value!r} "
                      f"(an empty item)", param, ctx)
        try:
            numbers = tuple(int(item) for item in items)
        except ValueError:
            self.fail(f"expected comma-separated integers >= 1 like 100,100, got {value!r}", param, ctx)
        if min(numbers) < 1:
            self.fail(f"every size must be >= 1, got {value!r}", param, ctx)
        return numbers


def timeout_option(*names, default: float, help: str):
    """A timeout in seconds: finite, > 0 and at most MAX_TIMEOUT_S."""
    return click.option(*names, default=default, show_default=True, help=help,
                        type=FiniteFloatRange(min=0, min_open=True, max=MAX_TIMEOUT_S))


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (remote and library messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
