"""Showing medical images: CT windowing, the book's figure style and its data callout."""
from __future__ import annotations

import contextlib
import html
import io
import re
import sys
import textwrap
from typing import Any

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

HOUSE_RC: dict[str, Any] = {
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
    matplotlib.rcParams.update(HOUSE_RC)  # type: ignore[arg-type]  # the stub takes only literal rc keys
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure

    shell.display_formatter.formatters["image/png"].for_type(Figure, figure_png)


# --------------------------------------------------------------------------------------------
# One callout per page when MedMNIST data are the synthetic stand-in.

#: What each 2D MedMNIST data set really shows (Yang et al. 2023 and the source studies).
REAL_LOOK: dict[str, str] = {
    "pathmnist": "H&E-stained patches of colorectal cancer tissue in colour (9 tissue types)",
    "chestmnist": "frontal chest X-rays in grey levels (14 findings, several per image)",
    "dermamnist": "dermatoscope colour photographs of pigmented skin lesions (7 types)",
    "octmnist": "grey-level retinal OCT cross-sections (4 diagnoses)",
    "pneumoniamnist": "grey-level paediatric chest X-rays, normal or pneumonia",
    "retinamnist": "colour fundus photographs graded 0–4 for diabetic retinopathy",
    "breastmnist": "grey-level breast ultrasound images, malignant or normal/benign",
    "bloodmnist": "colour microscope images of single blood cells (8 types)",
    "tissuemnist": "grey-level microscope images of kidney cortex cells (8 types)",
    "organamnist": "grey-level axial abdominal CT slices of 11 organs",
    "organcmnist": "grey-level coronal abdominal CT slices of 11 organs",
    "organsmnist": "grey-level sagittal abdominal CT slices of 11 organs",
}
NOTICE_WIDTH = 88   # characters per line of the plain-text callout


class StandinNotice:
    """The callout a page shows once when some of its MedMNIST data sets are the synthetic
    stand-in: rendered as an HTML admonition in the book and in notebooks, wrapped plain text
    elsewhere."""

    def __init__(self, flags: list[str], size: int = 28) -> None:
        if not flags:
            raise ValueError("StandinNotice needs at least one stand-in flag")
        self.flags, self.size = list(flags), size

    def paragraphs(self) -> tuple[str, list[str]]:
        """(title, paragraphs) of the callout, as plain text."""
        from medmnist.info import INFO

        names = [INFO[f]["python_class"] for f in self.flags]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        one = len(names) == 1
        title = "The MedMNIST images on this page are synthetic"
        body = [
            f"The real MedMNIST file{'' if one else 's'} for {listed} could not be had when "
            f"this page was run, so {'it is' if one else 'they are'} replaced by the synthetic "
            "stand-in of `dlmi.standin`: generated images in the same format, not patient data. "
            "Numbers computed from them show that the code runs, not how well it would do on "
            "the real images.",
            "Real " + "; real ".join(
                f"{n} images are {REAL_LOOK.get(f, 'described in medmnist.INFO')}"
                for f, n in zip(self.flags, names, strict=False)) + f", at {self.size}×{self.size} pixels.",
            "Fetch the real files with `dlmi-data fetch` (see Setup) and run the page again.",
        ]
        return title, body

    def _repr_html_(self) -> str:
        title, body = self.paragraphs()
        paras = "".join("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(p)) + "</p>"
                        for p in body)
        return (f'<div class="admonition warning dlmi-standin">'
                f'<p class="admonition-title">{html.escape(title)}</p>{paras}</div>')

    def __repr__(self) -> str:
        title, body = self.paragraphs()
        lines = [title.upper()] + ["\n".join(textwrap.wrap(p, NOTICE_WIDTH)) for p in body]
        return "\n\n".join(lines)


def data_notice(*flags: str, size: int = 28) -> StandinNotice | None:
    """Decide where each MedMNIST ``flag`` comes from (:func:`dlmi.datasets.resolve_mode`) and
    return one :class:`StandinNotice` for those that are the synthetic stand-in, or ``None``
    when all are real. Call it once, in a page's first cell, as the cell's last expression:
    the per-data-set NOTICE lines on stderr are replaced by that one callout (later loads of
    the same flags are silent); anything else written to stderr is passed on."""
    from .datasets import resolve_mode

    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        modes = {flag: resolve_mode(flag, size) for flag in flags}
    other = [line for line in captured.getvalue().splitlines() if not line.startswith("NOTICE: ")]
    if other:
        print("\n".join(other), file=sys.stderr)
    synthetic = [flag for flag, mode in modes.items() if mode == "synthetic"]
    return StandinNotice(synthetic, size) if synthetic else None
