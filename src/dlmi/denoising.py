"""Enhancement: noise models, random training patches, a small residual denoising CNN
(DnCNN-like), PSNR/SSIM from scikit-image and an explorer of a trained denoiser.

Images are (N, C, H, W) float tensors in [0, 1].
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import ipywidgets

    from .widgets import StaticExplorer


NoiseKind = Literal["gaussian", "speckle", "poisson"]


def add_noise(x: torch.Tensor, kind: NoiseKind = "gaussian",
              sigma: float | torch.Tensor = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrupt images in [0, 1]: additive Gaussian (σ), multiplicative speckle x·(1 + σ·n),
    or Poisson with 1/σ² expected counts at intensity 1; clipped to [0, 1]. ``sigma`` may be a
    tensor broadcastable to ``x`` (e.g. (N, 1, 1, 1): one level per image)."""
    n = torch.randn(x.shape, generator=generator).to(x)
    if kind == "gaussian":
        y = x + sigma * n
    elif kind == "speckle":
        y = x * (1 + sigma * n)
    elif kind == "poisson":
        peak = 1.0 / sigma**2
        y = torch.poisson(x * peak, generator=generator) / peak
    else:
        raise ValueError(f"Unknown noise kind {kind!r}; use gaussian, speckle or poisson")
    return y.clamp(0, 1)


class DnCNN(nn.Module):
    """A small residual denoiser (after Zhang et al., 2017): ``depth`` 3×3 conv layers predict
    the noise, which is subtracted from the input."""

    def __init__(self, channels: int = 1, width: int = 24, depth: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


def random_patches(images: Sequence[np.ndarray | torch.Tensor], n: int, size: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random ``size``×``size`` crops (n, 1, size, size) drawn evenly from 2D images."""
    out = torch.empty(n, 1, size, size)
    for k in range(n):
        img = torch.as_tensor(images[k % len(images)], dtype=torch.float32)
        h, w = img.shape
        i = int(torch.randint(h - size + 1, (1,), generator=generator))
        j = int(torch.randint(w - size + 1, (1,), generator=generator))
        out[k, 0] = img[i:i + size, j:j + size]
    return out


def quality(clean: torch.Tensor | np.ndarray, test: torch.Tensor | np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of a 2D image against the clean reference (scikit-image, range 1)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = np.asarray(torch.as_tensor(clean).squeeze().cpu(), dtype=np.float64)
    b = np.asarray(torch.as_tensor(test).squeeze().cpu(), dtype=np.float64)
    return {"psnr": float(peak_signal_noise_ratio(a, b, data_range=1.0)),
            "ssim": float(structural_similarity(a, b, data_range=1.0))}


def denoise_explorer(model: nn.Module, image: torch.Tensor) -> ipywidgets.interactive | StaticExplorer:
    """An ipywidgets explorer: noise kind and level → noisy image, the model's output, and
    PSNR/SSIM of both against the clean ``image`` (1, 1, H, W) in [0, 1]."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from .widgets import explorer

    def show(kind: NoiseKind = "gaussian", sigma: float = 0.1, seed: int = 0) -> None:
        noisy = add_noise(image, kind, sigma, generator=torch.Generator().manual_seed(seed))
        model.eval()
        with torch.no_grad():
            out = model(noisy.to(next(model.parameters()).device)).cpu().clamp(0, 1)
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
        for ax, img, title in [(axes[0], image, "clean"), (axes[1], noisy, "noisy"), (axes[2], out, "denoised")]:
            ax.imshow(img.squeeze().numpy(), cmap="gray", vmin=0, vmax=1)
            q = "" if img is image else "\nPSNR {psnr:.1f} dB, SSIM {ssim:.2f}".format(**quality(image, img))
            ax.set_title(title + q, fontsize=9)
            ax.axis("off")
        plt.show()

    return explorer(
        show, kind=widgets.Dropdown(options=["gaussian", "speckle", "poisson"]),
        sigma=widgets.FloatSlider(value=0.1, min=0.02, max=0.3, step=0.02),
        seed=widgets.IntSlider(value=0, min=0, max=10))
