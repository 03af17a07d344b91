"""The plan record: the named int64 fields Python writes and the kernels' C callers read.

normlab.torch's native node (``normlab/torch/fused_node.cpp``) keeps one record
per input signature and hands it, whole, to the kernels' C entry points
(``_numba_entry_points``), which take their loop sizes from it. The fields are
defined here and nowhere else: Python writes a record by name (:func:`record`,
which refuses a missing or unknown name), the Numba wrappers read fields at the
indices of :data:`INDEX`, and the C++ node reads them by the same names through a
header generated from :data:`FIELDS` (:func:`c_header`). A field added, removed or
moved here moves in all three; nothing is read by position.
"""

from __future__ import annotations

import hashlib

FIELDS = (
    # the kernels' C entry points (addresses; 0: none): forward, backward, the running-statistics rule on
    # float and on double buffers
    "forward", "backward", "update_float", "update_double",
    # sizes every call is checked against: values of x, statistics, parameters (weight's and bias's values)
    "numel", "stats", "params",
    # the kernels' view of x as (N, G, K, L): batch norm (N, C, 1, L), per-sample norms (N, G, K, L)
    "n", "groups", "per_group", "length",
    # the kernels' task grid: channels per block (columns kernels; 0 otherwise) and blocks of rows
    "width", "row_blocks",
    # outputs of at least this many bytes are advised onto transparent huge pages (normlab.torch.memory)
    "huge_page_bytes",
)

INDEX = {name: i for i, name in enumerate(FIELDS)}

#: A short hash of the field list: compiled readers of an older layout carry another key (``_numba_entry_points``,
#: the native node's build tag).
KEY = hashlib.blake2b(" ".join(FIELDS).encode(), digest_size=4).hexdigest()


def record(**fields: int) -> list[int]:
    """The record of ``fields``, by name: every field of :data:`FIELDS`, no other, each an int."""
    missing = [name for name in FIELDS if name not in fields]
    unknown = sorted(set(fields) - set(FIELDS))
    if missing or unknown:
        raise ValueError(f"a plan record needs exactly the fields {FIELDS}: missing {missing}, unknown {unknown}")
    return [int(fields[name]) for name in FIELDS]


def c_header() -> str:
    """The C++ side of :data:`FIELDS`: an X-macro listing the fields in order (``fused_node.cpp`` includes it)."""
    entries = " ".join(f"X({name})" for name in FIELDS)
    return ("// Generated from normlab/backends/plan_record.py: the plan record's fields, in order.\n"
            f"#define NORMLAB_PLAN_FIELDS(X) {entries}\n")


__all__ = ["FIELDS", "INDEX", "KEY", "c_header", "record"]
