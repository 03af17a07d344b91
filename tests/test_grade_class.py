"""normlab grade --class: a folder of submissions graded like each file alone, with the class's files.

tests/data/grade/class is written by tests/data/grade/make_class.py (correct submissions in three
forms, every variant, attacks, and entries that cannot be read). The whole class is graded once; a
sample covering every form and kind of trouble is graded alone again and must agree (grading all of
them alone agrees too, but doubles the test's time).
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import os
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner
from rich.console import Console

from normlab import grade
from normlab.cli import main as cli
from normlab.grade import classroom, submission, summary
from normlab.grade.submission import SubmissionError

DATA = Path(__file__).parent / "data" / "grade"
CLASS = DATA / "class"
TIMEOUT = "5"  # as in test_grade.py
#: Every function but batchnorm_backward_alt, whose timing runs change no status and take a third of the time.
ONLY = ",".join(f for f in grade.FUNCTIONS if f != "batchnorm_backward_alt")
UNREADABLE = {"traversal": "unsafe path", "zip_bomb": "zip bomb", "corrupt": "not a readable zip archive",
              "no_layers": "no layers.py", "two_layers": "2 files named layers.py", "notes.txt": "not a folder"}
#: Graded alone too: every form (zip, folder with cs231n/, plain folder, .py) and every kind of trouble.
#: (All of them agree as well; that takes as long again as the class: see the docstring.)
ALONE = ("correct_zip", "correct_folder", "correct_py", "missing_mean_term", "dx_negated", "eps_outside_sqrt",
         "hangs", "import_hangs", "raises", "attack_write_outside", "unrelated")


def _cli(*args):
    return CliRunner().invoke(cli, ["grade", *map(str, args)])


def _module_file(entry: Path, scratch: Path) -> Path:
    """The file a student would grade alone: the .py, or the layers.py found in the folder or the unpacked zip."""
    if entry.suffix == ".py":
        return entry
    if entry.suffix == ".zip":
        with zipfile.ZipFile(entry) as archive:
            archive.extractall(scratch / entry.stem)
        entry = scratch / entry.stem
    return entry / submission.find_module(submission._walk(entry))


def _statuses(result) -> dict[str, str]:
    return {row.function: row.status for row in result.rows}


def test_class_statuses_equal_grading_each_file_alone(tmp_path):
    out = tmp_path / "grades"
    outcome = _cli(CLASS, "--class", "--out", out, "--timeout", TIMEOUT, "--jobs", "2", "--only", ONLY)
    assert outcome.exit_code == 0, outcome.output
    data = json.loads((out / "grades.json").read_text())["students"]
    entries = classroom.entries(CLASS, out)
    assert len(entries) == len(data) >= 20
    # the plain progress line (no terminal here)
    assert f"graded {len(entries)}/{len(entries)} students" in outcome.output

    def alone(entry: Path):
        name = classroom._names(entries)[entry]
        try:
            return name, grade.grade(_module_file(entry, tmp_path / "unpacked"), only=ONLY, timeout=float(TIMEOUT))
        except grade.UsageError as exc:
            return name, str(exc)

    names = classroom._names(entries)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        alone_results = dict(pool.map(alone, [e for e in entries if names[e] in ALONE]))
    assert sorted(alone_results) == sorted(ALONE)
    for name, result in alone_results.items():
        in_class = data[name]["result"]
        if isinstance(result, str):  # defines none of the functions, alone too
            assert in_class is None and "defines none of" in data[name]["reason"], name
            continue
        assert {c["function"]: c["status"] for c in in_class["checks"]} == _statuses(result), name
    for name, why in UNREADABLE.items():
        assert data[name]["result"] is None and why in data[name]["reason"], (name, data[name]["reason"])

    # what the class was written for
    for name in ("correct_zip", "correct_folder", "correct_py"):
        assert [c["status"] for c in data[name]["result"]["checks"]] == ["pass"] * 8, name
    statuses = {n: {c["function"]: c["status"] for c in s["result"]["checks"]} for n, s in data.items() if s["result"]}
    assert statuses["hangs"]["batchnorm_forward"] == statuses["import_hangs"]["batchnorm_forward"] == "error"
    assert statuses["attack_write_outside"]["layernorm_forward"] == "pass"  # an attack is one row
    _check_files(out, data)


def _check_files(out: Path, data: dict) -> None:
    with (out / "grades.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["student"] for r in rows] == list(data)
    by_name = {r["student"]: r for r in rows}
    assert by_name["correct_zip"]["points"] == by_name["correct_zip"]["max_points"] == "8"
    assert by_name["missing_mean_term"]["batchnorm_backward"] == "fail"
    assert by_name["missing_mean_term"]["batchnorm_backward_points"] == "0"
    assert "missing-mean-term" in by_name["missing_mean_term"]["diagnoses"].split()
    assert by_name["traversal"]["graded"] == "no" and "unsafe path" in by_name["traversal"]["note"]
    assert sorted(p.stem for p in (out / "feedback").glob("*.md")) == sorted(data)
    page = (out / "feedback" / "missing_mean_term.md").read_text()
    assert "| `batchnorm_backward` | **fail** |" in page and "E13" in page and "Fix:" in page
    text = (out / "summary.md").read_text()
    assert "![pass rates and diagnoses](summary.png)" in text and (out / "summary.png").stat().st_size > 10_000
    assert "**`missing-mean-term`: " in text and "## Not graded" in text


# ----------------------------------------------------------------------------- reruns

def _small_class(folder: Path) -> None:
    folder.mkdir()
    (folder / "ana.py").write_text((DATA / "attacks" / "_honest.py").read_text())
    (folder / "ben.py").write_text((DATA / "attacks" / "_honest.py").read_text().replace("eps = ", "eps = 10 * "))
    (folder / "eve.zip").write_bytes(b"not a zip")


def test_rerun_grades_only_what_changed_unless_forced(tmp_path):
    folder, out = tmp_path / "class", tmp_path / "out"
    _small_class(folder)

    def run(*extra):
        return classroom.grade_class(folder, out, jobs=1, only="layernorm_forward", timeout=5.0, *extra)

    first = run()
    assert (first.regraded, first.reused) == (2, 0)
    statuses = {s.name: s.result and _statuses(s.result) for s in first.students}
    assert statuses == {"ana": {"layernorm_forward": "pass"}, "ben": {"layernorm_forward": "fail"}, "eve": None}
    again = run()
    assert (again.regraded, again.reused) == (0, 2)
    assert {s.name: s.result and _statuses(s.result) for s in again.students} == statuses
    (folder / "ben.py").write_text((DATA / "attacks" / "_honest.py").read_text())
    changed = run()
    assert (changed.regraded, changed.reused) == (1, 1)
    assert _statuses(changed.students[1].result) == {"layernorm_forward": "pass"}
    forced = classroom.grade_class(folder, out, jobs=1, only="layernorm_forward", timeout=5.0, force=True)
    assert (forced.regraded, forced.reused) == (2, 0)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_names_from_the_class_folder_are_shown_as_they_are_and_sent_nowhere(tmp_path):
    """Entry names are the students' to choose: neither markup for the progress bar nor escape sequences."""
    folder, out = tmp_path / "class", tmp_path / "out"
    folder.mkdir()
    (folder / "[red]ana.py").write_text((DATA / "attacks" / "_honest.py").read_text())
    (folder / "\x1b]0;eve\x07.zip").write_bytes(b"not a zip")
    screen = _Terminal()
    graded = classroom.grade_class(folder, out, jobs=1, only="layernorm_forward", timeout=5.0,
                                   console=Console(file=screen, width=200))
    assert [s.name for s in graded.students] == ["\\x1b]0;eve\\x07", "[red]ana"]
    assert "[red]ana" in screen.getvalue()  # the bar's last name, as it is
    text = (out / "grades.csv").read_text() + (out / "summary.md").read_text()
    assert "\x1b" not in text and "\\x1b]0;eve\\x07" in text


def test_the_course_s_group_norm_gamma_shape_reaches_every_student_and_a_change_regrades(tmp_path):
    folder, out = tmp_path / "class", tmp_path / "out"
    folder.mkdir()
    (folder / "ana.py").write_text((DATA / "layers.py").read_text())  # gamma (1, C, 1, 1)

    def run(shape):
        graded = classroom.grade_class(folder, out, jobs=1, only="spatial_groupnorm_forward", timeout=5.0,
                                       gn_gamma_shape=shape)
        return graded, graded.students[0].result.rows[0]

    graded, row = run("C")
    assert graded.regraded == 1 and row.status == "error" and "wrong-shape" in row.diagnosis
    graded, row = run("1,C,1,1")
    assert graded.regraded == 1 and row.status == "pass"


def test_summary_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as when it is not installed
    result = grade.Result("x", [grade.Row("layernorm_forward", "fail", 1.0, ("wrong-axis",), "m")], None)
    students = [classroom.Graded("ana", "ana.py", "d", result), classroom.Graded("bo", "bo.zip", None, None, "bad")]
    note = summary.write(tmp_path, students, {"layernorm_forward": 1.0}, ())
    assert note.startswith("summary.png not drawn: matplotlib is not installed")
    text = (tmp_path / "summary.md").read_text()
    assert note.split(":")[0] in text and "`wrong-axis`: 1 student**" in text
    assert not (tmp_path / "summary.png").exists()


def test_csv_cells_cannot_become_formulas(tmp_path):
    rows = [grade.Row("layernorm_forward", "pass", 0.0, (), "ok")]
    students = [classroom.Graded("=HYPERLINK(1)", "x.py", "d", grade.Result("x", rows, None)),
                classroom.Graded("+bad", "y.zip", None, None, "-unreadable")]
    classroom._write_csv(tmp_path / "g.csv", students, {"layernorm_forward": 1.0})
    cells = [c for row in csv.reader((tmp_path / "g.csv").open()) for c in row]
    assert "'=HYPERLINK(1)" in cells and "'+bad" in cells and "'-unreadable" in cells
    assert not any(c[:1] in "=+-@" for c in cells if c)


# ----------------------------------------------------------------------------- reading submissions

def _zip(path: Path, members: dict[str, bytes], links=()) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/shadow")
    return path


LAYERS = b"def layernorm_forward(x, gamma, beta, ln_param):\n    return x, None\n"


def test_zip_finds_the_course_s_layers_py_and_its_package(tmp_path):
    sub = submission.from_zip(_zip(tmp_path / "a.zip", {
        "a2/cs231n/layers.py": LAYERS, "a2/cs231n/__init__.py": b"", "a2/cs231n/fast_layers.py": b"x = 1\n",
        "a2/cs231n/classifiers/fc_net.py": b"", "a2/cs231n/datasets/data.bin": b"\0" * 10,
        "a2/layers.py": b"# a copy elsewhere\n", "__MACOSX/a2/cs231n/._layers.py": b"\0"}), "a")
    assert sub.module == PurePosixPath("cs231n/layers.py")
    assert sorted(str(p) for p, _ in sub.files) == ["cs231n/__init__.py", "cs231n/classifiers/fc_net.py",
                                                    "cs231n/fast_layers.py", "cs231n/layers.py"]


@pytest.mark.parametrize("members, links, why", [
    ({"cs231n/layers.py": LAYERS, "../evil.py": b""}, (), "unsafe path"),
    ({"/abs/layers.py": LAYERS}, (), "unsafe path"),
    ({"layers.py": LAYERS}, ("cs231n/__init__.py",), "a link"),
    ({"layers.py": LAYERS + b"#" * (3 << 20)}, (), "zip bomb"),
    ({"a/layers.py": LAYERS, "b/layers.py": LAYERS}, (), "2 files named layers.py"),
    ({"README.md": b"hi"}, (), "no layers.py"),
])
def test_unsafe_or_unusable_zips_are_refused(tmp_path, members, links, why):
    with pytest.raises(SubmissionError, match=why):
        submission.from_zip(_zip(tmp_path / "s.zip", members, links), "s")


def test_folder_links_are_not_followed(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "layers.py").write_bytes(LAYERS)
    secret = tmp_path / "secret.py"
    secret.write_text("TOKEN = 1\n")
    os.symlink(secret, tmp_path / "s" / "helper.py")
    sub = submission.from_folder(tmp_path / "s", "s")
    assert [str(p) for p, _ in sub.files] == ["layers.py"]
    os.symlink(tmp_path / "s", tmp_path / "link")
    with pytest.raises(SubmissionError, match="a link"):
        submission.from_entry(tmp_path / "link")


def test_too_many_files_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(submission, "MAX_FILES", 3)
    members = {"layers.py": LAYERS, **{f"m{i}.py": b"" for i in range(3)}}
    with pytest.raises(SubmissionError, match="more than the 3 accepted"):
        submission.from_zip(_zip(tmp_path / "s.zip", members), "s")


def test_reading_stops_as_soon_as_the_files_hold_too_much(tmp_path, monkeypatch):
    """Each file under its own bound, together over the total: refused before the rest is read."""
    monkeypatch.setattr(submission, "MAX_TOTAL_BYTES", 3 << 20)
    read = []
    real = submission._read_member
    monkeypatch.setattr(submission, "_read_member", lambda archive, info: read.append(info) or real(archive, info))
    members = {"layers.py": LAYERS, **{f"m{i}.py": b"#" * (1 << 20) for i in range(10)}}
    with pytest.raises(SubmissionError, match="more than the 3145728"):
        submission.from_zip(_zip(tmp_path / "s.zip", members), "s")
    assert len(read) == 4  # layers.py and three of a mebibyte: past 3 MiB


# ----------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("args, says", [
    (["--out", "x"], "only go with --class"),
    (["--class", "--json", "x.json"], "--json and --format gradescope are for"),
    (["--memory", "10M"], "too little"),
    (["--memory", "lots"], "not a size"),
    (["--autograder", "bundle.zip", "--class"], "takes no PATH"),
])
def test_usage_errors(args, says):
    outcome = _cli(CLASS, *args)
    assert outcome.exit_code == 2 and says in outcome.output, outcome.output


def test_class_needs_a_folder(tmp_path):
    outcome = _cli(DATA / "layers.py", "--class")
    assert outcome.exit_code == 2 and "is not a folder of submissions" in outcome.output
