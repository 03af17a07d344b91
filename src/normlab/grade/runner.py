"""Run a student's functions in a worker process, one bounded call at a time.

The student's code never runs in the grader's process. ``Worker`` starts
``normlab.grade.worker`` in its own session and sends it one call at a time;
every call has a deadline. When it passes, the worker's whole process group is
killed (procs.end_session) and the call's reply says "timeout"; the next call
starts a fresh worker, which imports the module again. A worker that dies
(os._exit, a segfault) is replaced the same way. A function that timed out or
killed its worker is not called again: later calls get the same reply at once,
so one endless loop costs one timeout. Replies are unpickled with an
unpickler that accepts plain data and NumPy arrays only.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from .. import procs
from .worker import HEADER, Handle

#: Seconds allowed for the interpreter and NumPy to start, on top of the per-call timeout for the import.
STARTUP_S = 10.0
STDERR_TAIL_CHARS = 400

__all__ = ["Handle", "Loaded", "Reply", "Worker"]


class Reply(NamedTuple):
    """The outcome of one call.

    outcome: "ok", "raised" (the student's code raised), "bad-return" (not a
    tuple of the expected length), "timeout", or "died" (the worker exited).
    value: what the function returned (plain data) when asked for.
    mutated: names of watched arguments the call changed in place.
    dicts: the parameter dicts (e.g. bn_param) as the call left them.
    """

    outcome: str
    value: Any = None
    seconds: float | None = None
    mutated: tuple[str, ...] = ()
    dicts: dict | None = None
    error: str = ""


class Loaded(NamedTuple):
    """What importing the student's file found: the recognized functions and the import error, if any."""

    functions: tuple[str, ...]
    error: str | None


def defined_names(path: Path, names: Sequence[str]) -> tuple[str, ...]:
    """Names among ``names`` the file defines at top level, read without running it."""
    try:
        tree = ast.parse(Path(path).read_text(errors="replace"))
    except (SyntaxError, ValueError):
        return ()
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return tuple(n for n in names if n in defined)


class _PlainUnpickler(pickle.Unpickler):
    """Accepts builtins' plain data and NumPy arrays; refuses every other class."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("builtins", "bytearray")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the worker sent a {module}.{name}, which is not plain data")


class _Deadline(Exception):
    pass


class Worker:
    """One worker process for the file ``path``; restarted after a timeout or a crash.

    Use as a context manager (or call ``close``) so the process is always ended.
    """

    def __init__(self, path: Path, names: Sequence[str], timeout: float, startup: float = STARTUP_S):
        self.path = Path(path).resolve()
        self.names = tuple(names)
        self.timeout = float(timeout)
        self.startup = float(startup)
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._loaded: Loaded | None = None
        self._given_up: dict[str, Reply] = {}  # function -> its timeout or death
        self.starts = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- lifecycle
    def loaded(self) -> Loaded:
        """Start the worker if none is running and report what the import found.

        A worker stopped by a call's timeout is restarted; one whose import hung or crashed is not.
        """
        if self._proc is None and (self._loaded is None or self._loaded.error is None):
            self._start()
        return self._loaded

    def _start(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        # -P: the current directory must not shadow numpy or normlab (Python >= 3.11).
        flags = ["-P"] if sys.version_info >= (3, 11) else []
        self._proc = subprocess.Popen(
            [sys.executable, *flags, "-c", "from normlab.grade.worker import main; main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True)
        self.starts += 1
        reply = self._exchange({"op": "load", "path": str(self.path), "names": self.names}, self.startup + self.timeout)
        if reply.outcome == "ok" and reply.value["error"] is None:
            self._loaded = Loaded(tuple(reply.value["functions"]), None)
        else:  # the import raised, hung or killed the process: the functions are read from the source
            error = reply.value["error"] if reply.outcome == "ok" else reply.error
            self._loaded = Loaded(defined_names(self.path, self.names), error)

    def close(self) -> None:
        """End the worker (EOF, a moment to exit, then its process group is killed)."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        try:
            proc.stdin.close()
        except OSError:
            pass
        procs.end_session(proc, grace=1.0)
        proc.stdout.close()
        self._stderr.close()

    def _kill(self) -> str:
        """Kill the worker now; return its exit status and the end of its stderr, for the message."""
        proc, self._proc = self._proc, None
        code = procs.end_session(proc)
        proc.stdin.close()
        proc.stdout.close()
        self._stderr.seek(0)
        tail = " | ".join(self._stderr.read().decode(errors="replace").strip()[-STDERR_TAIL_CHARS:].splitlines())
        self._stderr.close()
        return f"exit status {code}" + (f"; its last output: {tail}" if tail else "")

    # -- calls
    def call(self, func: str, args: Sequence, names: Sequence[str], *, arity: int, keep: str | None = None,
             reply: str = "all", watch: Sequence[str] = (), send_back: Sequence[str] = ()) -> Reply:
        """Call the student's ``func(*args)`` in the worker within the timeout.

        names: one name per argument (for ``watch``, ``send_back`` and messages).
        arity: the length of the tuple the function must return.
        keep: store the second element of the result (a forward's cache) under this name; pass
            ``Handle(name)`` as an argument of a later call to use it.
        reply: "all" (the whole tuple), "first" (only its first element) or "none" (timing runs).
        watch: names of array arguments that must not be changed in place.
        send_back: names of dict arguments to return as the call left them (bn_param).
        """
        if func in self._given_up:
            return self._given_up[func]
        loaded = self.loaded()
        if self._proc is None or func not in loaded.functions:
            return Reply("raised", error=loaded.error or f"{func} is not defined")
        request = {"op": "call", "func": func, "args": list(args), "names": list(names), "arity": arity,
                   "keep": keep, "reply": reply, "watch": list(watch), "send_back": list(send_back)}
        answer = self._exchange(request, self.timeout)
        if answer.outcome in ("timeout", "died"):
            self._given_up[func] = answer._replace(error=f"{answer.error}; not called again")
            answer = self._given_up[func]
        return answer

    def _exchange(self, request: dict, timeout: float) -> Reply:
        deadline = time.monotonic() + timeout
        try:
            self._write(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL), deadline)
            data = self._read(deadline)
        except _Deadline:
            self._kill()
            return Reply("timeout", error=f"no answer within {timeout:g} s (the worker was stopped)")
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return Reply("died", error=f"the worker process exited ({self._kill()})")
        try:
            answer = _PlainUnpickler(io.BytesIO(data)).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            return Reply("bad-return", error=str(exc))
        if request["op"] == "load":
            return Reply("ok", value=answer)
        return Reply(answer["outcome"], value=answer.get("value"), seconds=answer.get("seconds"),
                     mutated=tuple(answer.get("mutated", ())), dicts=answer.get("dicts"),
                     error=answer.get("error", ""))

    def _write(self, data: bytes, deadline: float) -> None:
        fd = self._proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(HEADER.pack(len(data)) + data)
        while view:
            _wait(fd, deadline, write=True)
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue

    def _read(self, deadline: float) -> bytes:
        fd = self._proc.stdout.fileno()
        header = self._read_exactly(fd, HEADER.size, deadline)
        return self._read_exactly(fd, HEADER.unpack(header)[0], deadline)

    @staticmethod
    def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
        chunks, left = [], size
        while left:
            _wait(fd, deadline, write=False)
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


def _wait(fd: int, deadline: float, *, write: bool) -> None:
    """Block until fd is ready, or raise _Deadline when the deadline passes first."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Deadline
    ready = select.select([], [fd], [], remaining)[1] if write else select.select([fd], [], [], remaining)[0]
    if not ready:
        raise _Deadline
