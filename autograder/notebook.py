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
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from .errors import SubmissionFailure

MAX_NOTEBOOK_BYTES = 64 << 20
MAX_DEPTH = 64           # nesting of lists and objects a notebook may have
MAX_INT_DIGITS = 64      # digits of an integer in a notebook
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


def display_name(name: str, limit: int = 120) -> str:
    """``name`` as it may be printed: undecodable bytes as U+FFFD, control characters as ``?``."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = "".join("?" if ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _TooLong(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _TooLong(text)
    return int(text)


def _depth(value: object) -> int:
    """How deeply ``value`` nests lists and objects (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _shape_problem(data: dict) -> str | None:
    """What is wrong with the notebook's structure, in a student's words (None: nothing found)."""
    if not isinstance(data.get("metadata", {}), dict):
        return "the notebook's metadata is not an object"
    cells = data.get("cells")
    if not isinstance(cells, list):
        return "the notebook's cells are not a list"
    for number, cell in enumerate(cells, 1):
        where = f"cell {number}"
        if not isinstance(cell, dict):
            return f"the notebook has a cell that is not an object ({where})"
        if cell.get("cell_type") not in ("code", "markdown", "raw"):
            return f"the notebook has a cell of unknown type ({where})"
        source = cell.get("source")
        if not (isinstance(source, str) or isinstance(source, list) and all(isinstance(x, str) for x in source)):
            return f"the notebook has a cell whose source is not text ({where})"
        if "id" in cell and not isinstance(cell["id"], str):
            return f"the notebook has a cell whose id is not text ({where})"
        meta = cell.get("metadata", {})
        if not isinstance(meta, dict):
            return f"the notebook has a cell whose metadata is not an object ({where})"
        if not isinstance(meta.get("nbgrader", {}), dict):
            return f"the notebook has a cell whose nbgrader metadata is not an object ({where})"
        if not isinstance(cell.get("attachments", {}), dict):
            return f"the notebook has a cell whose attachments are not an object ({where})"
        outputs = cell.get("outputs", [])
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            return f"the notebook has a cell whose outputs are not a list of objects ({where})"
        count = cell.get("execution_count")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
            return f"the notebook has a cell whose execution count is not a number ({where})"
    return None


def read_notebook(path: Path) -> NotebookNode:
    """Parse a submitted file as an nbformat-4 notebook, or raise ``failed`` with the reason.

    Every problem is said in a student's words and names the file, never a grader path: the size
    is checked before reading, then JSON (numbers of at most ``MAX_INT_DIGITS`` digits, nesting of
    at most ``MAX_DEPTH`` levels), then the notebook's shape.
    """
    name = display_name(path.name)
    try:
        return _read_notebook(path, name)
    except SubmissionFailure:
        raise
    except RecursionError:
        raise SubmissionFailure("failed", f"{name} is not a notebook we can read: it is nested too deeply") from None
    except MemoryError:
        raise SubmissionFailure("failed", f"{name} is too large to read") from None
    except Exception as err:  # noqa: BLE001 — whatever a hostile file does, it is this hand-in's failure
        raise SubmissionFailure("failed", f"{name} is a malformed notebook ({type(err).__name__})") from None


def _read_notebook(path: Path, name: str) -> NotebookNode:
    try:
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            raise SubmissionFailure("failed", f"{name} is larger than {MAX_NOTEBOOK_BYTES >> 20} MB")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_NOTEBOOK_BYTES + 1)
    except OSError as err:
        raise SubmissionFailure("failed", f"cannot read {name}: {err.strerror or type(err).__name__}") from None
    if len(raw) > MAX_NOTEBOOK_BYTES:  # it grew while being read
        raise SubmissionFailure("failed", f"{name} is larger than {MAX_NOTEBOOK_BYTES >> 20} MB")
    if not raw.strip():
        raise SubmissionFailure("failed", f"{name} is empty")
    try:
        data = json.loads(raw.decode("utf-8-sig"), parse_int=_parse_int)
    except UnicodeDecodeError:
        raise SubmissionFailure("failed", f"{name} is not a notebook (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise SubmissionFailure("failed", f"{name} is not a notebook: invalid JSON ({err.msg} at line {err.lineno}, "
                                f"column {err.colno})") from None
    except _TooLong:
        raise SubmissionFailure("failed", f"{name} is not a notebook we can read: it holds a number longer than "
                                f"{MAX_INT_DIGITS} digits") from None
    except RecursionError:
        raise SubmissionFailure("failed", f"{name} is not a notebook we can read: it is nested too deeply") from None
    if not isinstance(data, dict) or not ("cells" in data or "worksheets" in data):
        raise SubmissionFailure("failed", f"{name} is JSON but not a Jupyter notebook (no cells)")
    if _depth(data) > MAX_DEPTH:
        raise SubmissionFailure("failed", f"{name} is not a notebook we can read: it is nested too deeply "
                                f"(more than {MAX_DEPTH} levels)")
    major = data.get("nbformat")
    if major != 4:
        raise SubmissionFailure("failed", f"{name} is an nbformat {display_name(repr(major), 40)} notebook; open it in "
                                "Jupyter (4 or later), save it and hand it in again")
    shape = _shape_problem(data)
    if shape:
        raise SubmissionFailure("failed", f"{name} is a malformed notebook: {shape}")
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
    except Exception as err:  # nbformat raises many kinds of errors for malformed content
        reason = f"{name} is a malformed notebook ({type(err).__name__}: {err})"
        raise SubmissionFailure("failed", reason[:400]) from None
    for cell in nb.cells:
        if not isinstance(cell.get("source"), str) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise SubmissionFailure("failed", f"{name} is a malformed notebook (a cell has no valid source or type)")
    return nb


def lab_ids(nb: NotebookNode) -> set[str]:
    """What identifies a lab's tracked cells: their ``grade_id``s and their notebook cell ids."""
    tracked = [c for c in nb.cells if grade_id(c)]
    return {gid for c in tracked if (gid := grade_id(c))} | {f"id:{c['id']}" for c in tracked if c.get("id")}


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


@dataclass
class Layout:
    """The lab's source as slots, with the indexes the match needs."""

    slots: list[Slot]
    by_gid: dict[str, Slot]                  # tracked slots (answer, test, locked) by grade_id
    gid_of_cell_id: dict[str | None, str]    # answer slots' grade_id by their cell id
    untracked_ids: set[str]                  # cell ids of the source's untracked cells

    @classmethod
    def of(cls, source: NotebookNode) -> Layout:
        slots = [Slot(c, _kind(c)) for c in source.cells]
        return cls(slots, {gid: s for s in slots if s.kind != "untracked" and (gid := grade_id(s.source_cell))},
                   {s.source_cell.get("id"): gid for s in slots
                    if s.kind == "answer" and (gid := grade_id(s.source_cell))},
                   {cid for s in slots if s.kind == "untracked" and (cid := s.source_cell.get("id"))})


@dataclass
class Match:
    """Where the student's cells go: answers by grade_id, kept untracked cells by cell id, and the
    student's other cells after the tracked cell (``anchor``) they followed."""

    notes: list[str] = field(default_factory=list)
    answers: dict[str, NotebookNode] = field(default_factory=dict)
    kept_untracked: dict[str, NotebookNode] = field(default_factory=dict)
    extras: dict[str | None, list[NotebookNode]] = field(default_factory=lambda: {None: []})
    renamed: list[tuple[str | None, NotebookNode]] = field(default_factory=list)
    anchor: str | None = None

    def extra(self, cell: NotebookNode, where: str | None) -> None:
        self.extras.setdefault(where, []).append(_plain(cell))


def _match_cell(cell: NotebookNode, layout: Layout, m: Match) -> None:
    """Put one student cell: into its answer slot, after its anchor, or aside as a renamed answer."""
    gid, cid = grade_id(cell), cell.get("id")
    if gid not in layout.by_gid and is_answer(cell) and layout.gid_of_cell_id.get(cid) not in (None, *m.answers):
        m.notes.append(f"answer cell {gid!r} graded as {layout.gid_of_cell_id[cid]!r} (its id was changed)")
        gid = layout.gid_of_cell_id[cid]
    slot = layout.by_gid.get(gid) if gid else None
    if slot is not None and slot.kind == "answer" and gid not in m.answers:
        m.answers[gid] = cell  # type: ignore[index]
        m.anchor = gid
    elif slot is not None:
        m.anchor = gid  # a test or locked cell: the source's copy is used
        if slot.kind == "answer":
            m.extra(cell, m.anchor)
    elif gid and is_answer(cell):
        m.renamed.append((m.anchor, cell))
    elif gid and nbgrader_meta(cell).get("grade"):
        m.notes.append(f"test cell {gid!r} is not in the lab; the lab's tests were run instead")
    elif cid in layout.untracked_ids and cid not in m.kept_untracked:
        m.kept_untracked[cid] = cell
        m.anchor = f"id:{cid}"
    else:
        m.extra(cell, m.anchor)


def match(student: NotebookNode, layout: Layout) -> Match:
    """Match the student's cells to the lab's slots; answers whose id changed fill the missing
    answer slots in order, the rest stay where the student put them."""
    m = Match()
    for cell in student.cells:
        _match_cell(cell, layout, m)
    missing = [gid for gid, s in layout.by_gid.items() if s.kind == "answer" and gid not in m.answers]
    for where, cell in m.renamed:
        if missing:
            gid = missing.pop(0)
            m.notes.append(f"answer cell {grade_id(cell)!r} graded as {gid!r} (its id was changed)")
            m.answers[gid] = cell
        else:
            m.extra(cell, where)
    return m


def _answer_cell(src: NotebookNode, m: Match, blank_by_gid: dict[str, NotebookNode]) -> NotebookNode:
    """The source's answer cell holding the student's answer, or the blank cell when there is none."""
    gid = grade_id(src)
    if gid not in m.answers:
        m.notes.append(f"answer cell {gid!r} is missing; the blank cell was graded")
        return copy.deepcopy(blank_by_gid.get(gid, src))  # type: ignore[arg-type]
    cell = copy.deepcopy(src)
    cell.source = m.answers[gid].source
    cell.attachments = m.answers[gid].get("attachments", {}) if src.cell_type == "markdown" else None
    if cell.attachments is None:
        cell.pop("attachments", None)
    return cell


def assemble(layout: Layout, m: Match, source: NotebookNode, blank: NotebookNode) -> NotebookNode:
    """The graded notebook in the source's order: answers and kept cells from the student, tests and
    locked cells from the source, each followed by the student's own cells that came after it."""
    blank_by_gid = {gid: c for c in blank.cells if (gid := grade_id(c))}
    cells: list[NotebookNode] = list(m.extras[None])
    for slot in layout.slots:
        src = slot.source_cell
        if slot.kind == "untracked":
            cid = src.get("id")
            if cid in m.kept_untracked:
                cells.append(_clean(copy.deepcopy(m.kept_untracked[cid])))
                cells.extend(m.extras.get(f"id:{cid}", []))
            continue
        cells.append(_clean(_answer_cell(src, m, blank_by_gid) if slot.kind == "answer" else copy.deepcopy(src)))
        cells.extend(m.extras.get(grade_id(src), []))
    nb = copy.deepcopy(source)
    nb.cells = cells
    for i, cell in enumerate(nb.cells):  # unique ids, in order (a student may have duplicated cells)
        cell.id = f"g{i:03d}-{(cell.get('id') or 'cell')[:40]}"
    return nb


def rebuild(student: NotebookNode, source: NotebookNode, blank: NotebookNode) -> tuple[NotebookNode, list[str]]:
    """The notebook to grade and notes on what was restored (see the module docstring):
    :func:`match` the student's cells to the lab's, then :func:`assemble` them in the lab's order."""
    layout = Layout.of(source)
    m = match(student, layout)
    return assemble(layout, m, source, blank), m.notes


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
