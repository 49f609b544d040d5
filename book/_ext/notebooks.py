"""Notebooks for launch buttons: every chapter as a plain ``.ipynb`` (Colab opens only those).

``python book/_ext/notebooks.py`` writes ``notebooks/<chapter>.ipynb`` from ``book/<chapter>.md``
(jupytext, no outputs) with a first cell that installs the course library where it is missing
(Colab): the light install, without extras, that keeps the torch and torchvision already there.
``--check`` only says whether the committed notebooks are up to date (exit 1 if not).
The repository URL comes from ``DLMI_REPOSITORY_URL`` or ``book/_config.yml``.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"
OUT = ROOT / "notebooks"

SETUP = '''# Colab or a fresh Python: install the course library `dlmi` (and what else this chapter
# imports) if missing. Without extras it keeps the torch and torchvision already installed
# (Colab's): they are named at their versions.
import importlib.util
import subprocess
import sys
from importlib.metadata import version

missing = [pip for module, pip in {needs} if importlib.util.find_spec(module) is None]
if missing:
    keep = [f"{{name}}=={{version(name)}}" for name in ("torch", "torchvision")
            if importlib.util.find_spec(name) is not None]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing, *keep])'''
# Imported by chapters but needed by no lab, so not a requirement of dlmi: myst_nb's ``glue``
# pastes computed values into the book's text.
CHAPTER_ONLY = {"myst_nb": "myst-nb"}


def repository_url() -> str:
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    return (os.environ.get("DLMI_REPOSITORY_URL") or config["repository"]["url"]).rstrip("/")


def chapters() -> list[str]:
    """The book's pages that are notebooks (MyST markdown with code cells), in TOC order."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    names = [c["file"] for part in toc.get("parts", []) for c in part["chapters"]]
    return [n for n in names if (BOOK / f"{n}.md").is_file()
            and "{code-cell}" in (BOOK / f"{n}.md").read_text()]


def notebook(name: str, repo: str, text: str | None = None) -> str:
    """The notebook of chapter ``name`` (from ``text`` when given, else from its file)."""
    if text is None:
        text = (BOOK / f"{name}.md").read_text()
    nb = jupytext.reads(text, fmt="md:myst")
    needs = [("dlmi", f"git+{repo}")] + [(module, pip) for module, pip in CHAPTER_ONLY.items()
                                          if re.search(rf"^\s*(from|import) {module}\b", text, re.M)]
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP.format(needs=tuple(needs))))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
        cell.metadata.pop("vscode", None)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    return nbformat.writes(nb) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    repo = repository_url()
    stale = []
    OUT.mkdir(exist_ok=True)
    for name in chapters():
        path = OUT / f"{name}.ipynb"
        text = notebook(name, repo)
        if not path.exists() or path.read_text() != text:
            stale.append(path.relative_to(ROOT))
            if not check:
                path.write_text(text)
    if check and stale:
        print("stale (run `make notebooks`):", *stale)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
