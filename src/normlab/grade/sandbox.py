"""The fence around a student's process: namespaces, a private directory, another user, limits.

Runs inside the worker process before the student's module is imported
(``worker.main`` calls :func:`enter`). The process started by the grader (the
*keeper*) stays outside: it tries to enter new network, PID, mount and IPC
namespaces, forks the process that will run the student's code, and then only
waits for it (and kills it when the grader sends SIGTERM). The forked
process, first in its new PID namespace, then

- mounts its own ``/proc``, an empty tmpfs of ``Limits.disk`` bytes on ``/tmp``
  (also seen as ``/var/tmp``, ``/dev/shm`` and ``/run/lock``), and empty
  read-only folders over the paths the grader asks to hide (the class folder,
  the output folder, the grader's working directory);
- copies the staged submission into its working directory (``/tmp``, or a
  fresh folder when there is no mount namespace);
- sets resource limits (address space, CPU seconds, processes, file size,
  open files, no core files), and makes itself the first the kernel's
  out-of-memory killer takes (a container with less memory than ``--memory``);
- drops to a user and group of its own (a random unused uid, so students'
  processes cannot count against, signal or write for each other), with no
  supplementary groups and ``no_new_privs``, so setuid programs give nothing back.

Each restriction the OS does not allow is skipped and named in the notes that
go back to the grader, which prints them once. Linux-only pieces (namespaces,
mounts, prctl) go through libc with ctypes; elsewhere they are notes too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import re
import resource
import shutil
import signal
import site
import stat
import sys
from pathlib import Path
from typing import NamedTuple

# <linux/sched.h>, <sys/mount.h>, <linux/prctl.h>
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
MS_REMOUNT = 32
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
#: Student uids are drawn from here: above systemd's container range, below 2**31, where no account lives.
UID_RANGE = (0x70000000, 0x71000000)
NOBODY = 65534
#: Where the private tmpfs is also mounted, so the world-writable places of the machine are the student's own.
SHARED_TMP = ("/var/tmp", "/dev/shm", "/run/lock")
WORKDIR = "/tmp"


class Limits(NamedTuple):
    """What one worker may use. Sizes in bytes."""

    memory: int = 2 << 30        # address space (RLIMIT_AS)
    cpu_seconds: int = 600       # CPU time of each process (RLIMIT_CPU); calls have their own wall-clock timeout
    processes: int = 32          # processes and threads of the student's user (RLIMIT_NPROC)
    file_size: int = 16 << 20    # largest file it can write (RLIMIT_FSIZE)
    open_files: int = 64         # open descriptors (RLIMIT_NOFILE)
    disk: int = 64 << 20         # the private /tmp
    output: int = 64 << 10       # stdout/stderr kept by the grader (the rest is counted, not kept)
    total_seconds: float = 300.0  # wall-clock time of all of a submission's calls, restarts included (the
                                  # grader's own bound: each call also has its timeout)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'2G', '2GiB', '512M', '1.5g', '1073741824' -> bytes (units are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 2G, 512M)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_size(size: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size:.0f} B"


def environment(threads: int = 1) -> dict[str, str]:
    """The worker's whole environment: what Python and NumPy need, thread counts pinned; nothing inherited."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "USER": "student", "LOGNAME": "student", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                 "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS"):
        env[name] = str(threads)
    return env


def python_paths() -> list[Path]:
    """The folders this Python, its standard library, site-packages, NumPy and normlab are read from."""
    import numpy

    paths = [sys.prefix, sys.base_prefix, os.path.dirname(os.__file__), *site.getsitepackages(),
             os.path.dirname(os.path.dirname(numpy.__file__)), Path(__file__).resolve().parents[2]]
    return sorted({Path(p).resolve() for p in paths if os.path.isdir(p)})


def _blocked_ancestor(path: Path, uid: int | None = None) -> Path | None:
    """The first folder on the way to ``path`` that another user (``uid``, if given) cannot enter, or
    ``path`` if they cannot list it. A folder ``uid`` owns (the private /tmp) is entered by its owner bits."""
    for folder in [*reversed(path.parents), path]:
        info = os.stat(folder)
        own = uid is not None and info.st_uid == uid
        enter, read = (stat.S_IXUSR, stat.S_IRUSR) if own else (stat.S_IXOTH, stat.S_IROTH)
        if not info.st_mode & enter or (folder == path and not info.st_mode & read):
            return folder
    return None


def unreadable_python_paths(uid: int | None = None) -> list[str]:
    """The python_paths another user (``uid``, if given) could not read (e.g. a Python installed under /root)."""
    return [str(p) for p in python_paths() if _blocked_ancestor(p, uid) is not None]


# ----------------------------------------------------------------------------- libc

def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _call(name: str, *args) -> None:
    """libc's ``name(*args)``; OSError with errno on failure, or when the function does not exist here."""
    function = getattr(_libc(), name, None)
    if function is None:
        raise OSError(f"{name} is not available on this system")
    if function(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = (lambda s: None if s is None else s.encode())
    _call("mount", encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data))


def _prctl(option: int, value: int) -> None:
    _call("prctl", option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _unshare(flags: int) -> None:
    _call("unshare", flags)


# ----------------------------------------------------------------------------- the keeper

_NAMESPACES = (("net", CLONE_NEWNET), ("pid", CLONE_NEWPID), ("mount", CLONE_NEWNS), ("ipc", CLONE_NEWIPC))


def _enter_namespaces(root: bool) -> tuple[set[str], str | None]:
    """New namespaces for the student's process: all at once, else each alone. Returns (entered, why not all)."""
    if not root:  # an unprivileged user namespace gives network and PID namespaces, not mounts as another user
        try:
            _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC)
            return {"user", "net", "pid", "ipc"}, "not root"
        except OSError as exc:
            return set(), f"not root, and no unprivileged user namespace ({exc})"
    try:
        _unshare(sum(flag for _, flag in _NAMESPACES))
        return {name for name, _ in _NAMESPACES}, None
    except OSError as exc:
        reason = str(exc)
    entered = set()
    for name, flag in _NAMESPACES:
        try:
            _unshare(flag)
            entered.add(name)
        except OSError:
            pass
    return entered, reason


def _mapped(uid: int) -> bool:
    """Whether this user namespace can hold ``uid`` (a container may map only a few thousand uids)."""
    try:
        lines = Path("/proc/self/uid_map").read_text().split("\n")
    except OSError:
        return True  # no user namespaces here: every uid is real
    ranges = [tuple(map(int, line.split())) for line in lines if line.strip()]
    return any(inside <= uid < inside + count for inside, _, count in ranges)


def _student_uid() -> int | None:
    """A random unused uid from UID_RANGE, else nobody's, whichever this namespace can hold; None if neither."""
    for uid in (random.SystemRandom().randrange(*UID_RANGE), NOBODY):
        if _mapped(uid):
            return uid
    return None


def _keep(child: int) -> None:
    """The keeper: wait for the student's process, kill it on SIGTERM, exit as it exited.

    The child is reaped only with SIGTERM blocked: the handler never signals a pid that could be reused.
    """
    def stop(*_):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    try:
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
    except ChildProcessError:
        os._exit(1)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)  # so the grader sees the same signal
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))


def enter(config: dict, protocol_files) -> tuple[Path, list[str]]:
    """Fence this process in; returns (working directory, notes on what could not be applied).

    Returns in the forked student's process only: the keeper never returns.
    protocol_files: the request and reply files, closed in the keeper.
    """
    root = os.geteuid() == 0
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # until the keeper knows its child
    for step in (lambda: _prctl(PR_SET_PDEATHSIG, signal.SIGKILL),  # the keeper goes when the grader goes
                 lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0))):
        try:
            step()
        except (OSError, ValueError):
            pass
    uid = _student_uid() if root else None
    # Copied before the namespaces: in a user namespace without a uid map no file can be created. It stays
    # root's: the student gets it only when there is no private /tmp to copy it into (_private_files).
    scratch = Path(config["scratch"])
    scratch.mkdir(mode=0o700)
    _copy_staged(Path(config["staged"]), scratch)
    namespaces, reason = _enter_namespaces(root)
    notes = []
    if "net" not in namespaces:
        notes.append(f"network not blocked: no new network namespace ({reason})")
    if "pid" not in namespaces:
        notes.append(f"processes the student's code starts are not fenced in a PID namespace ({reason})")
    child = os.fork()
    if child:
        for file in protocol_files:
            file.close()
        _keep(child)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    limits = Limits(**config["limits"])
    workdir, more = _private_files(scratch, config["hide"], config["reveal"], namespaces, uid, limits)
    notes += more
    if not root:
        notes.append("not run as another user: the grader is not root, so the student's code runs as your user "
                     "and can read and write what you can")
    elif uid is None:
        notes.append("not run as another user: no uid but root's is mapped in this user namespace")
    elif unreadable := unreadable_python_paths(uid):
        notes.append(f"not run as another user: it could not read Python ({unreadable[0]}); "
                     "install Python where every user can read it")
        uid = None
    notes += _set_limits(limits, root)
    notes += _drop(uid)
    os.environ.update(HOME=str(workdir), TMPDIR=str(workdir), NUMBA_CACHE_DIR=str(workdir),
                      MPLCONFIGDIR=str(workdir))
    return workdir, notes


# ----------------------------------------------------------------------------- the student's process

def _copy_staged(staged: Path, destination: Path) -> None:
    """The staged submission (regular files and folders only) into ``destination``."""
    for folder, dirs, files in os.walk(staged):
        relative = Path(os.path.relpath(folder, staged))
        for name in dirs:
            (destination / relative / name).mkdir(mode=0o700)
        for name in files:
            shutil.copyfile(Path(folder, name), destination / relative / name, follow_symlinks=False)


def _give(destination: Path, uid: int | None) -> None:
    """``destination`` and everything in it to ``uid`` (None: left as it is)."""
    if uid is None:
        return
    for folder, dirs, files in os.walk(destination):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, uid, uid, follow_symlinks=False)


def _outermost(paths: list[Path]) -> list[Path]:
    """The paths not inside another of them."""
    return [p for p in paths if not any(q in p.parents for q in paths)]


def _reveal(paths) -> None:
    """Make ``paths`` readable by the student's user where a folder on their way is not (e.g. /root): an
    empty tmpfs over that folder, holding only the way to each path and the path itself, bound from the
    original (which also hides the rest of that folder)."""
    covers: dict[Path, list[tuple[Path, int]]] = {}
    for path in _outermost([Path(p) for p in paths]):
        blocked = _blocked_ancestor(path)
        if blocked is not None and blocked != path:
            covers.setdefault(blocked, []).append((path, os.open(path, os.O_PATH | os.O_DIRECTORY)))
    for blocked, inside in covers.items():
        _mount("tmpfs", str(blocked), "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=0755")
        for path, fd in inside:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", str(path), None, MS_BIND | MS_REC)
            os.close(fd)


def _private_mounts(scratch: Path, hide, reveal, pid_namespace: bool, uid: int | None, limits: Limits) -> Path:
    """/proc, /tmp and its aliases, the hidden paths; the submission copied into /tmp. Needs a mount namespace."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here may reach the machine's mounts
    if pid_namespace:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(scratch)  # kept open: the paths below may cover it
    _reveal(reveal)
    for path in hide:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
    # Python installed under /tmp (a clone's venv) would vanish under the student's /tmp: kept, read-only
    tmp = [Path(t).resolve() for t in (WORKDIR, *SHARED_TMP) if os.path.isdir(t)]
    covered = _outermost([p for p in python_paths() if any(t in p.parents for t in tmp)])
    kept = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in covered]
    owner = "" if uid is None else f",uid={uid},gid={uid}"
    _mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={limits.disk},mode=0700{owner}")
    for path in SHARED_TMP:
        if os.path.isdir(path) and not os.path.islink(path):
            _mount(WORKDIR, path, None, MS_BIND)
    _copy_staged(Path("."), Path(WORKDIR))
    _give(Path(WORKDIR), uid)
    for path, fd in kept:  # after _give: the student's user is given none of it
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", str(path), None, MS_BIND | MS_REC)
        _mount(None, str(path), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    return Path(WORKDIR)


def _private_files(scratch: Path, hide, reveal, namespaces, uid, limits: Limits) -> tuple[Path, list[str]]:
    """The working directory: /tmp of a private tmpfs, else the scratch copy (with a note saying so).

    Only the working directory becomes the student's: the scratch copy, outside the tmpfs when the
    grader's temporary folder is not /tmp, stays root's, so the student cannot fill that disk.
    """
    if "mount" in namespaces:
        try:
            workdir = _private_mounts(scratch, hide, reveal, "pid" in namespaces, uid, limits)
            os.chdir(workdir)
            return workdir, []
        except OSError as exc:
            note = f"no private /tmp, nothing hidden: mounting failed ({exc})"
    else:
        note = "no private /tmp, nothing hidden: no mount namespace"
    _give(scratch, uid)
    os.chdir(scratch)
    return scratch, [note]


def _set_limits(limits: Limits, root: bool) -> list[str]:
    wanted = [(resource.RLIMIT_AS, limits.memory, "memory"), (resource.RLIMIT_CPU, limits.cpu_seconds, "CPU time"),
              (resource.RLIMIT_FSIZE, limits.file_size, "file size"),
              (resource.RLIMIT_NOFILE, limits.open_files, "open files"), (resource.RLIMIT_CORE, 0, "core files")]
    notes = []
    if root:  # counted per user: as the grader's own user it would count the grader's processes too
        wanted.append((resource.RLIMIT_NPROC, limits.processes, "processes"))
    else:
        notes.append("processes not limited (the student's code runs as your user)")
    for which, value, what in wanted:
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        # CPU: SIGXCPU at the soft limit, SIGKILL at the hard one
        soft_hard = (value, value + 5) if which == resource.RLIMIT_CPU and hard == resource.RLIM_INFINITY else (value,) * 2
        try:
            resource.setrlimit(which, soft_hard)
        except (OSError, ValueError) as exc:
            notes.append(f"{what} not limited ({exc})")
    try:  # Linux; any process may raise its own score. Elsewhere there is no such killer to steer.
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    return notes


def _drop(uid: int | None) -> list[str]:
    """no_new_privs, then the student's user and group (None: stay, the caller has said why)."""
    notes = []
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        notes.append(f"setuid programs not disarmed (no_new_privs: {exc})")
    if uid is None:
        return notes
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    except OSError as exc:
        return notes + [f"not run as another user: changing user failed ({exc})"]
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # changing user cleared it
    except OSError:
        pass
    return notes
