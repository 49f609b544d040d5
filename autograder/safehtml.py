"""Make HTML that students control safe to open: feedback pages and graded notebooks.

A hand-in can carry HTML anywhere: raw HTML in markdown, ``javascript:`` links, ``text/html``,
``image/svg+xml`` and ``application/javascript`` outputs. Instructors open the feedback pages and
formgrader shows the graded notebooks, so both are cleaned here with an allow-list sanitizer
(bleach, which nbconvert already uses): no ``<script>``, no event handler, no ``javascript:`` or
``data:`` link, no ``<iframe>``, ``<object>``, ``<svg>``, ``<form>``, ``<meta>`` or ``<base>``.

* :func:`sanitize_page` rewrites a whole HTML page: the page's own ``<style>`` blocks are kept,
  the body is cleaned, every script is dropped and a Content-Security-Policy that allows no script
  at all is put first in ``<head>`` (a second wall should the cleaning miss something). Math is
  MathML made on the grader's side (:func:`autograder.feedback.with_mathml`; MathJax is a script):
  the page keeps the few MathML elements and attributes that conversion makes (:data:`MATHML_TAGS`),
  while in a cell a student's own ``<math>`` is shown as text.
* :func:`sanitize_notebook` cleans a notebook in place for formgrader: outputs and any markdown
  cell with raw HTML, entities or links are replaced by their cleaned HTML.
"""
from __future__ import annotations

import html
import re
from typing import Any

import bleach
from bleach.css_sanitizer import CSSSanitizer
from bleach.html5lib_shim import Filter
from bleach.sanitizer import Cleaner

CSP = ("default-src 'none'; script-src 'none'; object-src 'none'; style-src 'unsafe-inline'; img-src data:; "
       "font-src data:; base-uri 'none'; form-action 'none'; frame-src 'none'")

TAGS = frozenset(bleach.ALLOWED_TAGS | {
    "p", "div", "span", "pre", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "img", "table", "thead", "tbody",
    "tfoot", "tr", "td", "th", "caption", "colgroup", "col", "sub", "sup", "dl", "dt", "dd", "kbd", "samp", "var",
    "del", "ins", "s", "u", "small", "mark", "details", "summary", "figure", "figcaption", "section", "article",
    "header", "footer", "main", "center", "font", "tt", "q", "cite", "dfn", "label"})
# presentation MathML as latex2mathml writes it; no href, no style, no maction, semantics or mglyph
MATHML_TAGS = frozenset({"math", "mrow", "mi", "mn", "mo", "mtext", "mspace", "mfrac", "msqrt", "mroot", "msub",
                         "msup", "msubsup", "munder", "mover", "munderover", "mtable", "mtr", "mtd", "mstyle",
                         "mpadded", "mphantom", "menclose"})
_MATHML_ATTRS = frozenset({"display", "mathvariant", "mathsize", "stretchy", "fence", "form", "separator", "lspace",
                           "rspace", "accent", "accentunder", "movablelimits", "minsize", "maxsize", "displaystyle",
                           "scriptlevel", "linethickness", "width", "height", "depth", "voffset", "notation",
                           "columnalign", "columnspacing", "rowspacing", "columnlines", "rowlines"})
_URL_ATTRS = {"href", "src"}
_DATA_IMAGE = re.compile(r"data:image/(png|jpe?g|gif|webp|bmp);base64,[A-Za-z0-9+/=\s]*\Z", re.I)
_CSS = CSSSanitizer()


def _allowed(tag: str, name: str, value: str) -> bool:
    if tag in MATHML_TAGS:  # only reached when MathML is allowed (clean(..., mathml=True))
        return name in _MATHML_ATTRS
    if name in ("class", "id", "title", "style", "align", "dir", "lang"):
        return True
    if tag == "a" and name == "name":  # the page's own anchors (its summary links to each graded cell)
        return True
    if tag == "a" and name == "href":
        return bool(re.match(r"(https?:|mailto:|#|[^:]*$)", value.strip(), re.I))
    if tag == "img":
        if name == "src":
            return bool(_DATA_IMAGE.match(value.strip()))
        return name in ("alt", "width", "height")
    if tag in ("td", "th"):
        return name in ("colspan", "rowspan", "valign", "width")
    if tag in ("col", "colgroup"):
        return name in ("span", "width")
    if tag == "ol":
        return name in ("start", "type")
    if tag == "details":
        return name == "open"
    return False


# elements whose content a parser reads as raw text (or foreign content): an unclosed one would swallow
# the rest of the page, so their tags are shown as text instead
_RAW_TEXT = re.compile(r"<(?=\s*/?\s*(?:style|script|textarea|title|xmp|iframe|noembed|noframes|noscript|plaintext|"
                       r"template|svg|math|select|option)\b)", re.I)
_RAW_TEXT_BUT_MATH = re.compile(_RAW_TEXT.pattern.replace("svg|math|", "svg|"), re.I)


class _MathOnly(Filter):
    """Inside ``<math>`` only MathML elements: any other (an HTML ``<table>`` in an ``<mtext>``, the
    start of many parser-confusion tricks) is dropped, its text kept."""

    def __iter__(self):
        depth = 0
        for token in super().__iter__():
            name = token.get("name")
            if token["type"] in ("StartTag", "EmptyTag", "EndTag") and name != "math":
                if depth and name not in MATHML_TAGS:
                    continue
            elif token["type"] == "StartTag":
                depth += 1
            elif token["type"] == "EndTag":
                depth = max(0, depth - 1)
            yield token


_CLEANERS = {math: Cleaner(tags=TAGS | MATHML_TAGS if math else TAGS, attributes=_allowed,
                           protocols={"http", "https", "mailto", "data"}, strip=True, strip_comments=True,
                           css_sanitizer=_CSS, filters=[_MathOnly] if math else [])
             for math in (False, True)}


def clean(fragment: str, mathml: bool = False) -> str:
    """An HTML fragment with everything that could run or navigate removed (text kept, escaped);
    ``mathml``: keep the MathML elements the grader makes (:data:`MATHML_TAGS`, nothing else inside
    ``<math>``), else show ``<math>`` as text."""
    return _CLEANERS[mathml].clean((_RAW_TEXT_BUT_MATH if mathml else _RAW_TEXT).sub("&lt;", fragment))


def clean_mathml(markup: str) -> str:
    """MathML with nothing but :data:`MATHML_TAGS` and their attributes: any other element is
    dropped and its text escaped (a converter copies ``\\text{<b>…}`` through as markup)."""
    return bleach.clean(markup, tags=MATHML_TAGS, attributes=_allowed, protocols=set(), strip=True,
                        strip_comments=True)


def sanitize_page(page: str) -> str:
    """A whole HTML document made inert (see the module docstring)."""
    lower = page.lower()
    body_at = lower.find("<body")
    head = page[:body_at] if body_at >= 0 else ""
    body = page[body_at:] if body_at >= 0 else page
    body = re.sub(r"^<body[^>]*>", "", body, flags=re.I)
    body = re.sub(r"</body>\s*</html>\s*$", "", body, flags=re.I)
    title = re.search(r"<title[^>]*>(.*?)</title>", head, re.S | re.I)
    styles = re.findall(r"<style[^>]*>(.*?)</style>", head, re.S | re.I)
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
            + (f"<title>{html.escape(html.unescape(re.sub('<[^>]*>', '', title.group(1))))}</title>\n" if title else "")
            + "".join(f"<style>{css}</style>\n" for css in styles)
            + f"</head>\n<body>\n{clean(body, mathml=True)}\n</body>\n</html>\n")


def _needs_cleaning(markdown: str) -> bool:
    """Markdown that holds raw HTML, entities or links (anything that could become markup)."""
    return bool(re.search(r"[<&]|\]\s*[(\[]|\]:|\w+:[^\s]", markdown))


def _markdown_html(markdown: str) -> str:
    from nbconvert.filters.markdown import markdown2html
    return html_block(clean(markdown2html(markdown)))


def html_block(fragment: str) -> str:
    """``fragment`` as markdown that renders to it unchanged: one raw-HTML block without a blank line,
    inside which markdown parses nothing."""
    return "<div>\n" + re.sub(r"\n\s*\n", "\n", fragment).strip() + "\n</div>"


def sanitize_notebook(nb: Any) -> list[str]:
    """Clean ``nb`` (a notebook dict or node) in place; return notes on what was cleaned."""
    notes: list[str] = []
    for number, cell in enumerate(nb.get("cells", []), 1):
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            source = "".join(map(str, source)) if isinstance(source, list) else str(source)
            if _needs_cleaning(source):
                cleaned = _markdown_html(source)
                if cleaned != source:
                    cell["source"] = cleaned
        for output in cell.get("outputs", []) or []:
            data = output.get("data") if isinstance(output, dict) else None
            if not isinstance(data, dict):
                continue
            dropped = [k for k in list(data) if k in ("application/javascript", "text/javascript", "image/svg+xml")
                       or k.startswith("application/vnd.jupyter.widget") or k.endswith("+javascript")]
            for key in dropped:
                del data[key]
            for key in ("text/html", "text/markdown"):
                if key in data:
                    value = data[key]
                    value = "".join(map(str, value)) if isinstance(value, list) else str(value)
                    data[key] = clean(value) if key == "text/html" else value
            if "text/markdown" in data:
                data["text/html"] = _markdown_html(data.pop("text/markdown"))
            if dropped:
                notes.append(f"cell {number}: {', '.join(sorted(dropped))} output removed (it could run script)")
            if not data:
                data["text/plain"] = "[output removed: it could run script]"
    return notes

