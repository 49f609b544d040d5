"""``dlmi-grader validate``: a student's check before hand-in, run the way the grader runs it.

The reference is the RELEASED lab (what students get; never the solutions): the course
repository's ``labs/`` when run inside it, as last committed to git (a student who works in
``labs/`` edits the working copy), else the copy installed with the package (``dlmi_labs``). The
hand-in is rebuilt from it like the grader does (:func:`autograder.notebook.rebuild`: deleted or
edited test cells restored), its cells run in a local kernel and every visible test is judged
outside the kernel (:func:`autograder.grade.grade_job`, isolation ``none``: a student cannot
sandbox). Each test's name, points and result are printed in full; test cells the student
changed or deleted are named. A test cell the release shows without code holds hidden tests,
which only the grader runs. Exit status: 0 all visible tests pass, 1 otherwise, 2 unusable input.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from . import course, grade, notebook
from .errors import SubmissionFailure

LABS_PACKAGE = "dlmi_labs"  # labs/ installed as package data (pyproject's [tool.setuptools])
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Unusable(Exception):
    """Input validate cannot check (not a notebook, no such lab, no released labs): exit status 2."""


@dataclass
class Reference:
    """A released lab: its notebook, where it was read from and the folder of files released beside it."""

    name: str
    nb: NotebookNode
    origin: str
    folder: Path


def labs_folder(root: str | os.PathLike | None = None) -> Path:
    """The released labs: ``<course root>/labs`` when run inside the course repository (or ``root``
    given), else the copy installed with the package."""
    try:
        here = course.course_root(root) / "labs"
        if here.is_dir():
            return here
    except FileNotFoundError:
        pass
    if root:
        raise Unusable(f"{root} holds no labs/ folder")
    spec = importlib.util.find_spec(LABS_PACKAGE)
    for folder in map(Path, spec.submodule_search_locations or []) if spec else []:
        if folder.is_dir():
            return folder
    raise Unusable("no released labs found: run inside the course repository, or install the course "
                   "(pip install <repository>) so that its labs come with it")


def released_lab_names(folder: Path) -> list[str]:
    """Labs released in ``folder``: sub-folders holding a notebook of the same name."""
    return sorted(p.name for p in folder.iterdir() if (p / f"{p.name}.ipynb").is_file())


def read_released(path: Path) -> tuple[NotebookNode, str]:
    """A released notebook as last committed when it lies in a git checkout, else the file as it is;
    and a description of which it was."""
    try:
        out = subprocess.run(["git", "-C", str(path.parent), "show", f"HEAD:./{path.name}"],
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is not None and out.returncode == 0:
        committed = out.stdout.decode("utf-8")
        edited = path.read_bytes().decode("utf-8", "replace") != committed
        return nbformat.reads(committed, as_version=course.NB_VERSION), (
            f"{path} as committed to git" + (" (your working copy differs from it)" if edited else ""))
    return nbformat.read(path, as_version=course.NB_VERSION), str(path)


def load_reference(student: NotebookNode, filename: str, lab: str | None, folder: Path) -> Reference:
    """The released lab ``student`` belongs to: ``lab`` if given (refused when the notebook is another
    lab's), else the lab sharing most cells with it, as the grader's intake decides."""
    names = released_lab_names(folder)
    if not names:
        raise Unusable(f"no released labs in {folder}")
    if lab is not None and lab not in names:
        raise Unusable(f"unknown lab {lab!r}; the labs are: {', '.join(names)}")
    refs = {name: read_released(folder / name / f"{name}.ipynb") for name in names}
    ids = {name: notebook.lab_ids(nb) for name, (nb, _) in refs.items()}
    if lab is None:
        keys = notebook.lab_ids(student)
        overlap, lab = max((len(keys & ids[name]), name) for name in names)
        if not overlap:
            raise Unusable(f"{filename} holds none of the cells of any lab ({', '.join(names)}): validate the "
                           "lab's notebook itself (with its cells), or name the lab with --lab")
    try:
        notebook.identify(student, lab, ids, filename)
    except SubmissionFailure as failure:
        raise Unusable(failure.reason) from None
    nb, origin = refs[lab]
    return Reference(lab, nb, origin, folder / lab)


def hidden_only(cell: NotebookNode) -> bool:
    """A released test cell without code: nbgrader removed its hidden tests, which only the grader runs."""
    return not ast.parse(cell.source).body


def _restored(cell: NotebookNode) -> bool:
    """A cell the grader always takes from the lab: a test or a read-only cell (not an answer)."""
    meta = notebook.nbgrader_meta(cell)
    return bool(notebook.grade_id(cell)) and not meta.get("solution") and \
        any(meta.get(k) for k in ("grade", "locked", "task"))


def changed_cells(student: NotebookNode, reference: NotebookNode) -> list[str]:
    """The lab's tests and read-only cells that ``student`` deleted or changed, in words."""
    mine: dict[str, NotebookNode] = {}
    for cell in student.cells:
        gid = notebook.grade_id(cell)
        if gid and gid not in mine:
            mine[gid] = cell
    lines = []
    for cell in reference.cells:
        if not _restored(cell):
            continue
        gid = notebook.grade_id(cell)
        kind = "test cell" if notebook.is_test(cell) else "read-only cell"
        theirs = mine.get(gid) if gid else None
        if theirs is None:
            lines.append(f"{kind} {gid!r} was deleted (or its grading metadata removed)")
        elif theirs.cell_type != cell.cell_type or theirs.source.strip() != cell.source.strip():
            lines.append(f"{kind} {gid!r} was changed")
        elif notebook.nbgrader_meta(theirs).get("points") != notebook.nbgrader_meta(cell).get("points"):
            lines.append(f"{kind} {gid!r} had its points changed")
    return lines


def _pack(ref: Reference) -> grade.LabPack:
    """What the grader's worker needs, with the released lab as source and blank: only visible tests."""
    settings = dict(ref.nb.metadata.get("dlmi", {}))
    files = {p.name: str(p) for p in sorted(ref.folder.iterdir())
             if p.is_file() and p.name != f"{ref.name}.ipynb" and not p.name.startswith(".")}
    return grade.LabPack(ref.name, dict(ref.nb), dict(ref.nb), settings, files, notebook.lab_ids(ref.nb),
                         env={"DLMI_DATA": os.environ.get("DLMI_DATA", "auto")},  # the data the student uses
                         heldout_seed=secrets.randbits(62))  # no hidden test runs here: no course secret needed


def run(path: Path, ref: Reference, root: Path) -> dict[str, Any]:
    """Grade ``path`` against ``ref`` in one local kernel (isolation ``none``); the grader's result record."""
    device, gpus = grade.resolve_device(os.environ.get("DLMI_DEVICE") or "auto")
    options = grade.Options(device=device, workers=1, level="none", gpus=gpus)
    lab = course.Lab(ref.name, root, ref.nb)
    job = grade.Job(ref.name, "you", path.name, str(path))
    with grade.Pool(options, root, [lab], 1) as pool:
        return pool.run([job], {ref.name: _pack(ref)}, lambda res: None)[0]


def _text(outputs: list[dict[str, Any]]) -> str:
    parts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") == "error":
            parts.append(f"{out.get('ename')}: {out.get('evalue')}\n")
        elif "text/plain" in out.get("data", {}):
            parts.append(str(out["data"]["text/plain"]) + "\n")
    return _ANSI.sub("", "".join(parts))


def _points(n: float) -> str:
    return f"{n:g} point" + ("" if n == 1 else "s")


def _indent(text: str, prefix: str = "      ") -> str:
    if not text.strip():
        return ""
    return "".join(prefix + line for line in text.strip("\n").splitlines(keepends=True)) + "\n"


def report(res: dict[str, Any], ref: Reference, changes: list[str]) -> tuple[str, bool]:
    """The text a student reads, and whether every visible test passed (and the grader would score it)."""
    lines = [f"Lab {ref.name}; reference: the released lab, {ref.origin}\n"]
    if changes:
        lines.append("\nYou changed or deleted test cells of the lab; the lab's own versions were restored "
                     "and run instead (the grader does the same):\n")
        lines += [f"  - {c}\n" for c in changes]
    graded = nbformat.reads(res["_notebook"], as_version=4) if res.get("_notebook") else None
    status = str(res.get("status"))
    if graded is None or status.split(":")[0] not in ("graded", "review"):
        lines.append(f"\nYour notebook could not be graded: {status}\nThe grader would give it no score. "
                     "Fix this and validate again.\n")
        return "".join(lines), False
    outputs = {notebook.grade_id(c): c.get("outputs", []) for c in graded.cells if notebook.is_test(c)}
    by_gid = {t["grade_id"]: t for t in res["tests"]}
    visible = passed = 0
    got = most = hidden_points = 0.0
    lines.append("\nTests:\n")
    for cell in ref.nb.cells:
        if not notebook.is_test(cell):
            continue
        gid = notebook.grade_id(cell)
        points = float(notebook.nbgrader_meta(cell).get("points", 0))
        if hidden_only(cell):
            hidden_points += points
            lines.append(f"  ·  {gid}  ({_points(points)}): hidden tests, checked only by the grader\n")
            continue
        test = by_gid[gid]
        visible += 1
        most += points
        passed += test["passed"]
        got += test["points"]
        mark = "✔ passed" if test["passed"] else "✘ failed"
        lines.append(f"  {mark[0]}  {gid}  {test['points']:g} / {_points(points)}: {mark[2:].upper()}\n")
        said = f"{mark} — {test['points']:g} / {points:g} points"  # the grader's own line (grade._report)
        text = _text(outputs.get(gid, []))
        lines.append(_indent("".join(x for x in text.splitlines(keepends=True) if x.rstrip("\n") != said)))
    errors = [c for c in graded.cells if c.cell_type == "code" and not notebook.is_test(c)
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    if errors:
        lines.append("\nCells of yours that raised an error (the tests after them may fail because of it):\n")
        for cell in errors:
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            error = next(o for o in cell.outputs if o.get("output_type") == "error")
            lines.append(f"  - the cell starting `{first.strip()}`:\n")
            lines.append(_indent(_ANSI.sub("", "\n".join(error.get("traceback") or [])) or
                                 f"{error.get('ename')}: {error.get('evalue')}"))
    written = [c for c in ref.nb.cells if notebook.is_manual(c)]
    if written:
        answers = {notebook.grade_id(c): c.source for c in graded.cells if notebook.is_manual(c)}
        lines.append("\nWritten answers (graded by your instructor, by hand):\n")
        for cell in written:
            gid = notebook.grade_id(cell)
            blank = answers.get(gid, "").strip() in ("", cell.source.strip())
            lines.append(f"  -  {gid}  ({_points(float(notebook.nbgrader_meta(cell).get('points', 0)))}): "
                         + ("NOT ANSWERED YET\n" if blank else "answered\n"))
    lines += [f"\nNote: {note}\n" for note in res.get("notes", [])]
    ok = passed == visible and status == "graded"
    if status.startswith("review"):
        lines.append("\nThe grader would hold this notebook for your instructor to review: "
                     f"{status[len('review: '):]}\n"
                     "Its score would count only once your instructor accepts it: remove that code.\n")
    lines.append(f"\nVisible tests: {passed} of {visible} passed ({got:g} of {most:g} points). Hidden tests "
                 f"({hidden_points:g} points) and written answers are graded only after you hand in.\n")
    lines.append("OK: every visible test passes.\n" if ok else "NOT OK: see above.\n")
    return "".join(lines), ok


def main(notebook_path: str, lab: str | None = None, root: str | None = None) -> int:
    """Validate one notebook; print the report; return the exit status (0 ok, 1 failing, 2 unusable)."""
    path = Path(notebook_path)
    try:
        if not path.is_file():
            raise Unusable(f"{notebook_path} is not a file: give the path of your lab notebook (.ipynb)")
        try:
            student = notebook.read_notebook(path)
        except SubmissionFailure as failure:
            raise Unusable(failure.reason) from None
        folder = labs_folder(root)
        ref = load_reference(student, notebook.display_name(path.name), lab, folder)
    except Unusable as err:
        print(f"dlmi-grader validate: {err}", file=sys.stderr)
        return 2
    changes = changed_cells(student, ref.nb)
    print(f"Running {path} as the grader does (a fresh kernel, every cell in order, then the tests)…",
          file=sys.stderr, flush=True)
    root_dir = folder.parent if (folder.parent / "solutions").is_dir() else path.resolve().parent
    text, ok = report(run(path.resolve(), ref, root_dir), ref, changes)
    sys.stdout.write(text)
    return 0 if ok else 1
