"""Crash-safe checkpoints: arrays in ``.npz`` (no pickle), metadata in JSON.

A checkpoint directory holds ``checkpoint.json`` and the one ``state-*.npz``
it names. Saving writes the arrays to a fresh file name first, then the JSON,
each through a temporary file that is flushed, fsynced and renamed into
place (an atomic replace on POSIX), and only then deletes the arrays the old
JSON named. So ``checkpoint.json`` always names a complete arrays file, and a
kill at any moment leaves the last good checkpoint loadable. The JSON also
records the arrays file's SHA-256, so a damaged file is detected, not loaded.

Hygiene: a save that fails (a full disk, an interrupt) removes what it wrote
before it re-raises, and every save first sweeps what a killed save left
(temporary files, arrays files no JSON names), so a directory holds the
checkpoint plus at most one pending temporary file. The JSON's own fields are
checked on load (:func:`check_fields`), not only hashed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import re
import secrets
from pathlib import Path
from typing import Callable

import numpy as np

from .._files import write_atomic

FORMAT = "normlab-checkpoint"
VERSION = 1
META_NAME = "checkpoint.json"
ARRAYS_NAME = re.compile(r"state-[0-9a-f]{12}\.npz")


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, incomplete, or written for something else."""


def save(directory, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write one checkpoint into ``directory`` atomically; returns the JSON path.

    arrays: name -> numeric ndarray (no object arrays). meta: JSON-able dict.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"checkpoint array {name!r} has dtype object; only numeric arrays are stored")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    arrays_name = f"state-{secrets.token_hex(6)}.npz"
    record = {"format": FORMAT, "version": VERSION, "arrays_file": arrays_name,
              "sha256": hashlib.sha256(payload).hexdigest(), **meta}
    text = json.dumps(record, indent=1, sort_keys=True, allow_nan=True).encode()

    _sweep(directory, keep=_named_arrays_file(directory))  # what a killed save left behind
    try:
        write_atomic(directory / arrays_name, payload, durable=True)
        write_atomic(directory / META_NAME, text, durable=True)
    except BaseException:
        # The old JSON still names the old arrays: the new ones would be an orphan.
        (directory / arrays_name).unlink(missing_ok=True)
        raise
    _sweep(directory, keep=arrays_name)  # only now is the old arrays file unreferenced
    return directory / META_NAME


def _named_arrays_file(directory: Path) -> str | None:
    """The arrays file the current JSON names, or None (no JSON, or one that cannot be read)."""
    try:
        name = json.loads((directory / META_NAME).read_text()).get("arrays_file")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _sweep(directory: Path, keep: str | None) -> None:
    """Remove temporary files, and arrays files other than ``keep`` (all of them only when a JSON names one)."""
    stale = list(directory.glob(".*.tmp"))
    if keep is not None or not (directory / META_NAME).exists():
        stale += [p for p in directory.glob("state-*.npz") if p.name != keep]
    for path in stale:
        path.unlink(missing_ok=True)


def exists(directory) -> bool:
    return (Path(directory) / META_NAME).is_file()


def load(directory) -> tuple[dict[str, np.ndarray], dict]:
    """Read the checkpoint in ``directory``: (arrays, meta). Raises CheckpointError if it is damaged."""
    directory = Path(directory)
    meta_path = directory / META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"no checkpoint found: {meta_path} does not exist")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint: {meta_path} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a normlab checkpoint (no format {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path} has checkpoint version {meta.get('version')!r}; "
                              f"this normlab reads version {VERSION}")
    check_fields(meta, {
        "arrays_file": lambda v: isinstance(v, str) and ARRAYS_NAME.fullmatch(v) is not None,
        "sha256": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
    }, meta_path)
    arrays_path = directory / meta["arrays_file"]
    if not arrays_path.is_file():
        raise CheckpointError(f"corrupt checkpoint: {meta_path} names {arrays_path.name}, which is missing")
    payload = arrays_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"corrupt checkpoint: {arrays_path} does not match the SHA-256 in {meta_path}")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # the hash matched, so this is a file written by something else
        raise CheckpointError(f"corrupt checkpoint: cannot read {arrays_path}: {exc}") from exc
    return arrays, meta


# ---------------------------------------------------------------------- field checks

def check_fields(record: dict, rules: dict[str, Callable[[object], bool]], where) -> None:
    """Every ``rules`` key must be in ``record`` with a value its rule accepts; else a CheckpointError naming it."""
    for key, accepts in rules.items():
        if key not in record:
            raise CheckpointError(f"{where} has no field {key!r}")
        try:
            ok = accepts(record[key])
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise CheckpointError(f"{where}: field {key!r} has an invalid value {_short(record[key])}")


def integer(low: int = 0, high: float = math.inf) -> Callable[[object], bool]:
    """A rule: a JSON integer (not a bool, not a float) in [low, high]."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def number(low: float = -math.inf, high: float = math.inf, *, finite: bool = True) -> Callable[[object], bool]:
    """A rule: a JSON number (not a bool) in [low, high], finite unless ``finite`` is False."""
    return lambda v: (isinstance(v, numbers.Real) and not isinstance(v, bool) and low <= v <= high
                      and (math.isfinite(v) or not finite))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
