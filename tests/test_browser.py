"""What a reader sees: the built site in headless Chromium over a local HTTP server."""
from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

HTML = Path(__file__).resolve().parents[1] / "book" / "_build" / "html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def site():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def chromium(tmp_path: Path, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def test_intro_renders_and_sidebar_reaches_chapter_1(site, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", f"{site}/intro.html")
    assert "<h1>Deep Learning for Medical Imaging" in dom
    nav = re.search(r'<nav class="[^"]*bd-docs-nav.*?</nav>', dom, re.S)
    assert nav and 'href="01-imaging-physics.html"' in nav.group(0)
    shot = tmp_path / "intro.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", f"{site}/intro.html")
    assert shot.stat().st_size > 20_000


def test_chapter_1_shows_ct_figure_and_widget(site, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000", f"{site}/01-imaging-physics.html")
    assert "A real CT slice in Hounsfield units" in dom
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', dom)
    assert len(images) >= 4, "digit, RGB, CT windows and widget figures"
    assert "application/vnd.jupyter.widget-view+json" in dom or "jupyter-widgets" in dom
