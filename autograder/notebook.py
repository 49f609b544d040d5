"""Read what a student handed in and rebuild the notebook that gets graded.

:func:`read_notebook` turns a file into a notebook or a clear refusal. :func:`rebuild` puts every
cell the lab tracks back where the source has it: tests and locked cells come from the source
(deleted, edited, reordered or renamed copies change nothing; points are the source's), the
student's answers go into their slots (matched by ``grade_id``, then by order for a renamed id,
else the blank cell), and cells the student added follow the cell they followed.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .kernel import SubmissionFailure

MAX_NOTEBOOK_BYTES = 64 << 20
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def nbgrader_meta(cell: NotebookNode) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def grade_id(cell: NotebookNode) -> str | None:
    gid = nbgrader_meta(cell).get("grade_id")
    return gid if isinstance(gid, str) and gid else None


def is_test(cell: NotebookNode) -> bool:
    """An autograded test cell: graded, not an answer, code."""
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and cell.cell_type == "code"


def is_answer(cell: NotebookNode) -> bool:
    return bool(nbgrader_meta(cell).get("solution"))


def is_manual(cell: NotebookNode) -> bool:
    """An answer graded by hand (nbgrader: grade and solution)."""
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and bool(meta.get("solution"))


def has_hidden(cell: NotebookNode) -> bool:
    return HIDDEN_BEGIN in cell.source


def read_notebook(path: Path) -> NotebookNode:
    """Parse a submitted file as an nbformat-4 notebook, or raise ``failed`` with the reason."""
    name = path.name
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SubmissionFailure("failed", f"cannot read {name}: {err.strerror}") from None
    if not raw.strip():
        raise SubmissionFailure("failed", f"{name} is empty")
    if len(raw) > MAX_NOTEBOOK_BYTES:
        raise SubmissionFailure("failed", f"{name} is larger than {MAX_NOTEBOOK_BYTES >> 20} MB")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise SubmissionFailure("failed", f"{name} is not a notebook (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise SubmissionFailure("failed", f"{name} is not a notebook: invalid JSON ({err.msg} at line {err.lineno}, "
                                f"column {err.colno})") from None
    if not isinstance(data, dict) or not ("cells" in data or "worksheets" in data):
        raise SubmissionFailure("failed", f"{name} is JSON but not a Jupyter notebook (no cells)")
    major = data.get("nbformat")
    if major != 4:
        raise SubmissionFailure("failed", f"{name} is an nbformat {major} notebook; open it in Jupyter (4 or later), "
                                "save it and hand it in again")
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
    except Exception as err:  # nbformat raises many kinds of errors for malformed content
        raise SubmissionFailure("failed", f"{name} is a malformed notebook ({type(err).__name__}: {err})"[:400]) from None
    for cell in nb.cells:
        if not isinstance(cell.get("source"), str) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise SubmissionFailure("failed", f"{name} is a malformed notebook (a cell has no valid source or type)")
    return nb


def lab_ids(nb: NotebookNode) -> set[str]:
    """What identifies a lab's tracked cells: their ``grade_id``s and their notebook cell ids."""
    tracked = [c for c in nb.cells if grade_id(c)]
    return {grade_id(c) for c in tracked} | {f"id:{c['id']}" for c in tracked if c.get("id")}  # type: ignore[misc]


def identify(nb: NotebookNode, lab: str, labs: dict[str, set[str]], filename: str) -> None:
    """Refuse a notebook that is not ``lab``'s, naming the lab it belongs to when it is another's."""
    keys = {gid for c in nb.cells if (gid := grade_id(c))} | {f"id:{c['id']}" for c in nb.cells if c.get("id")}
    own = len(keys & labs[lab])
    best = max(((len(keys & ids), name) for name, ids in labs.items() if name != lab), default=(0, ""))
    if best[0] > own:
        raise SubmissionFailure("failed", f"{filename} is the notebook of {best[1]}, not of {lab}")
    if not own:
        raise SubmissionFailure("failed", f"{filename} holds none of {lab}'s cells (no cell ids match): "
                                "hand in the lab's notebook itself, not a copy of its code in a new notebook")


@dataclass
class Slot:
    """What goes at one source position."""

    source_cell: NotebookNode
    kind: str  # test | locked | answer | untracked


def _kind(cell: NotebookNode) -> str:
    meta = nbgrader_meta(cell)
    if grade_id(cell) is None:
        return "untracked"
    if meta.get("solution"):
        return "answer"
    if meta.get("grade") or meta.get("locked") or meta.get("task"):
        return "test" if is_test(cell) else "locked"
    return "untracked"


def rebuild(student: NotebookNode, source: NotebookNode, blank: NotebookNode) -> tuple[NotebookNode, list[str]]:
    """The notebook to grade and notes on what was restored (see the module docstring)."""
    notes: list[str] = []
    slots = [Slot(c, _kind(c)) for c in source.cells]
    by_gid = {grade_id(s.source_cell): s for s in slots if s.kind != "untracked"}
    gid_of_cell_id = {s.source_cell.get("id"): grade_id(s.source_cell) for s in slots if s.kind == "answer"}
    untracked_ids = {s.source_cell.get("id") for s in slots if s.kind == "untracked" and s.source_cell.get("id")}
    blank_by_gid = {grade_id(c): c for c in blank.cells if grade_id(c)}

    answers: dict[str, NotebookNode] = {}
    kept_untracked: dict[str, NotebookNode] = {}
    extras: dict[str | None, list[NotebookNode]] = {None: []}
    renamed: list[tuple[str | None, NotebookNode]] = []
    anchor: str | None = None
    for cell in student.cells:
        gid, cid = grade_id(cell), cell.get("id")
        if gid not in by_gid and is_answer(cell) and gid_of_cell_id.get(cid) not in (None, *answers):
            notes.append(f"answer cell {gid!r} graded as {gid_of_cell_id[cid]!r} (its id was changed)")
            gid = gid_of_cell_id[cid]
        slot = by_gid.get(gid) if gid else None
        if slot is not None and slot.kind == "answer" and gid not in answers:
            answers[gid] = cell
            anchor = gid
        elif slot is not None:
            anchor = gid  # a test or locked cell: the source's copy is used
            if slot.kind == "answer":
                extras.setdefault(anchor, []).append(_plain(cell))
        elif gid and is_answer(cell):
            renamed.append((anchor, cell))
        elif gid and nbgrader_meta(cell).get("grade"):
            notes.append(f"test cell {gid!r} is not in the lab; the lab's tests were run instead")
        elif cid in untracked_ids and cid not in kept_untracked:
            kept_untracked[cid] = cell
            anchor = f"id:{cid}"
        else:
            extras.setdefault(anchor, []).append(_plain(cell))

    missing = [gid for gid, s in by_gid.items() if s.kind == "answer" and gid not in answers]
    for where, cell in renamed:
        if missing:
            gid = missing.pop(0)
            notes.append(f"answer cell {grade_id(cell)!r} graded as {gid!r} (its id was changed)")
            answers[gid] = cell
        else:
            extras.setdefault(where, []).append(_plain(cell))

    cells: list[NotebookNode] = list(extras[None])
    for slot in slots:
        src = slot.source_cell
        gid = grade_id(src)
        if slot.kind == "answer":
            if gid in answers:
                cell = copy.deepcopy(src)
                cell.source = answers[gid].source
                cell.attachments = answers[gid].get("attachments", {}) if src.cell_type == "markdown" else None
                if cell.attachments is None:
                    cell.pop("attachments", None)
            else:
                notes.append(f"answer cell {gid!r} is missing; the blank cell was graded")
                cell = copy.deepcopy(blank_by_gid.get(gid, src))
            cells.append(_clean(cell))
            cells.extend(extras.get(gid, []))
        elif slot.kind in ("test", "locked"):
            cells.append(_clean(copy.deepcopy(src)))
            cells.extend(extras.get(gid, []))
        else:
            cid = src.get("id")
            if cid in kept_untracked:
                cells.append(_clean(copy.deepcopy(kept_untracked[cid])))
                cells.extend(extras.get(f"id:{cid}", []))
    nb = copy.deepcopy(source)
    nb.cells = cells
    for i, cell in enumerate(nb.cells):  # unique ids, in order (a student may have duplicated cells)
        cell.id = f"g{i:03d}-{(cell.get('id') or 'cell')[:40]}"
    return nb, notes


def _plain(cell: NotebookNode) -> NotebookNode:
    """A student's own cell: no grading metadata (it cannot pose as a graded cell)."""
    cell = copy.deepcopy(cell)
    cell.get("metadata", {}).pop("nbgrader", None)
    return _clean(cell)


def _clean(cell: NotebookNode) -> NotebookNode:
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
    return cell


def hide_hidden_tests(source: str, placeholder: str = "# hidden tests (not shown)") -> str:
    """``source`` with every hidden-test region replaced by ``placeholder``."""
    out, inside = [], False
    for line in source.splitlines():
        if HIDDEN_BEGIN in line:
            inside = True
            out.append(line[: line.index(HIDDEN_BEGIN)] + placeholder)
        elif HIDDEN_END in line:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)
