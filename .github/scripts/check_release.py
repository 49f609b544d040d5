#!/usr/bin/env python3
"""Refuse a lab release that carries solution, hidden-test or mark-scheme text.

    python .github/scripts/check_release.py SOLUTIONS RELEASED [RELEASED ...]

SOLUTIONS is the nbgrader source folder (``solutions/``); each RELEASED is a folder (``labs/``)
or a zip of it, laid out as ``<lab>/<notebook>.ipynb``. The secret text is what nbgrader
removes from the source notebooks: lines between ``BEGIN SOLUTION``/``END SOLUTION``,
``BEGIN HIDDEN TESTS``/``END HIDDEN TESTS`` and ``BEGIN MARK SCHEME``/``END MARK SCHEME``,
and whole solution cells written without delimiters. The check fails when

* a delimiter appears anywhere in a released file (a region that was not removed);
* a secret line (one that does not also appear in the public part of the sources, at least
  ``MIN_CHARS`` long) appears as a line of any released file;
* a source notebook has no released counterpart.

It reports where a leak is, never the leaked text (CI logs may be public). Standard library
only, so it runs before (and without) the course's environment.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

REGIONS = (
    ("BEGIN SOLUTION", "END SOLUTION"),
    ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS"),
    ("BEGIN MARK SCHEME", "END MARK SCHEME"),
)
DELIMITERS = tuple(d for pair in REGIONS for d in pair)
MIN_CHARS = 12
SKIP_PARTS = {".ipynb_checkpoints", "__pycache__", ".git"}


@dataclass(frozen=True)
class Origin:
    """Where a secret line comes from (shown instead of the line itself)."""

    notebook: str
    cell: int


def _text(source: str | list[str]) -> str:
    return "".join(source) if isinstance(source, list) else source


def _is_solution_cell(cell: dict) -> bool:
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution", False))


def split_cell(cell: dict) -> tuple[list[str], list[str]]:
    """A source cell's lines as (public, secret), following nbgrader's clearing rules."""
    lines = _text(cell.get("source", "")).split("\n")
    has_delimiters = any(d in line for line in lines for d in DELIMITERS)
    if _is_solution_cell(cell) and not has_delimiters:
        return [], lines  # nbgrader replaces the whole cell with a stub
    public: list[str] = []
    secret: list[str] = []
    inside: str | None = None
    for line in lines:
        begin = next((end for start, end in REGIONS if start in line), None)
        if inside is None and begin is not None:
            inside = begin
        elif inside is not None and inside in line:
            inside = None
        elif any(d in line for d in DELIMITERS):
            continue
        else:
            (public if inside is None else secret).append(line)
    return public, secret


def _normal(line: str) -> str:
    return " ".join(line.split())


def _meaningful(line: str) -> bool:
    return len(line) >= MIN_CHARS and any(ch.isalnum() for ch in line)


def secrets_of(solutions: Path) -> tuple[dict[str, Origin], list[PurePosixPath]]:
    """Secret lines (normalised → where from) and the notebooks a release must contain."""
    public: set[str] = set()
    secret: dict[str, Origin] = {}
    notebooks: list[PurePosixPath] = []
    for path in sorted(solutions.rglob("*.ipynb")):
        rel = path.relative_to(solutions)
        if SKIP_PARTS & set(rel.parts):
            continue
        notebooks.append(PurePosixPath(rel.as_posix()))
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8")).get("cells", [])):
            pub, sec = split_cell(cell)
            public.update(_normal(line) for line in pub)
            for line in sec:
                secret.setdefault(_normal(line), Origin(rel.as_posix(), index))
    return {k: v for k, v in secret.items() if _meaningful(k) and k not in public}, notebooks


def _notebook_lines(raw: str) -> Iterator[tuple[str, str]]:
    """(where, line) for every line of a notebook's sources and text outputs."""
    try:
        nb = json.loads(raw)
    except json.JSONDecodeError:
        yield from (("line %d" % (i + 1), line) for i, line in enumerate(raw.split("\n")))
        return
    for index, cell in enumerate(nb.get("cells", [])):
        texts = [_text(cell.get("source", ""))]
        for output in cell.get("outputs", []):
            texts.append(_text(output.get("text", "")))
            texts.extend(_text(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
        for text in texts:
            for line in text.split("\n"):
                yield f"cell {index}", line


def released_files(target: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(path inside the release, content) for a release folder or zip."""
    if target.is_file() and zipfile.is_zipfile(target):
        with zipfile.ZipFile(target) as zf:
            for name in sorted(zf.namelist()):
                rel = PurePosixPath(name)
                if not name.endswith("/") and not SKIP_PARTS & set(rel.parts):
                    yield rel, zf.read(name)
    elif target.is_dir():
        for path in sorted(p for p in target.rglob("*") if p.is_file()):
            rel = PurePosixPath(path.relative_to(target).as_posix())
            if not SKIP_PARTS & set(rel.parts):
                yield rel, path.read_bytes()
    else:
        raise FileNotFoundError(f"{target}: not a folder or a zip file")


def check(solutions: Path, targets: Iterable[Path]) -> list[str]:
    """Every problem found, as one line each; empty means the release is clean."""
    secret, notebooks = secrets_of(solutions)
    problems: list[str] = []
    for target in targets:
        seen: set[PurePosixPath] = set()
        for rel, content in released_files(target):
            seen.add(rel)
            try:
                raw = content.decode("utf-8")
            except UnicodeDecodeError:
                continue  # images, data files: no source text
            lines = _notebook_lines(raw) if rel.suffix == ".ipynb" else (
                (f"line {i + 1}", line) for i, line in enumerate(raw.split("\n")))
            for where, line in lines:
                if any(d in line for d in DELIMITERS):
                    problems.append(f"{target}/{rel} {where}: nbgrader delimiter left in the release")
                    continue
                origin = secret.get(_normal(line))
                if origin is not None:
                    digest = hashlib.sha256(_normal(line).encode()).hexdigest()[:10]
                    problems.append(f"{target}/{rel} {where}: a secret line ({len(line.strip())} chars, "
                                    f"sha256 {digest}) from {solutions}/{origin.notebook} cell {origin.cell}")
        for notebook in notebooks:
            if notebook not in seen:
                problems.append(f"{target}: {notebook} is missing from the release")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("solutions", type=Path, help="nbgrader source folder (solutions/)")
    parser.add_argument("released", type=Path, nargs="+", help="released folder (labs/) or zip")
    args = parser.parse_args(argv)
    if not args.solutions.is_dir():
        parser.error(f"{args.solutions} is not a folder")
    problems = check(args.solutions, args.released)
    secret, notebooks = secrets_of(args.solutions)
    for line in problems:
        print(f"LEAK {line}")
    status = "FAILED" if problems else "clean"
    print(f"release check {status}: {len(notebooks)} source notebooks, {len(secret)} secret lines, "
          f"{len(problems)} problems in {', '.join(map(str, args.released))}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
