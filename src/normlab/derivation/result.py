"""The one-line outcome of a derivation check, as ``normlab check`` prints it."""

from __future__ import annotations

from typing import NamedTuple


class CheckResult(NamedTuple):
    """One line of ``normlab check``.

    kind: "step" (exact symbolic equality), "erratum" (a seed line shown
        wrong) or "numeric" (a float64 comparison with a tolerance).
    error: 0.0 for exact symbolic equality; a relative error for numerical
        checks; 1.0 for an erratum whose wrong version was shown to fail.
    tolerance: the bound a numeric check's error must stay below; None otherwise.
    """

    name: str
    passed: bool
    error: float
    detail: str
    kind: str = "numeric"
    tolerance: float | None = None
