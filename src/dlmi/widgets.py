"""Figure helpers and interactive explorers for the chapters.

An explorer has two lives. In a notebook with a kernel it is an ``ipywidgets.interactive``:
every control redraws the figure. When the book is built (``DLMI_STATIC_EXPLORERS=1``, set by
the book's Sphinx extension) it is a :class:`StaticExplorer`: the figure is drawn at build time
for a grid of control values, and a small self-contained script in the page swaps in the frame
for the values the reader picks, so the published page stays alive without a kernel.
"""
from __future__ import annotations

import base64
import contextlib
import html
import io
import itertools
import json
import math
import os
import time
import uuid
from typing import Any
from collections.abc import Callable, Sequence
from unittest import mock

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from . import conv, physics

STATIC_ENV = "DLMI_STATIC_EXPLORERS"


def show_row(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, cmap: str = "gray",
             size: float = 3.0, ncols: int = 4, max_width: float = 8.5,
             **imshow: object) -> tuple[plt.Figure, np.ndarray]:
    """Images in a grid of at most ``ncols`` per row, without axes, with optional titles.

    Panels are ``size`` inches, shrunk so a row is at most ``max_width`` inches (a book page's
    width); returns ``(fig, axes)`` with ``axes`` flat, one per image.
    """
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    size = min(size, max_width / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.3) * nrows), squeeze=False)
    flat = axes.ravel()
    for i, ax in enumerate(flat):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i], cmap=cmap, **imshow)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig, flat[:len(images)]


def settle(seconds: float = 0.3) -> None:
    """Pause briefly after creating widgets, before the cell ends.

    A widget sends a burst of messages to the notebook client. When a headless client
    (nbclient, as used by the book build) receives the cell's reply in the middle of that
    burst, it sometimes misses the reply until the cell timeout expires (jupyter/nbclient
    issue 312): the build stalls for minutes, then goes on. Measured with nbclient here:
    28 stalls in 1000 widget cells without the pause, none in 480 with it.
    """
    time.sleep(seconds)


def static_mode() -> bool:
    """True while the book is being built: explorers render precomputed frames."""
    return os.environ.get(STATIC_ENV, "") not in ("", "0")


def explorer(show: Callable[..., None], **controls: Any) -> widgets.interactive | StaticExplorer:
    """An ``ipywidgets.interactive`` of ``show`` with these controls, drawn once, settled.

    While the book is built (:func:`static_mode`) it is a :class:`StaticExplorer` of the same
    function and controls instead.
    """
    if static_mode():
        return StaticExplorer(show, controls)
    w = widgets.interactive(show, **controls)
    settle()
    return w


# --------------------------------------------------------------------------------------------
# Explorers on a static page: precomputed frames and a small script that swaps them.

FRAME_DPI = 72          # a 9.5-inch figure fits the 688 px column; 8.5-pt text is 8.5 px
FRAME_QUALITY = 70      # WebP quality of a frame
MAX_FRAMES = 96         # at most this many frames per explorer
FRAME_BYTES = 380_000   # ... and about this many WebP bytes (+1/3 as base64: 3 fit a 3 MB page)
FRAME_SECONDS = 75.0    # ... and about this much drawing time at build (a cell may take 180 s)
SEED_VALUES = 2         # a control named "seed" gets this many values (other draws, same idea)


class Control:
    """One control of a static explorer: its name, label, values and the default's index."""

    def __init__(self, name: str, label: str, kind: str, values: list[Any], index: int,
                 fixed: bool = False) -> None:
        self.name, self.label, self.kind = name, label, kind
        self.values, self.index, self.fixed = values, index, fixed
        self.grid: list[int] = [index]        # indices into values that get frames

    @property
    def default(self) -> Any:
        return self.values[self.index]


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0


def control_of(name: str, w: Any) -> Control:
    """A :class:`Control` from an ipywidgets control (or a fixed value)."""
    label = (getattr(w, "description", "") or name).strip()
    if isinstance(w, (widgets.IntSlider, widgets.FloatSlider)):
        n = int(round((w.max - w.min) / w.step)) + 1
        if isinstance(w, widgets.IntSlider):
            values: list[Any] = [int(w.min + i * w.step) for i in range(n)]
        else:
            d = _decimals(w.step)
            values = [round(w.min + i * w.step, d) for i in range(n)]
        index = int(np.argmin([abs(v - w.value) for v in values]))
        return Control(name, label, "range", values, index)
    if isinstance(w, (widgets.Dropdown, widgets.RadioButtons, widgets.ToggleButtons)):
        values = list(w._options_values)
        return Control(name, label, "select", values, values.index(w.value))
    if isinstance(w, widgets.Checkbox):
        return Control(name, label, "select", [False, True], int(bool(w.value)))
    if isinstance(w, widgets.ValueWidget):
        return Control(name, label, "fixed", [w.value], 0, fixed=True)
    return Control(name, label, "fixed", [w], 0, fixed=True)


def choose_grid(controls: list[Control], max_frames: int) -> None:
    """Give each control a set of values so that the product is at most ``max_frames``.

    Every control starts with its default; menus grow first, then the slider with the fewest
    values grows next, values evenly spaced over a slider and always including its
    default. Sets ``control.grid`` in place.
    """
    def spread(c: Control, n: int) -> list[int]:
        picks = sorted({int(round(x)) for x in np.linspace(0, len(c.values) - 1, n)})
        if c.index not in picks:
            picks[int(np.argmin([abs(p - c.index) for p in picks]))] = c.index
        return sorted(set(picks))

    counts = {id(c): 1 for c in controls}
    open_ = [c for c in controls if not c.fixed and len(c.values) > 1]
    while open_:
        def total(extra: Control | None = None) -> int:
            return math.prod(counts[id(c)] + (c is extra) for c in controls)

        menus = [c for c in open_ if c.kind == "select"]
        c = min(menus or open_, key=lambda c: (counts[id(c)], -len(c.values)))
        cap = SEED_VALUES if c.name == "seed" else len(c.values)
        if counts[id(c)] >= min(cap, len(c.values)) or total(c) > max_frames:
            open_.remove(c)
            continue
        counts[id(c)] += 1
    for c in controls:
        c.grid = spread(c, counts[id(c)]) if c.kind == "range" else \
            _menu_grid(c, counts[id(c)])


def _menu_grid(c: Control, n: int) -> list[int]:
    """The default and the next ``n - 1`` options of a menu."""
    return sorted({(c.index + i) % len(c.values) for i in range(n)})


def frame_key(values: Sequence[int]) -> str:
    """The key of the frame for these value indices (one per control, fixed ones included)."""
    return ",".join(map(str, values))


def _figure_text(fig: plt.Figure) -> str:
    title = getattr(fig, "_suptitle", None)
    parts = [title.get_text()] if title else []
    parts += [ax.get_title() for ax in fig.axes if ax.get_title()]
    return "; ".join(p.replace("\n", " ") for p in parts)


def render_frame(show: Callable[..., None], values: dict[str, Any]) -> tuple[bytes, str, float]:
    """Draw ``show(**values)`` off screen: (WebP bytes of its last figure, its panel titles, the
    size of its smallest text in pixels of the frame)."""
    plt.close("all")
    printed = io.StringIO()
    with mock.patch.object(plt, "show", lambda *a, **k: None), contextlib.redirect_stdout(printed):
        show(**values)
    numbers = plt.get_fignums()
    if numbers:
        fig = plt.figure(numbers[-1])
    else:                        # the function only printed (e.g. an invalid custom kernel)
        fig = plt.figure(figsize=(5, 0.8))
        fig.text(0.02, 0.5, printed.getvalue().strip() or "(nothing drawn)", va="center")
    text = _figure_text(fig)
    from .display import smallest_text_px

    fig.draw_without_rendering()
    points = smallest_text_px(fig) * 72.0 / fig.dpi
    dpi = min(120, max(FRAME_DPI, math.ceil(8.0 * 72.0 / points)))   # small labels: finer frame
    text_px = points * dpi / 72.0
    buf = io.BytesIO()
    fig.savefig(buf, format="webp", dpi=dpi, bbox_inches="tight",
                pil_kwargs={"quality": FRAME_QUALITY, "method": 4})
    plt.close("all")
    return buf.getvalue(), text, text_px


class StaticExplorer:
    """An explorer for a page without a kernel: frames drawn over a grid of control values.

    ``frames`` maps :func:`frame_key` of the controls' value indices to a ``data:`` URL;
    ``_repr_html_`` is the controls, the default frame and a script that binds them.
    """

    def __init__(self, show: Callable[..., None], controls: dict[str, Any],
                 max_frames: int = MAX_FRAMES, max_bytes: int = FRAME_BYTES,
                 max_seconds: float = FRAME_SECONDS) -> None:
        self.controls = [control_of(name, w) for name, w in controls.items()]
        defaults = {c.name: c.default for c in self.controls}
        start = time.perf_counter()
        first, first_text, self.text_px = render_frame(show, defaults)
        seconds = max(time.perf_counter() - start, 1e-3)
        from PIL import Image

        with Image.open(io.BytesIO(first)) as image:
            self.width = image.width
        budget = min(max_frames, max_bytes // max(1, int(len(first) * 1.15)),
                     int(max_seconds / seconds))
        choose_grid(self.controls, max(1, budget))
        self.frames: dict[str, str] = {}
        self.alts: dict[str, str] = {}
        for combo in itertools.product(*(c.grid for c in self.controls)):
            key = frame_key(combo)
            values = {c.name: c.values[i] for c, i in zip(self.controls, combo, strict=False)}
            if all(i == c.index for c, i in zip(self.controls, combo, strict=False)):
                data, text = first, first_text
            else:
                data, text, _ = render_frame(show, values)
            self.frames[key] = "data:image/webp;base64," + base64.b64encode(data).decode()
            self.alts[key] = self._alt(text, combo)

    def _alt(self, text: str, combo: Sequence[int]) -> str:
        settings = ", ".join(f"{c.label} {_show_value(c.values[i])}"
                             for c, i in zip(self.controls, combo, strict=False) if not c.fixed)
        return f"Explorer figure for {settings}" + (f": {text}" if text else "")

    @property
    def default_key(self) -> str:
        return frame_key([c.index for c in self.controls])

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.frames.values())

    def _repr_html_(self) -> str:
        uid = "dlmi-x-" + uuid.uuid4().hex[:8]
        rows = []
        for n, c in enumerate(self.controls):
            cid = f"{uid}-{n}"
            label = f'<label for="{cid}">{html.escape(c.label)}</label>'
            if c.fixed:
                rows.append(f'<div class="dlmi-row">{label}<input id="{cid}" type="text" readonly '
                            f'value="{html.escape(_show_value(c.default))}" data-control="{n}">'
                            '<span class="dlmi-note">(change it in a notebook)</span></div>')
            elif c.kind == "select":
                opts = "".join(f'<option value="{i}"{" selected" if i == c.index else ""}>'
                               f"{html.escape(_show_value(c.values[i]))}</option>" for i in c.grid)
                rows.append(f'<div class="dlmi-row">{label}<select id="{cid}" data-control="{n}">'
                            f"{opts}</select></div>")
            else:
                pos = c.grid.index(c.index)
                shown = html.escape(_show_value(c.default))
                rows.append(f'<div class="dlmi-row">{label}<input id="{cid}" type="range" min="0" '
                            f'max="{len(c.grid) - 1}" step="1" value="{pos}" '
                            f'aria-valuetext="{shown}" data-control="{n}">'
                            f'<output for="{cid}">{shown}</output></div>')
        data = {"controls": [{"grid": c.grid, "values": [_show_value(v) for v in c.values],
                              "index": c.index} for c in self.controls],
                "frames": self.frames, "alts": self.alts}
        payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
        key = self.default_key
        n_frames = len(self.frames)
        note = (f"Precomputed when the book was built: {n_frames} "
                f"setting{'s' if n_frames != 1 else ''} of these controls. "
                "Open the page as a notebook (launch button above) to try every value.")
        # never narrower than the width at which its smallest text is 8 px: a phone scrolls it
        min_width = min(self.width, math.ceil(self.width * 8.0 / max(self.text_px, 1.0)))
        return (f'<div class="dlmi-explorer" id="{uid}" role="group" aria-label="Explorer">'
                f'<div class="dlmi-controls">{"".join(rows)}</div>'
                f'<div class="dlmi-frame-box" tabindex="0" role="region" '
                f'aria-label="Explorer figure (scrolls sideways on a narrow screen)">'
                f'<img class="dlmi-frame" src="{self.frames[key]}" alt="{html.escape(self.alts[key])}" '
                f'data-key="{key}" data-text-px="{self.text_px:.1f}" '
                f'style="min-width: {min_width}px"></div>'
                f'<p class="dlmi-note">{html.escape(note)}</p>'
                f'<script type="application/json" class="dlmi-data">{payload}</script>'
                f"<script>{EXPLORER_JS}</script></div>")


def _show_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# Binds every not-yet-bound explorer on the page: a control's change shows the frame whose key
# is the chosen value indices. Self-contained (no library), safe to include once per explorer.
EXPLORER_JS = """(function(){
function bind(root){if(root.dataset.bound)return;root.dataset.bound="1";
var data=JSON.parse(root.querySelector("script.dlmi-data").textContent);
var img=root.querySelector("img.dlmi-frame");
var inputs=root.querySelectorAll("[data-control]");
function update(){var key=[];inputs.forEach(function(el){var c=data.controls[+el.dataset.control];
var i=c.index;if(el.type==="range"){i=c.grid[+el.value];var v=c.values[i];
el.setAttribute("aria-valuetext",v);var o=el.parentNode.querySelector("output");if(o)o.textContent=v;}
else if(el.tagName==="SELECT"){i=+el.value;}key.push(i);});
key=key.join(",");if(data.frames[key]){img.src=data.frames[key];img.alt=data.alts[key];
img.dataset.key=key;}}
inputs.forEach(function(el){el.addEventListener("input",update);el.addEventListener("change",update);});}
document.querySelectorAll(".dlmi-explorer").forEach(bind);})();"""


def window_explorer(hu: np.ndarray) -> widgets.interactive:
    """CT window level and width (HU) → the windowed slice."""
    from .display import window

    def show(level: int = 40, width: int = 400) -> None:
        plt.figure(figsize=(4, 4))
        plt.imshow(window(hu, level, width), cmap="gray", vmin=0, vmax=1)
        plt.title(f"L={level}, W={width}")
        plt.axis("off")
        plt.show()

    return explorer(show, level=widgets.IntSlider(value=40, min=-1000, max=1000, step=10),
                    width=widgets.IntSlider(value=400, min=1, max=2500, step=10))


def ct_explorer(image: np.ndarray) -> widgets.interactive:
    """Number of projection angles and reconstruction filter → sinogram, reconstruction, RMSE."""
    mask = physics.circle_mask(image.shape[0])

    def show(n_angles: int = 30, filter_name: str = "ramp") -> None:
        theta = physics.angles(n_angles)
        sino = physics.sinogram(image, theta)
        filt = None if filter_name == "none" else filter_name
        rec = physics.reconstruct(sino, theta, filt)
        rec = physics.fit_scale(rec, image) if filt is None else rec
        err = physics.rmse(rec, image, mask)
        show_row([sino, rec], [f"sinogram, {n_angles} angles", f"{filter_name}: RMSE {err:.3f}"],
                 aspect="auto", size=3.5)
        plt.show()

    return explorer(
        show, n_angles=widgets.IntSlider(value=30, min=2, max=180, step=2, description="angles"),
        filter_name=widgets.Dropdown(options=["ramp", "shepp-logan", "hann", "none"],
                                     description="filter"))


def mri_explorer(image: np.ndarray) -> widgets.interactive:
    """Acceleration, mask kind and centre fraction → sampling mask, zero-filled image, error."""

    def show(acceleration: float = 4.0, kind: str = "random", center_fraction: float = 0.08) -> None:
        mask = physics.line_mask(image.shape, acceleration, center_fraction, kind)
        rec = physics.zero_filled(image, mask)
        err = physics.rmse(rec, image) / image.std()
        show_row([mask, rec, np.abs(rec - image)],
                 [f"{mask[0].mean():.0%} of k-space lines", f"zero-filled, NRMSE {err:.2f}", "|error|"])
        plt.show()

    return explorer(
        show, acceleration=widgets.FloatSlider(value=4.0, min=1.0, max=12.0, step=0.5, description="R"),
        kind=widgets.Dropdown(options=["random", "equispaced"], description="mask"),
        center_fraction=widgets.FloatSlider(value=0.08, min=0.0, max=0.3, step=0.02, description="centre"))


def parse_kernel(text: str) -> np.ndarray:
    """Nine numbers (commas/spaces, fractions like 1/9 allowed) → a 3×3 kernel."""
    parts = text.replace(",", " ").split()
    if len(parts) != 9:
        raise ValueError(f"need 9 numbers for a 3×3 kernel, got {len(parts)}")
    values = []
    for p in parts:
        num, _, den = p.partition("/")
        values.append(float(num) / (float(den) if den else 1.0))
    return np.array(values, dtype=np.float32).reshape(3, 3)


def conv_explorer(image: np.ndarray) -> widgets.interactive:
    """Kernel preset or custom 3×3, stride, padding and dilation → the feature map and its size."""

    def show(kernel: str = "Sobel x", custom: str = "0 -1 0 -1 5 -1 0 -1 0", stride: int = 1,
             padding: int = 1, dilation: int = 1) -> None:
        try:
            k = parse_kernel(custom) if kernel == "custom" else conv.KERNELS[kernel]
        except ValueError as err:
            print(err)
            return
        out = conv.conv2d(image, k, stride=stride, padding=padding, dilation=dilation)[0]
        fig, axes = show_row([image, k, out], ["input " + "×".join(map(str, image.shape)), kernel,
                                               "output " + "×".join(map(str, out.shape))])
        axes[1].images[0].set_cmap("RdBu_r")
        lim = max(abs(k).max(), 1e-6)
        axes[1].images[0].set_clim(-lim, lim)
        plt.show()

    return explorer(
        show, kernel=widgets.Dropdown(options=[*conv.KERNELS, "custom"], value="Sobel x"),
        custom=widgets.Text(value="0 -1 0 -1 5 -1 0 -1 0", description="custom 3×3"),
        stride=widgets.IntSlider(value=1, min=1, max=4), padding=widgets.IntSlider(value=1, min=0, max=4),
        dilation=widgets.IntSlider(value=1, min=1, max=4))
