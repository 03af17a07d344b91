"""A student's submission: the module to grade and the files it may import, read once, with limits.

The module is ``layers.py`` (or the file given); the files that go with it are
the ``.py`` files of its folder, or of its whole package when that folder has
an ``__init__.py`` (the course's ``cs231n/``, whose modules import each
other). A class entry is a folder, a ``.py`` file or a ``.zip`` archive as a
course's collect script makes it; inside it the grader looks for one
``cs231n/layers.py``, else one ``layers.py``.

Everything is read into memory here, under limits (files, bytes per file,
bytes in all, entries looked at), and symbolic links are never followed: the
grader may run as root, and a link in a student's folder must not copy a file
the student could not read. A zip archive with an unsafe member name (absolute,
``..``, a link) is refused whole, and a member that expands beyond the limits
is a zip bomb.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple

MAX_FILES = 200
MAX_FILE_BYTES = 2 << 20
MAX_TOTAL_BYTES = 16 << 20
#: Entries looked at while searching a folder or listed in an archive, and folder depth.
MAX_ENTRIES = 20_000
MAX_DEPTH = 8
MODULE = "layers.py"
COURSE_PACKAGE = "cs231n"


class SubmissionError(ValueError):
    """The submission cannot be read or has no module to grade; the message says why."""


class Submission(NamedTuple):
    """name: the student (a class entry's name). module: its path among ``files`` (relative, POSIX)."""

    name: str
    origin: Path
    module: PurePosixPath
    files: tuple[tuple[PurePosixPath, bytes], ...]

    def digest(self) -> str:
        """A hash of the module's path and every file's path and bytes."""
        h = hashlib.sha256(str(self.module).encode() + b"\0")
        for path, data in sorted(self.files):
            h.update(str(path).encode() + b"\0" + len(data).to_bytes(8, "big") + data)
        return h.hexdigest()

    @property
    def source(self) -> bytes:
        return dict(self.files)[self.module]

    def stage(self, folder: Path) -> Path:
        """Write the files under ``folder`` (which must exist); returns the module's path there."""
        for path, data in self.files:
            target = folder.joinpath(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return folder.joinpath(*self.module.parts)


# ----------------------------------------------------------------------------- which files

def _ignored(path: PurePosixPath) -> bool:
    return any(part.startswith(".") or part in ("__MACOSX", "__pycache__") for part in path.parts)


def find_module(paths) -> PurePosixPath:
    """The one cs231n/layers.py among ``paths``, else the one layers.py; SubmissionError otherwise."""
    layers = sorted(p for p in paths if p.name == MODULE and not _ignored(p))
    course = [p for p in layers if p.parent.name == COURSE_PACKAGE]
    for group in (course, layers):
        if len(group) == 1:
            return group[0]
        if len(group) > 1:
            raise SubmissionError(f"{len(group)} files named {MODULE} ({', '.join(map(str, group[:4]))}): "
                                  "keep one")
    raise SubmissionError(f"no {MODULE} in it")


def _is_package(folder: PurePosixPath, module: PurePosixPath, paths) -> bool:
    return (folder.name.isidentifier() and module.stem.isidentifier() and (folder / "__init__.py") in paths)


def select(paths, module: PurePosixPath) -> tuple[PurePosixPath, list[PurePosixPath]]:
    """(prefix, files): the .py files that go with ``module``, all under ``prefix``."""
    paths = set(paths)
    folder = module.parent
    if folder != PurePosixPath(".") and _is_package(folder, module, paths):
        chosen = [p for p in paths if p.suffix == ".py" and folder in p.parents and not _ignored(p.relative_to(folder))]
        return folder.parent, sorted(chosen)
    return folder, sorted(p for p in paths if p.suffix == ".py" and p.parent == folder)


def _check_counts(files) -> None:
    if len(files) > MAX_FILES:
        raise SubmissionError(f"{len(files)} .py files go with it, more than the {MAX_FILES} accepted")


def _read_all(chosen, read, prefix: PurePosixPath) -> tuple[tuple[PurePosixPath, bytes], ...]:
    """(path under ``prefix``, ``read(path)``) for each chosen file, refused as soon as they hold more
    than MAX_TOTAL_BYTES: at most that much (and one file) is ever held, not MAX_FILES files' worth."""
    _check_counts(chosen)
    files, total = [], 0
    for path in chosen:
        data = read(path)
        total += len(data)
        if total > MAX_TOTAL_BYTES:
            raise SubmissionError(f"its .py files hold more than the {MAX_TOTAL_BYTES} bytes accepted")
        files.append((path.relative_to(prefix), data))
    return tuple(files)


# ----------------------------------------------------------------------------- from a folder

def _read_regular(path: Path) -> bytes:
    """A regular file's bytes, not through a link, at most MAX_FILE_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SubmissionError(f"cannot read {path.name}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SubmissionError(f"{path.name} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise SubmissionError(f"{path.name} has {info.st_size} bytes, more than the {MAX_FILE_BYTES} accepted")
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SubmissionError(f"{path.name} has more than the {MAX_FILE_BYTES} bytes accepted")
    return data


def _walk(folder: Path, depth: int = MAX_DEPTH) -> list[PurePosixPath]:
    """Regular files under ``folder`` (relative), links not followed, at most MAX_ENTRIES looked at."""
    found, seen = [], 0
    stack = [(folder, PurePosixPath("."), 0)]
    while stack:
        current, relative, level = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            raise SubmissionError(f"cannot list {relative}: {exc.strerror}") from None
        for entry in entries:
            seen += 1
            if seen > MAX_ENTRIES:
                raise SubmissionError(f"more than {MAX_ENTRIES} entries to look through")
            path = relative / entry.name
            if entry.is_dir(follow_symlinks=False) and level < depth and not _ignored(PurePosixPath(entry.name)):
                stack.append((Path(entry.path), path, level + 1))
            elif entry.is_file(follow_symlinks=False):
                found.append(path)
    return found


def _read_files(folder: Path, prefix: PurePosixPath, chosen) -> tuple[tuple[PurePosixPath, bytes], ...]:
    return _read_all(chosen, lambda p: _read_regular(folder.joinpath(*p.parts)), prefix)


def from_file(path, name: str | None = None) -> Submission:
    """The file ``path`` and the .py files next to it (its package's, in a package)."""
    path = Path(path)
    folder = path.parent
    module = PurePosixPath(folder.name, path.name)
    if _is_package(PurePosixPath(folder.name), module, {PurePosixPath(folder.name, n) for n in os.listdir(folder)}):
        listing = [PurePosixPath(folder.name) / p for p in _walk(folder)]
        prefix, chosen = select(listing, module)
        files = _read_files(folder.parent, prefix, chosen)
        return Submission(name or path.stem, path, module.relative_to(prefix), files)
    chosen = sorted({PurePosixPath(path.name)} | {PurePosixPath(n) for n in os.listdir(folder)
                                                   if n.endswith(".py") and (folder / n).is_file()
                                                   and not (folder / n).is_symlink()})
    return Submission(name or path.stem, path, PurePosixPath(path.name), _read_files(folder, PurePosixPath("."), chosen))


def from_folder(folder: Path, name: str) -> Submission:
    listing = _walk(folder)
    module = find_module(listing)
    prefix, chosen = select(listing, module)
    return Submission(name, folder, module.relative_to(prefix), _read_files(folder, prefix, chosen))


# ----------------------------------------------------------------------------- from a zip archive

def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    path = PurePosixPath(name)
    unsafe = (not name or "\\" in name or "\0" in name or path.is_absolute() or ".." in path.parts
              or (len(path.parts) > 0 and ":" in path.parts[0]))
    if unsafe:
        raise SubmissionError(f"the archive holds an unsafe path {name[:100]!r}: refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise SubmissionError(f"the archive holds a link {name[:100]!r}: refused")
    return path


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.flag_bits & 0x1:
        raise SubmissionError(f"{info.filename} is encrypted")
    if info.file_size > MAX_FILE_BYTES:
        raise SubmissionError(f"{info.filename} expands to {info.file_size} bytes, more than the "
                              f"{MAX_FILE_BYTES} accepted (a zip bomb?)")
    with archive.open(info) as member:
        data = member.read(MAX_FILE_BYTES + 1)  # the declared size can lie: never read more than this
    if len(data) > MAX_FILE_BYTES:
        raise SubmissionError(f"{info.filename} expands beyond the {MAX_FILE_BYTES} bytes accepted (a zip bomb?)")
    return data


def from_zip(path: Path, name: str) -> Submission:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_ENTRIES:
                raise SubmissionError(f"the archive lists {len(infos)} entries, more than the {MAX_ENTRIES} accepted")
            members = {}
            for info in infos:
                member = _member_path(info)
                if not info.is_dir():
                    members[member] = info
            module = find_module(members)
            prefix, chosen = select(members, module)
            files = _read_all(chosen, lambda p: _read_member(archive, members[p]), prefix)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as exc:
        raise SubmissionError(f"not a readable zip archive ({exc})") from None
    return Submission(name, path, module.relative_to(prefix), files)


def from_entry(entry: Path) -> Submission:
    """One class entry: a folder, a .py or a .zip; the student is the entry's name without its suffix."""
    if entry.is_symlink():
        raise SubmissionError("a link: refused")
    if entry.is_dir():
        return from_folder(entry, entry.name)
    if entry.suffix == ".zip":
        return from_zip(entry, entry.stem)
    if entry.suffix == ".py":
        data = _read_regular(entry)
        return Submission(entry.stem, entry, PurePosixPath(entry.name), ((PurePosixPath(entry.name), data),))
    raise SubmissionError("not a folder, a .py file or a .zip archive")
