"""Synthetic microscopy-like cells for segmentation and detection.

Each image holds a random number of elliptical cells (two kinds: round = label 1,
elongated = label 2) with textured interiors, a blurred background and noise. A sample is
``(image, target)``: ``image`` a :class:`tv_tensors.Image` (1, H, W) float32 in [0, 1];
``target`` the dict torchvision detection models expect — ``boxes`` (N, 4) XYXY
:class:`tv_tensors.BoundingBoxes`, ``labels`` (N,), ``masks`` (N, H, W) instance
:class:`tv_tensors.Mask` — plus ``semantic`` (H, W), 0 = background, else the cell's label.
Samples are deterministic in ``(seed, index)``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_iou, masks_to_boxes


class SyntheticCells(Dataset):
    """A reproducible data set of cell images with semantic masks, instance masks and boxes."""

    def __init__(self, n: int = 64, size: int = 64, cells: tuple[int, int] = (2, 6),
                 radius: tuple[float, float] = (4.0, 9.0), noise: float = 0.08,
                 max_overlap: float = 0.1, seed: int = 0) -> None:
        if n < 1 or size < 16:
            raise ValueError(f"Need n >= 1 and size >= 16, got n={n}, size={size}.")
        if not 0 <= cells[0] <= cells[1]:
            raise ValueError(f"cells must be (min, max) with 0 <= min <= max, got {cells}.")
        if not 0 < radius[0] <= radius[1] < size / 2:
            raise ValueError(f"radius must be (min, max) with 0 < min <= max < size/2, got {radius}.")
        if not 0 <= max_overlap <= 1:
            raise ValueError(f"max_overlap is a box IoU in [0, 1], got {max_overlap}.")
        self.n, self.size, self.cells, self.radius = n, size, cells, radius
        self.noise, self.max_overlap, self.seed = noise, max_overlap, seed

    def __len__(self) -> int:
        return self.n

    def _ellipse(self, rng: np.random.Generator, kind: int) -> np.ndarray:
        s = self.size
        r = rng.uniform(*self.radius)
        a, b = (r, r * rng.uniform(0.8, 1.0)) if kind == 1 else (r * 1.3, r * rng.uniform(0.4, 0.6))
        cy, cx = rng.uniform(r, s - r, 2)
        th = rng.uniform(0, np.pi)
        y, x = np.mgrid[0:s, 0:s].astype(np.float32)
        u = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
        v = -(x - cx) * np.sin(th) + (y - cy) * np.cos(th)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, torch.Tensor]]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        masks: list[np.ndarray] = []
        labels: list[int] = []
        for _ in range(rng.integers(self.cells[0], self.cells[1] + 1)):
            for _attempt in range(20):
                kind = int(rng.integers(1, 3))
                m = self._ellipse(rng, kind)
                if not masks or self._overlap_ok(m, masks):
                    masks.append(m)
                    labels.append(kind)
                    break
        image = 0.15 + 0.1 * np.sin(np.linspace(0, rng.uniform(1, 4), s))[None, :] * np.ones((s, 1))
        semantic = np.zeros((s, s), dtype=np.int64)
        instance = np.zeros((len(masks), s, s), dtype=bool)
        for i, (m, kind) in enumerate(zip(masks, labels, strict=False)):
            visible = m & (semantic == 0)  # earlier cells stay on top
            instance[i] = visible
            semantic[visible] = kind
            texture = 0.1 * rng.standard_normal((s, s)) if kind == 2 else 0.05 * rng.standard_normal((s, s))
            image = np.where(visible, rng.uniform(0.55, 0.85) + texture, image)
        image = image + self.noise * rng.standard_normal((s, s))
        keep = instance.reshape(len(masks), -1).any(1) if masks else np.zeros(0, bool)
        inst = torch.from_numpy(instance[keep])
        boxes = masks_to_boxes(inst) if len(inst) else torch.zeros((0, 4))
        return (
            tv_tensors.Image(torch.from_numpy(image.clip(0, 1)).float()[None]),
            {
                "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(s, s)),
                "labels": torch.tensor(labels, dtype=torch.int64)[torch.from_numpy(keep)],
                "masks": tv_tensors.Mask(inst.to(torch.uint8)),
                "semantic": tv_tensors.Mask(torch.from_numpy(semantic)),
            },
        )

    def _overlap_ok(self, m: np.ndarray, masks: list[np.ndarray]) -> bool:
        new = masks_to_boxes(torch.from_numpy(m)[None])
        old = masks_to_boxes(torch.from_numpy(np.stack(masks)))
        return bool(box_iou(new, old).max() <= self.max_overlap)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (N, 1, H, W) and binary cell masks (N, 1, H, W) float32, for segmentation."""
        pairs = [self[i] for i in range(self.n)]
        x = torch.stack([p[0].as_subclass(torch.Tensor) for p in pairs])
        y = torch.stack([(p[1]["semantic"] > 0).float()[None] for p in pairs])
        return x, y.as_subclass(torch.Tensor)


def collate_detection(batch: list) -> tuple[list, list]:
    """Collate for detection models: lists of images and of target dicts."""
    images, targets = zip(*batch, strict=False)
    return list(images), list(targets)
