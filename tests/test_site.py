"""The built site as files: page weights, launch buttons that open, no placeholder text,
chapter notebooks for Colab up to date (figure legibility is checked in the browser).

``DLMI_SITE`` checks another built site (default ``book/_build/html``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
HTML = Path(os.environ.get("DLMI_SITE", BOOK / "_build" / "html"))
PAGE_BUDGET = 3_000_000          # bytes of a page's own HTML and images
PLACEHOLDERS = ["example.edu", "example.com", "example.org", "<this repository>", "&lt;this repository&gt;",
                "<repository url>", "&lt;repository url&gt;", "OWNER/REPO", "hub.example"]


def toc_pages() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    names = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part["chapters"]:
            names.append(chapter["file"])
            names += [s["file"] for s in chapter.get("sections", [])]
    return names


PAGES = toc_pages()
CHAPTERS = [p for p in PAGES if re.match(r"\d\d-", p)]
LABS = [p for p in PAGES if p.startswith("labs/")]
built = pytest.mark.skipif(not (HTML / "index.html").exists(), reason="the book is not built (make book)")


def page_html(page: str) -> str:
    return (HTML / f"{page}.html").read_text()


def local_images(page: str) -> list[Path]:
    html = page_html(page)
    srcs = re.findall(r'<img[^>]+src="([^"]+)"', html)
    base = (HTML / page).parent
    return [(base / unquote(s)).resolve() for s in srcs if not s.startswith(("data:", "http"))]


@built
@pytest.mark.parametrize("page", PAGES)
def test_page_weight_within_budget(page):
    """A page's HTML (with its explorers' frames) and its own figures stay under 3 MB."""
    own = [p for p in local_images(page) if "_static" not in p.parts]
    weight = (HTML / f"{page}.html").stat().st_size + sum(p.stat().st_size for p in own)
    assert weight <= PAGE_BUDGET, f"{page}: {weight / 1e6:.2f} MB"


@built
def test_no_placeholder_text_in_the_site():
    found = []
    for path in HTML.rglob("*.html"):
        text = path.read_text(errors="replace")
        found += [f"{path.relative_to(HTML)}: {p}" for p in PLACEHOLDERS if p in text]
    assert found == []


def launch_links(page: str) -> dict[str, str]:
    html = page_html(page)
    links = {}
    for href, title in re.findall(r'<a href="([^"]+)"[^>]*?\n?\s*class="btn btn-sm dropdown-item"\s*'
                                  r'title="Launch on ([^"]+)"', html):
        links[title] = href.replace("&amp;", "&")
    return links


@built
@pytest.mark.parametrize("page", CHAPTERS + LABS)
def test_launch_buttons_open_a_notebook(page):
    links = launch_links(page)
    assert {"Binder", "Colab"} <= set(links), f"{page}: launch buttons {sorted(links)}"
    colab = urlparse(links["Colab"])
    assert colab.netloc == "colab.research.google.com"
    target = re.match(r"/github/[^/]+/[^/]+/blob/[^/]+/(.+)$", colab.path)
    assert target and target.group(1).endswith(".ipynb"), f"{page}: Colab opens {colab.path}"
    assert (ROOT / target.group(1)).is_file(), f"{page}: Colab opens {target.group(1)}, not in the repository"
    binder = unquote(links["Binder"])
    opened = re.search(r"urlpath=lab/tree/(.+)$", binder).group(1)
    assert (ROOT / opened).is_file(), f"{page}: Binder opens {opened}, not in the repository"
    if not os.environ.get("DLMI_JUPYTERHUB_URL"):
        assert "JupyterHub" not in links, "a JupyterHub button without a configured hub"


def test_chapter_notebooks_for_colab_are_up_to_date():
    result = subprocess.run([sys.executable, str(BOOK / "_ext" / "notebooks.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr + " — run `make notebooks`"


STANDIN_CALLOUT = 'class="admonition warning dlmi-standin"'


@built
@pytest.mark.parametrize("page", PAGES)
def test_at_most_one_standin_callout_and_no_notice_lines(page):
    """A page that runs on the synthetic stand-in says so once, in a callout whose text wraps
    (not in a <pre> output), and names no path on the machine that built it."""
    html = page_html(page)
    assert html.count(STANDIN_CALLOUT) <= 1, f"{page}: {html.count(STANDIN_CALLOUT)} stand-in callouts"
    assert "NOTICE: real MedMNIST" not in html, f"{page} shows the per-data-set NOTICE lines"
    if STANDIN_CALLOUT in html:
        start = html.index(STANDIN_CALLOUT)
        callout = html[start:html.index("</div>", start)]
        assert "synthetic" in callout and "<pre" not in callout
        assert not re.search(r"(/root|/home|/tmp|\.medmnist)", callout), f"{page}: a path in the callout"


def test_every_page_that_loads_medmnist_calls_the_data_notice_first():
    """The callout comes from dlmi.display.data_notice in the page's first code cell, naming
    every MedMNIST flag the page loads (a flag left out would print its own NOTICE line)."""
    for page in CHAPTERS:
        text = (BOOK / f"{page}.md").read_text()
        cells = re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, re.S)
        loaded = set(re.findall(r"(?:load_medmnist(?:_tensors)?|resolve_mode)\(\s*\"(\w+)\"", text))
        if not loaded:
            continue
        assert cells and "data_notice(" in cells[0], f"{page}: first cell does not call data_notice"
        named = set(re.findall(r"\"(\w+mnist)\"", cells[0]))
        assert loaded <= named, f"{page}: data_notice misses {sorted(loaded - named)}"
