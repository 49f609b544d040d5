"""Every lab follows the course's grading conventions (read from solutions/, nothing is graded).

* Test cells are named ``test_<part>`` / ``test_<part>_<case>`` (visible) and
  ``test_<part>_hidden`` / ``test_<part>_hidden_<case>`` (hidden tests inside).
* Every hidden test cell has a visible test cell of the same ``<part>`` before it, so that each
  graded behaviour can be checked by the student before handing in.
* The header's table of points agrees with the cells: each row's points (all the numbers of its
  last column) add up to the points of the graded cells in that part's section.
* The header tells students how to check their notebook before handing it in.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from autograder import notebook

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted(p.name for p in (ROOT / "solutions").iterdir() if (p / f"{p.name}.ipynb").is_file())

CHECK_PARAGRAPH = (
    "**Check before you hand in.** `dlmi-grader validate {lab}.ipynb` runs the visible tests the way "
    "the grader will — with this lab's own test cells put back if one was changed or deleted — and prints "
    "every result in full; it says so when a test cell was changed. JupyterLab's *Validate* button only runs "
    "the notebook as it is, so it cannot notice an edited or deleted test.")
TEST_ID = re.compile(r"test_[a-z0-9_]+")
HIDDEN_ID = re.compile(r"test_(?P<part>[a-z0-9_]+?)_hidden(_[a-z0-9_]+)?")
ROW = re.compile(r"^\|\s*(?P<part>[0-9]+[a-z]?)\s*\|.*\|(?P<points>[^|]*)\|\s*$")
HEADING = re.compile(r"^#{2,4}\s+(?P<part>[0-9]+[a-z]?)\.\s")


def _lab(lab: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "solutions" / lab / f"{lab}.ipynb", as_version=4)


def _tests(nb: nbformat.NotebookNode) -> list[tuple[str, bool]]:
    """(grade_id, hidden) of the autograded test cells, in notebook order."""
    return [(notebook.grade_id(c), notebook.has_hidden(c)) for c in nb.cells if notebook.is_test(c)]


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("lab", LABS)
def test_test_cells_are_named_visible_or_hidden(lab: str) -> None:
    for gid, hidden in _tests(_lab(lab)):
        assert TEST_ID.fullmatch(gid), f"{lab}: test cell {gid!r} is not named test_<part>[_<case>]"
        if hidden:
            assert HIDDEN_ID.fullmatch(gid), \
                f"{lab}: {gid!r} holds hidden tests: name it test_<part>_hidden or test_<part>_hidden_<case>"
        else:
            assert "_hidden" not in gid, f"{lab}: {gid!r} has no hidden tests but is named like a hidden test cell"


def _without_sibling(tests: list[tuple[str, bool]]) -> list[str]:
    """The hidden test cells with no visible ``test_<part>`` / ``test_<part>_<case>`` cell before them."""
    seen: list[str] = []
    missing = []
    for gid, hidden in tests:
        if not hidden:
            seen.append(gid)
            continue
        match = HIDDEN_ID.fullmatch(gid)
        part = match["part"] if match else gid
        if not any(v == f"test_{part}" or v.startswith(f"test_{part}_") for v in seen):
            missing.append(f"{gid} (part {part!r})")
    return missing


@pytest.mark.parametrize("lab", LABS)
def test_every_hidden_test_has_a_visible_sibling_before_it(lab: str) -> None:
    missing = _without_sibling(_tests(_lab(lab)))
    assert not missing, (f"{lab}: hidden test cells without a visible test_<part> cell before them: "
                         f"{', '.join(missing)}")


def _table(header: str) -> dict[str, float]:
    """Part label -> the sum of the numbers in the last column of its row of the header's table."""
    rows = {}
    for line in header.splitlines():
        if (row := ROW.match(line.strip())) and not set(row["points"].strip()) <= set("-: "):
            rows[row["part"]] = sum(float(n) for n in re.findall(r"\d+(?:\.\d+)?", row["points"]))
    return rows


def _cell_points(nb: nbformat.NotebookNode, parts: set[str]) -> tuple[dict[str, float], list[str]]:
    """Points of the graded cells under each part's heading (``## 3.`` or ``### 2a.``), and the graded
    cells found before any part's heading."""
    points: dict[str, float] = {p: 0.0 for p in parts}
    current, orphans = None, []
    for cell in nb.cells[1:]:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if (heading := HEADING.match(line)) and heading["part"] in parts:
                    current = heading["part"]
        meta = notebook.nbgrader_meta(cell)
        if meta.get("grade"):
            if current is None:
                orphans.append(str(meta.get("grade_id")))
            else:
                points[current] += float(meta.get("points", 0))
    return points, orphans


@pytest.mark.parametrize("lab", LABS)
def test_header_table_matches_the_points_of_the_cells(lab: str) -> None:
    nb = _lab(lab)
    table = _table(nb.cells[0].source)
    assert table, f"{lab}: the header has no table of parts and points"
    cells, orphans = _cell_points(nb, set(table))
    assert not orphans, f"{lab}: graded cells before the heading of any part in the table: {orphans}"
    wrong = {part: (table[part], cells[part]) for part in table if table[part] != cells[part]}
    assert not wrong, f"{lab}: part: (points in the table, points of the cells under its heading): {wrong}"
    total = sum(float(notebook.nbgrader_meta(c).get("points", 0)) for c in nb.cells
                if notebook.nbgrader_meta(c).get("grade"))
    assert sum(table.values()) == total, f"{lab}: the table adds up to {sum(table.values())}, the cells to {total}"


@pytest.mark.parametrize("lab", LABS)
def test_header_says_how_to_check_before_handing_in(lab: str) -> None:
    paragraph = CHECK_PARAGRAPH.format(lab=lab)
    if _words(paragraph) not in _words(_lab(lab).cells[0].source):
        pytest.fail(f"{lab}: the header lacks this paragraph (verbatim, with the lab's file name):\n{paragraph}")


def test_the_rules_catch_what_they_are_for() -> None:
    """The checks above on small made-up labs: a missing or late visible sibling, points that disagree."""
    assert _without_sibling([("test_f", False), ("test_f_hidden", True), ("test_f_hidden_edge", True)]) == []
    assert _without_sibling([("test_f_hidden", True), ("test_f", False)]) == ["test_f_hidden (part 'f')"]
    assert _without_sibling([("test_f_x", False), ("test_g_hidden", True)]) == ["test_g_hidden (part 'g')"]
    cell = lambda gid, points: nbformat.v4.new_code_cell(  # noqa: E731
        "pass", metadata={"nbgrader": {"grade": True, "grade_id": gid, "points": points, "solution": False}})
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Lab"), cell("test_early", 1), nbformat.v4.new_markdown_cell("## 1. One"),
        cell("test_f", 1), cell("test_f_hidden", 2), nbformat.v4.new_markdown_cell("### 2a. Two"), cell("test_g", 4)])
    assert _cell_points(nb, {"1", "2a"}) == ({"1": 3.0, "2a": 4.0}, ["test_early"])


def test_the_table_parser_reads_every_form_of_the_points_column() -> None:
    header = ("| part | what | points (visible + hidden tests) |\n|---|---|---|\n"
              "| 1 | `a` | 1 + 2 |\n| 2b | `b`, `c` | 1 + 2, 1 + 1 |\n| 3 | written | 3 |\n")
    assert _table(header) == {"1": 3.0, "2b": 5.0, "3": 3.0}
    assert HIDDEN_ID.fullmatch("test_conv_output_size_hidden_dilation")["part"] == "conv_output_size"
    assert HIDDEN_ID.fullmatch("test_max_pool2d_hidden")["part"] == "max_pool2d"
