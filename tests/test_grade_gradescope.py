"""Gradescope: results.json in its format, points per function, and the autograder bundle run locally.

The bundle's run_autograder runs against a temporary tree standing for /autograder
(NORMLAB_AUTOGRADER_ROOT), with this environment's Python standing for the one setup.sh installs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import normlab
from normlab.cli import main as cli
from normlab.grade import gradescope, points

DATA = Path(__file__).parent / "data" / "grade"
POINTS = {"batchnorm_forward": 3, "batchnorm_backward": 2, "layernorm_forward": 1}


def _cli(*args):
    return CliRunner().invoke(cli, ["grade", *map(str, args)])


def _check_format(data: dict, max_scores: dict) -> None:
    """The fields Gradescope's autograder specification names, with their types."""
    assert set(data) >= {"score", "output", "output_format", "tests"} and data["output_format"] == "md"
    assert [t["name"] for t in data["tests"]] == list(max_scores)
    for test in data["tests"]:
        assert set(test) == {"name", "score", "max_score", "status", "output", "output_format"}
        assert test["status"] in ("passed", "failed") and test["output_format"] == "md"
        assert test["max_score"] == max_scores[test["name"]]
        assert test["score"] == (test["max_score"] if test["status"] == "passed" else 0)
    assert data["score"] == sum(t["score"] for t in data["tests"])


@pytest.fixture
def points_file(tmp_path):
    path = tmp_path / "points.toml"
    path.write_text("".join(f"{f} = {p}\n" for f, p in POINTS.items()))
    return path


def test_results_json_for_a_broken_submission(tmp_path, points_file):
    out = tmp_path / "results.json"
    outcome = _cli(DATA / "missing_mean_term.py", "--format", "gradescope", "--json", out, "--points", points_file)
    assert outcome.exit_code == 0, outcome.output
    data = json.loads(out.read_text())
    _check_format(data, POINTS)
    by_name = {t["name"]: t for t in data["tests"]}
    assert by_name["batchnorm_forward"]["status"] == "passed" and by_name["batchnorm_forward"]["score"] == 3
    backward = by_name["batchnorm_backward"]
    assert (backward["status"], backward["score"]) == ("failed", 0)
    assert "missing-mean-term" in backward["output"] and "Fix:" in backward["output"] and "E13" in backward["output"]
    assert (by_name["layernorm_forward"]["score"], by_name["layernorm_forward"]["output"]) == (0, "not defined")
    assert data["score"] == 3 and "| `batchnorm_backward` | **fail** | " in data["output"]


def test_a_missing_function_scores_zero(tmp_path):
    student = tmp_path / "layers.py"
    student.write_text((DATA / "attacks" / "_honest.py").read_text())
    out = tmp_path / "results.json"
    (tmp_path / "p.json").write_text(json.dumps({"layernorm_forward": 2, "batchnorm_forward": 5}))
    assert _cli(student, "--format", "gradescope", "--json", out, "--points", tmp_path / "p.json").exit_code == 0
    data = json.loads(out.read_text())
    _check_format(data, {"batchnorm_forward": 5.0, "layernorm_forward": 2.0})
    assert [(t["name"], t["score"], t["output"]) for t in data["tests"]][0] == ("batchnorm_forward", 0, "not defined")
    assert data["score"] == 2


@pytest.mark.parametrize("text, suffix, says", [
    ('{"batchnorm_fwd": 1}', ".json", "unknown function batchnorm_fwd"),
    ('{"batchnorm_forward": -1}', ".json", "numbers >= 0"),
    ('{"batchnorm_forward": true}', ".json", "numbers >= 0"),
    ("[1, 2]", ".json", "must map function names"),
    ("batchnorm_forward = ", ".toml", "not valid TOML"),
])
def test_bad_points_files_are_usage_errors(tmp_path, text, suffix, says):
    path = tmp_path / f"points{suffix}"
    path.write_text(text)
    with pytest.raises(points.PointsError, match=says):
        points.load(path)
    outcome = _cli(DATA / "layers.py", "--format", "gradescope", "--points", path)
    assert outcome.exit_code == 2 and says in outcome.output


# ----------------------------------------------------------------------------- the bundle

@pytest.fixture
def autograder(tmp_path, points_file):
    """A tree standing for /autograder: source/ holds the bundle, submission/ is filled by the test."""
    bundle = tmp_path / "autograder.zip"
    outcome = _cli("--autograder", bundle, "--points", points_file, "--timeout", "5", "--gn-gamma-shape", "1,C,1,1")
    assert outcome.exit_code == 0, outcome.output
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(root / "source")
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in archive.infolist()}
    assert modes["setup.sh"] == modes["run_autograder"] == 0o755
    for name in ("setup.sh", "run_autograder"):
        os.chmod(root / "source" / name, modes[name])
    return root


def _run_autograder(root: Path, python: str = sys.executable) -> dict:
    env = {"PATH": os.environ["PATH"], "NORMLAB_AUTOGRADER_ROOT": str(root), "NORMLAB_AUTOGRADER_PYTHON": python}
    done = subprocess.run([str(root / "source" / "run_autograder")], env=env, cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((root / "results" / "results.json").read_text())


def test_run_autograder_grades_a_correct_course_zip(autograder):
    package = autograder / "submission" / "cs231n"
    package.mkdir()
    shutil.copy(DATA / "layers.py", package / "layers.py")
    (package / "__init__.py").write_text("")
    data = _run_autograder(autograder)
    _check_format(data, POINTS)
    assert data["score"] == 6 and {t["status"] for t in data["tests"]} == {"passed"}


def test_run_autograder_grades_a_broken_submission(autograder):
    shutil.copy(DATA / "layers.py", autograder / "submission" / "reference_layers.py")
    text = (DATA / "missing_mean_term.py").read_text().replace("from layers import", "from reference_layers import")
    (autograder / "submission" / "layers.py").write_text(text)
    data = _run_autograder(autograder)
    _check_format(data, POINTS)
    assert data["score"] == 3  # batchnorm_forward only; no layernorm_forward in it
    assert "missing-mean-term" in {t["name"]: t for t in data["tests"]}["batchnorm_backward"]["output"]


def test_run_autograder_always_writes_results(autograder):
    (autograder / "submission" / "notes.txt").write_text("no code here")
    data = _run_autograder(autograder)
    _check_format(data, POINTS)
    assert data["score"] == 0 and "Not graded" in data["output"] and "no layers.py" in data["output"]
    crashed = _run_autograder(autograder, python="/bin/false")  # Python itself fails
    assert crashed["score"] == 0 and "could not run (exit status 1)" in crashed["output"]


def test_the_bundle_installs_this_normlab(autograder, tmp_path):
    wheel = next((autograder / "source").glob("normlab-*.whl"))
    assert wheel.name == f"normlab-{normlab.__version__}-py3-none-any.whl"
    target = tmp_path / "installed"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    probe = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "import normlab.grade.gradescope as g; print(g.__file__, __import__('normlab').__version__)",
                            str(target)], capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == [str(target / "normlab" / "grade" / "gradescope.py"), normlab.__version__]
    assert (target / f"normlab-{normlab.__version__}.dist-info" / "entry_points.txt").exists()
    for script in ("setup.sh", "run_autograder"):
        assert subprocess.run(["bash", "-n", str(autograder / "source" / script)]).returncode == 0
    grading = json.loads((autograder / "source" / "grading.json").read_text())
    assert grading == {"points": {k: float(v) for k, v in POINTS.items()}, "timeout": 5.0,
                       "memory": 2 << 30, "gn_gamma_shape": "1,C,1,1", "normlab": normlab.__version__}
