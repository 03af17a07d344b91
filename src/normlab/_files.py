"""Files written whole or not at all."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path, data: bytes | Callable[[BinaryIO], object], *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename.

    data: the bytes, or a function that writes them to the open binary file.
    A reader sees the old file or the new one, never half of one; a write
    that fails part-way (a full disk, a kill) leaves no temporary file behind,
    except after SIGKILL, when a ``.<name>.<random>.tmp`` may remain.
    durable: also fsync the file and the directory, so the rename survives a
    power cut (checkpoints); results and caches skip that cost.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)
    return path


def fsync_dir(directory) -> None:
    """Make the renames in ``directory`` durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
