"""Figure helpers and interactive explorers (ipywidgets) for the chapters.

Each explorer returns an ``ipywidgets.interactive``: its controls and output show when the
page runs as a notebook; a built page shows the state saved at build time, so every
explorer in the book has a static figure beside it.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from . import conv, physics


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


def explorer(show: Callable[..., None], **controls: Any) -> widgets.interactive:
    """An ``ipywidgets.interactive`` of ``show`` with these controls, drawn once, settled."""
    w = widgets.interactive(show, **controls)
    settle()
    return w


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
