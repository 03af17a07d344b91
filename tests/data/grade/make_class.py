"""Write tests/data/grade/class: a course's submissions folder, one entry per student, made from the files here.

    python tests/data/grade/make_class.py      # again whenever a variant is added

Every variant ``*.py`` of this folder becomes a student (the reference ``layers.py`` three times: as the
course's zip, as a folder holding a2/cs231n/, as a plain .py), and so do a few attack files. A student
hands in the whole assignment: each variant's module starts with ``from layers import *`` (the
reference's functions), so its own definitions are its slips and the rest passes, as in a real class
(but for the variants that are about what is missing or unimportable). The forms are those a collect
script produces:

- a folder holding ``cs231n/`` (a package: imports become relative) or a plain ``layers.py``,
- a ``.zip`` holding ``cs231n/``, with the ``__MACOSX`` litter a Mac adds,
- a lone ``.py`` for the files that import nothing of the course's;

plus entries that cannot be read: a zip with a ``..`` path, a zip bomb, a corrupt zip, a folder without a
``layers.py``, one with two, and a stray text file. A variant's ``from layers import`` becomes an import of
``reference_layers`` (the reference under that name); ``course_batchnorm`` keeps its name. Zips are
written with fixed dates, so running this again changes nothing unless the sources changed.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLASS = HERE / "class"
#: Files of this folder that are not a student's: helpers the variants import, and this script.
HELPERS = {"layers.py": "reference_layers", "course_batchnorm.py": "course_batchnorm", "_honest.py": None}
SKIP = {"make_class.py"}
ATTACKS = ("write_outside.py", "read_env.py", "kill_parent.py")
#: Variants handed in as they are: what they leave out or cannot import is their point.
AS_IS = {"partial", "unrelated", "import_error", "import_hangs"}
COMPLETE = "from layers import *  # noqa: F401,F403 - the rest of the assignment, done right\n"
#: After a course_batchnorm forward, whose cache the reference's backwards cannot read: handed in without them.
NO_BACKWARD = "\ndel batchnorm_backward, batchnorm_backward_alt  # noqa: F821 - they read another cache\n"
IMPORT = re.compile(r"^from (layers|course_batchnorm|_honest) import", re.M)
DATE = (2024, 1, 1, 0, 0, 0)


def _rewrite(source: str, relative: bool) -> str:
    """Point the helper imports at their names in the submission ('.' in a package)."""
    def replace(match):
        name = HELPERS.get(f"{match.group(1)}.py") or "reference_layers"
        return f"from {'.' if relative else ''}{name} import"
    return IMPORT.sub(replace, source)


def _files(source: str, package: bool) -> dict[str, str]:
    """The student's files: layers.py and the helpers it imports (the reference, the course's batch norm)."""
    files = {"layers.py": _rewrite(source, package)}
    used = set(IMPORT.findall(source))
    if used & {"layers", "_honest"}:
        files["reference_layers.py"] = (HERE / "layers.py").read_text()
    if "course_batchnorm" in used:
        files["course_batchnorm.py"] = (HERE / "course_batchnorm.py").read_text()
    if package:
        files = {f"cs231n/{name}": text for name, text in files.items()}
        files["cs231n/__init__.py"] = ""
    return files


def _complete(source: str) -> str:
    """The variant as a whole assignment: the reference's functions, then the variant's own."""
    text = COMPLETE + source
    return text + NO_BACKWARD if "from course_batchnorm import" in source else text


def _write_folder(entry: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = entry / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _write_zip(entry: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(entry, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, DATE), data, zipfile.ZIP_DEFLATED)


def _student(name: str, source: str, form: str) -> None:
    if form == "py":
        (CLASS / f"{name}.py").write_text(source)
    elif form == "zip":
        files = {n: t.encode() for n, t in _files(source, package=True).items()}
        files["__MACOSX/cs231n/._layers.py"] = b"\0\5\26\7 Mac OS X metadata"
        _write_zip(CLASS / f"{name}.zip", files)
    elif form == "package":
        _write_folder(CLASS / name / "assignment2", _files(source, package=True))
    else:
        _write_folder(CLASS / name, _files(source, package=False))


def _unreadable() -> None:
    reference = (HERE / "layers.py").read_bytes()
    _write_zip(CLASS / "traversal.zip", {"cs231n/layers.py": reference, "cs231n/../../escaped.py": b"x = 1\n"})
    _write_zip(CLASS / "zip_bomb.zip", {"cs231n/layers.py": reference + b"#" * (50 << 20)})
    (CLASS / "corrupt.zip").write_bytes(b"PK\3\4 this is not really a zip archive" * 8)
    _write_folder(CLASS / "no_layers", {"cs231n/solver.py": "def train():\n    pass\n"})
    _write_folder(CLASS / "two_layers", {"a/layers.py": reference.decode(), "b/layers.py": reference.decode()})
    (CLASS / "notes.txt").write_text("collected on Friday\n")


def main() -> None:
    if CLASS.exists():
        shutil.rmtree(CLASS)
    CLASS.mkdir()
    reference = (HERE / "layers.py").read_text()
    _student("correct_zip", reference, "zip")
    _student("correct_folder", reference, "package")
    _student("correct_py", reference, "py")
    variants = sorted(p for p in HERE.glob("*.py") if p.name not in HELPERS and p.name not in SKIP)
    sources = [(p.stem, p.read_text() if p.stem in AS_IS else _complete(p.read_text())) for p in variants]
    sources += [(f"attack_{Path(a).stem}", _complete((HERE / "attacks" / a).read_text())) for a in ATTACKS]
    for i, (name, source) in enumerate(sources):
        form = "py" if not IMPORT.search(source) else ("package", "zip", "folder")[i % 3]
        _student(name, source, form)
    _unreadable()
    print(f"wrote {len(list(CLASS.iterdir()))} entries to {CLASS}")


if __name__ == "__main__":
    main()
