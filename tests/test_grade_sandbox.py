"""normlab grade's sandbox: every attack of a hostile layers.py ends as a row, and the grader carries on.

Each file in tests/data/grade/attacks is graded from a copy in a temporary folder, with the test's
working directory and HOME elsewhere and a secret in the grader's environment. After each: nothing
was written outside the sandbox (the copy's folder, the working directory, HOME, the shared
temporary folders and every place the attacks name), the secret appears nowhere in the result,
and the file's honest layernorm_forward still passed.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import normlab
from normlab import grade
from normlab.grade import feedback, protocol, runner

ATTACKS = Path(__file__).parent / "data" / "grade" / "attacks"
SECRET = "NORMLAB_GRADE_TEST_SECRET"
ONLY = "batchnorm_forward,layernorm_forward"
MARK = "normlab-grade-attack"
#: Every folder an attack names (write_outside.py) or could reach for.
SHARED = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/root", "/", "/etc", os.path.dirname(os.__file__),
          os.path.dirname(np.__file__), os.path.dirname(normlab.__file__)]


@functools.lru_cache(maxsize=None)
def _sandbox_notes() -> tuple[str, ...]:
    result = grade.grade(ATTACKS / "_honest.py", only="layernorm_forward", timeout=5)
    return result.notes


#: New network, PID, mount and IPC namespaces, asked of the kernel by a process of its own.
_PROBE = ("import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
          "sys.exit(1 if libc.unshare(0x40000000 | 0x20000000 | 0x00020000 | 0x08000000) else 0)")


@functools.lru_cache(maxsize=None)
def _os_allows_the_whole_sandbox() -> bool:
    """Root, and the kernel makes the namespaces: asked without the sandbox's code, so that a bug of
    its that leaves a restriction out fails these tests instead of skipping them."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    return subprocess.run([sys.executable, "-c", _PROBE], timeout=30).returncode == 0


@pytest.fixture
def attack(tmp_path, monkeypatch):
    """Grade one attack file as described above; returns (its batchnorm_forward row, the result)."""
    notes = _sandbox_notes()
    if notes:
        if _os_allows_the_whole_sandbox():
            pytest.fail(f"the OS allows the whole sandbox, yet the grader says: {'; '.join(notes)}")
        pytest.skip(f"the sandbox cannot be applied in full here: {'; '.join(notes)}")

    def run(name: str, timeout: float = 10.0, extra: dict[str, str] | None = None):
        submission, cwd, home = (tmp_path / d for d in ("submission", "cwd", "home"))
        for folder in (submission, cwd, home):
            folder.mkdir()
        for file in (name, "_honest.py"):
            shutil.copy(ATTACKS / file, submission / file)
        for file, text in (extra or {}).items():
            (submission / file).write_text(text)
        monkeypatch.chdir(cwd)
        monkeypatch.setenv("HOME", str(home))
        secret = secrets.token_hex(16)
        monkeypatch.setenv(SECRET, secret)
        before = _snapshot(submission, cwd, home)
        result = grade.grade(submission / name, only=ONLY, timeout=timeout)
        assert _snapshot(submission, cwd, home) == before
        assert [str(p) for d in SHARED if os.path.isdir(d) for p in Path(d).glob(f"{MARK}*")] == []
        assert secret not in json.dumps(grade.report.to_json(result))
        by_name = {row.function: row for row in result.rows}
        # every row's message: a worker that did not load in time shows here as "missing"/"error"
        assert by_name["layernorm_forward"].status == "pass", [(r.function, r.message) for r in result.rows]
        return by_name["batchnorm_forward"], result

    return run


def _snapshot(*folders: Path) -> list:
    """Every entry under the folders with its size and modification time."""
    return [(str(p), p.lstat().st_size, p.lstat().st_mtime_ns) for folder in folders
            for p in sorted(folder.rglob("*"))] + [(str(f), f.stat().st_mtime_ns) for f in folders]


def _processes_of(uid: int) -> list[int]:
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if int(re.search(r"^Uid:\s+(\d+)", text, re.M).group(1)) == uid and "State:\tZ" not in text:
            pids.append(int(status.parent.name))
    return pids


# ----------------------------------------------------------------------------- the attacks

def test_memory_bomb_hits_the_memory_limit(attack):
    row, _ = attack("memory_bomb.py")
    assert row.status == "error"
    assert "memory limit 2 GiB: MemoryError" in row.message


def test_fork_loop_hits_the_process_limit_and_its_children_go(attack):
    row, _ = attack("fork_loop.py")
    assert row.status == "error"
    assert "process limit 32: BlockingIOError" in row.message
    uid = int(re.search(r"as uid (\d+)", row.message).group(1))
    assert uid != os.getuid()
    deadline = time.monotonic() + 5
    while _processes_of(uid) and time.monotonic() < deadline:  # children that left its session too
        time.sleep(0.05)
    assert _processes_of(uid) == []


def test_writes_outside_land_in_its_own_tmp(attack):
    row, _ = attack("write_outside.py")
    written = re.search(r"wrote into (\[.*?\])", row.message).group(1)
    # /tmp (also its HOME and working directory) and its aliases are its private tmpfs; nothing else
    assert set(json.loads(written.replace("'", '"'))) == {"/tmp", "/var/tmp", "/dev/shm", "/run/lock"} & {
        d for d in SHARED if os.path.isdir(d)}


def test_grader_s_environment_is_not_readable(attack):
    row, _ = attack("read_env.py")
    assert "RuntimeError: found nothing secret" in row.message  # the exception's text, not its line


def test_loopback_server_is_not_reachable(attack):
    accepted = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.1)
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                try:
                    connection, _ = server.accept()
                except OSError:
                    continue
                with connection:
                    connection.settimeout(1)
                    accepted.append(connection.recv(100))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        port = server.getsockname()[1]
        try:
            row, _ = attack("connect_loopback.py", extra={"_loopback_port.py": f"PORT = {port}\n"})
            with socket.create_connection(("127.0.0.1", port), timeout=2) as probe:  # reachable from here
                probe.sendall(b"the test")
            deadline = time.monotonic() + 5
            while len(accepted) < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            stop.set()
            thread.join(timeout=5)
    assert accepted == [b"the test"]
    assert "no network: OSError: [Errno 101]" in row.message


def test_forged_reply_is_refused_and_runs_nothing(attack):
    row, _ = attack("forge_reply.py")
    assert row.status == "error"
    assert "its reply was refused (a frame cut short)" in row.message  # a pickle is not a frame
    assert not Path("/tmp/normlab-grade-attack-forged").exists()


def test_printing_100_mb_is_capped(attack):
    row, result = attack("print_flood.py")
    assert row.status == "fail"  # it returns x: graded as usual
    assert any(note.startswith("the student's code printed 100.0 MiB; the first and last 32 KiB were kept")
               for note in result.notes), result.notes


def test_sleeping_forever_times_out(attack):
    row, _ = attack("sleep_forever.py", timeout=1.0)
    assert (row.status, row.diagnosis) == ("error", ("timeout",))


def test_killing_its_parent_kills_only_itself(attack):
    row, _ = attack("kill_parent.py")
    assert row.status == "error"
    # its parent is outside its PID namespace (pid 0 there), and pid 1 of a namespace ignores its own SIGKILL
    assert "RuntimeError: killed its parent 0 and lived on" in row.message


def test_killing_everyone_it_may_reaches_no_other_student(attack):
    layer = grade.cases.NORMS[1]
    args, names = grade.cases.forward_arguments(layer, grade.cases.cases("layer")[0], {})
    with runner.Worker(ATTACKS / "_honest.py", grade.FUNCTIONS, timeout=5) as other:  # another student's
        assert other.call("layernorm_forward", args, names, arity=2, reply="none").outcome == "ok"
        row, _ = attack("kill_everyone.py")
        assert "RuntimeError: kill -1: No such process" in row.message  # alone in its PID namespace
        assert other.call("layernorm_forward", args, names, arity=2, reply="none").outcome == "ok"
        assert other.starts == 1


def test_patching_numpy_in_the_worker_leaves_the_grader_s_comparisons_alone(attack):
    row, _ = attack("patch_numpy.py", timeout=30.0)  # its import is NumPy's and then some: room under load
    assert row.status == "fail" and row.max_rel_error > 1
    assert "mutates-input" not in row.diagnosis  # watched in the worker: faked, as docs/grade.md says


def test_escape_sequences_are_written_out_not_sent(attack):
    row, result = attack("escape_sequences.py")
    assert row.status == "error" and "\\x1b[2J\\x1b[H\\x1b]0;graded: all pass\\x07\\u202esdrawkcab" in row.message
    screen = io.StringIO()
    grade.print_report(result, Console(file=screen, width=200))
    for text in (screen.getvalue(), feedback.markdown(result, "ana"), json.dumps(grade.report.to_json(result))):
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e]", text)


def test_its_staged_copy_outside_tmp_is_not_its_own(attack, monkeypatch):
    """With the grader's temporary folder outside /tmp, the copy the worker starts from is on the grader's
    disk, past the tmpfs's bound: it must stay root's."""
    home = Path.home()  # the real one: the fixture moves HOME only when the attack runs
    parent = next(p for p in (Path("/run"), Path("/var/cache"), home) if p.is_dir() and os.access(p, os.W_OK))
    outside = Path(tempfile.mkdtemp(prefix="normlab-grade-test-", dir=parent))
    try:
        os.chmod(outside, 0o1777)  # as a shared temporary folder is
        monkeypatch.setattr(tempfile, "tempdir", str(outside))
        row, _ = attack("write_scratch.py")
    finally:
        shutil.rmtree(outside)
    assert "RuntimeError: wrote nothing" in row.message


def test_normlab_s_reference_is_neither_imported_nor_readable(attack):
    row, _ = attack("import_reference.py")
    assert "RuntimeError: found no reference" in row.message


@pytest.mark.skipif(not Path("/proc/self/oom_score_adj").exists(), reason="no out-of-memory killer to steer")
def test_the_student_s_process_is_the_first_the_out_of_memory_killer_takes(tmp_path):
    (tmp_path / "layers.py").write_text("def layernorm_forward(x, gamma, beta, ln_param):\n"
                                        "    raise RuntimeError('score ' + open('/proc/self/oom_score_adj').read())\n")
    row, = grade.grade(tmp_path / "layers.py", only="layernorm_forward", timeout=5).rows
    assert "RuntimeError: score 1000" in row.message


# ----------------------------------------------------------------------------- the protocol

def test_protocol_round_trips_data_and_handles():
    value = {"op": "call", "args": [np.arange(6.0).reshape(2, 3), runner.Handle("cache"), {"mode": "train"}],
             "n": 3, "f": float("nan"), "b": True, "s": "x", "none": None, "t": (1, 2.5)}
    back = protocol.decode(protocol.encode(value))
    assert back["args"][0].tolist() == [[0, 1, 2], [3, 4, 5]] and back["args"][1] == runner.Handle("cache")
    assert back["args"][2] == {"mode": "train"} and back["t"] == (1, 2.5) and np.isnan(back["f"])
    assert np.asfortranarray(np.eye(3)).flags.f_contiguous
    assert protocol.decode(protocol.encode([np.asfortranarray(np.arange(6.0).reshape(2, 3))]))[0][1, 0] == 3.0


def _npy(header: str, data: bytes = b"") -> bytes:
    head = f"{{'descr': {header}, }}".encode()
    head += b" " * (63 - len(head)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head + data


def _body(document: bytes, *blobs: bytes) -> bytes:
    return b"".join(protocol.HEADER.pack(len(part)) + part for part in (document, *blobs))


@pytest.mark.parametrize("body, why", [
    (_body(b'{"a":'), "not JSON"),
    (protocol.HEADER.pack(30) + b"x", "cut short"),
    (_body(b'{"$array": 0}'), "not data of the agreed form"),
    (_body(b'{"$object": "os.system"}'), "not data of the agreed form"),
    (_body(b'{"$array": 0}', _npy("'|O', 'fortran_order': False, 'shape': (1,)")), "not numeric"),
    (_body(b'{"$array": 0}', _npy("'<f8', 'fortran_order': False, 'shape': (10000000000,)", b"\0" * 16)),
     "elements"),
    (_body(b'{"$array": 0}', _npy("'<f8', 'fortran_order': False, 'shape': (3,)", b"\0" * 8)), "does not match"),
    (_body(b"cos\nsystem\n(S'touch /tmp/x'\ntR."), "not JSON"),
    (_body(b"[" * 100_000 + b"]" * 100_000), "not JSON"),
])
def test_protocol_refuses_what_is_not_data(body, why):
    with pytest.raises(protocol.ProtocolError, match=why):
        protocol.decode(body)


def test_protocol_refuses_random_bytes_with_its_own_error_only():
    rng = np.random.default_rng(0)
    for size in (0, 1, 8, 9, 64, 1000):
        for _ in range(20):
            with pytest.raises(protocol.ProtocolError):
                protocol.decode(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    with pytest.raises(protocol.ProtocolError, match="larger than"):
        protocol.body_size(protocol.HEADER.pack(1 << 60))


@pytest.mark.parametrize("answer, why", [
    ([1, 2], "expected dict"),
    ({"outcome": "ok", "seconds": 0.0, "value": (1, 2, 3)}, "not a duration"),
    ({"outcome": "ok", "seconds": 1e-3, "value": (1, 2)}, "a tuple of 3"),
    ({"outcome": "ok", "seconds": 1e-3, "value": (1, 2, 3), "dicts": {"x": {}}}, "dicts"),
    ({"outcome": "ok", "seconds": 1e-3, "value": (1, 2, 3), "mutated": (1,)}, "mutated"),
    ({"outcome": "pwned"}, "unknown outcome"),
])
def test_a_reply_of_the_wrong_form_is_refused(answer, why):
    request = {"op": "call", "reply": "all", "arity": 3, "send_back": ["bn_param"]}
    with pytest.raises(protocol.ProtocolError, match=why):
        runner._checked(request, answer)


def test_text_in_a_reply_is_made_printable():
    request = {"op": "call", "reply": "none", "arity": 2, "send_back": []}
    reply = runner._checked(request, {"outcome": "raised", "error": "\x1b]52;c;cm0gLXJmIH4=\x07 \u202eok",
                                      "mutated": ("x\x1b[8m",)})
    assert (reply.error, reply.mutated) == ("\\x1b]52;c;cm0gLXJmIH4=\\x07 \\u202eok", ("x\\x1b[8m",))
    load = runner._checked({"op": "load", "names": ("f",)}, {"functions": (), "error": "\x9b2J"})
    assert load["error"] == "\\x9b2J"
    assert protocol.printable("x̂ · γ − é\u00a0") == "x̂ · γ − é\u00a0"  # what is printable stays


def test_the_worker_sees_only_its_own_environment():
    env = grade.sandbox.environment()
    assert SECRET not in env and "HOME" not in env and env["OMP_NUM_THREADS"] == "1"
    assert sys.executable  # the worker's interpreter is this one
