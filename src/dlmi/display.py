"""Showing medical images: CT windowing and small plotting helpers."""
from __future__ import annotations

import numpy as np

# Standard CT display windows: name -> (level, width) in Hounsfield units.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to display grey levels in [0, 1]: ``level ± width/2`` spans black to white."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return np.clip((np.asarray(hu, dtype=np.float32) - (level - width / 2)) / width, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# House style for figures: legible at the book's column width and described for screen readers.

#: A book page's text column is about 688 px wide; a figure is drawn at ``figure.dpi`` = 100,
#: so a figure up to 6.9 inches wide is shown at its natural size.
COLUMN_PX = 688
#: The smallest text a figure may show, in rendered pixels, at the column width.
MIN_TEXT_PX = 8.0
#: Widest figure the book shows, in inches: at 100 dpi its 8.5-point tick labels still render
#: at 8 px in the column. Wider figures are scaled to this width (fonts keep their size).
MAX_WIDTH_IN = 9.6

HOUSE_RC: dict[str, object] = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 9.5,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8.5,
    "figure.titlesize": 11,
    "image.interpolation": "nearest",
}


def describe(fig) -> str:
    """Alt text for a figure: its title and the titles (or labels) of its panels."""
    parts = []
    if getattr(fig, "_suptitle", None) is not None and fig._suptitle.get_text():
        parts.append(fig._suptitle.get_text())
    panels = []
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        title = " ".join(t for t in (ax.get_title("left"), ax.get_title(), ax.get_title("right")) if t)
        if not title and (ax.get_xlabel() or ax.get_ylabel()):
            title = " vs ".join(t for t in (ax.get_ylabel(), ax.get_xlabel()) if t)
        if title:
            panels.append(title.replace("\n", " "))
    if panels:
        parts.append(f"{len(panels)} panel{'s' if len(panels) > 1 else ''}: " + "; ".join(panels[:12])
                     + ("; …" if len(panels) > 12 else ""))
    return ("Figure: " + ". ".join(parts)) if parts else "Figure drawn by the code above"


def smallest_text_px(fig) -> float:
    """The smallest visible text of ``fig`` in pixels of its image at the figure's dpi."""
    sizes = [t.get_fontsize() for t in fig.findobj(lambda a: hasattr(a, "get_fontsize")
                                                   and hasattr(a, "get_text"))
             if t.get_visible() and t.get_text().strip()]
    return min(sizes, default=10.0) * fig.dpi / 72.0


def figure_png(fig) -> bytes:
    """The PNG the book shows for ``fig`` (as the inline backend draws it), carrying its alt
    text (``Description``) and the pixel size of its smallest text (``dlmi:min-text-px``).
    A figure wider than :data:`MAX_WIDTH_IN` is first scaled to that width."""
    import io

    width, height = fig.get_size_inches()
    if width > MAX_WIDTH_IN:              # a wide strip: same panels, relatively larger text
        fig.set_size_inches(MAX_WIDTH_IN, height * MAX_WIDTH_IN / width)
        if fig.get_layout_engine() is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig.tight_layout()
    fig.draw_without_rendering()          # lays out tick labels, so their size is known
    text = {"Description": describe(fig), "dlmi:min-text-px": f"{smallest_text_px(fig):.1f}"}
    buf = io.BytesIO()
    fig.canvas.print_figure(buf, format="png", bbox_inches="tight", facecolor="white",
                            metadata=text)
    return smaller_png(buf.getvalue(), text)


def smaller_png(png: bytes, text: dict[str, str]) -> bytes:
    """``png`` with an adaptive 256-colour palette when that makes it smaller (photographs
    and image panels: often 3× smaller, keeping the page's weight down), else unchanged."""
    import io

    from PIL import Image, PngImagePlugin

    try:
        with Image.open(io.BytesIO(png)) as image:
            paletted = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        out = io.BytesIO()
        paletted.save(out, format="PNG", optimize=True, pnginfo=info)
    except (OSError, ValueError):
        return png
    return out.getvalue() if out.tell() < len(png) else png


def house_style() -> None:
    """Apply the book's figure style: font sizes and dpi (:data:`HOUSE_RC`) and, inside
    IPython, figures shown as PNGs that carry their alt text and smallest text size (the book
    turns them into the figure's ``alt`` and checks legibility). The book applies it to every
    page when it is built; call it in a notebook for the same look."""
    import matplotlib
    import matplotlib.pyplot as plt

    plt.close(plt.figure())       # loads the backend now: the inline one registers its formats
    matplotlib.rcParams.update(HOUSE_RC)
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure

    shell.display_formatter.formatters["image/png"].for_type(Figure, figure_png)
