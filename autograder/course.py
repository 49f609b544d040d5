"""The course on disk: where labs live, nbgrader's configuration, release and the gradebook.

Layout (relative to the course root, the repository root by default):

* ``solutions/<lab>/<lab>.ipynb`` — the only place a lab is written (solutions + hidden tests);
* ``labs/<lab>/`` — the student copy, made by :func:`release` (nbgrader ``generate_assignment``);
* ``gradebook.db`` — nbgrader's gradebook; ``results/<lab>/`` — our per-student JSON and CSV;
* ``results/autograded/<student>/<lab>/`` — graded notebooks (nbgrader's formgrader reads them);
  :mod:`autograder.results` writes these three;
* ``feedback/<student>/<lab>/`` — HTML feedback.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from traitlets.config import Config

NB_VERSION = 4
ROOT_ENV = "DLMI_COURSE_ROOT"


def course_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$DLMI_COURSE_ROOT``, else the nearest folder above the cwd holding ``solutions/``."""
    if root or os.environ.get(ROOT_ENV):
        return Path(root or os.environ[ROOT_ENV]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "solutions").is_dir():
            return folder
    raise FileNotFoundError("no solutions/ folder here or above; run from the course repository or pass --root")


def nbgrader_ready() -> None:
    """nbgrader runs ``alembic`` by name: put this interpreter's bin folder first on ``PATH``."""
    bin_dir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def nbgrader_config(root: Path) -> Config:
    """nbgrader's configuration for this course (also loaded by ``nbgrader_config.py``)."""
    nbgrader_ready()
    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.source_directory = "solutions"
    c.CourseDirectory.release_directory = "labs"
    c.CourseDirectory.submitted_directory = "results/submitted"
    c.CourseDirectory.autograded_directory = "results/autograded"
    c.CourseDirectory.feedback_directory = "feedback"
    c.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", ".DS_Store"]
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
    c.GenerateAssignment.create_assignment = True
    c.GenerateFeedback.preprocessors = ["autograder.feedback.HideHiddenTests", "autograder.feedback.SanitizeHtml",
                                        "nbgrader.preprocessors.GetGrades",
                                        "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor"]
    c.Exchange.root = str(root / "results" / "exchange")
    # formgrader and feedback render student HTML (outputs); sanitize it (markdown cells are
    # cleaned in the graded notebooks themselves, see autograder.safehtml)
    c.HTMLExporter.sanitize_html = True
    return c


@dataclass
class Lab:
    """One lab: its source notebook (with solutions and hidden tests) and grading settings."""

    name: str
    root: Path
    source: NotebookNode = field(repr=False)

    @property
    def folder(self) -> Path:
        return self.root / "solutions" / self.name

    @property
    def settings(self) -> dict[str, Any]:
        """``metadata.dlmi`` of the source notebook (time and memory budget, data set, ...)."""
        return dict(self.source.metadata.get("dlmi", {}))

    def files(self) -> dict[str, Path]:
        """Files released beside the notebook (data, images), by name."""
        skip = {f"{self.name}.ipynb"}
        return {p.name: p for p in sorted(self.folder.iterdir())
                if p.is_file() and p.name not in skip and not p.name.startswith(".")}


def lab_names(root: Path) -> list[str]:
    """All labs: folders of ``solutions/`` holding a notebook of the same name."""
    base = root / "solutions"
    return sorted(p.name for p in base.iterdir() if (p / f"{p.name}.ipynb").is_file()) if base.is_dir() else []


def load_lab(name: str, root: Path) -> Lab:
    """Read ``solutions/<name>/<name>.ipynb``; a clear error names the labs that exist."""
    path = root / "solutions" / name / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"no lab {name!r}: {path} is missing (labs: {', '.join(lab_names(root)) or 'none'})")
    return Lab(name, root, nbformat.read(path, as_version=NB_VERSION))


def generate(lab: Lab, out: Path) -> Path:
    """nbgrader ``generate_assignment`` of ``lab`` into ``out`` (also records its cells in the gradebook)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    with tempfile.TemporaryDirectory(prefix="dlmi-release-") as tmp:
        cfg = nbgrader_config(lab.root)
        cfg.CourseDirectory.release_directory = str(Path(tmp) / "release")
        cfg.GenerateAssignment.force = True
        api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
        result = api.generate_assignment(lab.name, force=True, create=True)
        if not result["success"]:
            raise RuntimeError(f"nbgrader generate_assignment {lab.name} failed:\n{result['log']}\n{result['error']}")
        made = Path(tmp) / "release" / lab.name
        nb_path = made / f"{lab.name}.ipynb"
        nb = nbformat.read(nb_path, as_version=NB_VERSION)
        nbformat.write(nb, nb_path)  # one canonical JSON layout, so a re-release changes no byte
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(made, out)
    return out


def ensure_gradebook(lab: Lab) -> None:
    """Record ``lab``'s cells in the gradebook unless they are there (a fresh checkout has no gradebook)."""
    from nbgrader.api import Gradebook, MissingEntry

    db = nbgrader_config(lab.root).CourseDirectory.db_url
    if (lab.root / "gradebook.db").exists():
        with Gradebook(db) as gb:
            try:
                gb.find_notebook(lab.name, lab.name)
                return
            except MissingEntry:
                pass
    with tempfile.TemporaryDirectory(prefix="dlmi-gradebook-") as tmp:
        generate(lab, Path(tmp) / lab.name)


def blank_notebook(lab: Lab) -> NotebookNode:
    """The student copy: ``labs/<lab>/<lab>.ipynb`` (``check`` keeps it equal to a fresh release), else a
    fresh release made now."""
    path = lab.root / "labs" / lab.name / f"{lab.name}.ipynb"
    if path.exists():
        return nbformat.read(path, as_version=NB_VERSION)
    return released_notebook(lab)


def release(lab: Lab) -> Path:
    """Release ``lab`` into ``labs/<lab>/`` (deterministic: same source, same bytes)."""
    return generate(lab, lab.root / "labs" / lab.name)


def released_notebook(lab: Lab) -> NotebookNode:
    """The student copy as nbgrader makes it now (not read from ``labs/``, which may be stale)."""
    with tempfile.TemporaryDirectory(prefix="dlmi-blank-") as tmp:
        out = generate(lab, Path(tmp) / lab.name)
        return nbformat.read(out / f"{lab.name}.ipynb", as_version=NB_VERSION)

