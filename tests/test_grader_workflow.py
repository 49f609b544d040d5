"""The instructor's path in a throw-away course: release → grade in two shards → merge →
feedback → CSV, with nbgrader's gradebook filled along the way."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import check, course, notebook

ROOT = Path(__file__).resolve().parents[1]
LAB = "lab02-convolution"
pytestmark = pytest.mark.slow


def grader(root: Path, *args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "autograder.cli", "--root", str(root), *args], cwd=root,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"dlmi-grader {' '.join(args)}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def course_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "solutions" / LAB, root / "solutions" / LAB)
    grader(root, "release", LAB)
    source = nbformat.read(root / "solutions" / LAB / f"{LAB}.ipynb", as_version=4)
    blank = nbformat.read(root / "labs" / LAB / f"{LAB}.ipynb", as_version=4)
    subs = root / "handins"
    subs.mkdir()
    nbformat.write(source, subs / "ann.ipynb")
    nbformat.write(blank, subs / "bob.ipynb")
    (subs / "cy.ipynb").write_text("not json")
    partial = nbformat.read(root / "labs" / LAB / f"{LAB}.ipynb", as_version=4)
    answer = next(c for c in source.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "conv_output_size")
    next(c for c in partial.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "conv_output_size").source = \
        answer.source
    nbformat.write(partial, subs / "dan.ipynb")
    # both shards at once on one machine, as a Slurm array or two runners would: each run has its
    # own scratch folder, and as root they claim sandbox user ids from one machine-wide lock folder
    logs = [open(root / f"shard{i}.log", "w+") for i in (1, 2)]  # noqa: SIM115 (the shards write them)
    shards = [subprocess.Popen([sys.executable, "-m", "autograder.cli", "--root", str(root), "grade", LAB, str(subs),
                                "--shard", f"{i}/2", "--results", str(root / f"shard{i}"), "--device", "cpu",
                                "--workers", "1"], cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=log, stderr=subprocess.STDOUT) for i, log in zip((1, 2), logs, strict=False)]
    for i, (shard, log) in enumerate(zip(shards, logs, strict=False), 1):
        shard.wait(timeout=600)
        log.seek(0)
        assert shard.returncode == 0, f"shard {i}/2:\n{log.read()[-4000:]}"
        log.close()
    grader(root, "merge", LAB, str(root / "shard1"), str(root / "shard2"))
    grader(root, "feedback", LAB)
    return root


def test_shards_are_disjoint_and_merge_into_one_csv(course_root: Path) -> None:
    shard1 = {p.stem for p in (course_root / "shard1" / LAB).glob("*.json")}
    shard2 = {p.stem for p in (course_root / "shard2" / LAB).glob("*.json")}
    assert shard1 and shard2 and not shard1 & shard2 and shard1 | shard2 == {"ann", "bob", "cy", "dan"}
    with open(course_root / "results" / LAB / "grades.csv") as fh:
        rows = {r["student"]: r for r in csv.DictReader(fh)}
    assert {s: (rows[s]["status"], rows[s]["score"]) for s in rows} == {
        "ann": ("graded", "20"), "bob": ("graded", "0"), "dan": ("graded", "3"),
        "cy": ("failed: cy.ipynb is not a notebook: invalid JSON (Expecting value at line 1, column 1)", "")}
    assert all(rows[s]["max_score"] == "20" and rows[s]["manual_max"] == "3" for s in rows)


def test_gradebook_holds_the_auto_scores(course_root: Path) -> None:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course_root / 'gradebook.db'}") as gb:
        scores = {s.student.id: s.score for s in gb.assignment_submissions(LAB)}
    assert {k: v for k, v in scores.items() if k != "cy"} == {"ann": 20.0, "bob": 0.0, "dan": 3.0}
    with Gradebook(f"sqlite:///{course_root / 'gradebook.db'}") as gb:  # a failure has no auto score at all
        assert all(g.auto_score is None for g in gb.find_submission_notebook(LAB, LAB, "cy").grades)


def test_feedback_shows_scores_but_never_hidden_tests(course_root: Path) -> None:
    lab = course.load_lab(LAB, course_root)
    secrets = check.secret_lines(lab)
    hidden = {line for line in secrets
              if any(line in check._regions(c.source, notebook.HIDDEN_BEGIN, notebook.HIDDEN_END)
                     for c in lab.source.cells)}
    page = (course_root / "feedback" / "ann" / LAB / f"{LAB}.html").read_text()
    assert "20" in page and "passed" in page
    assert "hidden tests (not shown)" in page
    for student in ("ann", "bob", "dan"):  # ann handed in the solution: her own answers may show, hidden tests not
        html = (course_root / "feedback" / student / LAB / f"{LAB}.html").read_text()
        leaked = [s for s in (hidden if student == "ann" else secrets) if s in html]
        assert not leaked, f"{student}'s feedback shows {leaked[:3]}"
        assert "BEGIN HIDDEN" not in html
    bob = (course_root / "feedback" / "bob" / LAB / f"{LAB}.html").read_text()
    assert "NotImplementedError" in bob  # visible tests tell the student what went wrong
    failed = (course_root / "feedback" / "cy" / LAB / f"{LAB}.html").read_text()
    assert "could not be graded" in failed and "invalid JSON" in failed and "No score was recorded" in failed


def test_results_record_device_runtime_and_tests(course_root: Path) -> None:
    import json
    res = json.loads((course_root / "results" / LAB / "ann.json").read_text())
    assert res["device"] == "cpu" and res["runtime_s"] > 0 and res["isolation"] in ("namespaces", "uid", "none")
    source = nbformat.read(ROOT / "solutions" / LAB / f"{LAB}.ipynb", as_version=4)
    lab_tests = sorted(notebook.grade_id(c) for c in source.cells if notebook.is_test(c))
    assert sorted(t["grade_id"] for t in res["tests"]) == lab_tests and all(t["passed"] for t in res["tests"])
    graded = nbformat.read(course_root / "results" / res["autograded"], as_version=4)
    assert "passed" in "".join(o.get("text", "") for c in graded.cells if c.cell_type == "code" for o in c.outputs)
