"""Fast tests of the grader's pieces: wire codec, judge name analysis, notebook reading and
rebuilding, hand-in intake, sharding, leak and staleness checks. No kernels are started."""
from __future__ import annotations

import copy
import json
import math
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from autograder import bridge, check, course, intake, notebook
from autograder.feedback import HideHiddenTests
from autograder.judge import free_names
from autograder.kernel import SubmissionFailure

ROOT = Path(__file__).resolve().parents[1]
LAB = "lab02-convolution"


@pytest.fixture(scope="module")
def lab() -> course.Lab:
    return course.load_lab(LAB, ROOT)


@pytest.fixture(scope="module")
def blank() -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "labs" / LAB / f"{LAB}.ipynb", as_version=4)


def _roundtrip(value):
    handles = []
    wire = bridge.encode(value, handle=lambda v: handles.append(v) or {"$handle": len(handles)})
    wire = json.loads(json.dumps(wire))  # it must survive JSON
    return bridge.decode(wire, handle=lambda stub: ("handle", stub["$handle"])), handles


@pytest.mark.parametrize("tensor", [torch.randn(3, 4), torch.arange(5), torch.tensor([True, False]),
                                    torch.randn(2, 2, dtype=torch.float64), torch.randn(2, 3).to(torch.bfloat16)])
def test_tensors_cross_the_wire_exactly(tensor: torch.Tensor) -> None:
    back, _ = _roundtrip(tensor)
    assert back.dtype == tensor.dtype and torch.equal(back, tensor)


def test_containers_numbers_and_arrays_round_trip() -> None:
    value = {"a": [1, 2.5, float("nan"), True, None, "s"], "t": (np.float64(1.5), np.arange(3)), "big": 2**70,
             "shape": torch.Size([2, 3])}
    back, handles = _roundtrip(value)
    assert back["a"][:2] == [1, 2.5] and math.isnan(back["a"][2]) and back["a"][3:] == [True, None, "s"]
    assert back["t"][0] == 1.5 and isinstance(back["t"][0], np.floating)
    assert np.array_equal(back["t"][1], np.arange(3))
    assert back["big"] == 2**70 and back["shape"] == (2, 3) and not handles


def test_objects_become_handles() -> None:
    module = torch.nn.Linear(2, 2)
    back, handles = _roundtrip([module, (x for x in range(2))])
    assert back == [("handle", 1), ("handle", 2)] and handles[0] is module


def test_decode_refuses_what_is_not_plain_data() -> None:
    import base64
    import io
    buf = io.BytesIO()
    np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
    stub = {"$ndarray": {"b64": base64.b64encode(buf.getvalue()).decode()}}
    with pytest.raises((TypeError, ValueError)):
        bridge.decode(stub, handle=lambda s: s)
    for bad in ({"$weird": 1}, [1, 2], {}, {"$tensor": {"b64": "AAAA"}, "dtype": "object"}):
        with pytest.raises((TypeError, ValueError)):
            bridge.decode(bad, handle=lambda s: s)


def test_free_names_are_the_students_names() -> None:
    src = ("import numpy as np\nfrom x import y\nout = conv2d(x_in, w)\nfor i in range(3):\n    total = i\n"
           "vals = [k * scale for k in items]\ndef helper(a):\n    return a + model(a)\n"
           "with grader.forbid('a') as g:\n    pass\n")
    assert free_names(src) == {"conv2d", "x_in", "w", "scale", "items", "model", "grader"}


def _write(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("content, reason", [
    ("", "is empty"),
    ('{"cells": [', "invalid JSON (Expecting"),
    ('{"a": 1}', "not a Jupyter notebook"),
    (json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}), "nbformat 3 notebook"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code"}]}),
     "malformed"),
])
def test_unreadable_hand_ins_fail_with_a_reason(tmp_path: Path, content, reason: str) -> None:
    with pytest.raises(SubmissionFailure) as err:
        notebook.read_notebook(_write(tmp_path, "h.ipynb", content))
    assert err.value.status == "failed" and reason in err.value.reason


def test_identify_names_the_other_lab(lab: course.Lab) -> None:
    other = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    other.cells[0].metadata["nbgrader"] = {"grade_id": "only_in_other"}
    labs = {LAB: notebook.lab_ids(lab.source), "labX": {"only_in_other"}}
    with pytest.raises(SubmissionFailure, match="is the notebook of labX"):
        notebook.identify(other, LAB, labs, "h.ipynb")
    notebook.identify(lab.source, LAB, labs, "h.ipynb")


def _ids(nb) -> list[str]:
    return [notebook.grade_id(c) or c.get("id") for c in nb.cells]


def test_rebuild_restores_tests_and_keeps_answers_and_extra_cells(lab: course.Lab, blank) -> None:
    student = copy.deepcopy(blank)
    tests = [c for c in student.cells if notebook.is_test(c)]
    for cell in student.cells:
        if notebook.grade_id(cell) == "conv2d":
            cell.source = "def conv2d(*a, **k):\n    return 'mine'"
    tests[0].source = "pass"                          # an edited test
    tests[0].metadata["nbgrader"]["points"] = 99      # with changed points
    student.cells.remove(tests[1])                    # a deleted test
    student.cells.remove(tests[2])
    student.cells.insert(0, tests[2])                 # a test moved to the top
    student.cells.insert(3, nbformat.v4.new_code_cell("my_scratch = 1"))
    rebuilt, notes = notebook.rebuild(student, lab.source, blank)
    src_tests = [c for c in lab.source.cells if notebook.is_test(c)]
    got_tests = [c for c in rebuilt.cells if notebook.is_test(c)]
    assert [c.source for c in got_tests] == [c.source for c in src_tests]
    assert [c.metadata.nbgrader["points"] for c in got_tests] == [c.metadata.nbgrader["points"] for c in src_tests]
    order = [notebook.grade_id(c) for c in rebuilt.cells if notebook.grade_id(c)]
    assert order == [notebook.grade_id(c) for c in lab.source.cells if notebook.grade_id(c)]
    assert "return 'mine'" in next(c.source for c in rebuilt.cells if notebook.grade_id(c) == "conv2d")
    assert any(c.source == "my_scratch = 1" and "nbgrader" not in c.metadata for c in rebuilt.cells)
    assert not notes


def test_rebuild_matches_renamed_ids_and_fills_missing_answers(lab: course.Lab, blank) -> None:
    student = copy.deepcopy(lab.source)
    for cell in student.cells:
        if notebook.grade_id(cell) == "zero_pad":
            cell.metadata["nbgrader"]["grade_id"] = "my_pad"
    student.cells = [c for c in student.cells if notebook.grade_id(c) != "max_pool2d"]
    rebuilt, notes = notebook.rebuild(student, lab.source, blank)
    by_id = {notebook.grade_id(c): c for c in rebuilt.cells if notebook.grade_id(c)}
    assert "new_zeros" in by_id["zero_pad"].source                  # the student's answer, under the source id
    assert "NotImplementedError" in by_id["max_pool2d"].source      # the blank cell, never the solution
    assert any("my_pad" in n for n in notes) and any("max_pool2d" in n for n in notes)


def test_rebuild_never_copies_a_solution_into_the_graded_notebook(lab: course.Lab, blank) -> None:
    rebuilt, _ = notebook.rebuild(nbformat.v4.new_notebook(cells=[]), lab.source, blank)
    assert "BEGIN SOLUTION" not in nbformat.writes(rebuilt)


def test_hidden_tests_are_hidden_in_feedback(lab: course.Lab) -> None:
    hidden = next(c for c in lab.source.cells if notebook.has_hidden(c))
    cell, _ = HideHiddenTests().preprocess_cell(copy.deepcopy(hidden), {}, 0)
    assert "BEGIN HIDDEN" not in cell.source and "hidden tests (not shown)" in cell.source
    assert not set(check._regions(hidden.source, notebook.HIDDEN_BEGIN, notebook.HIDDEN_END)) & \
        {line.strip() for line in cell.source.splitlines() if line.strip()}


def test_intake_finds_notebooks_in_files_folders_zips_and_repositories(tmp_path: Path, lab: course.Lab) -> None:
    subs, scratch = tmp_path / "subs", tmp_path / "scratch"
    subs.mkdir()
    scratch.mkdir()
    text = nbformat.writes(lab.source)
    (subs / "ann.ipynb").write_text(text)
    (subs / "bob").mkdir()
    (subs / "bob" / "notes.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    (subs / "bob" / f"Copy of {LAB} (2).ipynb").write_text(text)
    with zipfile.ZipFile(subs / "cy.zip", "w") as zf:
        zf.writestr(f"deep/dir/{LAB}.ipynb", text)
        zf.writestr("../../escape.ipynb", text)
    (subs / f"{LAB}-dee" / ".git").mkdir(parents=True)
    (subs / f"{LAB}-dee" / "sub" / ".ipynb_checkpoints").mkdir(parents=True)
    (subs / f"{LAB}-dee" / "sub" / ".ipynb_checkpoints" / f"{LAB}-checkpoint.ipynb").write_text("{}")
    (subs / f"{LAB}-dee" / "sub" / f"{LAB}.ipynb").write_text(text)
    (subs / "eve.zip").write_bytes(b"not a zip")
    (subs / "fay").mkdir()
    found = {s.student.split("~")[0]: s for s in intake.collect(subs, LAB, notebook.lab_ids(lab.source), scratch)}
    assert sorted(found) == ["ann", "bob", "cy", "dee", "eve", "fay"]
    assert found["ann"].student == "ann" and found["bob"].student == intake.student_id("bob", LAB) != "bob"
    assert found["bob"].notebook.name == f"Copy of {LAB} (2).ipynb"
    assert found["cy"].notebook.name == f"{LAB}.ipynb" and scratch in found["cy"].notebook.parents
    assert not list(tmp_path.rglob("escape.ipynb"))
    assert found["dee"].notebook.parent.name == "sub"
    assert "not a readable zip" in found["eve"].problem and "no .ipynb" in found["fay"].problem


def test_shards_split_a_class_into_disjoint_covering_parts() -> None:
    subs = [intake.Submission(f"s{i:02d}", "x") for i in range(11)]
    parts = [intake.shard(subs, f"{i}/3") for i in (1, 2, 3)]
    names = [s.student for part in parts for s in part]
    assert sorted(names) == [s.student for s in subs] and len(set(names)) == 11
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for bad in ("0/3", "4/3", "x", "1-3"):
        with pytest.raises(ValueError):
            intake.shard(subs, bad)


def test_leak_check_finds_solution_and_hidden_lines(tmp_path: Path, lab: course.Lab) -> None:
    fake = copy.deepcopy(lab)
    fake.root = tmp_path
    (tmp_path / "labs" / LAB).mkdir(parents=True)
    clean = (ROOT / "labs" / LAB / f"{LAB}.ipynb").read_text()
    (tmp_path / "labs" / LAB / f"{LAB}.ipynb").write_text(clean)
    assert check.leaks(tmp_path, [fake]) == []
    secret = sorted(check.secret_lines(lab))[0]
    (tmp_path / "labs" / LAB / "notes.txt").write_text("copied: " + secret)
    (tmp_path / "labs" / LAB / "marker.py").write_text("### BEGIN HIDDEN TESTS")
    found = check.leaks(tmp_path, [fake])
    assert any("notes.txt" in f and "solutions or hidden tests" in f for f in found)
    assert any("marker.py" in f and "marker" in f for f in found)


@pytest.mark.parametrize("name", course.lab_names(ROOT))
def test_leak_check_of_one_lab_agrees_with_all(name: str) -> None:
    """`check LAB` alone must not call a line secret that another lab prints in the open
    (``super().__init__()`` in lab 7's solution and in lab 6's released scaffold)."""
    assert check.leaks(ROOT, [course.load_lab(name, ROOT)]) == []


def test_stale_release_is_reported(tmp_path: Path, lab: course.Lab) -> None:
    fake = copy.deepcopy(lab)
    fake.root = tmp_path
    fresh = ROOT / "labs" / LAB
    (tmp_path / "labs" / LAB).mkdir(parents=True)
    assert any("missing" in p for p in check.stale(fake, fresh))
    (tmp_path / "labs" / LAB / f"{LAB}.ipynb").write_text((fresh / f"{LAB}.ipynb").read_text() + " ")
    assert any("differs from a fresh release" in p for p in check.stale(fake, fresh))


@pytest.mark.parametrize("status, says, never", [
    ("failed: the notebook is not valid JSON", "could not be graded", "held for your instructor"),
    ("review: tampering? cell 3, line 2: sys.modules", "held for your instructor", "Fix the problem"),
    ("rejected: tampering? cell 3, line 2", "did not accept", "could not be graded"),
])
def test_a_page_without_a_final_score_says_why(status: str, says: str, never: str) -> None:
    from autograder.feedback import _failure_page

    page = _failure_page({"lab": "lab02-convolution", "student": "ann", "status": status,
                          "notes": ["<script>x</script>"]})
    assert says in page and never not in page
    assert "<script>" not in page and "&lt;script&gt;" in page
