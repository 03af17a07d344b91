"""The worker process: imports a student's layers.py and runs one call per request.

Started by ``runner.Worker`` as ``python -I -c BOOT GRADE_FOLDER CONFIG``, which
loads this module, ``protocol`` and ``sandbox`` alone, not normlab: nothing
imported here may come from the rest of normlab (its reference is not for the
student's process; its folder is hidden from it).
Before anything of the student's runs, ``sandbox.enter`` fences the process
in (namespaces, a private working directory holding a copy of the
submission, another user, resource limits). Requests arrive on fd 0 and
replies leave on the descriptor named in CONFIG, both as ``protocol`` frames
(data only); fd 0 is then ``/dev/null`` and fds 1 and 2 go to the output pipe
the grader drains, so ``print`` and ``input`` cannot disturb the exchange.

A request is a dict: ``{"op": "load", "module", "names"}`` or ``{"op": "call",
"func", "args", "names", "arity", "keep", "reply", "watch", "send_back"}``.
Values the student's forward returns as its cache stay here, under the name
``keep``; a later call passes ``Handle(name)`` in their place, so a cache
(which may hold anything) never crosses the pipe.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np

from . import protocol, sandbox
from .protocol import HEADER, Handle

MESSAGE_CHARS = 200
#: Set by main: the limits, for the messages of exceptions they cause.
_LIMITS = sandbox.Limits()


class _Stored(NamedTuple):
    cache: Any
    watched: dict  # name -> (the live array, a copy taken before the call)


# ----------------------------------------------------------------------------- frames

def write_frame(stream, obj) -> None:
    stream.write(protocol.frame(obj))
    stream.flush()


def read_frame(stream):
    """The next request, or None at end of input."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    return protocol.decode(stream.read(protocol.body_size(header)))


def _take_std_streams(reply_fd: int):
    """Requests from fd 0 (then /dev/null), replies to ``reply_fd``; fds 1 and 2 stay the output pipe."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(reply_fd, "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = sys.stderr
    return requests, replies


# ----------------------------------------------------------------------------- exceptions

def describe_exception(exc: BaseException, directory: Path) -> str:
    """``Type: message (file.py:line in function: source)``, shortened; the frame: the last in the student's folder."""
    try:
        raw = str(exc).strip()
    except BaseException:  # noqa: BLE001 - the student's __str__ raised
        raw = "(its message could not be read)"
    message = raw.splitlines()[0] if raw else ""
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 3] + "..."
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    hint = limit_hint(exc)
    if hint:
        text = f"{hint}: {text}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve().parent == directory]
    if frames:
        f = frames[-1]
        text += f" ({Path(f.filename).name}:{f.lineno} in {f.name}: {(f.line or '').strip()[:MESSAGE_CHARS]})"
    return text[: protocol.MAX_STRING]


def limit_hint(exc: BaseException) -> str | None:
    """Which of the sandbox's limits an exception comes from, when one does."""
    if isinstance(exc, MemoryError):
        return f"memory limit {sandbox.format_size(_LIMITS.memory)}"
    code = getattr(exc, "errno", None)
    hints = {errno.EAGAIN: f"process limit {_LIMITS.processes}", errno.EMFILE: f"open-file limit {_LIMITS.open_files}",
             errno.EFBIG: f"file-size limit {sandbox.format_size(_LIMITS.file_size)}",
             errno.ENOSPC: f"disk limit {sandbox.format_size(_LIMITS.disk)}",
             errno.ENETUNREACH: "no network", errno.EACCES: "permission denied by the sandbox",
             errno.EPERM: "not permitted by the sandbox", errno.EROFS: "read-only"}
    return hints.get(code) if isinstance(exc, OSError) else None


# ----------------------------------------------------------------------------- load

def _import(path: Path):
    """Import the file as a module; inside a package folder (``__init__.py``) as ``package.module``."""
    directory = path.parent
    if (directory / "__init__.py").exists() and directory.name.isidentifier() and path.stem.isidentifier():
        # e.g. the course's cs231n/layers.py, whose siblings import each other relatively
        sys.path.insert(0, str(directory.parent))
        return importlib.import_module(f"{directory.name}.{path.stem}")
    sys.path.insert(0, str(directory))  # so `import` of a sibling file works, as when run from there
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else "_graded_module"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load(request, workdir: Path):
    module = PurePosixPath(request["module"])
    if module.is_absolute() or ".." in module.parts:
        return None, {"functions": [], "error": f"internal: module path {module} outside the working directory"}
    path = workdir.joinpath(*module.parts)
    try:
        module = _import(path)
    except BaseException as exc:  # SystemExit included: the student's import ran exit()
        return None, {"functions": [], "error": describe_exception(exc, path.parent)}
    found = [n for n in request["names"] if callable(getattr(module, n, None))]
    return module, {"functions": found, "error": None}


# ----------------------------------------------------------------------------- call

def _changed(live: np.ndarray, copy: np.ndarray) -> bool:
    return live.shape != copy.shape or not np.array_equal(live, copy, equal_nan=True)


def plain(value, depth: int = 0):
    """``value`` as plain data within the protocol's bounds: numeric ndarrays, numbers, strings, tuples, dicts.

    Only such data is sent back (``protocol`` can express nothing else), so no
    object of the student's reaches the grader's process. Anything else, or
    anything too large or too deeply nested, becomes a string saying what it was.
    """
    if value is None or type(value) in (bool, int, float):
        return value
    if isinstance(value, str):
        return str.__str__(value)[: protocol.MAX_STRING]
    if isinstance(value, np.generic) and value.dtype.kind in protocol.NUMERIC_KINDS:
        return value.item()
    if depth >= protocol.MAX_DEPTH - 2:
        return f"<{type(value).__name__} nested too deeply>"
    if isinstance(value, (tuple, list)) and not all(isinstance(v, (int, float, np.generic)) for v in value):
        if len(value) > protocol.MAX_ITEMS:
            return f"<{type(value).__name__} of {len(value)} items>"
        return tuple(plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        if len(value) > protocol.MAX_ITEMS:
            return f"<dict of {len(value)} items>"
        return {str(k)[:200]: plain(v, depth + 1) for k, v in value.items()}
    try:
        array = np.array(value, subok=False)
    except Exception:
        array = None
    if array is not None and array.dtype.kind in protocol.NUMERIC_KINDS and array.dtype.fields is None:
        if array.size > protocol.MAX_ELEMENTS or array.nbytes > protocol.MAX_FRAME_BYTES // 4:
            return f"<an array of shape {array.shape}, too large to send>"
        return array
    if isinstance(value, (int, float)):  # subclasses of int and float
        return float(value) if isinstance(value, float) else int(value)
    return f"<{type(value).__name__}>"


def _describe_value(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    name = type(value).__name__
    article = "an" if name[0].lower() in "aeiou" else "a"
    return f"{article} {name} of {len(value)}" if isinstance(value, (tuple, list)) else f"{article} {name}"


def _call(module, store: dict, request, directory: Path) -> dict:
    args, watched = [], {}
    for name, value in zip(request["names"], request["args"]):
        if isinstance(value, Handle):
            if value.name not in store:
                return {"outcome": "raised", "error": f"internal: no cache {value.name!r} in this worker"}
            stored = store[value.name]
            value = stored.cache
            # The forward's inputs too: a backward that writes into x through the cache changes the caller's x.
            watched.update({f"{k} (through the cache)": pair for k, pair in stored.watched.items()})
        elif name in request["watch"] and isinstance(value, np.ndarray):
            watched[name] = (value, value.copy())
        args.append(value)
    func = getattr(module, request["func"])
    start = time.perf_counter()
    try:
        result = func(*args)
    except BaseException as exc:  # SystemExit included
        return {"outcome": "raised", "error": describe_exception(exc, directory),
                "mutated": [k for k, (live, copy) in watched.items() if _changed(live, copy)]}
    seconds = time.perf_counter() - start
    mutated = [k for k, (live, copy) in watched.items() if _changed(live, copy)]
    reply = {"outcome": "ok", "seconds": seconds, "mutated": mutated,
             "dicts": {name: plain(value) for name, value in zip(request["names"], args)
                       if name in request["send_back"] and isinstance(value, dict)}}
    arity = request["arity"]
    if not isinstance(result, (tuple, list)) or len(result) != arity:
        reply.update(outcome="bad-return",
                     error=f"returned {_describe_value(result)}, expected a tuple of {arity}")
        return reply
    if request["keep"] is not None:
        # Fresh copies: a backward is charged only with what it changes itself.
        store[request["keep"]] = _Stored(result[1], {k: (live, live.copy()) for k, (live, _) in watched.items()})
    if request["reply"] == "first":
        reply["value"] = plain(result[0])
    elif request["reply"] == "all":
        reply["value"] = tuple(plain(v) for v in result)
    return reply


def main(config_json: str) -> None:
    global _LIMITS
    config = json.loads(config_json)
    requests, replies = _take_std_streams(config["reply_fd"])
    workdir, notes = sandbox.enter(config, (requests, replies))
    _LIMITS = sandbox.Limits(**config["limits"])
    write_frame(replies, {"ready": True, "notes": notes})  # started and fenced in: the import's clock starts
    module, store, directory = None, {}, workdir
    while (request := read_frame(requests)) is not None:
        if request["op"] == "load":
            module, reply = _load(request, workdir)
            if module is not None:
                directory = Path(module.__file__).resolve().parent
        else:
            reply = _call(module, store, request, directory)
        write_frame(replies, reply)
