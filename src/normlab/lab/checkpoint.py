"""Crash-safe checkpoints: arrays in ``.npz`` (no pickle), metadata in JSON.

A checkpoint directory holds ``checkpoint.json`` and the one ``state-*.npz``
it names. Saving writes the arrays to a fresh file name first, then the JSON,
each through a temporary file that is flushed, fsynced and renamed into
place (an atomic replace on POSIX), and only then deletes the arrays the old
JSON named. So ``checkpoint.json`` always names a complete arrays file, and a
kill at any moment leaves the last good checkpoint loadable. The JSON also
records the arrays file's SHA-256, so a damaged file is detected, not loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from pathlib import Path

import numpy as np

from .._files import write_atomic

FORMAT = "normlab-checkpoint"
VERSION = 1
META_NAME = "checkpoint.json"


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
    write_atomic(directory / arrays_name, payload, durable=True)

    record = {"format": FORMAT, "version": VERSION, "arrays_file": arrays_name,
              "sha256": hashlib.sha256(payload).hexdigest(), **meta}
    write_atomic(directory / META_NAME, json.dumps(record, indent=1, sort_keys=True).encode(), durable=True)

    # Only now is the old arrays file unreferenced; also sweep temp files a killed save left behind.
    for stale in [*directory.glob("state-*.npz"), *directory.glob(".*.tmp")]:
        if stale.name != arrays_name:
            stale.unlink(missing_ok=True)
    return directory / META_NAME


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
    arrays_path = directory / str(meta.get("arrays_file"))
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
