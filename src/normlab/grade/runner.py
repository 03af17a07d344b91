"""Run a student's functions in a sandboxed worker process, one bounded call at a time.

The student's code never runs in the grader's process. ``Worker`` stages a
copy of the submission in a private temporary folder and starts
``normlab.grade.worker`` in its own session, with an environment of its own
(``sandbox.environment``); the worker fences itself in (``sandbox.enter``)
before it imports anything of the student's, and is sent one call at a time.
Every call has a deadline. When it passes, the worker is stopped (SIGTERM to
its keeper, which kills the student's process and with it its PID namespace,
then SIGKILL to the whole process group) and the call's reply says "timeout";
the next call starts a fresh worker, which imports the module again. A worker
that dies (os._exit, a limit, a crash) is replaced the same way. A function
that timed out or killed its worker is not called again: later calls get the
same reply at once, so one endless loop costs one timeout. Calls that each
stay just under the timeout are bounded too: once a submission's exchanges
have taken ``Limits.total_seconds`` in all, no call is made any more (a
Gradescope run that outlasts its own timeout writes no results at all).

Replies are ``protocol`` frames (data only) and each is checked against the
request before use; a frame that is not (too large, malformed, a forged reply
of the wrong form) stops the worker like a crash. The student's stdout and
stderr are drained while waiting, the first and last ``Limits.output`` / 2
bytes kept. Text from the worker (messages, output) is made ``printable``
before anything shows it: a student's escape sequences never reach a terminal.
"""

from __future__ import annotations

import ast
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from .. import procs
from . import protocol
from .protocol import HEADER, Handle, ProtocolError, printable
from .sandbox import Limits, environment, format_size, python_paths, unreadable_python_paths
from .submission import Submission, from_file

#: Seconds allowed for the interpreter and NumPy to start and the sandbox to be set up (the import of the
#: student's module then has the per-call timeout).
STARTUP_S = 10.0
STDERR_TAIL_CHARS = 400
#: Seconds the keeper gets to stop the student's process before the whole group is killed.
STOP_GRACE_S = 1.0
#: The worker's three modules (worker, protocol, sandbox) loaded from this folder as a package of their
#: own, without normlab: the reference the student is graded against is not in the student's process,
#: and normlab's folder is hidden from it (``PACKAGE`` joins the hidden folders).
BOOT = ("import sys, types; sys.dont_write_bytecode = True; "
        "grader = types.ModuleType('_normlab_grader'); grader.__path__ = [sys.argv[1]]; "
        "sys.modules['_normlab_grader'] = grader; from _normlab_grader.worker import main; main(sys.argv[2])")
PACKAGE = Path(__file__).resolve().parents[1]
_SIGNALS = {signal.SIGXCPU: "the CPU-time limit", signal.SIGXFSZ: "the file-size limit",
            signal.SIGKILL: "SIGKILL", signal.SIGSEGV: "a crash (SIGSEGV)"}

#: How the note on output beyond what was kept begins (a student's own note, unlike the sandbox's).
OUTPUT_NOTE = "the student's code printed"

__all__ = ["Handle", "Limits", "Loaded", "Reply", "Worker"]


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
    """What importing the student's file found: the recognized functions, the import error, if any, and
    the sandbox's notes (restrictions the OS did not allow)."""

    functions: tuple[str, ...]
    error: str | None
    notes: tuple[str, ...] = ()


def defined_names(source: bytes, names: Sequence[str]) -> tuple[str, ...]:
    """Names among ``names`` the source defines at top level, read without running it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return tuple(n for n in names if n in defined)


class Output:
    """The student's stdout and stderr: the first and the last ``keep`` / 2 bytes, and how many there were."""

    def __init__(self, keep: int):
        self.half, self.head, self.tail, self.total = keep // 2, bytearray(), bytearray(), 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail = (self.tail + chunk)[-self.half:]

    def last(self, chars: int) -> str:
        """The end of what was kept, its lines joined with " | ", made printable."""
        text = (bytes(self.head) + bytes(self.tail)).decode(errors="replace").strip()[-chars:]
        return printable(" | ".join(text.splitlines()))

    def note(self) -> str | None:
        if self.total <= 2 * self.half:
            return None
        return (f"{OUTPUT_NOTE} {format_size(self.total)}; the first and last "
                f"{format_size(self.half)} were kept")


def hidden_paths(paths) -> list[str]:
    """The folders among ``paths`` the student's process need not see: not /, and none that holds this
    Python, NumPy or normlab (the worker still imports from them)."""
    needed = python_paths()
    result = []
    for path in paths:
        path = Path(path).resolve()
        if path.is_dir() and path != Path("/") and not any(path == n or path in n.parents for n in needed):
            result.append(str(path))
    return sorted(set(result))


def _checked(request: dict, answer) -> Any:
    """The decoded reply if it is of the form the request asks for; ProtocolError otherwise."""
    protocol.expect(answer, dict, "the reply")
    if request["op"] == "ready":  # before the student's code runs: the sandbox's notes
        notes = protocol.field(answer, "notes", tuple)
        if not all(isinstance(n, str) for n in notes):
            raise ProtocolError("notes: expected strings")
        return {"notes": notes}
    if request["op"] == "load":
        functions = protocol.field(answer, "functions", tuple)
        if not all(isinstance(f, str) and f in request["names"] for f in functions):
            raise ProtocolError("the reply names functions that were not asked for")
        error = protocol.field(answer, "error", (str, type(None)))
        return {"functions": functions, "error": None if error is None else printable(error)}
    outcome = protocol.field(answer, "outcome", str)
    if outcome not in ("ok", "raised", "bad-return"):
        raise ProtocolError(f"an unknown outcome {outcome[:40]!r}")
    seconds = protocol.field(answer, "seconds", (int, float, type(None)), None)
    if (seconds is None and outcome == "ok") or (seconds is not None and not (math.isfinite(seconds) and seconds > 0)):
        raise ProtocolError(f"seconds: {seconds!r} is not a duration")
    mutated = protocol.field(answer, "mutated", tuple, ())
    if not all(isinstance(m, str) and len(m) <= 200 for m in mutated):
        raise ProtocolError("mutated: expected short strings")
    mutated = tuple(printable(m) for m in mutated)
    dicts = protocol.field(answer, "dicts", dict, {})
    if not all(k in request["send_back"] and isinstance(v, dict) for k, v in dicts.items()):
        raise ProtocolError("dicts: only the parameter dicts asked for, as dicts")
    value = answer.get("value")
    if outcome == "ok" and request["reply"] == "all" and not (isinstance(value, tuple) and
                                                              len(value) == request["arity"]):
        raise ProtocolError(f"value: expected a tuple of {request['arity']}")
    return Reply(outcome, value=value, seconds=seconds, mutated=mutated, dicts=dicts,
                 error=printable(protocol.field(answer, "error", str, "")))


class _Deadline(Exception):
    pass


class Worker:
    """One sandboxed worker process for a submission; restarted after a timeout or a crash.

    submission: a ``Submission`` or the path of the file to grade (its .py neighbours go with it).
    hide: folders the student's process sees empty (where the OS allows a mount namespace).
    Use as a context manager (or call ``close``) so the process is always ended and the copy removed.
    """

    def __init__(self, submission, names: Sequence[str], timeout: float, startup: float = STARTUP_S, *,
                 limits: Limits = Limits(), hide: Sequence = ()):
        self.submission: Submission = submission if isinstance(submission, Submission) else from_file(submission)
        self.names = tuple(names)
        self.timeout = float(timeout)
        self.startup = float(startup)
        self.limits = limits
        self.hide = hidden_paths([*hide, PACKAGE])
        self.reveal = unreadable_python_paths()
        self.output = Output(limits.output)
        self._proc: subprocess.Popen | None = None
        self._replies: int | None = None
        self._output_fd: int | None = None
        self._folder: Path | None = None
        self._loaded: Loaded | None = None
        self._given_up: dict[str, Reply] = {}  # function -> its timeout or death
        self._spent = 0.0  # seconds of exchanges with the worker, summed over every start
        self.starts = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def notes(self) -> tuple[str, ...]:
        """What the report should say once: the sandbox's restrictions not applied, the output not kept."""
        notes = self._loaded.notes if self._loaded is not None else ()
        return tuple(notes) + tuple(n for n in [self.output.note()] if n)

    # -- lifecycle
    def loaded(self) -> Loaded:
        """Start the worker if none is running and report what the import found.

        A worker stopped by a call's timeout is restarted; one whose import hung or crashed is not.
        """
        if self._proc is None and (self._loaded is None or self._loaded.error is None):
            self._start()
        return self._loaded

    def _stage(self) -> Path:
        """The private folder: the staged copy (root-only) and, per start, the student's scratch folder."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="normlab-grade-"))
            os.chmod(self._folder, 0o711)  # the student's user may enter its scratch folder, nothing else here
            staged = self._folder / "submission"
            staged.mkdir(mode=0o700)
            self.submission.stage(staged)
        return self._folder

    def _start(self) -> None:
        folder = self._stage()
        replies, reply_end = os.pipe()
        config = {"reply_fd": reply_end, "staged": str(folder / "submission"),
                  "scratch": str(folder / f"work-{self.starts}"), "hide": self.hide, "limits": self.limits._asdict(),
                  "reveal": self.reveal}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", BOOT, str(Path(__file__).resolve().parent), json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(reply_end,),
                start_new_session=True, env=environment(), cwd=folder)
        finally:
            os.close(reply_end)
        self._replies = replies
        self._output_fd = os.dup(self._proc.stdout.fileno())
        self._proc.stdout.close()
        os.set_blocking(self._output_fd, False)
        self.starts += 1
        ready = self._exchange({"op": "ready"}, self.startup)
        if ready.outcome != "ok":
            self._loaded = Loaded(defined_names(self.submission.source, self.names),
                                  f"the worker did not start: {ready.error}")
            return
        reply = self._exchange({"op": "load", "module": str(self.submission.module), "names": self.names},
                               self.timeout)
        notes = ready.value["notes"]
        if reply.outcome == "ok" and reply.value["error"] is None:
            self._loaded = Loaded(reply.value["functions"], None, notes)
        else:  # the import raised, hung or killed the process: the functions are read from the source
            error = reply.value["error"] if reply.outcome == "ok" else reply.error
            self._loaded = Loaded(defined_names(self.submission.source, self.names), error, notes)

    def close(self) -> None:
        """End the worker (EOF, a moment to exit, then stopped) and remove the private folder."""
        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self._proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            self._stop()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _stop(self) -> int:
        """Stop the worker now: SIGTERM to its keeper, then SIGKILL to its process group. Returns its exit code."""
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        code = procs.end_session(proc)
        self._drain(everything=True)  # what is left in the pipe; its writers are gone
        if self._output_fd is not None:
            os.close(self._output_fd)
            self._output_fd = None
        try:
            proc.stdin.close()
        except OSError:
            pass
        os.close(self._replies)
        return code

    def _kill(self) -> str:
        """Stop the worker now; return how it ended and the end of its output, for the message."""
        code = self._stop()
        if code < 0:
            how = f"killed by {_SIGNALS.get(-code, signal.Signals(-code).name if -code in signal.valid_signals() else code)}"
        else:
            how = f"exit status {code}"
        tail = self.output.last(STDERR_TAIL_CHARS)
        return how + (f"; its last output: {tail}" if tail else "")

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
        if self._spent >= self.limits.total_seconds:
            return Reply("timeout", error=f"not called: the submission's calls have taken "
                                          f"{self.limits.total_seconds:g} s in all, as many as it is given")
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
        start = time.monotonic()
        deadline = start + timeout
        try:
            if request["op"] != "ready":  # "ready" is sent unasked, once the worker has started
                self._write(protocol.frame(request), deadline)
            body = self._read_exactly(protocol.body_size(self._read_exactly(HEADER.size, deadline)), deadline)
            answer = _checked(request, protocol.decode(body))
        except _Deadline:
            self._kill()
            return Reply("timeout", error=f"no answer within {timeout:g} s (the worker was stopped)")
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return Reply("died", error=f"the worker process exited ({self._kill()})")
        except ProtocolError as exc:
            return Reply("died", error=f"its reply was refused ({printable(str(exc))}); the worker was stopped "
                                       f"({self._kill()})")
        finally:
            self._spent += time.monotonic() - start
        if request["op"] in ("ready", "load"):
            return Reply("ok", value=answer)
        return answer

    def _write(self, data: bytes, deadline: float) -> None:
        fd = self._proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            self._wait(fd, deadline, write=True)
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        chunks, left = [], size
        while left:
            self._wait(self._replies, deadline, write=False)
            chunk = os.read(self._replies, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _drain(self, everything: bool = False) -> None:
        """Read what the student's processes printed: a bounded amount, or all there is (non-blocking)."""
        for _ in range(4096 if everything else 64):  # at most 256 MiB
            if self._output_fd is None:
                return
            try:
                chunk = os.read(self._output_fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:  # every writer has closed it
                os.close(self._output_fd)
                self._output_fd = None
                return
            self.output.feed(chunk)

    def _wait(self, fd: int, deadline: float, *, write: bool) -> None:
        """Block until fd is ready, draining the output meanwhile; _Deadline when the deadline passes first."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Deadline
            out = [] if self._output_fd is None else [self._output_fd]
            readable, writable, _ = select.select(out if write else out + [fd], [fd] if write else [], [], remaining)
            if out and out[0] in readable:
                self._drain()
            if (write and writable) or (not write and fd in readable):
                return
