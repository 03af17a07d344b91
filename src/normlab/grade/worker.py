"""The worker process: imports a student's layers.py and runs one call per request.

Runs as ``python -c "from normlab.grade.worker import main; main()"`` in its
own session (see ``runner.Worker``). Requests and replies are length-prefixed
pickles on the process's original stdin/stdout; before the student's module is
imported those descriptors are moved aside, so a ``print`` or ``input`` in the
student's code cannot corrupt the exchange (prints go to stderr).

A request is a dict: ``{"op": "load", "path", "names"}`` or ``{"op": "call",
"func", "args", "names", "arity", "keep", "reply", "watch", "send_back"}``.
Values the student's forward returns as its cache stay here, under the name
``keep``; a later call passes ``Handle(name)`` in their place, so a cache that
cannot be pickled (or is large) never crosses the pipe.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

HEADER = struct.Struct(">Q")  # frame length
MESSAGE_CHARS = 200


class Handle(NamedTuple):
    """Stands for a cache the worker keeps (``keep=name`` of an earlier call)."""

    name: str


class _Stored(NamedTuple):
    cache: Any
    watched: dict  # name -> (the live array, a copy taken before the call)


# ----------------------------------------------------------------------------- frames

def write_frame(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream):
    """The next request, or None at end of input."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    return pickle.loads(stream.read(HEADER.unpack(header)[0]))


def _take_std_streams():
    """Move the protocol off fds 0/1: stdin becomes /dev/null, stdout goes to stderr."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return requests, replies


# ----------------------------------------------------------------------------- exceptions

def describe_exception(exc: BaseException, directory: Path) -> str:
    """``Type: message (file.py:line in function: source)``, shortened; the frame: the last in the student's folder."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 3] + "..."
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if Path(f.filename).resolve().parent == directory]
    if frames:
        f = frames[-1]
        text += f" ({Path(f.filename).name}:{f.lineno} in {f.name}: {(f.line or '').strip()})"
    return text


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


def _load(request):
    path = Path(request["path"]).resolve()
    try:
        module = _import(path)
    except BaseException as exc:  # SystemExit included: the student's import ran exit()
        return None, {"functions": [], "error": describe_exception(exc, path.parent)}
    found = [n for n in request["names"] if callable(getattr(module, n, None))]
    return module, {"functions": found, "error": None}


# ----------------------------------------------------------------------------- call

def _changed(live: np.ndarray, copy: np.ndarray) -> bool:
    return live.shape != copy.shape or not np.array_equal(live, copy, equal_nan=True)


def plain(value):
    """``value`` as plain data: numeric ndarrays (base class), numbers, strings, tuples, dicts.

    Only such data is sent back, and the grader unpickles nothing else, so no
    object of the student's can run code in the grader's process. Anything
    else becomes a string that says what it was.
    """
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, (tuple, list)) and not all(isinstance(v, (int, float, np.generic)) for v in value):
        return tuple(plain(v) for v in value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    try:
        array = np.array(value, subok=False)
    except Exception:
        array = None
    if array is not None and array.dtype.kind in "biuf":
        return array
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


def main() -> None:
    requests, replies = _take_std_streams()
    module, store, directory = None, {}, Path.cwd()
    while (request := read_frame(requests)) is not None:
        if request["op"] == "load":
            directory = Path(request["path"]).resolve().parent
            module, reply = _load(request)
        else:
            reply = _call(module, store, request, directory)
        write_frame(replies, reply)
