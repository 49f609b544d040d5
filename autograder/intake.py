"""Find one notebook per hand-in in a folder of hand-ins — every hand-in gets exactly one row.

Accepted, side by side in one folder:

* ``alice.ipynb`` — a notebook per student (the file name is the student id);
* ``alice.zip`` — an archive holding the notebook anywhere inside;
* ``alice/`` or ``lab02-convolution-alice/`` — a folder or a GitHub Classroom repository
  (``<lab>-<user>``) holding the notebook anywhere inside.

Extensions are matched case-insensitively (``.IPYNB``, ``.Zip``). Anything else found at the top
level — another kind of file, a symbolic link, a hidden (dot-named) entry — gets a row with the
reason it was refused; only operating-system litter (``.DS_Store``, ``__MACOSX``, ...) is skipped,
and each skip is reported. Reading one hand-in can never stop the class: whatever goes wrong
becomes that hand-in's ``problem`` (the file named, no grader path).

Where a hand-in holds several notebooks, one is graded and the choice is recorded (``choice``):
one of the lab's notebooks before a foreign one, an answered one before a blank-looking one, then
the one named like the lab
(``lab02 (1).ipynb``, ``Copy of lab02.ipynb`` count), then the one sharing most cells with the
lab. ``review`` is set when the choice deserves a look: two answered notebooks, or a
blank-looking pick beside a notebook that is not the lab's or could not be read.

A student's id depends on the hand-in's own name alone (see :func:`student_id`), so re-grading a
hand-in replaces exactly its own result.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from .notebook import MAX_NOTEBOOK_BYTES, display_name

MAX_UNZIPPED = 256 << 20        # bytes of notebooks one zip may unpack to
MAX_ZIP_BYTES = 1 << 30          # a zip larger than this is refused unread
MAX_MEMBERS = 20_000             # entries in one zip
MAX_FOLDER_ENTRIES = 50_000      # files and folders searched in one folder hand-in
MAX_CANDIDATES = 50              # notebooks compared in one hand-in
_SKIP_DIRS = {".ipynb_checkpoints", "__MACOSX", ".git", "__pycache__"}
LITTER = {".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX", ".ipynb_checkpoints", ".git", "__pycache__"}
NB_EXT, ZIP_EXT = ".ipynb", ".zip"


@dataclass
class Submission:
    """One hand-in: the notebook to grade, or why there is none."""

    student: str
    origin: str                 # what was handed in, relative to the submissions folder (printable)
    notebook: Path | None = None
    problem: str | None = None  # set when there is nothing to grade
    choice: str | None = None   # which notebook was picked and why, when there were several
    review: str | None = None   # why an instructor should look at this hand-in
    notes: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------- identity
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", text).strip("._-@")[:80]


def student_id(name: str, lab: str) -> str:
    """A file-system safe id from the hand-in's own name, without the GitHub Classroom prefix.

    ``alice.ipynb`` → ``alice``. Every other name — a zip, a folder, a Classroom repository, an
    odd spelling (``dan!.ipynb``, ``Ann Lee.IPYNB``, ``Dan.ipynb``) — gets its readable lower-case
    slug plus ``~`` and a short hash of the exact name (``alice~3f9c2a``), so two different
    hand-ins never share an id, in this run or any other, whatever else is present (and ids differ
    in more than case).
    """
    stem = name
    for ext in (NB_EXT, ZIP_EXT):
        if stem.lower().endswith(ext) and len(stem) > len(ext):
            stem = stem[: -len(ext)]
            break
    if stem.lower().startswith(lab.lower() + "-") and len(stem) > len(lab) + 1:
        stem = stem[len(lab) + 1:]
    slug = _slug(stem).lower() or "student"   # lower case: results also live on case-insensitive disks
    if name == slug + NB_EXT:
        return slug
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:6]
    return f"{slug}~{digest}"


# ------------------------------------------------------------------------------- plain reasons
def plain_reason(err: BaseException, *hide: Path) -> str:
    """An exception in words a student can act on, with no grader path in it."""
    if isinstance(err, (zlib.error, EOFError, zipfile.BadZipFile)) or "CRC" in str(err):
        return "its compressed data is corrupt"
    if isinstance(err, UnicodeDecodeError):
        return "a file name or text in it is not valid UTF-8"
    if isinstance(err, RecursionError):
        return "it is nested too deeply"
    if isinstance(err, MemoryError):
        return "it is too large to read"
    if isinstance(err, NotImplementedError):
        return "it uses a compression method that is not supported (use a plain zip)"
    if isinstance(err, RuntimeError) and "encrypted" in str(err):
        return "it is encrypted (password-protected)"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    text = f"{type(err).__name__}: {err}"
    for path in hide:
        text = text.replace(str(path), "…")
    return display_name(re.sub(r"(/[^\s/'\"]+)+/", "…/", text), 160)


# ---------------------------------------------------------------------------- choosing a notebook
def _name_rank(name: str, lab: str) -> int:
    """0 for ``<lab>.ipynb``, 1 for a renamed copy of it, 2 otherwise."""
    stem = name[: -len(NB_EXT)].lower() if name.lower().endswith(NB_EXT) else name.lower()
    if stem == lab.lower():
        return 0
    return 1 if lab.lower() in stem or lab.split("-")[0].lower() in stem else 2


@dataclass
class _Look:
    """What a quick look at one candidate notebook found."""

    overlap: int = 0          # cells sharing a grade_id with the lab
    answered: int = 0         # answer cells that differ from the blank lab
    readable: bool = True


def _look(path: Path, ids: set[str], blank: dict[str, str]) -> _Look:
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            return _Look(readable=False)
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
        cells = data.get("cells", []) if isinstance(data, dict) else []
        look = _Look()
        for cell in cells if isinstance(cells, list) else []:
            meta = cell.get("metadata", {}) if isinstance(cell, dict) else {}
            nbg = meta.get("nbgrader", {}) if isinstance(meta, dict) else {}
            gid = nbg.get("grade_id") if isinstance(nbg, dict) else None
            if not isinstance(gid, str) or gid not in ids:
                continue
            look.overlap += 1
            source = cell.get("source", "")
            source = "".join(s for s in source if isinstance(s, str)) if isinstance(source, list) else source
            if gid in blank and isinstance(source, str) and source.strip() != blank[gid]:
                look.answered += 1
        return look
    except Exception:  # noqa: BLE001 — an unreadable candidate is refused later, with its reason
        return _Look(readable=False)


def pick_notebook(folder: Path, lab: str, ids: set[str], blank: dict[str, str] | None = None,
                  where: str = "", ignored: list[str] | None = None
                  ) -> tuple[Path | None, str | None, str | None, list[str]]:
    """The notebook of ``lab`` in ``folder`` (searched recursively, links not followed).

    Returns (notebook or None, why it was chosen when there were several, a reason to review or
    None, the candidates as relative paths). ``blank`` maps the lab's answer ``grade_id``s to
    their blank source; ``ignored`` hears about notebooks left out (hidden, links, not files).
    """
    found, seen = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        seen += len(dirnames) + len(filenames)
        if seen > MAX_FOLDER_ENTRIES:
            if ignored is not None:
                ignored.append(f"searched only the first {MAX_FOLDER_ENTRIES} files and folders")
            break
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if not fname.lower().endswith(NB_EXT):
                continue
            why = ("a hidden file" if fname.startswith(".") else "a symbolic link" if path.is_symlink() else
                   None if path.is_file() else "not a regular file")
            if why is None:
                found.append(path)
            elif ignored is not None:
                ignored.append(f"left out {display_name(str(path.relative_to(folder)))!r} ({why})")
    found = found[:MAX_CANDIDATES]
    rel = [display_name(str(p.relative_to(folder))) for p in found]
    if not found:
        return None, None, None, []
    if len(found) == 1:  # nothing to choose: the reader says what is wrong with it, if anything
        return found[0], None, None, rel
    looks = {p: _look(p, ids, blank or {}) for p in found}
    use_answers = blank is not None

    def rank(p: Path) -> tuple:
        look = looks[p]
        blank_looking = use_answers and look.overlap > 0 and look.answered == 0
        return (not look.readable, use_answers and not look.overlap, blank_looking, _name_rank(p.name, lab),
                -look.overlap, len(p.parts), str(p))

    best = min(found, key=rank)
    look, picked = looks[best], display_name(str(best.relative_to(folder)))
    by_name = min(found, key=lambda p: (not looks[p].readable, _name_rank(p.name, lab), -looks[p].overlap,
                                        len(p.parts), str(p)))
    if by_name != best:
        other = display_name(str(by_name.relative_to(folder)))
        reason = (f"{other!r} is not the lab's notebook (no cell of the lab)" if not looks[by_name].overlap
                  else f"{other!r} looks blank and this one is answered")
    else:
        name_rank = _name_rank(best.name, lab)
        reason = ("it is named like the lab" if name_rank == 0 else
                  "its name is closest to the lab's" if name_rank == 1 else
                  f"it shares most cells with the lab ({look.overlap})")
    choice = f"{len(found)} notebooks in {where or 'the hand-in'}; graded {picked!r}: {reason}"
    review = None
    answered = [p for p in found if looks[p].answered]
    if use_answers and len(answered) > 1:
        others = ", ".join(repr(display_name(str(p.relative_to(folder)))) for p in answered if p != best)
        review = f"several answered notebooks: graded {picked!r}, not {others}"
    elif use_answers and look.overlap and not look.answered:
        unreadable = any(not looks[p].readable for p in found)
        foreign = any(looks[p].readable and not looks[p].overlap for p in found if p != best)
        if unreadable or foreign:
            review = f"graded {picked!r}, which looks blank, beside " + (
                "a notebook that could not be read" if unreadable else "a notebook that is not the lab's")
    return best, choice, review, rel


# ---------------------------------------------------------------------------------- archives
def _unzip_notebooks(archive: Path, into: Path, name: str) -> tuple[str | None, list[str]]:
    """Extract the notebooks of ``archive`` one by one; return (a problem refusing it all, notes).

    A member that cannot be unpacked (corrupt data, encrypted, too large) is left out with a note;
    the zip as a whole is refused only when it cannot be opened or is too large.
    """
    notes: list[str] = []
    size = archive.stat().st_size
    if size > MAX_ZIP_BYTES:
        return f"{name} is larger than {MAX_ZIP_BYTES >> 20} MB", notes
    try:
        zf = zipfile.ZipFile(archive)
    except Exception as err:  # noqa: BLE001 — any way a zip can fail to open is this hand-in's failure
        return f"{name} is not a readable zip archive ({plain_reason(err, archive, into)})", notes
    with zf:
        members = zf.infolist()
        if len(members) > MAX_MEMBERS:
            return f"{name} holds more than {MAX_MEMBERS} files", notes
        wanted = []
        for info in members:
            parts = Path(info.filename).parts
            if info.is_dir() or not info.filename.lower().endswith(NB_EXT) or _SKIP_DIRS & set(parts):
                continue
            if info.filename.startswith("/") or ".." in parts or any(p.startswith(".") for p in parts):
                notes.append(f"{name}: left out {display_name(info.filename)!r} (a hidden file or a path "
                             "leaving the archive)")
                continue
            wanted.append(info)
        declared = sum(i.file_size for i in wanted)
        if declared > MAX_UNZIPPED:
            return f"{name} unpacks to more than {MAX_UNZIPPED >> 20} MB of notebooks", notes
        for number, info in enumerate(wanted):
            member = display_name(info.filename)
            if info.file_size > MAX_NOTEBOOK_BYTES:
                notes.append(f"{name}: left out {member!r}: larger than {MAX_NOTEBOOK_BYTES >> 20} MB")
                continue
            # one folder per member keeps its name; the relative path stays for the choice
            target = into / f"m{number:05d}" / Path(*Path(info.filename).parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except Exception as err:  # noqa: BLE001 — one bad member does not refuse the others
                target.unlink(missing_ok=True)
                notes.append(f"{name}: could not unpack {member!r}: {plain_reason(err, archive, into)}")
    return None, notes


# ---------------------------------------------------------------------------------- intake
def _one(entry: Path, lab: str, ids: set[str], blank: dict[str, str] | None, scratch: Path) -> Submission:
    name = display_name(entry.name)
    sub = Submission(student_id(entry.name, lab), name)
    mode = entry.lstat().st_mode
    if stat.S_ISLNK(mode):
        sub.problem = f"{name} is a symbolic link; hand in the notebook itself"
    elif entry.name.startswith("."):
        sub.problem = f"{name} is a hidden file or folder (its name starts with a dot); rename it and hand it in again"
    elif stat.S_ISREG(mode) and entry.name.lower().endswith(NB_EXT):
        sub.notebook = entry
    elif stat.S_ISREG(mode) and entry.name.lower().endswith(ZIP_EXT):
        into = Path(tempfile.mkdtemp(prefix="zip-", dir=scratch))
        problem, sub.notes = _unzip_notebooks(entry, into, name)
        if problem:
            sub.problem = problem
        else:
            nb, sub.choice, sub.review, sub.candidates = pick_notebook(into, lab, ids, blank, name)
            sub.candidates = [c.split("/", 1)[-1] for c in sub.candidates]  # drop the per-member folder
            if sub.choice:
                sub.choice = re.sub(r"'m\d{5}/", "'", sub.choice)
                sub.review = sub.review and re.sub(r"'m\d{5}/", "'", sub.review)
            sub.notebook = nb
            if nb is None:
                sub.problem = f"{name} holds no .ipynb notebook" + (
                    f" that could be unpacked ({'; '.join(n.split(': ', 1)[-1] for n in sub.notes)})"
                    if sub.notes else "")
    elif stat.S_ISDIR(mode):
        nb, sub.choice, sub.review, sub.candidates = pick_notebook(entry, lab, ids, blank, name + "/", sub.notes)
        sub.notebook = nb
        if nb is None:
            sub.problem = f"{name}/ holds no .ipynb notebook" + (f" ({'; '.join(sub.notes)})" if sub.notes else "")
    else:
        sub.problem = f"{name} is neither a notebook (.ipynb), a zip nor a folder"
    return sub


def collect(folder: Path, lab: str, ids: set[str], scratch: Path, blank: dict[str, str] | None = None,
            log: Callable[[str], None] | None = None) -> list[Submission]:
    """All hand-ins in ``folder``, one :class:`Submission` each, sorted by student.

    Zips are unpacked under ``scratch``. ``blank`` (answer ``grade_id`` → blank source, see
    :func:`blank_answers`) lets the choice between several notebooks tell answered from blank.
    ``log`` hears about skipped litter (the choices are in each :class:`Submission`).
    """
    if not folder.is_dir():
        raise NotADirectoryError(f"submissions folder {folder} does not exist")
    subs: list[Submission] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name in LITTER:
            if log:
                log(f"skipped {display_name(entry.name)} (operating-system litter, not a hand-in)")
            continue
        try:
            sub = _one(entry, lab, ids, blank, scratch)
        except Exception as err:  # noqa: BLE001 — one hand-in never stops the class
            sub = Submission(student_id(entry.name, lab), display_name(entry.name),
                             problem=f"{display_name(entry.name)} could not be read "
                                     f"({plain_reason(err, folder, scratch)})")
        subs.append(sub)
    counts: dict[str, int] = {}
    for sub in subs:  # ids are unique by construction; this guards against a hash collision
        counts[sub.student] = counts.get(sub.student, 0) + 1
        if counts[sub.student] > 1:
            sub.student = f"{sub.student}~{counts[sub.student]}"
    return sorted(subs, key=lambda s: s.student)


def blank_answers(blank: dict | None) -> dict[str, str] | None:
    """The blank lab's answer cells: ``grade_id`` → source (stripped)."""
    if not blank:
        return None
    out = {}
    for cell in blank.get("cells", []):
        nbg = cell.get("metadata", {}).get("nbgrader", {})
        if nbg.get("solution") and isinstance(nbg.get("grade_id"), str):
            source = cell.get("source", "")
            out[nbg["grade_id"]] = ("".join(source) if isinstance(source, list) else source).strip()
    return out


def shard(items: list[Submission], spec: str | None) -> list[Submission]:
    """The ``i/n`` share (1-based) of ``items``: every n-th, so shards stay balanced and disjoint."""
    if not spec:
        return items
    match = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"--shard must look like i/n with 1 <= i <= n, got {spec!r}")
    i, n = int(match[1]), int(match[2])
    return items[i - 1::n]
