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
# on a feedback page the grader's own MathML may stand (see mathml_problems), nothing else of the above
LIVE_ON_PAGE = re.compile(LIVE.pattern.replace("svg|math|", "svg|"), re.I)


def mathml_problems(body: str) -> list[str]:
    """Elements or attributes inside the page's ``<math>`` that the MathML allow-list does not name."""
    problems = []
    for formula in re.findall(r"<math\b.*?</math>", body, re.S | re.I):
        for tag, attrs in re.findall(r"<([a-zA-Z][\w-]*)([^>]*)>", formula):
            if tag.lower() not in safehtml.MATHML_TAGS:
                problems.append(tag)
            problems += [a for a in re.findall(r"([\w:-]+)\s*=", attrs) if a.lower() not in safehtml._MATHML_ATTRS]
    return problems


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
        assert not LIVE_ON_PAGE.findall(body), (student, LIVE_ON_PAGE.findall(body))
        assert not mathml_problems(body), (student, mathml_problems(body))
        assert page.count("<script") == 0
    assert "could not be graded" in feedback_pages["fay"].read_text()


def test_tex_becomes_mathml_made_from_text_only() -> None:
    page = feedback.with_mathml("Cost $x < y$, $$\\frac{a}{b}$$ and $\\text{<script>alert(1)</script><b>t</b>}$; "
                                "`echo $HOME $PATH` stays code.")
    assert page.count("<math") == 3 and 'display="block"' in page and "<mfrac>" in page
    assert "<script" not in page and "<b>" not in page and "alert(1)" in page   # the text, not the markup
    assert "<code>echo $HOME $PATH</code>" in page
    assert "$x" not in page and "$$" not in page
    assert feedback.with_mathml("broken $\\frac{$ stays") .count("<math") == 0  # TeX that does not convert


def test_the_page_keeps_the_mathml_it_needs_and_nothing_more() -> None:
    kept = safehtml.sanitize_page('<body><math display="block"><mrow><mi mathvariant="bold">x</mi><mo stretchy='
                                  '"false">=</mo><mfrac><mn>1</mn><mn>2</mn></mfrac></mrow></math></body>')
    assert '<math display="block"><mrow><mi mathvariant="bold">x</mi><mo stretchy="false">=</mo>' in kept
    dropped = safehtml.sanitize_page('<body><math><mi href="javascript:alert(1)" style="color:red">x</mi>'
                                     '<maction actiontype="statusline"><mi>y</mi></maction><semantics>'
                                     '<annotation-xml encoding="text/html"><img src=x onerror=alert(1)>'
                                     '</annotation-xml></semantics><mglyph></mglyph></math></body>')
    body = dropped[dropped.index("<body"):]
    assert "<mi>x</mi>" in body and not mathml_problems(body) and not LIVE_ON_PAGE.findall(body), body
    assert "&lt;math" in safehtml.clean("<math><mi>x</mi></math>"), "in a cell a student's MathML stays text"


@pytest.fixture(scope="module")
def graded_page(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The feedback page of a hand-in that passed every test, before and after its written answer
    was graded by hand."""
    root = tmp_path_factory.mktemp("graded")
    shutil.copytree(ROOT / "solutions" / LAB, root / "solutions" / LAB)
    lab = course.load_lab(LAB, root)
    nb_path = root / "results" / "autograded" / "ann" / LAB / f"{LAB}.ipynb"
    nb_path.parent.mkdir(parents=True)
    nbformat.write(lab.source, nb_path)
    tests = [{"grade_id": notebook.grade_id(c), "points": float(notebook.nbgrader_meta(c)["points"]),
              "max_points": float(notebook.nbgrader_meta(c)["points"]), "passed": True,
              "hidden": notebook.has_hidden(c), "message": "passed"} for c in lab.source.cells if notebook.is_test(c)]
    score = sum(t["points"] for t in tests)
    store.write_json(root / "results" / LAB / "ann.json",
                     {"student": "ann", "lab": LAB, "origin": "ann.ipynb", "status": "graded", "score": score,
                      "max_score": score, "tests": tests, "autograded": str(nb_path)})
    pages = {"ungraded": feedback.generate(root, LAB, ["ann"])[0].read_text()}
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        gb.find_grade("written_parameters", LAB, LAB, "ann").manual_score = 2.5  # what formgrader stores
        gb.db.commit()
    pages["graded"] = feedback.generate(root, LAB, ["ann"])[0].read_text()
    return pages


def test_the_feedback_summary_names_each_test_and_a_written_answer_is_pending(graded_page: dict[str, str]) -> None:
    page = graded_page["ungraded"]
    summary = page[page.index('<div id="toc">'):page.index('id="notebook"')]
    source = course.load_lab(LAB, ROOT).source
    for cell in source.cells:
        if notebook.is_test(cell):
            gid, points = notebook.grade_id(cell), notebook.nbgrader_meta(cell)["points"]
            name = feedback.title(gid, hidden=notebook.has_hidden(cell), manual=False)
            assert f">{name}</a>\n<code>{gid}</code>: {points:g} / {points:g}</li>" in summary, gid
    assert ">conv2d: hidden tests</a>" in summary and ">conv2d: visible tests</a>" in summary
    assert feedback.title("test_conv2d_hidden_stride", hidden=True, manual=False) == "conv2d: hidden tests (stride)"
    assert "Test cell" not in summary
    assert "<code>written_parameters</code>: <em class=\"dlmi-pending\">pending — not graded yet</em> (3 points)" \
        in summary
    assert "written answers (3\n      points): <em class=\"dlmi-pending\">pending" in page  # in the page's score line
    assert "0 / 3" not in page and "0.0 / 3.0" not in page


def test_a_written_answer_graded_by_hand_shows_its_score(graded_page: dict[str, str]) -> None:
    page = graded_page["graded"]
    assert "<code>written_parameters</code>: 2.5 / 3</li>" in page
    assert "pending" not in page


def test_the_feedback_page_shows_formulas_as_mathml_without_script(graded_page: dict[str, str]) -> None:
    page = graded_page["ungraded"]
    body = page[page.index("<body"):]
    assert body.count("<math") == 3 and "<mfrac>" in body  # lab 2's three displayed formulas
    assert "$" not in body, re.findall(r".{40}\$.{40}", body)  # no TeX left for a script to typeset
    assert "<script" not in page and not mathml_problems(body)
