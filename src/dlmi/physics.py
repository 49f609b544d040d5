"""Small models of how medical images are formed: CT, MRI, ultrasound, PET and pathology.

Each function is a few lines on top of NumPy / scikit-image, so the chapter can show the
physics without hiding it. Conventions follow scikit-image: a sinogram is
(detector positions, angles) and angles are in degrees.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import uniform_filter
from skimage.color import hed2rgb, rgb2hed
from skimage.transform import iradon, radon


# --------------------------------------------------------------------------- inverse problems
def system_matrix(forward: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int],
                  support: np.ndarray | None = None) -> np.ndarray:
    """The matrix ``K`` of a linear forward operator, one column per pixel of ``support``
    (default: all): ``K @ u[support] == forward(u).ravel()`` for ``u`` zero outside the support.
    Only for small images (it calls ``forward`` once per pixel)."""
    support = np.ones(shape, dtype=bool) if support is None else np.asarray(support, dtype=bool)
    cols = []
    for i in np.flatnonzero(support):
        basis = np.zeros(shape[0] * shape[1])
        basis[i] = 1.0
        cols.append(np.asarray(forward(basis.reshape(shape))).ravel())
    return np.stack(cols, axis=1)


# ------------------------------------------------------------------------------------- CT
def angles(n: int, span: float = 180.0) -> np.ndarray:
    """``n`` projection angles in degrees, evenly spaced over ``[0, span)``."""
    return np.linspace(0.0, span, n, endpoint=False)


def sinogram(image: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Radon transform (line integrals) of a square image that is zero outside its inscribed circle."""
    return radon(image, theta=theta, circle=True)


def ramp_filter(sino: np.ndarray) -> np.ndarray:
    """Filter each projection with the discrete ramp filter (Kak & Slaney), as ``iradon`` does.

    Filtering spreads a projection beyond its ends, so the result is zero-padded to the image
    diagonal: shape ``(ceil(sqrt(2) n), angles)``, centred like the input.
    """
    n = sino.shape[0]
    diagonal = int(np.ceil(np.sqrt(2) * n))
    before = diagonal // 2 - n // 2
    sino = np.pad(sino, ((before, diagonal - n - before), (0, 0)))
    size = max(64, int(2 ** np.ceil(np.log2(2 * diagonal))))
    k = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    h = np.zeros(size)  # the ramp |w| as a band-limited spatial kernel, then back to frequency
    h[0] = 0.25
    h[1::2] = -1 / (np.pi * k) ** 2
    ramp = 2 * np.real(np.fft.fft(h))
    padded = np.pad(sino, ((0, size - diagonal), (0, 0)))
    return np.real(np.fft.ifft(np.fft.fft(padded, axis=0) * ramp[:, None], axis=0))[:diagonal]


def backproject(sino: np.ndarray, theta: np.ndarray, size: int | None = None) -> np.ndarray:
    """Smear every projection back across a ``size×size`` image along its direction and sum.

    Without filtering this gives a blurred image; after :func:`ramp_filter` it is filtered
    back-projection and equals ``skimage.transform.iradon``. ``size`` defaults to the number
    of detector bins.
    """
    size = size or sino.shape[0]
    radius = size // 2
    xpr, ypr = np.mgrid[:size, :size] - radius
    det = np.arange(-1, sino.shape[0] + 1) - sino.shape[0] // 2
    sino = np.pad(sino, ((1, 1), (0, 0)))  # the detector is zero beyond its ends
    image = np.zeros((size, size))
    for col, angle in zip(sino.T, np.deg2rad(theta), strict=False):
        t = ypr * np.cos(angle) - xpr * np.sin(angle)  # detector coordinate of each pixel
        image += np.interp(t, det, col, left=0, right=0)
    image[xpr**2 + ypr**2 > radius**2] = 0
    return image * np.pi / (2 * len(theta))


def reconstruct(sino: np.ndarray, theta: np.ndarray, filter_name: str | None = "ramp") -> np.ndarray:
    """(Filtered) back-projection with scikit-image; ``filter_name=None`` is plain back-projection."""
    return iradon(sino, theta=theta, filter_name=filter_name, circle=True)


def rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root-mean-square error, optionally inside a boolean mask."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.sqrt(np.mean(d[mask] ** 2 if mask is not None else d**2)))


def circle_mask(n: int) -> np.ndarray:
    """The disc inscribed in an ``n×n`` image, where a CT reconstruction is defined."""
    yy, xx = np.mgrid[:n, :n] - n // 2
    return xx**2 + yy**2 <= (n // 2) ** 2


def fit_scale(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``recon`` times the least-squares scale that best matches ``truth`` (plain back-projection
    has no meaningful intensity scale, so compare it after this)."""
    return recon * float(np.vdot(recon, truth) / np.vdot(recon, recon))


def error_vs_angles(image: np.ndarray, n_angles: list[int], filters: list[str | None]) -> dict:
    """RMSE of the reconstruction inside the scan circle for each filter and number of angles."""
    mask = circle_mask(image.shape[0])
    out: dict[str | None, list[float]] = {f: [] for f in filters}
    for n in n_angles:
        theta = angles(n)
        sino = sinogram(image, theta)
        for f in filters:
            rec = reconstruct(sino, theta, f)
            out[f].append(rmse(fit_scale(rec, image) if f is None else rec, image, mask))
    return out


# ------------------------------------------------------------------------------------- MRI
def to_kspace(image: np.ndarray) -> np.ndarray:
    """The image's 2D Fourier transform with the zero frequency in the centre (what MRI measures)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))


def from_kspace(kspace: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_kspace` (complex image)."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace), norm="ortho"))


def line_mask(shape: tuple[int, int], acceleration: float, center_fraction: float = 0.08,
              kind: str = "random", seed: int = 0) -> np.ndarray:
    """Which phase-encoding lines (columns) are acquired, as a boolean ``shape`` mask.

    A fraction ``center_fraction`` of the central (low-frequency) lines is always kept; the
    others are chosen at random (``kind="random"``) or every ``acceleration``-th
    (``kind="equispaced"``), so about ``1/acceleration`` of the lines are measured.
    """
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    cols = shape[1]
    n_center = int(round(cols * center_fraction))
    keep = np.zeros(cols, dtype=bool)
    start = (cols - n_center) // 2
    keep[start:start + n_center] = True
    if kind == "random":
        rng = np.random.default_rng(seed)
        p = (cols / acceleration - n_center) / max(cols - n_center, 1)
        keep |= rng.random(cols) < max(p, 0.0)
    elif kind == "equispaced":
        keep[::max(int(round(acceleration)), 1)] = True
    else:
        raise ValueError(f"kind must be 'random' or 'equispaced', got {kind!r}")
    return np.broadcast_to(keep, shape).copy()


def zero_filled(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Magnitude image reconstructed from the measured k-space lines only (the rest set to 0)."""
    return np.abs(from_kspace(to_kspace(image) * mask))


# ----------------------------------------------------------------------------- ultrasound
def speckle(image: np.ndarray, looks: float = 1.0, seed: int = 0) -> np.ndarray:
    """Multiply by Gamma(L, 1/L) noise (mean 1, variance 1/L): fully developed speckle for
    intensity images averaged over ``looks`` independent looks."""
    rng = np.random.default_rng(seed)
    return image * rng.gamma(looks, 1.0 / looks, size=image.shape)


def local_mean_std(image: np.ndarray, size: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and standard deviation in a ``size×size`` window."""
    img = np.asarray(image, dtype=np.float64)
    mean = uniform_filter(img, size)
    var = np.maximum(uniform_filter(img**2, size) - mean**2, 0.0)
    return mean, np.sqrt(var)


def std_vs_mean(image: np.ndarray, size: int = 7, bins: int = 8,
                min_mean: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Average local standard deviation in ``bins`` quantile bins of the local mean (above
    ``min_mean``): flat for additive noise, a rising line for multiplicative noise."""
    mean, std = local_mean_std(image, size)
    keep = mean > min_mean
    mean, std = mean[keep], std[keep]
    edges = np.quantile(mean, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, bins - 1)
    centres = np.array([mean[idx == b].mean() for b in range(bins)])
    stds = np.array([std[idx == b].mean() for b in range(bins)])
    return centres, stds


# ------------------------------------------------------------------------------------- PET
def pet_sinogram(activity: np.ndarray, theta: np.ndarray, counts: float, seed: int = 0) -> np.ndarray:
    """Emission data: the activity's line integrals scaled to ``counts`` expected coincidences
    in total, then Poisson-sampled (each detector pair counts independently)."""
    expected = sinogram(activity, theta)
    expected = expected * counts / expected.sum()
    return np.random.default_rng(seed).poisson(expected).astype(np.float64)


def mlem(sino: np.ndarray, theta: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Maximum-likelihood expectation maximisation for Poisson data (the basis of the OSEM
    reconstructions PET scanners use): ``u <- u / K^T 1 * K^T (f / K u)``."""
    n = sino.shape[0]
    mask = circle_mask(n)
    sens = backproject(np.ones_like(sino), theta)
    u = mask.astype(np.float64)
    for _ in range(iterations):
        ratio = sino / np.maximum(sinogram(u, theta), 1e-9)
        u = np.where(mask, u * backproject(ratio, theta) / np.maximum(sens, 1e-9), 0.0)
    return u


# ------------------------------------------------------------------------------- pathology
def stain_channels(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Colour deconvolution (Ruifrok & Johnston) with ``rgb2hed``: each stain rendered alone in RGB."""
    hed = rgb2hed(rgb)
    null = np.zeros_like(hed[..., 0])
    return {
        name: hed2rgb(np.stack([hed[..., i] if j == i else null for j in range(3)], axis=-1))
        for i, name in enumerate(["haematoxylin", "eosin", "DAB"])
    }


def tiles(image: np.ndarray, size: int, stride: int | None = None) -> np.ndarray:
    """Cut ``image`` (H, W[, C]) into ``size×size`` tiles on a grid: (rows, cols, size, size[, C])."""
    stride = stride or size
    rows = range(0, image.shape[0] - size + 1, stride)
    cols = range(0, image.shape[1] - size + 1, stride)
    return np.stack([np.stack([image[r:r + size, c:c + size] for c in cols]) for r in rows])


def tile_count(height: int, width: int, size: int, stride: int | None = None) -> int:
    """How many tiles :func:`tiles` would cut from an image of this size."""
    stride = stride or size
    return ((height - size) // stride + 1) * ((width - size) // stride + 1)


def tissue_fraction(tile: np.ndarray, threshold: float = 0.8) -> float:
    """Fraction of a tile's pixels darker than ``threshold`` (0–1 grey): glass background is bright."""
    grey = np.asarray(tile, dtype=np.float64).mean(axis=-1) if tile.ndim == 3 else np.asarray(tile, float)
    if grey.max() > 1:
        grey = grey / 255.0
    return float((grey < threshold).mean())
