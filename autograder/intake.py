"""Find one notebook per student in a folder of hand-ins.

Accepted, side by side in one folder:

* ``alice.ipynb`` — a notebook per student (the file name is the student id);
* ``alice.zip`` — an archive holding the notebook anywhere inside;
* ``alice/`` or ``lab02-convolution-alice/`` — a folder or a GitHub Classroom repository
  (``<lab>-<user>``) holding the notebook anywhere inside.

Where several notebooks are present, the one named like the lab wins (``lab02 (1).ipynb``,
``Copy of lab02.ipynb`` count), then the one sharing most cells with the lab.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

MAX_UNZIPPED = 256 << 20
MAX_MEMBERS = 20_000
_SKIP_DIRS = {".ipynb_checkpoints", "__MACOSX", ".git", "__pycache__"}


@dataclass
class Submission:
    """One student's hand-in: the notebook to grade, or why there is none."""

    student: str
    origin: str                 # what was handed in, relative to the submissions folder
    notebook: Path | None = None
    problem: str | None = None  # set when there is nothing to grade


def student_id(name: str, lab: str) -> str:
    """A file-system safe id from a file or folder name, without the lab prefix of GitHub Classroom."""
    stem = name[:-6] if name.endswith(".ipynb") else name[:-4] if name.lower().endswith(".zip") else name
    if stem.lower().startswith(lab.lower() + "-") and len(stem) > len(lab) + 1:
        stem = stem[len(lab) + 1:]
    clean = re.sub(r"[^A-Za-z0-9_.@-]+", "_", stem).strip("._") or "student"
    return clean[:100]


def _name_rank(path: Path, lab: str) -> int:
    """0 for ``<lab>.ipynb``, 1 for a renamed copy of it, 2 otherwise."""
    stem = path.stem.lower()
    if stem == lab.lower():
        return 0
    return 1 if lab.lower() in stem or lab.split("-")[0].lower() in stem else 2


def _overlap(path: Path, ids: set[str]) -> int:
    try:
        cells = json.loads(path.read_text(encoding="utf-8-sig")).get("cells", [])
        return sum(1 for c in cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") in ids)
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


def pick_notebook(folder: Path, lab: str, ids: set[str]) -> Path | None:
    """The notebook of ``lab`` in ``folder`` (searched recursively), or None."""
    found = [p for p in folder.rglob("*.ipynb")
             if p.is_file() and not p.is_symlink() and not _SKIP_DIRS & set(p.relative_to(folder).parts)]
    if not found:
        return None
    return min(found, key=lambda p: (_name_rank(p, lab), -_overlap(p, ids), len(p.parts), str(p)))


def _unzip_notebooks(archive: Path, into: Path) -> str | None:
    """Extract the ``.ipynb`` members of ``archive`` safely; return a problem or None."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                return f"{archive.name} holds more than {MAX_MEMBERS} files"
            total = 0
            for info in members:
                parts = Path(info.filename).parts
                if info.is_dir() or not info.filename.endswith(".ipynb") or _SKIP_DIRS & set(parts):
                    continue
                if info.filename.startswith("/") or ".." in parts:
                    continue
                total += info.file_size
                if total > MAX_UNZIPPED:
                    return f"{archive.name} unpacks to more than {MAX_UNZIPPED >> 20} MB of notebooks"
                target = into / Path(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as err:
        return f"{archive.name} is not a readable zip archive ({err})"
    return None


def collect(folder: Path, lab: str, ids: set[str], scratch: Path) -> list[Submission]:
    """All hand-ins in ``folder``, sorted by student; zips are unpacked under ``scratch``."""
    if not folder.is_dir():
        raise NotADirectoryError(f"submissions folder {folder} does not exist")
    subs: list[Submission] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name in _SKIP_DIRS or entry.is_symlink():
            continue
        sid = student_id(entry.name, lab)
        origin = entry.name
        if entry.is_file() and entry.suffix == ".ipynb":
            subs.append(Submission(sid, origin, notebook=entry))
        elif entry.is_file() and entry.suffix.lower() == ".zip":
            into = Path(tempfile.mkdtemp(prefix="zip-", dir=scratch))
            problem = _unzip_notebooks(entry, into)
            nb = None if problem else pick_notebook(into, lab, ids)
            subs.append(Submission(sid, origin, nb, problem or (None if nb else f"{entry.name} holds no .ipynb notebook")))
        elif entry.is_dir():
            nb = pick_notebook(entry, lab, ids)
            subs.append(Submission(sid, origin, nb, None if nb else f"{entry.name}/ holds no .ipynb notebook"))
        else:
            subs.append(Submission(sid, origin, problem=f"{entry.name} is neither a notebook, a zip nor a folder"))
    seen: dict[str, int] = {}
    for sub in subs:  # two hand-ins mapping to one id (alice.ipynb + alice.zip) are both kept, apart
        seen[sub.student] = seen.get(sub.student, 0) + 1
        if seen[sub.student] > 1:
            sub.student = f"{sub.student}~{seen[sub.student]}"
    return sorted(subs, key=lambda s: s.student)


def shard(items: list[Submission], spec: str | None) -> list[Submission]:
    """The ``i/n`` share (1-based) of ``items``: every n-th, so shards stay balanced and disjoint."""
    if not spec:
        return items
    match = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"--shard must look like i/n with 1 <= i <= n, got {spec!r}")
    i, n = int(match[1]), int(match[2])
    return items[i - 1::n]
