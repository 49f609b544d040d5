"""What the grader leaves on disk is safe to open: feedback pages and graded notebooks made from a
hostile notebook run no script (checked in headless Chromium), and the cleaning keeps the text."""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_output

from autograder import course, feedback, notebook, safehtml
from autograder import results as store

ROOT = Path(__file__).resolve().parents[1]
LAB = "lab02-convolution"


# markup that could act: an element that runs or embeds, an event handler, a script URL in an attribute
LIVE = re.compile(r"<\s*(?:script|svg|math|iframe|object|embed|meta|base|form|style)\b|<[^>]*\son\w+\s*=|"
                  r"<[^>]*=\s*[\"']?\s*javascript:", re.I)


def payloads() -> list[str]:
    """Markup that marks the page (``data-xssN="ran"``) if any script in it runs."""
    mark = "document.documentElement.setAttribute('data-x'+'ss{n}','r'+'an')"
    items = ["<script>{m}</script>", "<img src=x onerror=\"{m}\">", "<svg onload=\"{m}\"><circle r=1></circle></svg>",
             "<a id=lnk{n} href=\"javascript:{m}\">click</a><img src=x onerror=\"document.getElementById('lnk{n}')"
             ".click()\">", "<iframe srcdoc=\"<script>parent.{m}</script>\"></iframe>",
             "<body onload=\"{m}\">", "<details open ontoggle=\"{m}\">x</details>",
             "<object data=\"javascript:{m}\"></object>", "<meta http-equiv=refresh content=\"0;url=javascript:{m}\">",
             "<math><mtext><table><mglyph><style><img src=x onerror=\"{m}\">"]
    return [item.format(m=mark.format(n=n), n=n) for n, item in enumerate(items)]


def hostile_graded(source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = copy.deepcopy(source)
    bad = payloads()
    for cell in nb.cells:  # the written answer (a markdown answer cell)
        if notebook.is_manual(cell):
            cell.source = "My answer " + " ".join(bad) + "\n\n[a link](javascript:alert(1))"
    nb.cells.insert(1, new_markdown_cell("Notes " + " ".join(bad)))
    code = new_code_cell("display(...)")
    n = len(bad)
    mark = "document.documentElement.setAttribute('data-x'+'ss{n}','r'+'an')"
    code.outputs = [
        new_output("display_data", data={"text/html": " ".join(bad), "text/plain": "html"}),
        new_output("display_data", data={"application/javascript": mark.format(n=n)}),
        new_output("display_data", data={"image/svg+xml": f"<svg xmlns='http://www.w3.org/2000/svg' "
                                                          f"onload=\"{mark.format(n=n + 1)}\"><script>"
                                                          f"{mark.format(n=n + 2)}</script></svg>"}),
        new_output("display_data", data={"text/markdown": f"<script>{mark.format(n=n + 3)}</script> **md**"}),
        new_output("stream", name="stdout", text="<script>printed</script> plain text"),
    ]
    nb.cells.insert(2, code)
    return nb


def test_the_graded_notebook_formgrader_shows_is_clean(tmp_path: Path) -> None:
    lab = course.load_lab(LAB, ROOT)
    res = {"student": "eve", "lab": LAB, "origin": "eve.ipynb", "status": "graded", "score": 0, "tests": [],
           "_notebook": nbformat.writes(hostile_graded(lab.source))}
    store.save_result(res, tmp_path)
    text = (tmp_path / res["autograded"]).read_text()
    nb = nbformat.reads(text, as_version=4)
    rendered = json.dumps([c.source for c in nb.cells if c.cell_type == "markdown"] +   # what formgrader renders
                          [o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs])
    assert not LIVE.findall(rendered), LIVE.findall(rendered)
    everything = json.dumps(nb)
    assert "My answer" in everything and "Notes" in everything and "plain text" in everything
    assert res["html_removed"], "the result says what was removed"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def feedback_pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "solutions" / LAB, root / "solutions" / LAB)
    lab = course.load_lab(LAB, root)
    pages = {}
    for student in ("eve~3f9c2a", "pageonly", "raw"):  # ids as intake makes them for a zip or a folder
        nb_path = root / "results" / "autograded" / student / LAB / f"{LAB}.ipynb"
        nb_path.parent.mkdir(parents=True)
        nbformat.write(hostile_graded(lab.source), nb_path)  # written as is: the page must be cleaned itself
        store.write_json(root / "results" / LAB / f"{student}.json",
                          {"student": student, "lab": LAB, "origin": f"{student}.ipynb", "status": "graded",
                           "score": 0.0, "max_score": 20.0, "tests": [], "autograded": str(nb_path)})
    pages["eve"] = feedback.generate(root, LAB, ["eve~3f9c2a"])[0]
    page_wall, cell_wall = safehtml.sanitize_page, safehtml.sanitize_notebook
    try:  # each wall alone, and a control without either: its payloads must run in this browser
        safehtml.sanitize_notebook = lambda nb: []
        pages["pageonly"] = feedback.generate(root, LAB, ["pageonly"])[0]
        safehtml.sanitize_page = lambda page: page
        pages["raw"] = feedback.generate(root, LAB, ["raw"])[0]
    finally:
        safehtml.sanitize_page, safehtml.sanitize_notebook = page_wall, cell_wall
    store.write_json(root / "results" / LAB / "fay.json",
                      {"student": "fay", "lab": LAB, "origin": "<img src=x onerror=alert(1)>.ipynb",
                       "status": "failed: " + payloads()[1], "score": None, "tests": [], "notes": payloads()[:3]})
    pages["fay"] = feedback.generate(root, LAB, ["fay"])[0]
    return pages


def _dom(tmp_path: Path, page: Path) -> str:
    from test_browser import chromium  # the project's one way of driving Chromium
    return chromium(tmp_path, "--dump-dom", "--virtual-time-budget=3000", "--allow-file-access-from-files",
                    page.as_uri())


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_no_script_from_a_hostile_notebook_runs_in_its_feedback(feedback_pages: dict[str, Path],
                                                                tmp_path: Path) -> None:
    raw = _dom(tmp_path, feedback_pages["raw"])
    assert re.search(r'data-xss\d+="ran"', raw), "control: without cleaning the payloads must run here"
    for student in ("eve", "pageonly", "fay"):
        dom = _dom(tmp_path, feedback_pages[student])
        ran = re.findall(r'data-xss\d+="ran"', dom)
        assert not ran, f"{student}'s feedback ran {ran}"
    eve = _dom(tmp_path, feedback_pages["eve"])
    assert "My answer" in eve and "Notes" in eve and "plain text" in eve  # the words stay


def test_feedback_pages_hold_no_executable_markup(feedback_pages: dict[str, Path]) -> None:
    for student in ("eve", "pageonly", "fay"):
        page = feedback_pages[student].read_text()
        assert "Content-Security-Policy" in page and "script-src 'none'" in page
        body = page[page.index("<body"):]                       # the head holds only our meta and styles
        assert not LIVE.findall(body), (student, LIVE.findall(body))
        assert page.count("<script") == 0
    assert "could not be graded" in feedback_pages["fay"].read_text()
