"""The book: strict builds fail loudly, and the built site holds every page, executed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
HTML = Path(os.environ.get("DLMI_SITE", BOOK / "_build" / "html"))
HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def toc_files() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def make_book(tmp_path: Path, page: str) -> subprocess.CompletedProcess:
    """Build a two-page copy of the book with the real config through `make book`."""
    book = tmp_path / "book"
    book.mkdir()
    for name in ("_config.yml", "references.bib"):
        shutil.copy(BOOK / name, book)
    for name in ("_ext", "_assets"):      # the book's extension and its served assets
        shutil.copytree(BOOK / name, book / name, ignore=shutil.ignore_patterns("__pycache__"))
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: page\n")
    (book / "intro.md").write_text("# Intro\n\nA tiny book.\n")
    (book / "page.md").write_text(HEADER + page)
    return subprocess.run(["make", "-C", str(ROOT), "book", f"BOOK_DIR={book}"],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cell_error_fails_the_build_and_names_page_and_cell(tmp_path):
    result = make_book(tmp_path, "# Page\n\n```{code-cell} ipython3\nx = 1\n```\n\n"
                                 "```{code-cell} ipython3\nraise ZeroDivisionError('deliberately broken')\n```\n")
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "page.md: WARNING: Executing notebook failed" in log
    assert "raise ZeroDivisionError('deliberately broken')" in log, "the failing cell is shown"


@pytest.mark.slow
def test_sphinx_warning_fails_the_build(tmp_path):
    result = make_book(tmp_path, "# Page\n\nSee {doc}`no-such-page`.\n")
    assert result.returncode != 0
    assert "unknown document" in result.stdout + result.stderr


@pytest.mark.slow
def test_clean_page_builds(tmp_path):
    result = make_book(tmp_path, "# Page\n\n```{code-cell} ipython3\nprint(6 * 7)\n```\n")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "42" in (tmp_path / "book" / "_build" / "html" / "page.html").read_text()


def test_every_toc_page_is_built_and_executed():
    """`make test` builds the book first; every page in the TOC must be in the site."""
    assert HTML.joinpath("index.html").exists(), "run `make book` first"
    for name in toc_files():
        html = (HTML / f"{name}.html").read_text()
        assert "Traceback (most recent call last)" not in html, f"{name} shows a traceback"
        source = (BOOK / f"{name}.md").read_text()
        if "{code-cell}" in source:
            assert "cell_output" in html, f"{name} has code cells but no outputs"


def test_chapters_are_numbered_in_lecture_order():
    chapters = [f for f in toc_files() if re.match(r"\d\d-", f)]
    assert chapters == sorted(chapters) and chapters[0].startswith("01-")
    for name in chapters:
        assert (BOOK / f"{name}.md").read_text().startswith(HEADER.split("kernelspec")[0]), \
            f"{name}.md needs the jupytext MyST header to be executed"


def test_every_cited_key_is_in_the_bibliography():
    keys = set(re.findall(r"@\w+\{(\w+),", (BOOK / "references.bib").read_text()))
    for page in BOOK.glob("*.md"):
        for group in re.findall(r"\{cite[pt]?\}`([^`]+)`", page.read_text()):
            for key in group.split(","):
                assert key.strip() in keys, f"{page.name} cites unknown {key}"
    for paper in ["LeCun1989", "Krizhevsky2012", "Simonyan2015", "Szegedy2015", "He2016", "Howard2017",
                  "Ronneberger2015", "Yu2016", "Chen2017", "Ren2015", "Redmon2016", "Lin2017", "He2017",
                  "Balakrishnan2018", "Balakrishnan2019", "Isensee2021", "Yang2023", "Ciompi2015",
                  "Gulshan2016", "Esteva2017", "Mobadersany2018", "Novikov2018"]:
        assert paper in keys


def test_bibliography_is_complete_and_linked():
    """Every entry is cited somewhere, every cited work is an entry, every entry has a DOI or URL."""
    bib = (BOOK / "references.bib").read_text()
    entries = dict(re.findall(r"@\w+\{(\w+),(.*?)\n\}", bib, re.S))
    cited = set()
    for page in BOOK.glob("*.md"):
        for group in re.findall(r"\{cite[pt]?\}`([^`]+)`", page.read_text()):
            cited |= {key.strip() for key in group.split(",")}
    assert sorted(set(entries) - cited) == [], "entries never cited"
    for key, body in entries.items():
        assert re.search(r"^\s*(doi|url)\s*=", body, re.M), f"{key} has neither doi nor url"
    for key in ["Zhang2017", "Selvaraju2017", "Jaderberg2015"]:   # DnCNN, Grad-CAM, STN
        assert key in cited


CODE_WIDTH = 80  # characters a code cell shows on a book page without a scroll bar


@pytest.mark.parametrize("page", [f for f in toc_files() if (BOOK / f"{f}.md").is_file()])
def test_code_cells_fit_the_page(page: str) -> None:
    text = (BOOK / f"{page}.md").read_text()
    cells = re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, re.S)
    wide = [line for cell in cells for line in cell.splitlines() if len(line) > CODE_WIDTH]
    assert not wide, f"{page}.md: {len(wide)} code line(s) wider than {CODE_WIDTH} characters, e.g. {wide[0]!r}"


def test_every_book_explorer_settles(monkeypatch):
    """Each explorer the chapters call pauses after drawing (dlmi.widgets.settle), so a
    widget cell cannot stall the book build."""
    import numpy as np
    import torch

    import dlmi.widgets
    from dlmi import augment, denoising, detection, segmentation

    calls = []
    monkeypatch.setattr(dlmi.widgets, "settle", lambda seconds=0.3: calls.append(seconds))
    image = np.random.default_rng(0).random((16, 16))
    x = torch.rand(2, 1, 16, 16)
    cells = dlmi.SyntheticCells(1, size=64, seed=0)
    target = detection.plain_target(cells[0][1])
    raw = [{"boxes": target["boxes"], "scores": torch.ones(len(target["boxes"])), "labels": target["labels"]}]
    builders = {
        "window": lambda: dlmi.widgets.window_explorer(image),
        "ct": lambda: dlmi.widgets.ct_explorer(image),
        "mri": lambda: dlmi.widgets.mri_explorer(image),
        "conv": lambda: dlmi.widgets.conv_explorer(image),
        "augment": lambda: augment.augment_explorer({"noise": torch.rand(3, 16, 16)}),
        "threshold": lambda: segmentation.threshold_explorer(x, x[:, 0], x[:, 0] > 0.5),
        "detection": lambda: detection.detection_explorer([cells[0][0]], raw, [target]),
        "denoise": lambda: denoising.denoise_explorer(denoising.DnCNN(1, 4, 3), x[:1]),
    }
    for name, build in builders.items():
        before = len(calls)
        build()
        assert len(calls) == before + 1, f"the {name} explorer does not go through dlmi.widgets.explorer"
