"""Explorers on a page without a kernel, and the book's figure house style."""
from __future__ import annotations

import io
import json
import re

import ipywidgets as widgets
import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dlmi import display, widgets as W  # noqa: E402


def show(level: int = 40, kind: str = "a") -> None:
    plt.figure(figsize=(3, 2))
    plt.imshow(np.full((4, 4), level), vmin=0, vmax=100)
    plt.title(f"level {level}, kind {kind}")
    plt.show()


def controls():
    return {"level": widgets.IntSlider(value=40, min=0, max=100, step=20),
            "kind": widgets.Dropdown(options=["a", "b"], description="kind of thing")}


def test_live_kernel_keeps_ipywidgets(monkeypatch):
    monkeypatch.delenv(W.STATIC_ENV, raising=False)
    assert isinstance(W.explorer(show, **controls()), widgets.interactive)


def test_built_page_gets_a_frame_for_every_grid_value(monkeypatch):
    monkeypatch.setenv(W.STATIC_ENV, "1")
    ex = W.explorer(show, **controls())
    assert isinstance(ex, W.StaticExplorer)
    level, kind = ex.controls
    assert [level.values[i] for i in level.grid][:1] == [0] and 40 in [level.values[i] for i in level.grid]
    assert len(ex.frames) == len(level.grid) * len(kind.grid) >= 8
    assert len(set(ex.frames.values())) == len(ex.frames), "every setting draws its own frame"
    for key, alt in ex.alts.items():
        i, j = map(int, key.split(","))
        assert f"level {level.values[i]}, kind {kind.values[j]}" in alt
    page = ex._repr_html_()
    data = json.loads(re.search(r'<script type="application/json" class="dlmi-data">(.*?)</script>', page).group(1))
    assert data["frames"] == ex.frames
    assert page.count("<label for=") == 2 and "kind of thing" in page
    assert f'data-key="{ex.default_key}"' in page
    min_width = int(re.search(r'style="min-width: (\d+)px"', page).group(1))
    assert min_width * ex.text_px / ex.width >= 7.99, \
        "a narrow screen scrolls the frame, never shrinks its text below 8 px"


def test_grid_respects_the_frame_budget():
    cs = [W.control_of("a", widgets.IntSlider(min=0, max=100)), W.control_of("b", widgets.IntSlider(min=0, max=100)),
          W.control_of("m", widgets.Dropdown(options=list("xyz"))), W.control_of("seed", widgets.IntSlider(max=20))]
    W.choose_grid(cs, 60)
    assert np.prod([len(c.grid) for c in cs]) <= 60
    assert len(cs[2].grid) == 3, "menus are complete first"
    assert len(cs[3].grid) <= W.SEED_VALUES
    assert all(c.index in c.grid for c in cs), "every default has its frame"


def test_house_style_png_carries_alt_text_and_text_size():
    display.house_style()
    fig, axes = plt.subplots(1, 6, figsize=(14, 2.5))
    for i, ax in enumerate(axes):
        ax.set_title(f"panel {i}")
    fig.suptitle("a strip")
    png = display.figure_png(fig)
    with Image.open(io.BytesIO(png)) as image:
        assert image.text["Description"].startswith("Figure: a strip. 6 panels: panel 0; panel 1")
        text_px = float(image.text["dlmi:min-text-px"])
        assert image.width <= display.MAX_WIDTH_IN * 100 + 5, "wide strips are scaled to the page"
    assert text_px * display.COLUMN_PX / max(image.width, display.COLUMN_PX) >= display.MIN_TEXT_PX
    plt.close("all")
