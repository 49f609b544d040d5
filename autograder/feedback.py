"""nbgrader's gradebook and feedback, fed from our results.

* :func:`autograder.results.record` writes each result into ``gradebook.db`` (auto scores per
  test; nothing for a failed submission), so nbgrader's formgrader can be used for the written questions.
* :func:`generate` writes ``feedback/<student>/<lab>/<lab>.html`` with nbgrader's feedback
  exporter. :class:`HideHiddenTests` (configured in :func:`autograder.course.nbgrader_config`)
  runs first: hidden-test source is replaced by a placeholder; their outputs are only the
  judge's pass/fail line and hint (no traceback ever reached the notebook).
* The page is nbgrader's with our template (``templates/feedback/dlmi_feedback.html.j2``): its
  summary names every graded cell (:class:`Summary`), a written answer not graded by hand yet is
  "pending", not 0, and TeX in markdown is MathML made here (:class:`MathML`), which browsers draw
  without MathJax, a script or a CDN.
* A failed or timed-out submission gets a short page with its status and reason instead.
* Every page is made inert before it is left on disk (:func:`autograder.safehtml.sanitize_page`):
  a hand-in's HTML, scripts and links cannot run in the browser of whoever opens it.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from nbconvert.exporters.exporter import ResourcesDict
from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets.config import Config

from . import course, notebook, safehtml

TEMPLATES = Path(__file__).resolve().parent / "templates"


class HideHiddenTests(NbGraderPreprocessor):
    """Replace hidden-test regions by a placeholder; keep only our report as their output."""

    def preprocess_cell(self, cell: NotebookNode, resources: ResourcesDict,
                        index: int) -> tuple[NotebookNode, ResourcesDict]:
        if cell.cell_type == "code" and notebook.has_hidden(cell):
            cell.metadata.setdefault("dlmi_feedback", {})["hidden"] = True
            cell.source = notebook.hide_hidden_tests(cell.source)
            cell.outputs = [o for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
        return cell, resources


def title(gid: str, *, hidden: bool, manual: bool) -> str:
    """A readable name for a graded cell, from its grade id: ``test_conv2d_hidden`` → ``conv2d: hidden
    tests``, ``test_conv2d_hidden_stride`` → ``conv2d: hidden tests (stride)``, ``written_parameters``
    → ``written answer: parameters``."""
    if manual:
        return "written answer: " + gid.removeprefix("written_").replace("_", " ")
    name, _, case = gid.removeprefix("test_").partition("_hidden")
    case = case.strip("_").replace("_", " ")
    return f"{name}: {'hidden' if hidden else 'visible'} tests" + (f" ({case})" if case else "")


class Summary(NbGraderPreprocessor):
    """For the page's summary (after nbgrader's ``GetGrades``): name every graded cell and mark a
    written answer that no instructor has graded yet as pending — no ``manual_score`` in the
    gradebook, as for :func:`manual_scores` (``needs_manual_grade`` is true from the start and only
    formgrader clears it); ``resources["nbgrader"]["pending_points"]`` sums them."""

    def preprocess(self, nb: NotebookNode, resources: ResourcesDict) -> tuple[NotebookNode, ResourcesDict]:
        from nbgrader.api import Gradebook

        info = resources["nbgrader"]
        pending = 0.0
        with Gradebook(info["db_url"]) as gb:
            for cell in nb.cells:
                gid, meta = notebook.grade_id(cell), notebook.nbgrader_meta(cell)
                if not gid or not meta.get("grade"):
                    continue
                page = cell.metadata.setdefault("dlmi_feedback", {})
                manual = notebook.is_manual(cell)
                page["title"] = title(gid, hidden=bool(page.get("hidden")), manual=manual)
                if manual:
                    grade = gb.find_grade(gid, info["notebook"], info["assignment"], info["student"])
                    page["pending"] = grade.manual_score is None
                    pending += float(meta.get("points", 0)) if page["pending"] else 0.0
        info["pending_points"] = pending
        return nb, resources


_CODE = re.compile(r"(<(pre|code)\b.*?</\2>)", re.S | re.I)
_TEX = re.compile(r"\$\$([^<>]+?)\$\$|\$(?![\s$])([^$<>\n]+?)(?<!\s)\$")


def with_mathml(markdown: str) -> str:
    """A markdown cell as HTML whose TeX (``$…$``, ``$$…$$``) is MathML; TeX that does not convert
    stays as it is. Code spans and blocks are left alone."""
    from latex2mathml.converter import convert
    from nbconvert.filters.markdown import markdown2html

    def to_mathml(match: re.Match) -> str:
        tex = html.unescape(match[1] if match[1] is not None else match[2])
        try:
            return safehtml.clean_mathml(convert(tex, display="block" if match[1] is not None else "inline"))
        except Exception:  # noqa: BLE001 — the converter's many errors: the TeX is shown instead
            return match[0]

    parts = _CODE.split(markdown2html(markdown))  # [text, code, tag name, text, ...]
    return safehtml.html_block("".join(_TEX.sub(to_mathml, part) if i % 3 == 0 else part
                                       for i, part in enumerate(parts) if i % 3 != 2))


class MathML(NbGraderPreprocessor):
    """TeX in markdown cells as MathML (after :class:`SanitizeHtml`: the MathML is made from text,
    cleaned by :func:`autograder.safehtml.clean_mathml`, never taken from a hand-in's markup)."""

    def preprocess_cell(self, cell: NotebookNode, resources: ResourcesDict,
                        index: int) -> tuple[NotebookNode, ResourcesDict]:
        if cell.cell_type == "markdown" and "$" in cell.source:
            cell.source = with_mathml(cell.source)
        return cell, resources


def page_config(cfg: Config) -> Config:
    """``cfg`` (the course's nbgrader configuration) set to render our feedback page: the template
    over nbgrader's own, :class:`MathML` after the cells are cleaned, :class:`Summary` after the grades."""
    import nbgrader

    steps = list(cfg.GenerateFeedback.preprocessors)
    steps.insert(steps.index("autograder.feedback.SanitizeHtml") + 1, "autograder.feedback.MathML")
    steps.insert(steps.index("nbgrader.preprocessors.GetGrades") + 1, "autograder.feedback.Summary")
    cfg.GenerateFeedback.preprocessors = steps
    cfg.HTMLExporter.template_file = "dlmi_feedback.html.j2"  # in templates/feedback/, beside nbgrader's
    cfg.HTMLExporter.extra_template_basedirs = [
        str(TEMPLATES), str(Path(nbgrader.__file__).parent / "server_extensions" / "formgrader" / "templates")]
    return cfg


class SanitizeHtml(NbGraderPreprocessor):
    """Clean every cell's HTML before the page is rendered (see :mod:`autograder.safehtml`): the
    page-level cleaning is a second wall, and an unclosed element cannot swallow the rest."""

    def preprocess(self, nb: NotebookNode, resources: ResourcesDict) -> tuple[NotebookNode, ResourcesDict]:
        safehtml.sanitize_notebook(nb)
        return nb, resources


def _db_url(root: Path) -> str:
    return str(course.nbgrader_config(root).CourseDirectory.db_url)


def manual_scores(root: Path, lab: str) -> dict[str, float | None]:
    """Hand-graded points per student (None until every written answer is graded)."""
    from nbgrader.api import Gradebook, MissingEntry

    out: dict[str, float | None] = {}
    if not (root / "gradebook.db").exists():
        return out
    with Gradebook(_db_url(root)) as gb:
        try:
            nb = gb.find_notebook(lab, lab)
        except MissingEntry:
            return out
        manual = [c.name for c in nb.grade_cells if c.cell_type == "markdown"]
        for sub in gb.notebook_submissions(lab, lab):
            scores = [gb.find_grade(name, lab, lab, sub.student.id).manual_score for name in manual]
            out[sub.student.id] = None if any(s is None for s in scores) else float(sum(scores))
    return out


# What a student reads on the page of a hand-in without a final score, by the status's first word.
_NO_SCORE_TEXT = {
    "review": ("Your notebook was graded, but its score is held for your instructor: <b>{status}</b>",
               "No need to hand it in again: your instructor will look at it and accept or reject the "
               "score."),
    "rejected": ("Your instructor did not accept this hand-in: <b>{status}</b>",
                 "No score was recorded. Ask your instructor what to change."),
}
_NOT_GRADED_TEXT = ("Your notebook could not be graded: <b>{status}</b>",
                    "No score was recorded. Fix the problem and hand the notebook in again, or ask your "
                    "instructor.")


def _failure_page(res: dict[str, Any]) -> str:
    """The page of a hand-in without a final score: not graded, held for review, or rejected."""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in res.get("notes", []))
    headline, advice = _NO_SCORE_TEXT.get(res["status"].split(":")[0], _NOT_GRADED_TEXT)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(res['lab'])}: feedback</title>"
            "</head><body style='font-family:sans-serif;max-width:48em;margin:2em auto'>"
            f"<h1>{html.escape(res['lab'])}</h1><p>Student: <b>{html.escape(res['student'])}</b></p>"
            f"<p>{headline.format(status=html.escape(res['status']))}</p><p>{advice}</p>"
            + (f"<ul>{notes}</ul>" if notes else "") + "</body></html>\n")


def generate(root: Path, lab: str, students: list[str] | None = None,
             errors: list[str] | None = None) -> list[Path]:
    """Feedback HTML for the graded results of ``lab`` under ``<root>/results``; returns the pages.
    With ``errors``, a student whose page cannot be made is listed there and the others go on."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from .results import load_results, record

    cfg = page_config(course.nbgrader_config(root))
    api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
    pages = []
    for res in load_results(root / "results", lab):
        if students and res["student"] not in students:
            continue
        page = root / "feedback" / res["student"] / lab / f"{lab}.html"
        try:
            if res["status"] == "graded":
                record(root, [res])
                out = api.generate_feedback(lab, res["student"], force=True)
                if not out["success"]:
                    raise RuntimeError(f"nbgrader generate_feedback failed:\n{out.get('error')}")
                page.write_text(safehtml.sanitize_page(page.read_text(encoding="utf-8")), encoding="utf-8")
            else:
                page.parent.mkdir(parents=True, exist_ok=True)
                page.write_text(safehtml.sanitize_page(_failure_page(res)), encoding="utf-8")
        except Exception as err:  # noqa: BLE001 — one student's page never stops the others'
            page.unlink(missing_ok=True)  # never leave an unsanitized page behind
            if errors is None:
                raise
            errors.append(f"{res['student']}: {type(err).__name__}: {err}"[:2000])
            continue
        pages.append(page)
    return pages
