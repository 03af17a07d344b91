"""Gradescope: its results.json for one grade, and the autograder bundle that writes it.

results.json follows Gradescope's autograder specification
(gradescope-autograders.readthedocs.io/en/latest/specs): a top-level
``score``, ``output`` and ``output_format``, and one test per function with
``name``, ``score``, ``max_score``, ``status`` ("passed"/"failed"),
``output`` (Markdown: the finding, what its code means and the fix) and
``output_format`` "md".

``bundle(OUT.zip)`` writes the zip Gradescope builds its image from:
``setup.sh`` (installs this very normlab, as a wheel made from the running
package, in a virtual environment), ``run_autograder`` (grades the
``layers.py`` under ``/autograder/submission`` and always writes
``/autograder/results/results.json``, even when Python or normlab fail) and
``grading.json`` (points, timeout, memory). ``NORMLAB_AUTOGRADER_ROOT``
stands for ``/autograder`` and ``NORMLAB_AUTOGRADER_PYTHON`` for the
environment's Python, to run the bundle locally.

``python -m normlab.grade.gradescope ROOT`` is what run_autograder calls.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path

from . import feedback
from . import points as points_mod
from .report import Result
from .sandbox import Limits
from .submission import SubmissionError, from_folder, from_zip

#: Members of the bundle and of the wheel get this date: the same normlab gives the same bytes.
_DATE = (2024, 1, 1, 0, 0, 0)


# ----------------------------------------------------------------------------- results.json

def results(result: Result | None, points: dict[str, float], reason: str = "") -> dict:
    """Gradescope's results for ``result`` (None: not graded, ``reason`` says why; every test fails)."""
    rows = {row.function: row for row in result.rows} if result is not None else {}
    scored = points_mod.award(list(rows.values()), points)
    tests = []
    for function, max_score in points.items():
        row = rows.get(function)
        if row is None:
            output = feedback.escape(f"not graded: {reason}" if result is None else "not defined")
            passed = False
        else:
            output, passed = feedback.function_text(row), row.status == "pass"
        tests.append({"name": function, "score": scored[function], "max_score": max_score,
                      "status": "passed" if passed else "failed", "output": output, "output_format": "md"})
    if result is None:
        output = f"**Not graded:** {feedback.escape(reason)}"
    else:
        output = feedback.table(result, points, scored)
        if result.notes:
            output += "\n\n" + "\n".join(f"- {feedback.escape(n)}" for n in result.notes)
    return {"score": sum(scored.values()), "output": output, "output_format": "md", "tests": tests}


def write_results(path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- run_autograder's side

def find_submission(folder: Path):
    """The submission under Gradescope's submission folder: its (cs231n/)layers.py, or one .zip holding it."""
    try:
        return from_folder(folder, "submission")
    except SubmissionError as exc:
        zips = sorted(folder.glob("*.zip"))
        if len(zips) != 1:
            raise exc
        return from_zip(zips[0], "submission")


def run(root: Path) -> int:
    """Grade ``root``/submission with ``root``/source/grading.json; always write ``root``/results/results.json."""
    from . import grade_submission

    out = root / "results" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    points = points_mod.equal()
    try:
        config = json.loads((root / "source" / "grading.json").read_text(encoding="utf-8"))
        points = {f: float(p) for f, p in config["points"].items()}
        submission = find_submission(root / "submission")
        start = time.monotonic()
        result = grade_submission(submission, only=",".join(points), timeout=config["timeout"],
                                  limits=Limits(memory=config["memory"]), hide=(root / "source",),
                                  label="your submission", gn_gamma_shape=config.get("gn_gamma_shape"))
        data = results(result, points)
        data["execution_time"] = round(time.monotonic() - start, 1)
    except SubmissionError as exc:
        data = results(None, points, f"{exc} (upload layers.py, or a zip holding cs231n/layers.py)")
    except Exception as exc:  # noqa: BLE001 - results.json is written whatever happened
        data = results(None, points, f"the autograder failed: {type(exc).__name__}: {exc}")
    write_results(out, data)
    print(json.dumps({"score": data["score"], "tests": [(t["name"], t["status"]) for t in data["tests"]]}))
    return 0


# ----------------------------------------------------------------------------- the bundle

def _wheel_name() -> str:
    from .. import __version__

    return f"normlab-{__version__}-py3-none-any.whl"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_bytes() -> bytes:
    """A wheel of the running normlab: its package files and its installed metadata (METADATA, entry points)."""
    import importlib.metadata
    import io

    from .. import __version__

    package = Path(__file__).resolve().parents[1]
    dist_info = f"normlab-{__version__}.dist-info"
    members = []
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".so"):
            members.append((f"normlab/{path.relative_to(package).as_posix()}", path.read_bytes()))
    distribution = importlib.metadata.distribution("normlab")
    members.append((f"{dist_info}/METADATA", (distribution.read_text("METADATA") or "").encode()))
    entry_points = distribution.read_text("entry_points.txt")
    if entry_points:
        members.append((f"{dist_info}/entry_points.txt", entry_points.encode()))
    members.append((f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: normlab\nRoot-Is-Purelib: true\n"
                                          b"Tag: py3-none-any\n"))
    record = "\n".join([_record_line(name, data) for name, data in members] + [f"{dist_info}/RECORD,,"]) + "\n"
    members.append((f"{dist_info}/RECORD", record.encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in members:
            wheel.writestr(zipfile.ZipInfo(name, _DATE), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, to build the autograder's image: it installs normlab {version}
# (the wheel next to this script) in a virtual environment for run_autograder.
set -euo pipefail
ROOT="${{NORMLAB_AUTOGRADER_ROOT:-/autograder}}"
SOURCE="$(cd "$(dirname "$0")" && pwd)"
if ! python3 -m venv --help >/dev/null 2>&1; then
    apt-get update && apt-get install -y python3 python3-venv python3-pip
fi
python3 -m venv "$ROOT/normlab-venv"
"$ROOT/normlab-venv/bin/python" -m pip install --upgrade pip
"$ROOT/normlab-venv/bin/python" -m pip install "$SOURCE/{wheel}"
"$ROOT/normlab-venv/bin/python" -c "import normlab.grade; print('normlab', normlab.__version__, 'installed')"
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission: normlab grades the layers.py under submission/ in its
# sandbox and writes results/results.json. Whatever fails, a results.json is written.
ROOT="${NORMLAB_AUTOGRADER_ROOT:-/autograder}"
PYTHON="${NORMLAB_AUTOGRADER_PYTHON:-$ROOT/normlab-venv/bin/python}"
RESULTS="$ROOT/results/results.json"
mkdir -p "$ROOT/results"
rm -f "$RESULTS"
"$PYTHON" -m normlab.grade.gradescope "$ROOT"
status=$?
if [ ! -s "$RESULTS" ]; then
    cat > "$RESULTS" <<EOF
{"score": 0, "output": "The autograder could not run (exit status $status); please tell the course staff.", "output_format": "md", "tests": []}
EOF
fi
exit 0
"""


def bundle(path, *, points: dict[str, float], timeout: float, memory: int, gn_gamma_shape: str | None = None) -> Path:
    """Write the autograder zip to ``path``: setup.sh, run_autograder, grading.json and normlab's wheel."""
    from .. import __version__

    path = Path(path)
    wheel = _wheel_name()
    grading = {"points": points, "timeout": timeout, "memory": memory, "gn_gamma_shape": gn_gamma_shape,
               "normlab": __version__}
    members = [("setup.sh", SETUP_SH.format(version=__version__, wheel=wheel).encode(), 0o755),
               ("run_autograder", RUN_AUTOGRADER.encode(), 0o755),
               ("grading.json", (json.dumps(grading, indent=1) + "\n").encode(), 0o644),
               (wheel, wheel_bytes(), 0o644)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, _DATE)
            info.external_attr = (0o100000 | mode) << 16  # a regular file with its permissions
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m normlab.grade.gradescope AUTOGRADER_ROOT", file=sys.stderr)
        return 2
    return run(Path(argv[0]))


if __name__ == "__main__":  # pragma: no cover - run_autograder's entry
    os.umask(0o022)
    sys.exit(main())
