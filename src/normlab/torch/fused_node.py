"""The native route's autograd node (``fused_node.cpp``), built on first use.

Inside a training step a Python ``autograd.Function`` costs more per call than
the kernels of a BatchNorm1d on (128, 512) (docs/benchmarks.md, "Whole training
steps"); this node does that per-call work in C++ and calls the same compiled
kernels, so results are bit for bit the core's route's. It is compiled once per
install with ``torch.utils.cpp_extension`` (a C++ compiler is needed, and
ninja, which the torch extra installs; about 25 s on 2 cores) into
``$NORMLAB_NATIVE_DIR`` or ``~/.cache/normlab``. Where it cannot be built, or
with ``NORMLAB_NATIVE=0``, :func:`load` returns None and CPU calls take the
core's route from Python (same results, more time per call).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from ..backends import plan_record

SOURCE = Path(__file__).with_name("fused_node.cpp")
HEADER = "normlab_plan_fields.h"  # generated from plan_record.FIELDS into the build directory


def _build_dir(name: str) -> Path:
    root = os.environ.get("NORMLAB_NATIVE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "normlab")
    for base in (Path(root), Path(tempfile.gettempdir()) / f"normlab-{os.getuid()}"):
        try:
            (base / name).mkdir(parents=True, exist_ok=True)
            return base / name
        except OSError:
            continue
    raise OSError(f"no writable directory for the native node (tried {root})")


def _write_if_changed(path: Path, text: str) -> None:
    """Write the generated header only when it differs: a new mtime alone would make ninja rebuild."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


@contextlib.contextmanager
def _ninja_on_path():
    """torch's builder runs ``ninja`` from PATH: where there is none, the one of the ``ninja`` package
    (the torch extra installs it), for the duration of the build (which holds the build lock: no other
    thread of normlab's changes PATH meanwhile)."""
    if shutil.which("ninja") is not None:
        yield
        return
    try:
        import ninja
    except ImportError:
        yield
        return
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + before
    try:
        yield
    finally:
        os.environ["PATH"] = before


_UNSET = object()
_loaded = _UNSET
_BUILD_LOCK = threading.Lock()


def load():
    """The node's module (``fused_norm``, ``Plan``), built or loaded on the first call; None where it cannot be
    (a warning says why). Thread-safe: one thread builds (and sets PATH for it), the others wait for it."""
    global _loaded
    if _loaded is _UNSET:
        with _BUILD_LOCK:
            if _loaded is _UNSET:
                _loaded = build()
    return _loaded


def build():
    """Build (or load the built) node now, whatever was loaded before; None where it cannot be. Callers hold
    the build lock (:func:`load`) or are alone (tests)."""
    if os.environ.get("NORMLAB_NATIVE", "1") == "0":
        return None
    source, header = SOURCE.read_bytes(), plan_record.c_header()
    # One build per source, plan record, torch and Python: each environment its own (torch's builder rebuilds
    # when the include paths in its build file change, so two environments sharing one directory would take
    # turns).
    tag = hashlib.sha256(source + f"{header}|{torch.__version__}|{torch.__file__}|{sys.version}".encode()
                         ).hexdigest()[:12]
    name = f"normlab_fused_node_{tag}"
    try:
        from torch.utils import cpp_extension

        build_dir = _build_dir(name)
        if not (build_dir / f"{name}.so").exists():
            print(f"normlab.torch: compiling the native autograd node into {build_dir} (once, ~25 s)",
                  file=sys.stderr, flush=True)
        _write_if_changed(build_dir / HEADER, header)
        with _ninja_on_path():
            module = cpp_extension.load(name=name, sources=[str(SOURCE)], build_directory=str(build_dir),
                                        extra_cflags=["-O2"], extra_include_paths=[str(build_dir)], verbose=False)
        from ..backends import numba_backend  # (the node calls no other kernels)

        module.set_launch_lock(numba_backend.launch_lock())
        return module
    except Exception as exc:  # no compiler, no ninja, a read-only disk: the core's route still works
        warnings.warn(f"normlab.torch: the native autograd node is unavailable ({type(exc).__name__}: {exc}); "
                      "CPU calls take the core's route from Python (same results, more time per call)",
                      RuntimeWarning, stacklevel=3)
        return None
