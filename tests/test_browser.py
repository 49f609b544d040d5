"""What a reader sees: the built site in headless Chromium over a local HTTP server.

The site is read with the network off (only the local server answers), as a student without a
CDN would: no console error on any page, formulas typeset, widgets rendered, every explorer
control shows the frame for its value, and axe-core finds nothing serious in the book's own
content. The reading is done once by ``tests/browser/read_site.mjs`` (playwright-core driving
Debian's Chromium, axe-core from npm: ``make assets``); the tests below check its report.
``DLMI_SITE`` reads another built site (default ``book/_build/html``); ``DLMI_SCREENSHOTS=DIR``
also saves a desktop and a phone screenshot of every page there.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("DLMI_SITE", ROOT / "book" / "_build" / "html"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")
READER = ROOT / "tests" / "browser" / "read_site.mjs"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
needs_node = pytest.mark.skipif(
    NODE is None or not (ROOT / "node_modules" / "playwright-core").is_dir(),
    reason="node and the npm test tools are missing (make assets)")

# Pages with explorers, and how many each has.
EXPLORERS = {"01-imaging-physics": 3, "02-convolution": 1, "04-augmentation": 1, "06-segmentation": 1,
             "07-detection": 1, "08-registration-enhancement": 1}


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    names = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part["chapters"]:
            names.append(chapter["file"])
            names += [s["file"] for s in chapter.get("sections", [])]
    return names


PAGES = toc_pages()


@pytest.fixture(scope="module")
def site():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def chromium(tmp_path: Path, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def reading(site, tmp_path_factory) -> dict:
    """Every page of the book read once in Chromium with the network off."""
    if NODE is None or not (ROOT / "node_modules" / "playwright-core").is_dir():
        pytest.skip("node and the npm test tools are missing (make assets)")
    shots = os.environ.get("DLMI_SCREENSHOTS", "")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
    pages = [f"{name}.html" for name in PAGES]
    result = subprocess.run([NODE, str(READER), CHROMIUM, site, shots, *pages], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    return {name.removesuffix(".html"): facts for name, facts in report.items()}


def test_intro_renders_and_sidebar_reaches_every_chapter(site, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", f"{site}/intro.html")
    assert "<h1>Deep Learning for Medical Imaging" in dom
    nav = re.search(r'<nav class="[^"]*bd-docs-nav.*?</nav>', dom, re.S)
    assert nav and 'href="01-imaging-physics.html"' in nav.group(0)
    assert 'href="labs.html"' in nav.group(0), "the Labs part is in the sidebar"
    shot = tmp_path / "intro.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", f"{site}/intro.html")
    assert shot.stat().st_size > 20_000


def test_chapter_1_shows_ct_figure_and_explorers(site, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", f"{site}/01-imaging-physics.html")
    assert "A real CT slice in Hounsfield units" in dom
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', dom)
    assert len(images) >= 4, "digit, RGB, CT windows and sweep figures"
    assert dom.count('class="dlmi-explorer"') == EXPLORERS["01-imaging-physics"]


@needs_node
@pytest.mark.parametrize("page", PAGES)
def test_no_console_error_offline(reading, page):
    facts = reading[page]
    assert facts["errors"] == [], f"{page}: console errors {facts['errors'][:5]}"
    assert facts["blocked"] == [], f"{page} asks the network for {facts['blocked'][:5]}"


@needs_node
@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset_offline(reading, page):
    facts = reading[page]
    assert facts["math"] >= facts["mathSource"], \
        f"{page}: {facts['mathSource']} formulas, {facts['math']} typeset by MathJax"
    assert facts["rawTex"] == 0, f"{page} shows raw LaTeX"


@needs_node
@pytest.mark.parametrize("page", PAGES)
def test_widgets_render_offline(reading, page):
    facts = reading[page]
    if facts["widgetsExpected"]:
        assert facts["widgetsRendered"] > 0, f"{page}: {facts['widgetsExpected']} widget views, none rendered"


@needs_node
def test_every_explorer_page_has_its_explorers(reading):
    for page, n in EXPLORERS.items():
        assert len(reading[page]["explorers"]) == n, f"{page}: {len(reading[page]['explorers'])} explorers, want {n}"


@needs_node
@pytest.mark.parametrize("page", sorted(EXPLORERS))
def test_explorer_controls_show_the_frame_for_their_value(reading, page):
    for explorer in reading[page]["explorers"]:
        assert explorer["frames"] >= 8, f"{page}: only {explorer['frames']} frames"
        assert explorer["moves"] >= 3, f"{page}: no control could be moved"
        assert explorer["failures"] == [], f"{page}: {explorer['failures'][:5]}"
        assert explorer["labelled"] == explorer["controls"], f"{page}: an explorer control has no label"


@needs_node
@pytest.mark.parametrize("page", PAGES)
def test_axe_finds_nothing_serious_in_the_content(reading, page):
    serious = [v for v in reading[page]["axe"] if v["impact"] in ("serious", "critical") and v["content"]]
    assert serious == [], f"{page}: " + "; ".join(f"{v['id']} ({v['impact']}): {v['targets'][:3]}" for v in serious)


@needs_node
@pytest.mark.parametrize("page", PAGES)
def test_figures_have_meaningful_alt_text(reading, page):
    for image in reading[page]["images"]:
        if image["src"] and image["src"].startswith("_static/"):
            continue                                    # theme icons
        alt = image["alt"].strip()
        assert alt, f"{page}: a figure without alt text"
        assert not re.fullmatch(r"[\w/.-]*\.(png|jpe?g|svg|webp)", alt), f"{page}: alt text is a file name: {alt}"


MIN_TEXT_PX = 8.0


def text_px(src: str, page: str) -> float | None:
    """The smallest text size recorded in a figure's PNG (dlmi.display.figure_png)."""
    from PIL import Image

    path = (HTML / page).parent / src
    if path.suffix != ".png" or not path.is_file():
        return None
    with Image.open(path) as image:
        value = image.text.get("dlmi:min-text-px")
    return float(value) if value else None


@needs_node
@pytest.mark.parametrize("page", PAGES)
def test_figure_text_is_legible_on_desktop_and_phone(reading, page):
    """A figure's (and an explorer frame's) smallest text, at the width the browser draws it, is
    at least 8 px — in the desktop column and on a 390 px phone (wide figures scroll sideways)."""
    small = []
    for view in ("images", "phoneImages"):
        for image in reading[page][view]:
            if not image["src"] or "_static/" in image["src"] or not image["natural"]:
                continue
            # an explorer's frame records its smallest text in data-text-px; a figure, in its PNG
            px = image.get("textPx") or None if image["explorer"] else text_px(image["src"], page)
            if px is None:
                continue
            shown = px * image["rendered"] / image["natural"]
            if shown < MIN_TEXT_PX - 0.25:
                small.append(f"{view}: {image['src']} text {shown:.1f} px")
    assert small == [], f"{page}: " + "; ".join(small[:5])
