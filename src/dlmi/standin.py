"""A learnable synthetic stand-in for MedMNIST, written in MedMNIST's own npz format.

Each class owns a motif (disk, ring, stripes, cross, ...) drawn with random position, size,
rotation, contrast and colour on a smooth tissue-like background with noise and a faint
distractor motif, so a small CNN learns it in seconds but not trivially. Multi-label sets
draw one small motif per positive label; ordinal sets grow the number of lesion spots with
the grade. Images are uint8, channels-last, exactly like the real files.
"""
from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")
_CHUNK = 512


def _motif(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Binary mask of motif ``kind`` in rotated, scaled coordinates (unit size)."""
    r = np.sqrt(u**2 + v**2)
    au, av = np.abs(u), np.abs(v)
    shapes = (
        lambda: r < 1.0,                                                  # disk
        lambda: (r > 0.6) & (r < 1.0),                                    # ring
        lambda: np.maximum(au, av) < 0.8,                                 # square
        lambda: ((au < 0.3) & (av < 1.0)) | ((av < 0.3) & (au < 1.0)),    # cross
        lambda: (np.sin(7 * u) > 0) & (r < 1.0),                          # stripes
        lambda: (np.sin(6 * u) * np.sin(6 * v) > 0) & (r < 1.0),          # checker
        lambda: (u / 1.0) ** 2 + (v / 0.4) ** 2 < 1.0,                    # ellipse
        lambda: (v > -0.6) & (v < 1.0 - 1.6 * au),                        # triangle
        lambda: (np.sqrt((au - 0.55) ** 2 + v**2) < 0.4),                 # twin dots
        lambda: (r < 0.3) | ((r > 0.7) & (r < 0.95)),                     # target
        lambda: au + av < 1.0,                                            # diamond
        lambda: (r < 1.0) & (u > 0),                                      # half disk
        lambda: (np.maximum(au, av) < 0.9) & (np.maximum(au, av) > 0.55), # frame
        lambda: (np.sin(7 * (u + v)) > 0.3) & (np.maximum(au, av) < 0.9),  # diagonal hatch
    )
    return shapes[kind % len(shapes)]()


def _background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth low-frequency 'tissue' texture in [0, 1], shape (n, size, size)."""
    coarse = rng.random((n, 5, 5), dtype=np.float32)
    idx = np.linspace(0, 4, size, dtype=np.float32)
    i0 = np.floor(idx).astype(int).clip(0, 3)
    f = idx - i0
    rows = coarse[:, i0, :] * (1 - f)[None, :, None] + coarse[:, i0 + 1, :] * f[None, :, None]
    return rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]


def _draw(rng: np.random.Generator, kinds: np.ndarray, size: int, scale: tuple[float, float]) -> np.ndarray:
    """One motif per sample (kind per sample) at a random pose; float masks (n, size, size)."""
    n = len(kinds)
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    cx, cy = rng.uniform(-0.35, 0.35, (2, n, 1, 1)).astype(np.float32)
    s = rng.uniform(*scale, (n, 1, 1)).astype(np.float32)
    th = rng.uniform(0, np.pi, (n, 1, 1)).astype(np.float32)
    u = ((x - cx) * np.cos(th) + (y - cy) * np.sin(th)) / s
    v = (-(x - cx) * np.sin(th) + (y - cy) * np.cos(th)) / s
    out = np.zeros((n, size, size), dtype=np.float32)
    for kind in np.unique(kinds):
        sel = kinds == kind
        out[sel] = _motif(int(kind), u[sel], v[sel])
    return out


def _render(rng: np.random.Generator, labels: np.ndarray, task: str, n_classes: int,
            channels: int, size: int) -> np.ndarray:
    """Images (n, size, size[, 3]) uint8 for the given labels."""
    n = len(labels)
    img = 0.25 + 0.2 * _background(rng, n, size)
    if task.startswith("multi-label"):
        for k in range(labels.shape[1]):
            on = labels[:, k] == 1
            if on.any():
                mask = _draw(rng, np.full(on.sum(), k), size, (0.18, 0.3))
                img[on] += 0.35 * mask * rng.uniform(0.7, 1.3, (on.sum(), 1, 1))
    elif task == "ordinal-regression":
        grade = labels[:, 0]
        img += 0.25 * _draw(rng, np.zeros(n, int), size, (0.5, 0.7))  # optic-disc-like
        for spot in range(2 * (n_classes - 1)):
            on = grade * 2 > spot
            if on.any():
                img[on] += 0.45 * _draw(rng, np.zeros(on.sum(), int), size, (0.07, 0.12))
    else:
        cls = labels[:, 0]
        contrast = (0.4 + 0.05 * (cls % 3) + rng.normal(0, 0.08, n)).astype(np.float32)
        img += contrast[:, None, None] * _draw(rng, cls, size, (0.3, 0.55))
    distractor = rng.random(n) < 0.5
    if distractor.any():
        kinds = rng.integers(0, 14, distractor.sum())
        img[distractor] += 0.12 * _draw(rng, kinds, size, (0.15, 0.3))
    img += rng.normal(0, 0.07, img.shape).astype(np.float32)
    if channels == 3:
        tint = rng.uniform(0.6, 1.0, (n, 1, 1, 3)).astype(np.float32)
        if labels.shape[1] == 1:  # a weak colour cue, as stains and devices differ by class
            tint[np.arange(n), 0, 0, labels[:, 0] % 3] += 0.15
        img = img[..., None] * tint
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


def _labels(rng: np.random.Generator, n: int, task: str, n_classes: int) -> np.ndarray:
    if task.startswith("multi-label"):
        return (rng.random((n, n_classes)) < 0.15).astype(np.uint8)
    return rng.integers(0, n_classes, (n, 1)).astype(np.uint8)


def split_sizes(info: dict, fraction: float, size: int) -> dict[str, int]:
    """Stand-in split sizes: ``fraction`` of the real ones (at least 800, or all of a smaller
    split), at most 2000 per split for images of 128 pixels and more."""
    cap = 2000 if size >= 128 else 50_000
    real = info["n_samples"]
    return {s: int(min(cap, max(min(800, real[s]), round(real[s] * fraction)))) for s in SPLITS}


def make_standin(info: dict, size: int, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Arrays for a stand-in npz: ``{split}_images`` / ``{split}_labels`` like the real file."""
    task, n_classes, channels = info["task"], len(info["label"]), info["n_channels"]
    arrays: dict[str, np.ndarray] = {}
    for i, (split, n) in enumerate(split_sizes(info, fraction, size).items()):
        rng = np.random.default_rng([seed, i])
        labels = _labels(rng, n, task, n_classes)
        chunks = [_render(rng, labels[a:a + _CHUNK], task, n_classes, channels, size)
                  for a in range(0, n, _CHUNK)]
        arrays[f"{split}_images"] = np.concatenate(chunks)
        arrays[f"{split}_labels"] = labels
    return arrays
