"""`dlmi-grader validate`: a student's check before hand-in that restores the lab's tests, runs the
visible ones as the grader does, prints every result in full, and works from a student's install
(no nbgrader, bleach, nbconvert or Sphinx; the labs shipped as package data)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import notebook, validate

ROOT = Path(__file__).resolve().parents[1]
LAB = "lab02-convolution"  # the quickest lab to grade (~10 s of kernel time)
pytestmark = pytest.mark.slow
GRADER_ONLY = ("nbgrader", "bleach", "nbconvert", "sphinx", "jupyter_book")
LONG = "the padding is wrong because " + "very " * 600 + "END-OF-MESSAGE"


def student_copy(answers: dict[str, str] | None = None, drop: tuple[str, ...] = (),
                 edit: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """The released lab with the reference solution's answers (or ``answers``), test cells ``drop``ped
    and ``edit``ed — a student's notebook."""
    released = nbformat.read(ROOT / "labs" / LAB / f"{LAB}.ipynb", as_version=4)
    solution = nbformat.read(ROOT / "solutions" / LAB / f"{LAB}.ipynb", as_version=4)
    sources = {notebook.grade_id(c): c.source for c in solution.cells if notebook.grade_id(c)}
    released.cells = [c for c in released.cells if notebook.grade_id(c) not in drop]
    for cell in released.cells:
        gid = notebook.grade_id(cell)
        if notebook.is_answer(cell):
            cell.source = (answers or {}).get(gid, sources[gid])
        if gid in (edit or {}):
            cell.source = edit[gid]
    return released


def released_tests() -> dict[str, tuple[float, bool]]:
    """The lab's test cells as released: grade id → (points, hidden only)."""
    released = nbformat.read(ROOT / "labs" / LAB / f"{LAB}.ipynb", as_version=4)
    return {notebook.grade_id(c): (float(notebook.nbgrader_meta(c)["points"]), validate.hidden_only(c))
            for c in released.cells if notebook.is_test(c)}


def failed_line(gid: str) -> str:
    return f"✘  {gid}  0 / {validate._points(released_tests()[gid][0])}: FAILED"


def light_env(tmp: Path) -> dict[str, str]:
    """An environment in which the grader's extras cannot be imported, by any process it starts."""
    site = tmp / "light"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(  # as if not installed: import fails, find_spec finds nothing
        "from importlib.machinery import PathFinder\n"
        "_find = PathFinder.find_spec\n"
        f"PathFinder.find_spec = staticmethod(lambda name, path=None, target=None: None if name.split('.')[0] in "
        f"{GRADER_ONLY!r} else _find(name, path, target))\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "DLMI_DEVICE": "cpu"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """``dlmi-grader validate`` on a correct notebook and on a broken one, side by side, each in a
    process where nbgrader and the other grader extras are unimportable."""
    tmp = tmp_path_factory.mktemp("validate")
    good = tmp / "good.ipynb"
    nbformat.write(student_copy(), good)
    bad = tmp / "bad.ipynb"
    nbformat.write(student_copy(
        answers={"conv_output_size": "def conv_output_size(n, k, stride=1, padding=0, dilation=1):\n    return n - k\n",
                 "zero_pad": "def zero_pad(x, padding):\n    return x\n",
                 "conv2d": f"def conv2d(x, weight, bias=None, stride=1, padding=0):\n    raise ValueError({LONG!r})\n"},
        drop=("test_conv_output_size",), edit={"test_zero_pad": "assert True"}), bad)
    env = light_env(tmp)
    procs = {name: subprocess.Popen([sys.executable, "-m", "autograder.cli", "--root", str(ROOT), "validate", str(nb)],
                                    cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, nb in (("good", good), ("bad", bad))}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    out["control"] = subprocess.run([sys.executable, "-c", "import nbgrader"], env=env, capture_output=True, text=True)
    return out


def test_the_grader_extras_are_unimportable_in_the_runs(runs: dict[str, subprocess.CompletedProcess]) -> None:
    assert runs["control"].returncode != 0 and "nbgrader" in runs["control"].stderr, runs["control"]


def test_a_correct_notebook_passes(runs: dict[str, subprocess.CompletedProcess]) -> None:
    run = runs["good"]
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    tests = released_tests()
    visible = {gid: points for gid, (points, hidden) in tests.items() if not hidden}
    assert "test_conv2d" in visible and len(visible) < len(tests)
    for gid, points in visible.items():
        assert f"✔  {gid}  {points:g} / {validate._points(points)}: PASSED" in run.stdout, gid
    for gid, (points, hidden) in tests.items():
        if hidden:
            assert f"·  {gid}  ({validate._points(points)}): hidden tests, checked only by the grader" in run.stdout
    most = sum(visible.values())
    assert f"Visible tests: {len(visible)} of {len(visible)} passed ({most:g} of {most:g} points)" in run.stdout
    assert "OK: every visible test passes." in run.stdout
    assert "changed or deleted" not in run.stdout


def test_a_deleted_test_cell_is_restored_named_and_fails(runs: dict[str, subprocess.CompletedProcess]) -> None:
    run = runs["bad"]
    assert run.returncode == 1, run.stdout + run.stderr[-3000:]
    assert "test cell 'test_conv_output_size' was deleted" in run.stdout
    assert failed_line("test_conv_output_size") in run.stdout
    assert "a 3×3 filter on a 7×7 image with stride 1 gives 5×5" in run.stdout  # the restored test's own message
    assert "NOT OK" in run.stdout and "OK: every visible test passes." not in run.stdout


def test_an_edited_test_cell_is_named_and_the_labs_test_runs(runs: dict[str, subprocess.CompletedProcess]) -> None:
    run = runs["bad"]
    assert "test cell 'test_zero_pad' was changed" in run.stdout
    assert failed_line("test_zero_pad") in run.stdout        # `assert True` did not run
    assert "padding 1 adds a row/column on every side" in run.stdout


def test_messages_are_printed_in_full(runs: dict[str, subprocess.CompletedProcess]) -> None:
    run = runs["bad"]
    assert failed_line("test_conv2d") in run.stdout
    assert f"ValueError: {LONG}" in run.stdout, "the student's whole error message, not cut"
    assert "\x1b[" not in run.stdout, "no terminal colour codes"


def test_unusable_input_exits_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.ipynb").write_text("my notes")
    assert validate.main(str(tmp_path / "notes.ipynb"), root=str(ROOT)) == 2
    assert "notes.ipynb is not a notebook" in capsys.readouterr().err
    assert validate.main(str(tmp_path / "missing.ipynb"), root=str(ROOT)) == 2
    assert "is not a file" in capsys.readouterr().err
    mine = tmp_path / "mine.ipynb"
    nbformat.write(student_copy(), mine)
    assert validate.main(str(mine), lab="lab99-nothing", root=str(ROOT)) == 2
    assert "unknown lab 'lab99-nothing'; the labs are: " in capsys.readouterr().err
    assert validate.main(str(mine), lab="lab06-unet", root=str(ROOT)) == 2
    assert f"mine.ipynb is the notebook of {LAB}, not of lab06-unet" in capsys.readouterr().err
    stranger = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nbformat.write(stranger, mine)
    assert validate.main(str(mine), root=str(ROOT)) == 2
    assert "holds none of the cells of any lab" in capsys.readouterr().err


def test_in_a_git_checkout_the_committed_lab_is_the_reference(tmp_path: Path) -> None:
    """A student who works in labs/ edits the very file that is the reference: its committed copy counts."""
    lab_dir = tmp_path / "labs" / LAB
    lab_dir.mkdir(parents=True)
    path = lab_dir / f"{LAB}.ipynb"
    shutil.copy(ROOT / "labs" / LAB / f"{LAB}.ipynb", path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "lab"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    nbformat.write(student_copy(drop=("test_conv2d",)), path)
    nb, origin = validate.read_released(path)
    assert "test_conv2d" in {notebook.grade_id(c) for c in nb.cells}
    assert "as committed to git (your working copy differs from it)" in origin
    assert validate.changed_cells(nbformat.read(path, as_version=4), nb) == \
        ["test cell 'test_conv2d' was deleted (or its grading metadata removed)"]


def test_an_installed_course_brings_its_labs(tmp_path: Path) -> None:
    """`pip install <repository>` outside the repository: the wheel holds every released lab and
    validate finds them there (`dlmi_labs`)."""
    src = tmp_path / "src"
    (src / "src").mkdir(parents=True)
    for part in ("pyproject.toml", "README.md", "autograder", "labs", "src/dlmi"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, src / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w",
                    str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("dlmi-*.whl"))
    labs = validate.released_lab_names(ROOT / "labs")
    assert labs and set(zipfile.ZipFile(wheel).namelist()) >= {f"dlmi_labs/{lab}/{lab}.ipynb" for lab in labs}
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    away = tmp_path / "elsewhere"  # no solutions/ above: not the course repository
    away.mkdir()
    nbformat.write(student_copy(), away / "mine.ipynb")
    env = {**light_env(tmp_path), "PYTHONPATH": os.pathsep.join([str(tmp_path / "light"), str(target)])}
    env.pop("DLMI_COURSE_ROOT", None)
    probe = subprocess.run([sys.executable, "-c", "from autograder import validate; f = validate.labs_folder(); "
                            "print(validate.__file__); print(f); print(validate.released_lab_names(f))"],
                           cwd=away, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    module, folder, names = probe.stdout.splitlines()
    assert Path(module).is_relative_to(target) and Path(folder) == target / "dlmi_labs" and names == str(labs)
    run = subprocess.run([sys.executable, "-m", "autograder.cli", "validate", "--lab", "lab06-unet", "mine.ipynb"],
                         cwd=away, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and f"mine.ipynb is the notebook of {LAB}, not of lab06-unet" in run.stderr, run.stderr
